"""The repository works as a colcon workspace source, and installs in the ament layout.

The repository root is the ament_python package davss_ros and holds the ament_cmake
package davss_msgs in a subfolder. colcon's crawl stops at the first package it finds, so
the documented invocation names the subfolder as a second base path:

    colcon build --base-paths src src/davss_ros/davss_msgs

colcon is used as the README's workspace recipe has it: run by the Python that has torch
and the ROS packages (`python -m colcon`, after `pip install colcon-common-extensions` into
that venv), so the installed executables get that interpreter. A colcon on PATH (Debian:
python3-colcon-*) is used for the discovery tests when the venv has none. Everything skips
where colcon is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from davss_ros.tools.harness import unique_domain_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The recipe's colcon (this interpreter's), else one on PATH.
VENV_COLCON = importlib.util.find_spec("colcon_core") is not None
COLCON = [sys.executable, "-m", "colcon"] if VENV_COLCON else (
    [shutil.which("colcon")] if shutil.which("colcon") else None)
needs_colcon = pytest.mark.skipif(COLCON is None, reason="colcon is not installed")
BASE_PATHS = ["--base-paths", "src", "src/davss_ros/davss_msgs"]

# What a clone would not contain, or what is large: not copied into the workspace.
_SKIP_AT_ROOT = {".venv", ".git", "build", "install", "log", "out", ".pytest_cache", ".ruff_cache"}


def _copy_repo(dest: Path) -> Path:
    def ignore(directory, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory).resolve() == ROOT:
            skip |= _SKIP_AT_ROOT & set(names)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    _copy_repo(ws / "src" / "davss_ros")
    return ws


def _colcon(ws: Path, *args: str, timeout: float = 120, env=None) -> str:
    proc = subprocess.run(
        [*COLCON, "--log-base", str(ws / "log"), *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, f"colcon {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _listed(out: str) -> dict[str, tuple[str, str]]:
    """`colcon list` lines "name<TAB>path<TAB>(type)" -> {name: (path, type)}."""
    found = {}
    for line in out.splitlines():
        name, path, kind = line.split("\t")
        found[name] = (path, kind.strip("()"))
    return found


@needs_colcon
def test_colcon_default_crawl_stops_at_the_repository_package(workspace):
    # Why the second base path is documented: the crawl does not enter a package.
    assert set(_listed(_colcon(workspace, "list"))) == {"davss_ros"}


@needs_colcon
def test_colcon_list_with_documented_base_paths_finds_both_packages(workspace):
    found = _listed(_colcon(workspace, "list", *BASE_PATHS))
    assert found == {
        "davss_ros": ("src/davss_ros", "ros.ament_python"),
        "davss_msgs": ("src/davss_ros/davss_msgs", "ros.ament_cmake"),
    }


@needs_colcon
def test_colcon_workspace_defaults_file_finds_both_packages(workspace):
    # colcon-defaults (part of colcon-common-extensions) reads ./colcon_defaults.yaml.
    ext = subprocess.run([*COLCON, "extensions", "-v"], capture_output=True, text=True)
    if "colcon_defaults" not in ext.stdout:
        pytest.skip("colcon-defaults is not installed")
    paths = "[src, src/davss_ros/davss_msgs]"
    (workspace / "colcon_defaults.yaml").write_text(
        f"list:\n  base-paths: {paths}\nbuild:\n  base-paths: {paths}\n"
    )
    found = _listed(_colcon(workspace, "list"))
    assert {name: kind for name, (_, kind) in found.items()} == {
        "davss_ros": "ros.ament_python",
        "davss_msgs": "ros.ament_cmake",
    }


@needs_colcon
def test_colcon_topological_order_puts_davss_msgs_before_davss_ros(workspace):
    out = _colcon(workspace, "list", *BASE_PATHS, "--topological-order", "--names-only")
    assert out.split() == ["davss_msgs", "davss_ros"]


def _assert_ament_python_layout(prefix: Path) -> None:
    share = prefix / "share" / "davss_ros"
    assert (prefix / "share/ament_index/resource_index/packages/davss_ros").is_file()
    assert (share / "package.xml").is_file()
    assert (share / "launch").is_dir() and (share / "config").is_dir()
    for pattern, sub in [("launch/*.py", "launch"), ("config/*.yaml", "config")]:
        for f in ROOT.glob(pattern):
            assert (share / sub / f.name).is_file(), f"{f.name} not installed to {share / sub}"
    # `ros2 run davss_ros <exe>` looks in lib/davss_ros.
    for exe in ("segmenter", "davss"):
        path = prefix / "lib" / "davss_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), path
    assert list(prefix.glob("lib/python3*/site-packages/davss_ros/__init__.py"))


@needs_colcon
@pytest.mark.slow
def test_colcon_build_installs_davss_ros_in_ament_layout(workspace):
    # davss_ros alone: davss_msgs needs a ROS underlay (see the next test).
    _colcon(workspace, "build", "--paths", "src/davss_ros", timeout=300)
    _assert_ament_python_layout(workspace / "install" / "davss_ros")


def _venv_with_ros_cmake() -> Path:
    venv = Path(sys.prefix)
    if not (venv / "share" / "ament_cmake" / "cmake").is_dir() or not shutil.which("cmake"):
        pytest.skip("needs .venv with the ROS 2 CMake wheels (scripts/setup.sh) and cmake")
    return venv


@pytest.mark.skipif(not VENV_COLCON, reason="the README's recipe runs colcon with the venv's "
                    "Python: pip install colcon-common-extensions into it")
@pytest.mark.ros
@pytest.mark.slow
def test_readme_recipe_builds_both_packages_and_the_installed_segmenter_answers_a_frame(
        workspace):
    pytest.importorskip("rclpy")
    from ros_probe import Probe

    venv = _venv_with_ros_cmake()
    # README, "In a ROS 2 workspace", without a ROS install: the venv is the underlay.
    env = dict(os.environ, CMAKE_PREFIX_PATH=str(venv), AMENT_PREFIX_PATH=str(venv))
    _colcon(workspace, "build", *BASE_PATHS, "--cmake-args",
            f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
            timeout=600, env=env)
    install = workspace / "install"
    _assert_ament_python_layout(install / "davss_ros")
    msgs = install / "davss_msgs"
    assert (msgs / "share/davss_msgs/msg/FrameInfo.msg").is_file()
    assert list(msgs.glob("lib/python3*/site-packages/davss_msgs/msg/_frame_info.py"))
    exe = install / "davss_ros" / "lib" / "davss_ros" / "segmenter"
    assert exe.read_text().splitlines()[0] == f"#!{sys.executable}"

    domain = unique_domain_id()
    probe = Probe(domain, "/davss_segmenter", "/cam/image_raw")
    # `source install/setup.bash`, then the installed executable (what `ros2 run` starts).
    proc = subprocess.Popen(
        ["bash", "-c", f". install/setup.bash && exec {exe} --ros-args "
         "-r image:=/cam/image_raw"],
        cwd=workspace, env=dict(env, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert probe.answers_a_frame(timeout=120.0), "".join(lines)
        # The workspace's copy runs, not the venv's editable davss_ros.
        loaded = re.search(r"model: shipped (\S+)", "".join(lines))
        assert loaded and Path(loaded[1]).is_relative_to(install / "davss_ros"), "".join(lines)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10.0) == 0, "".join(lines)
        exit_s = time.monotonic() - t0
        print(f"installed segmenter exited {exit_s:.2f} s after SIGINT")
        assert exit_s < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()


def test_setup_py_install_puts_files_where_ros2_run_and_launch_look(tmp_path):
    # What colcon's ament_python build runs, with this interpreter (no colcon needed).
    src = _copy_repo(tmp_path / "src")
    name = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert name.returncode == 0, name.stderr
    assert name.stdout.strip().splitlines()[-1] == "davss_ros"
    prefix = tmp_path / "prefix"
    proc = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "install",
            "--prefix",
            str(prefix),
            "--single-version-externally-managed",
            "--record",
            str(tmp_path / "record.txt"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_ament_python_layout(prefix)
