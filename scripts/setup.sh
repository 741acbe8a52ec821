#!/usr/bin/env bash
# Sets up a virtual environment in .venv with the collector installed (editable).
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus the dev tools and the real servers the tests start on loopback
#                             (Debian: influxdb, victoria-metrics, prometheus, prometheus-alertmanager, systemd)
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
  need=()
  for pair in influxd:influxdb victoria-metrics:victoria-metrics promtool:prometheus \
              prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager \
              systemd-analyze:systemd; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extra=""
[ "$want_test" = 1 ] && extra="[dev]"
stamp=".venv/.installed$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".$extra"
  touch "$stamp"
fi
