#!/usr/bin/env bash
# Make sure BIRD 2 (bird, birdc) is installed, from Debian's packages (bird2), for the anycast
# tests, `gtm drill anycast` and the anycast benchmark. It only installs: they start their own
# `bird` on 127.0.0.2 and a spare port with `strict bind` (gtm/testing/bgp.py). apt-get does not
# start the daemon here (policy-rc.d), and this never does.
set -euo pipefail

have_bird() {
  { command -v bird >/dev/null 2>&1 || [ -x /usr/sbin/bird ]; } && { command -v birdc >/dev/null 2>&1 || [ -x /usr/sbin/birdc ]; }
}

if ! have_bird; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-bird: bird is missing and this is not root; run: sudo apt-get install -y bird2" >&2
    exit 1
  fi
  echo "ensure-bird: installing bird2"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bird2 >/dev/null
fi

bird_bin=$(command -v bird 2>/dev/null || echo /usr/sbin/bird)
echo "ensure-bird: $("$bird_bin" --version 2>&1 | head -1)"
