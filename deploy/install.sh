#!/usr/bin/env bash
# Installs iot-collector on a systemd host, or removes it again.
#
#   deploy/install.sh                  install or upgrade from this checkout
#   deploy/install.sh --uninstall      remove the program and the units; keep config, secrets, state
#   deploy/install.sh --uninstall --purge   ... and the config, the secrets and the state too
#
# What goes where (all under --root, "/" by default):
#   /opt/iot-collector/venv/                 the package in its own virtual environment, every dependency at
#                                            the version constraints.txt pins (pip install -c)
#   /opt/iot-collector/share/                example config, Grafana, Prometheus and Alertmanager files, docs
#   /etc/iot-collector/collector.yaml        the configuration (written only if it does not exist yet)
#   /etc/credstore/                          where the secrets go (created empty, mode 0700)
#   /etc/systemd/system/iot-collector.service, iot-collector@.service
#   /var/lib/iot-collector/                  spool and alert state, created by systemd (StateDirectory=)
#
# Running it again is safe: it upgrades the package in place, refreshes the units and the shared
# files, and leaves an existing configuration alone. With --root DIR it touches nothing outside DIR
# (no systemctl), and rewrites the scripts' interpreter paths so that the tree can be copied to "/"
# (building an image).
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ROOT=/
PREFIX=/opt/iot-collector
SOURCE=$(dirname "$HERE")
CONSTRAINTS=$(dirname "$HERE")/constraints.txt
PYTHON_GIVEN=0
[ -n "${PYTHON:-}" ] && PYTHON_GIVEN=1
PYTHON=${PYTHON:-python3}
PIP_ARGS=()
ACTION=install
PURGE=0
SYSTEMCTL=auto
QUIET=0

usage() {
  cat <<EOF
Usage: $PROG [options]
       $PROG --uninstall [--purge] [options]

Options:
  --root DIR         install into DIR instead of / (an image, a test); no systemctl calls
  --prefix DIR       where the program goes (default $PREFIX)
  --source PATH      what to install: a checkout or a built wheel (default $SOURCE)
  --python PYTHON    interpreter for the virtual environment, 3.11 or newer, outside /home, /root
                     and /tmp, which the service cannot see (default: python3 on PATH, or a system
                     one when that is a per-user installation such as pyenv or conda)
  --constraints FILE the dependency versions to install (default: constraints.txt of this checkout,
                     $CONSTRAINTS)
  --pip-arg ARG      pass ARG to pip install (repeatable), e.g. --pip-arg=--no-index
                     --pip-arg=--find-links=/srv/wheels on a host without a package index
  --no-systemctl     do not run systemctl even when installing into /
  --uninstall        remove the program and the units; keep configuration, secrets and state
  --purge            with --uninstall: also remove /etc/iot-collector, its secrets in
                     /etc/credstore and the state in /var/lib/iot-collector
  -q, --quiet        print only errors and the next steps
  -h, --help         this help
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { [ "$QUIET" = 1 ] || echo "$PROG: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --source) [ $# -ge 2 ] || die "--source needs a path"; SOURCE=$2; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; PYTHON_GIVEN=1; shift 2 ;;
    --python=*) PYTHON=${1#*=}; PYTHON_GIVEN=1; shift ;;
    --constraints) [ $# -ge 2 ] || die "--constraints needs a file"; CONSTRAINTS=$2; shift 2 ;;
    --constraints=*) CONSTRAINTS=${1#*=}; shift ;;
    --pip-arg) [ $# -ge 2 ] || die "--pip-arg needs an argument"; PIP_ARGS+=("$2"); shift 2 ;;
    --pip-arg=*) PIP_ARGS+=("${1#*=}"); shift ;;
    --no-systemctl) SYSTEMCTL=no; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -q|--quiet) QUIET=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ] && die "--purge only goes with --uninstall"
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute, got $PREFIX" ;; esac
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}   # "" for the real root, so "$R/etc" is always right
if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
  die "installing into / needs root (sudo $0 ...), or use --root DIR"
fi

