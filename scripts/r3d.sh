#!/usr/bin/env bash
# r3d_ros: set up the environment (idempotent) and run the main job or the tests.
#
#   bash scripts/r3d.sh demo     # set up, then run the main job on the embedded default (CPU, no downloads)
#   bash scripts/r3d.sh test     # set up, then ruff + the whole test suite
#   bash scripts/r3d.sh setup    # only set up
#
# Set-up: Debian packages (libusb for open3d, Java for the COCO caption metrics, tcpdump for the
# loopback-only check), a Python 3.11 venv in .venv with the pinned CPU torch installed first (so nothing
# pulls a multi-GB CUDA build), requirements.txt, and this package in editable mode. A stamp of the
# dependency files makes a second run skip pip entirely. Then the interface package r3d_interfaces/
# (ament_cmake + rosidl: the Ask action and the scene-object messages) is built with colcon from the
# rosidl / ament_cmake wheels and Debian's cmake and g++, and installed into the venv's own prefix, where
# the ROS wheels' loader already looks (python, lib/); its own stamp skips that build the next time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${R3D_PYTHON:-python3.11}
TORCH_PIN=torch==2.13.0

log() { printf '\033[1m[r3d]\033[0m %s\n' "$*"; }

ensure_debian_packages() {
  local missing=()
  # grep reads all of ldconfig's output: with pipefail, grep -q's early exit fails the pipe (SIGPIPE) now and then
  ldconfig -p | grep 'libusb-1.0.so.0' >/dev/null || missing+=(libusb-1.0-0)
  ldconfig -p | grep 'libgomp.so.1' >/dev/null || missing+=(libgomp1)
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v tcpdump >/dev/null || missing+=(tcpdump)
  # r3d_interfaces: rosidl generates C/C++ typesupport and a Python C extension
  command -v cmake >/dev/null || missing+=(cmake)
  command -v make >/dev/null || missing+=(make)
  command -v g++ >/dev/null || missing+=(g++)
  command -v "$PY" >/dev/null && ! "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    && missing+=(python3.11-dev)
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

stamp() { cat requirements.txt constraints.txt setup.py setup.cfg scripts/r3d.sh | sha256sum | cut -d' ' -f1; }

ensure_venv() {
  if [ -f "$VENV/.r3d_stamp" ] && [ "$(cat "$VENV/.r3d_stamp")" = "$(stamp)" ]; then
    log "environment up to date ($VENV)"
    return
  fi
  command -v "$PY" >/dev/null || PY=python3
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the ROS 2 Kilted wheels need CPython 3.11"'
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  log "installing $TORCH_PIN (CPU build) first"
  "${pip[@]}" install "$TORCH_PIN"
  log "installing requirements.txt"
  "${pip[@]}" install -r requirements.txt -c constraints.txt "$TORCH_PIN"
  log "installing r3d_ros (editable)"
  "${pip[@]}" install --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
  stamp > "$VENV/.r3d_stamp"
}

# the interface build depends on the ROS wheels (requirements, constraints), this script and r3d_interfaces/
interfaces_stamp() {
  { cat requirements.txt constraints.txt scripts/r3d.sh; find r3d_interfaces -type f | LC_ALL=C sort | xargs cat; } \
    | sha256sum | cut -d' ' -f1
}

ensure_interfaces() {
  local stamp_file=$VENV/.r3d_interfaces_stamp
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$(interfaces_stamp)" ] \
      && "$VENV/bin/python" -c 'import r3d_interfaces.action' 2>/dev/null; then
    log "r3d_interfaces up to date"
    return
  fi
  log "building r3d_interfaces (colcon, rosidl) into $VENV"
  # The venv is the ROS prefix: the wheels installed their CMake configs under .venv/share, and the
  # interface package goes to the same place, so python and the typesupport loader find it with no
  # sourcing. BUILD_TESTING=OFF: the ament linters are not installed.
  local out=build/r3d_interfaces.log
  mkdir -p build
  if ! env AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" \
      "$VENV/bin/colcon" --log-base build/r3d_interfaces_log build --base-paths r3d_interfaces \
      --build-base build/r3d_interfaces_build --install-base "$VENV" --merge-install \
      --event-handlers console_cohesion+ --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    log "building r3d_interfaces failed (whole log: $out)"
    return 1
  fi
  "$VENV/bin/python" -c 'import r3d_interfaces.action, r3d_interfaces.msg'
  interfaces_stamp > "$stamp_file"
}

setup() {
  ensure_debian_packages
  ensure_venv
  ensure_interfaces
  export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

cmd=${1:-demo}; shift || true
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    exec "$VENV/bin/r3d-demo" "$@" ;;
  test)
    setup
    log "ruff check"
    "$VENV/bin/ruff" check .
    log "pytest"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    # pytest exits 5 when it collected nothing: that is a broken suite here, not a pass
    exit $rc ;;
  *) echo "usage: $0 {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
