#!/usr/bin/env bash
# Make sure BIND 9 (named, named-checkconf, tsig-keygen) is installed, from Debian's packages.
# It only installs: the tests and the provider drill start their own named on a loopback port
# (gtm/testing/bind.py); apt-get does not start the daemon here and this never does.
set -euo pipefail

have_named() {
  command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ]
}

if ! have_named; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-bind: named is missing and this is not root; run: sudo apt-get install -y bind9 bind9-utils" >&2
    exit 1
  fi
  echo "ensure-bind: installing bind9 bind9-utils"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bind9 bind9-utils >/dev/null
fi

named_bin=$(command -v named 2>/dev/null || echo /usr/sbin/named)
"$named_bin" -v >/dev/null
echo "ensure-bind: $("$named_bin" -v)"
