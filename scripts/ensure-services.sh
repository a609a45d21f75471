#!/usr/bin/env bash
# Install (from Debian's packages) and check the real components the tests use.
# Tests start their own servers on spare ports; this only makes sure the binaries exist and
# that a Redis answers on GTM_TEST_REDIS_URL's port (default 127.0.0.1:6379), starting one
# if nothing listens there. It never flushes or stops a Redis it did not start.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "ensure-services: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

port="${GTM_TEST_REDIS_PORT:-6379}"
if ! redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  echo "ensure-services: no Redis on 127.0.0.1:$port; starting one"
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --logfile "$dir/redis.log"
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null
echo "ensure-services: redis on 127.0.0.1:$port OK ($(redis-server --version | awk '{print $3}'))"
