#!/usr/bin/env bash
# A scratch environment in which the real ROS 2 launch and launch_ros run beside .venv,
# for test/test_launch.py and for `ros2 launch`-style runs without a ROS install.
#
# launch and launch_ros have no wheels on PyPI, so this takes their sources from git
# repositories you already have (a clone or a bare mirror; nothing is downloaded here and
# nothing is copied into the repository):
#
#   scripts/launch_env.sh LAUNCH LAUNCH_ROS RCL_INTERFACES [VISION_MSGS]
#     LAUNCH          github.com/ros2/launch          (branch $ROS_BRANCH, default rolling)
#     LAUNCH_ROS      github.com/ros2/launch_ros      (branch $ROS_BRANCH)
#     RCL_INTERFACES  github.com/ros2/rcl_interfaces  (branch $ROS_BRANCH): composition_interfaces
#     VISION_MSGS     github.com/ros-perception/vision_msgs (branch $VISION_BRANCH, default
#                     ros2); optional: with it ~/label_info is vision_msgs/LabelInfo
#   . build/launch_env/setup.sh
#   .venv/bin/python -m pytest test/test_launch.py
#   .venv/bin/python scripts/ros2_launch.py davss_ros segment.launch.py namespace:=front
#
# Each argument may also be a plain source tree. What it builds, all in build/launch_env/
# (ignored by git):
#   python/   the Python packages launch, launch_ros, ros2launch (its api only: the `ros2`
#             command itself needs ros2cli) and osrf_pycommon (PyPI, pip --target)
#   prefix/   composition_interfaces (imported by launch_ros.actions) and vision_msgs, built
#             from their .srv/.msg files with the venv's rosidl, like davss_msgs
#   setup.sh  PYTHONPATH, LD_LIBRARY_PATH and AMENT_PREFIX_PATH (.venv + prefix/)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
vpy="$venv/bin/python"
out="$root/build/launch_env"
ros_branch=${ROS_BRANCH:-rolling}
vision_branch=${VISION_BRANCH:-ros2}

say() { printf '[launch_env] %s\n' "$*"; }
die() { printf '[launch_env] error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $0 LAUNCH LAUNCH_ROS RCL_INTERFACES [VISION_MSGS] (see the top of this file)"
[ -x "$vpy" ] || die ".venv is missing: run make setup first"

# extract SRC REF SUBDIR DEST: copy SUBDIR of a git repository at REF (or of a source tree).
extract() {
  local src=$1 ref=$2 sub=$3 dest=$4 gitdir=""
  if [ -f "$src/HEAD" ] && [ -d "$src/objects" ]; then gitdir=$src
  elif [ -d "$src/.git" ]; then gitdir=$src/.git
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  if [ -n "$gitdir" ]; then
    git --git-dir="$gitdir" rev-parse --verify -q "$ref^{commit}" >/dev/null \
      || die "$src has no branch or commit '$ref'"
    local depth
    depth=$(($(tr -cd / <<<"$sub" | wc -c) + 1))
    git --git-dir="$gitdir" archive "$ref" "$sub" | tar -x -C "$dest" --strip-components=$depth
    say "$sub from $src at $ref ($(git --git-dir="$gitdir" rev-parse --short "$ref^{commit}"))"
  else
    [ -d "$src/$sub" ] || die "$src/$sub does not exist"
    cp -a "$src/$sub/." "$dest/"
    say "$sub from $src"
  fi
}

# build_interfaces SRC_DIR NAME: an ament_cmake interface package into prefix/.
build_interfaces() {
  local src=$1 name=$2 build="$out/cmake/$2"
  rm -rf "$build"
  mkdir -p "$build"
  (
    export CMAKE_PREFIX_PATH="$venv:$out/prefix" AMENT_PREFIX_PATH="$venv:$out/prefix"
    export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
    cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$out/prefix" \
      -DPython3_EXECUTABLE="$vpy" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
      >"$build.log" 2>&1 \
      && cmake --build "$build" -j"$(nproc)" >>"$build.log" 2>&1 \
      && cmake --install "$build" >>"$build.log" 2>&1
  ) || { tail -n 30 "$build.log" >&2; die "building $name failed; full log: $build.log"; }
  say "built $name into $out/prefix"
}

mkdir -p "$out"
rm -rf "$out/python" "$out/src"
mkdir -p "$out/python"

extract "$1" "$ros_branch" launch/launch "$out/python/launch"
extract "$2" "$ros_branch" launch_ros/launch_ros "$out/python/launch_ros"
extract "$2" "$ros_branch" ros2launch/ros2launch "$out/python/ros2launch"
say "osrf_pycommon from PyPI"
"$vpy" -m pip --disable-pip-version-check --no-input -q install --no-deps \
  --target "$out/python" "osrf-pycommon>=2,<3" 2> >(grep -v "^WARNING: Location '" >&2)

extract "$3" "$ros_branch" composition_interfaces "$out/src/composition_interfaces"
build_interfaces "$out/src/composition_interfaces" composition_interfaces
if [ $# -ge 4 ]; then
  extract "$4" "$vision_branch" vision_msgs "$out/src/vision_msgs"
  build_interfaces "$out/src/vision_msgs" vision_msgs
fi

site="$out/prefix/lib/python3.11/site-packages"
cat >"$out/setup.sh" <<EOF
# Written by scripts/launch_env.sh: source it (bash or sh) to use launch/launch_ros with .venv.
export PYTHONPATH="$out/python:$site\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$out/prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$venv:$out/prefix\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
EOF

# shellcheck disable=SC1091
. "$out/setup.sh"
"$vpy" -c "import launch, launch_ros.actions, ros2launch.api, composition_interfaces.srv" \
  || die "the scratch environment does not import launch_ros"
say "done: . build/launch_env/setup.sh, then .venv/bin/python -m pytest test/test_launch.py"
