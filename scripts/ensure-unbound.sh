#!/usr/bin/env bash
# Make sure Unbound (unbound, unbound-checkconf) is installed, from Debian's packages, for
# `gtm drill drain|failover|kill` (the drill's clients resolve through it) and its tests. It only
# installs: a drill starts its own `unbound -d` on 127.0.0.1 and a spare port, with a config in a
# temp dir (gtm/drills/unbound.py); nothing here or there uses port 53.
#
# Debian's postinst would start the system daemon on port 53 (and, with resolvconf, point the
# host's resolver at it). We install behind a policy-rc.d that refuses every start, and stop and
# disable the system service if one is running anyway (a machine where it was installed before).
set -euo pipefail

have_unbound() {
  { command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ]; } \
    && { command -v unbound-checkconf >/dev/null 2>&1 || [ -x /usr/sbin/unbound-checkconf ]; }
}

stop_system_unbound() {
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now unbound.service unbound-resolvconf.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/unbound ]; then
    /etc/init.d/unbound stop >/dev/null 2>&1 || true
  fi
}

if ! have_unbound; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-unbound: unbound is missing and this is not root; run: sudo apt-get install -y unbound" >&2
    exit 1
  fi
  echo "ensure-unbound: installing unbound (without starting the system daemon)"
  policy=/usr/sbin/policy-rc.d
  made_policy=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=yes
  fi
  export DEBIAN_FRONTEND=noninteractive
  status=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends unbound >/dev/null; } || status=$?
  if [ "$made_policy" = yes ]; then
    rm -f "$policy"
  fi
  [ "$status" -eq 0 ] || exit "$status"
fi

if [ "$(id -u)" -eq 0 ]; then
  stop_system_unbound
fi

unbound_bin=$(command -v unbound 2>/dev/null || echo /usr/sbin/unbound)
echo "ensure-unbound: unbound $("$unbound_bin" -V 2>&1 | sed -n 's/^Version //p' | head -1)"
