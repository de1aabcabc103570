#!/usr/bin/env bash
# Set up .venv: Python 3.11, ROS 2 Kilted wheels, torch (CPU wheel here), the project's
# interface package davss_msgs built into the venv, and davss_ros installed editable.
# Idempotent: when nothing it depends on changed, it returns in well under a second.
#
#   scripts/setup.sh            set up (or check) .venv
#   PYTHON=/path/python3.11 scripts/setup.sh
#   scripts/setup.sh --force    rebuild what a stamp says is current
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
stamp="$venv/.davss-setup-stamp"
force=0
[ "${1:-}" = "--force" ] && force=1

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# What the stamp covers: change any of these and the affected steps run again.
inputs_hash() {
  cat requirements/*.txt scripts/setup.sh setup.py setup.cfg package.xml \
    davss_msgs/CMakeLists.txt davss_msgs/package.xml davss_msgs/msg/*.msg 2>/dev/null \
    | sha256sum | cut -c1-16
}
want=$(inputs_hash)
# An explicitly chosen interpreter is checked even when .venv is current.
if [ -n "${PYTHON:-}" ]; then
  v=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")
  [ "$v" = "3.11" ] || die "davss_ros needs CPython 3.11 (the ROS 2 Kilted wheels are cp311 only), but PYTHON='$PYTHON' is Python $v"
fi

# The venv as an ament prefix for davss_ros, what colcon or `setup.py install` would lay out,
# so that `ros2 launch davss_ros ...` and launch_ros find the package (AMENT_PREFIX_PATH=.venv):
# the index marker, share/davss_ros/{package.xml,launch,config} and lib/davss_ros/<executable>.
# Symlinks into the source tree (the install is editable); file by file, because ros2launch
# walks share/davss_ros without following directory links. Cheap, so it runs every time.
ament_layout() {
  local share="$venv/share/davss_ros" lib="$venv/lib/davss_ros" f
  mkdir -p "$venv/share/ament_index/resource_index/packages" "$share/launch" "$share/config" "$lib"
  : >"$venv/share/ament_index/resource_index/packages/davss_ros"
  ln -sfn "$root/package.xml" "$share/package.xml"
  find "$share/launch" "$share/config" -type l ! -exec test -e {} \; -delete
  for f in "$root"/launch/*.py; do ln -sfn "$f" "$share/launch/"; done
  for f in "$root"/config/*.yaml "$root"/config/*.rviz; do ln -sfn "$f" "$share/config/"; done
  # pip's console scripts carry the venv's interpreter in their shebang.
  for f in segmenter davss; do ln -sfn "../../bin/$f" "$lib/$f"; done
}

if [ $force = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  ament_layout
  say ".venv is up to date"
  exit 0
fi

# --- 1. Python 3.11 -------------------------------------------------------------------
# The ROS 2 Kilted wheels on PyPI are built for CPython 3.11 only.
pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi
  done
}
py=$(pick_python)
[ -n "$py" ] || die "no Python found; install CPython 3.11 and run again (or set PYTHON=/path/to/python3.11)"
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || die "'$py' does not run"
if [ "$ver" != "3.11" ]; then
  die "davss_ros needs CPython 3.11 (the ROS 2 Kilted wheels are cp311 only), but '$py' is Python $ver. Install Python 3.11 and run: PYTHON=/path/to/python3.11 make setup"
fi
command -v cmake >/dev/null 2>&1 || die "cmake is needed to build davss_msgs (Debian: apt-get install cmake g++)"
command -v c++ >/dev/null 2>&1 || die "a C++ compiler is needed to build davss_msgs (Debian: apt-get install g++)"

if [ -x "$venv/bin/python" ]; then
  have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  if [ "$have" != "3.11" ]; then
    say ".venv holds Python $have; recreating it with $py"
    rm -rf "$venv"
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating .venv with $py ($ver)"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
# pip, with the machine-wide find-links warnings ("Location ... is ignored") filtered out.
pip() {
  "$vpy" -m pip --disable-pip-version-check --no-input -q "$@" 2> >(grep -v "^WARNING: Location '" >&2)
}

# --- 2. Python packages -----------------------------------------------------------------
# torch first and alone: with 2.13.0 present, the project's wider torch range is already
# satisfied and pip does not go after a (multi-GB) CUDA build.
say "installing torch (requirements/torch.txt)"
pip install -r requirements/torch.txt
say "installing ROS 2 wheels and the other dependencies (requirements/venv.txt)"
pip install -r requirements/venv.txt -c requirements/constraints.txt

# --- 3. davss_msgs ----------------------------------------------------------------------
say "building davss_msgs into .venv"
export VIRTUAL_ENV="$venv"
pyinc=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
npinc=$("$vpy" -c "import numpy; print(numpy.get_include())")
# The wheels' exported CMake files name the interpreter they were built with; point them
# at this venv's headers instead.
{ grep -rl /opt/python/cp311-cp311/ "$venv/share" --include="*.cmake" 2>/dev/null || true; } | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g"
build="$root/build/davss_msgs"
rm -rf "$build"
mkdir -p "$root/build"
(
  export CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
  cmake -S davss_msgs -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$vpy" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 \
    && cmake --build "$build" -j"$(nproc)" >>"$build.log" 2>&1 \
    && cmake --install "$build" >>"$build.log" 2>&1
) || { tail -n 40 "$build.log" >&2; die "building davss_msgs failed; full log: $build.log"; }

# --- 4. davss_ros -----------------------------------------------------------------------
say "installing davss_ros (editable)"
pip install --no-deps --no-build-isolation -e .

ament_layout

"$vpy" -c "import rclpy, davss_msgs.msg, torch, cv2, rosbags, davss_ros" \
  || die "the new .venv cannot import its packages"
AMENT_PREFIX_PATH="$venv" "$vpy" -c "from ament_index_python.packages import get_package_share_directory as g; g('davss_ros')" \
  || die "davss_ros is not in the venv's ament index"
echo "$want" >"$stamp"
say "done: .venv is ready ($("$vpy" -c 'import torch; print("torch", torch.__version__)'))"
