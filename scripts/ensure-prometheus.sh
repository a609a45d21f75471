#!/usr/bin/env bash
# Make sure Prometheus and promtool are installed, from Debian's packages (prometheus), for the
# alert-rule checks (`promtool check rules`, `promtool test rules`) and the dashboard test that
# scrapes a running installation (tests/e2e/test_prometheus_e2e.py). It only installs: the tests
# start their own `prometheus` on 127.0.0.1 and a spare port with a temporary TSDB. apt-get does
# not start the daemon here (policy-rc.d); where it did, the packaged service is stopped and
# disabled again so no system Prometheus (and its node exporter) keeps running.
set -euo pipefail

have_prometheus() {
  { command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; } \
    && { command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ]; }
}

if ! have_prometheus; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-prometheus: prometheus is missing and this is not root; run: sudo apt-get install -y prometheus" >&2
    exit 1
  fi
  echo "ensure-prometheus: installing prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Never leave the packaged daemons running (CI runners with systemd do start them).
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in prometheus prometheus-node-exporter; do
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  fi
fi

prom_bin=$(command -v prometheus 2>/dev/null || echo /usr/bin/prometheus)
echo "ensure-prometheus: $("$prom_bin" --version 2>&1 | head -1)"
