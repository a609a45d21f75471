#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are installed, from Debian's packages
# (chromium, chromium-driver), for the tests that open a page in a browser: the drill report
# (tests/drills/test_report.py) and the controller's status page. It only installs: each test
# starts its own browser through selenium (tests/support/browser.py) and quits it.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

need=()
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: ${need[*]} missing and this is not root; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "ensure-chromium: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

driver_bin=$(command -v chromedriver 2>/dev/null || echo /usr/bin/chromedriver)
echo "ensure-chromium: $("$driver_bin" --version 2>/dev/null | head -1)"