UNITS=(iot-collector.service iot-collector@.service)
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/iot-collector
CRED_DIR=/etc/credstore
STATE_DIRS=(/var/lib/iot-collector /var/lib/private/iot-collector)
VENV=$PREFIX/venv
SHARE=$PREFIX/share
MANIFEST=$PREFIX/install-manifest

use_systemctl() {
  [ "$SYSTEMCTL" != no ] && [ -z "$R" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

# --- uninstall ----------------------------------------------------------------------------------------

uninstall() {
  if use_systemctl; then
    say "stopping and disabling the units"
    systemctl disable --now iot-collector.service >/dev/null 2>&1 || true
    # Every running shard; `systemctl disable` of the template alone would leave them running.
    mapfile -t shards < <(systemctl list-units --all --plain --no-legend 'iot-collector@*.service' | awk '{print $1}')
    for unit in "${shards[@]}"; do
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  fi
  # What an install put outside $PREFIX: its manifest, plus the units in case the manifest is lost.
  local installed=("${UNITS[@]/#/$UNIT_DIR/}") path
  if [ -f "$R$MANIFEST" ]; then
    mapfile -t -O "${#installed[@]}" installed <"$R$MANIFEST"
  fi
  for path in "${installed[@]}"; do
    case "$path" in /*) ;; *) continue ;; esac
    if [ -e "$R$path" ] || [ -L "$R$path" ]; then
      say "removing $path"
      rm -f "$R$path"
    fi
  done
  # Instance links left by `systemctl enable iot-collector@N` (only when systemctl was not there to do it).
  find "$R$UNIT_DIR" -maxdepth 2 -type l \( -name 'iot-collector.service' -o -name 'iot-collector@*.service' \) \
    -delete 2>/dev/null || true
  if [ -d "$R$PREFIX" ]; then
    say "removing $PREFIX"
    rm -rf "${R:?}$PREFIX"
  fi
  use_systemctl && systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    say "purging $CONF_DIR, the iot-collector.* secrets in $CRED_DIR and the state"
    rm -rf "$R$CONF_DIR"
    rm -f "$R$CRED_DIR"/iot-collector.*
    rmdir "$R$CRED_DIR" 2>/dev/null || true   # only if nothing else keeps secrets there
    for d in "${STATE_DIRS[@]}"; do rm -rf "${R:?}$d"; done
  else
    kept=()
    for d in "$CONF_DIR" "${STATE_DIRS[@]}"; do
      if [ -e "$R$d" ] || [ -L "$R$d" ]; then kept+=("$d"); fi
    done
    compgen -G "$R$CRED_DIR/iot-collector.*" >/dev/null && kept+=("$CRED_DIR/iot-collector.*")
    if [ "${#kept[@]}" -gt 0 ]; then
      echo "Kept: ${kept[*]} (remove them with $PROG --uninstall --purge)"
    fi
  fi
  echo "iot-collector is uninstalled."
}

# --- install ------------------------------------------------------------------------------------------

# The unit runs with ProtectHome=yes and PrivateTmp=yes: the service sees no /home, /root or
# /run/user, and an empty /tmp and /var/tmp. A virtual environment's python is a link to the
# interpreter it was made from, so one made from a per-user Python (pyenv, conda, a build in a home
# directory) fails at start with 203/EXEC "Permission denied", in a restart loop.
HIDDEN_DIRS=(/home /root /run/user /tmp /var/tmp)

hidden_dir() {  # path -> the directory hiding it from the service, or nothing
  local path=$1 dir
  for dir in "${HIDDEN_DIRS[@]}"; do
    case "$path/" in "$dir"/*) echo "$dir"; return 0 ;; esac
  done
  return 1
}

interpreter_path() {  # python -> the real path of the binary a virtual environment made from it links to
  "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))' 2>/dev/null
}

python_problem() {  # python -> why it cannot make the service's environment (nothing when it can)
  command -v "$1" >/dev/null 2>&1 || { echo "not found"; return 0; }
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null \
    || { echo "$("$1" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "an unknown version"), 3.11 or newer is needed"; return 0; }
  "$1" -c 'import venv, ensurepip' 2>/dev/null \
    || { echo "cannot create virtual environments (Debian: apt-get install python3-venv)"; return 0; }
  local real dir
  real=$(interpreter_path "$1")
  if dir=$(hidden_dir "$real"); then
    echo "it is $real, under $dir, which the service cannot see (ProtectHome=yes, PrivateTmp=yes in the unit)"
  fi
}

check_python() {
  local problem candidate
  problem=$(python_problem "$PYTHON")
  [ -z "$problem" ] && return 0
  if [ "$PYTHON_GIVEN" = 1 ]; then
    die "$PYTHON: $problem; choose a system interpreter, e.g. --python /usr/bin/python3"
  fi
  # The default python3 on PATH is unusable (most often a pyenv or conda one): a system one will do.
  for candidate in /usr/bin/python3 /usr/local/bin/python3 /usr/bin/python3.1[1-9] /usr/local/bin/python3.1[1-9]; do
    [ -x "$candidate" ] || continue
    if [ -z "$(python_problem "$candidate")" ]; then
      say "$PYTHON on PATH: $problem; using $candidate instead"
      PYTHON=$candidate
      return 0
    fi
  done
  die "$PYTHON on PATH: $problem, and no system Python 3.11 or newer with venv was found in /usr/bin or" \
      "/usr/local/bin (Debian: apt-get install python3 python3-venv); choose one with --python"
}

make_venv() {
  local venv=$R$VENV
  local linked=""
  [ -e "$venv/bin/python" ] && linked=$(readlink -f "$venv/bin/python")
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' 2>/dev/null && ! hidden_dir "$linked" >/dev/null; then
    say "upgrading the virtual environment $VENV"
  else
    # Missing, broken because the interpreter it was made from went away, or made from one the service
    # cannot see (an earlier install from a per-user Python): make it afresh.
    say "creating the virtual environment $VENV"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
  fi
}

check_source() {
  [ -f "$CONSTRAINTS" ] || die "no constraints file at $CONSTRAINTS (the pinned dependency versions; --constraints FILE)"
  case "$SOURCE" in
    *.whl) [ -f "$SOURCE" ] || die "no wheel at $SOURCE" ;;
    *) grep -qs '^name = "iot-collector"' "$SOURCE/pyproject.toml" \
         || die "$SOURCE is neither a checkout of iot-collector nor a wheel" ;;
  esac
}

install_package() {
  local venv=$R$VENV source=$SOURCE
  say "installing $source with the dependency versions of $CONSTRAINTS"
  local log
  log=$(mktemp)
  # --upgrade so a new version replaces the old one; a checkout is rebuilt every time anyway.
  # -c: every dependency at its pinned version, the same on every host and every run.
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --upgrade -c "$CONSTRAINTS" \
        ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$source" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "pip install failed (the previous installation, if any, may be incomplete: run $PROG again)"
  fi
  [ "$QUIET" = 1 ] || grep -E '^(Successfully installed|Requirement already satisfied: iot-collector)' "$log" || true
  rm -f "$log"
  [ -x "$venv/bin/iot-collector" ] || die "the package installed, but $VENV/bin/iot-collector is missing"
}

relocate_scripts() {
  # pip writes the venv's absolute path (with the --root prefix) into the scripts' #! lines and the
  # activate scripts; the tree is meant to run at $PREFIX, so write that instead.
  [ -n "$R" ] || return 0
  local f
  local files
  files=$(grep -rlIF -- "$R$VENV" "$R$VENV/bin" "$R$VENV/pyvenv.cfg" 2>/dev/null || true)
  [ -n "$files" ] || return 0
  while IFS= read -r f; do
    sed -i "s|$R$VENV|$VENV|g" "$f"
  done <<<"$files"
}

install_file() {  # mode src dst
  install -D -m "$1" "$2" "$R$3"
}

install_shared() {
  say "installing the units, the example configuration and the dashboards"
  for unit in "${UNITS[@]}"; do
    install_file 0644 "$HERE/systemd/$unit" "$UNIT_DIR/$unit"
  done
  install -d -m 0755 "$R$SHARE"
  install_file 0644 "$HERE/collector.yaml" "$SHARE/collector.yaml.example"
  install_file 0644 "$CONSTRAINTS" "$SHARE/constraints.txt"   # the versions this venv was installed with
  local dir
  for dir in prometheus alertmanager; do
    rm -rf "${R:?}$SHARE/$dir"
    cp -r "$HERE/$dir" "$R$SHARE/$dir"
  done
  rm -rf "${R:?}$SHARE/grafana"
  if [ -d "$HERE/../grafana" ]; then
    cp -r "$HERE/../grafana" "$R$SHARE/grafana"
    # The dashboards as file provisioning reads them (the JSON files are in the import page's shape).
    bash "$HERE/../grafana/provision-dashboards.sh" "$R$SHARE/grafana/provisioned-dashboards"
  fi
  [ -f "$HERE/../docs/operations.md" ] && install_file 0644 "$HERE/../docs/operations.md" "$SHARE/doc/operations.md"
  find "$R$SHARE" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +

  # The configuration is the operator's: written once, never overwritten.
  install -d -m 0755 "$R$CONF_DIR"
  if [ -e "$R$CONF_DIR/collector.yaml" ]; then
    if ! cmp -s "$HERE/collector.yaml" "$R$CONF_DIR/collector.yaml"; then
      say "kept your $CONF_DIR/collector.yaml (the new example is $SHARE/collector.yaml.example)"
    fi
  else
    # World-readable: it holds no secret, and the service runs as a dynamic user.
    install_file 0644 "$HERE/collector.yaml" "$CONF_DIR/collector.yaml"
    say "wrote $CONF_DIR/collector.yaml"
  fi
  install -d -m 0700 "$R$CRED_DIR"

  # What --uninstall removes outside $PREFIX (the prefix itself goes whole).
  printf '%s\n' "${UNITS[@]/#/$UNIT_DIR/}" >"$R$MANIFEST"
}

next_steps() {
  local reload="systemctl daemon-reload && "
  use_systemctl && reload=""
  cat <<EOF

iot-collector $("$R$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("iot-collector"))' 2>/dev/null || echo "") is installed in ${R}$PREFIX.

Next steps:
  1. Edit $CONF_DIR/collector.yaml: platform.base_url, platform.app_id, your devices, the sinks.
  2. Store the secrets where systemd's LoadCredential= finds them (never in the config or the unit):
       install -m 0600 /dev/stdin $CRED_DIR/iot-collector.app_secret          # then type it, Ctrl-D
       install -m 0600 /dev/stdin $CRED_DIR/iot-collector.influxdb_token      # InfluxDB 2.x/3.x, if used
       install -m 0600 /dev/stdin $CRED_DIR/iot-collector.influxdb_password   # InfluxDB 1.x, if used
  3. Check the configuration:
       sudo env CREDENTIALS_DIRECTORY=$CRED_DIR $VENV/bin/iot-collector check-config -c $CONF_DIR/collector.yaml
  4. Start it:
       ${reload}systemctl enable --now iot-collector.service
       (or one shard per instance: systemctl enable --now iot-collector@0.service iot-collector@1.service)
  5. Watch it: journalctl -u iot-collector -f ; curl -s 127.0.0.1:9108/readyz
  Dashboards, scrape config and alert rules: $SHARE/ (see $SHARE/doc/operations.md).
EOF
}

install_all() {
  check_source
  check_python
  make_venv
  install_package
  relocate_scripts
  install_shared
  if use_systemctl; then
    systemctl daemon-reload
    # An upgrade takes effect for running collectors now (the spool is flushed on stop and kept).
    if systemctl is-active --quiet iot-collector.service 'iot-collector@*.service'; then
      say "restarting the running collectors"
      systemctl try-restart iot-collector.service 'iot-collector@*.service'
    fi
  fi
  next_steps
}

if [ "$ACTION" = uninstall ]; then
  uninstall
else
  install_all
fi
