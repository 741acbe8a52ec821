#!/usr/bin/env bash
# Sets up a virtual environment in .venv with the collector installed (editable), every dependency
# at the version pinned in constraints.txt.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus the dev tools and the real servers the tests start on loopback
#                             (Debian: influxdb, victoria-metrics, prometheus, prometheus-alertmanager, systemd,
#                             systemd-container for the boot tests, python3-venv for install.sh's tests)
#   scripts/setup.sh --refresh-constraints
#                             resolves the dependencies of pyproject.toml (runtime and dev) afresh, newest
#                             releases, in a temporary venv, and rewrites constraints.txt with what it got
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CONSTRAINTS=constraints.txt
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "${1:-}" = "--refresh-constraints" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q --upgrade pip
  "$work/venv/bin/python" -m pip install -q ".[dev]"
  {
    sed -n '/^#/p' "$CONSTRAINTS"
    "$work/venv/bin/python" -m pip freeze --exclude-editable | grep -iv '^iot-collector[= @]' | LC_ALL=C sort -f
  } >"$work/constraints.txt"
  mv "$work/constraints.txt" "$CONSTRAINTS"
  echo "constraints.txt: $(grep -cv '^#' "$CONSTRAINTS") pinned packages for $("$PYTHON" --version 2>&1)"
  exit 0
fi

if [ "$want_test" = 1 ]; then
  need=()
  for pair in influxd:influxdb victoria-metrics:victoria-metrics promtool:prometheus \
              prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager \
              systemd-analyze:systemd systemd-nspawn:systemd-container; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  # install.sh makes the service's venv from a system Python (one under /root or /home is hidden
  # from the service); its tests and the boot tests need Debian's, with venv.
  /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$CONSTRAINTS" -nt "$stamp" ]; then
  # -c: the pinned versions, also replacing other versions an earlier install left in .venv.
  .venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".$extra"
  touch "$stamp"
fi
