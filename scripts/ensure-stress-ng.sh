#!/usr/bin/env bash
# Make sure stress-ng is installed, from Debian's packages: `make bench`'s false-positive run
# keeps every core busy with `stress-ng --cpu 0` (bench/false_positive.py starts and stops it).
set -euo pipefail

if ! command -v stress-ng >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-stress-ng: stress-ng is missing and this is not root; run: sudo apt-get install -y stress-ng" >&2
    exit 1
  fi
  echo "ensure-stress-ng: installing stress-ng"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends stress-ng >/dev/null
fi
echo "ensure-stress-ng: $(stress-ng --version 2>&1 | head -1)"
