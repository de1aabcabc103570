"""launch/segment.launch.py run by the real launch and launch_ros, from the venv of `make setup`.

launch and launch_ros have no wheels on PyPI. Where they are not importable the launch file
is only byte-compiled and the rest skips, saying how to get them: scripts/launch_env.sh
builds a scratch environment from their sources (composition_interfaces, which
launch_ros.actions imports, is built from its .srv files, not stubbed):

    scripts/launch_env.sh <ros2/launch> <ros2/launch_ros> <ros2/rcl_interfaces>
    . build/launch_env/setup.sh
    .venv/bin/python -m pytest test/test_launch.py

The launch runs as `ros2 launch davss_ros segment.launch.py` does (scripts/ros2_launch.py,
ros2launch's api) in its own process group, with AMENT_PREFIX_PATH naming the venv: the
ament index entries scripts/setup.sh lays out there are what it finds. A probe node in this
process (its own rclpy Context, a unique domain id) plays the camera and asks the lifecycle
services (test/ros_probe.py).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import py_compile
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from ros_probe import Probe

from davss_ros.tools.harness import unique_domain_id  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "segment.launch.py"
STARTUP_S = 90.0  # torch import, model load and DDS discovery on a loaded 2-core machine
EXIT_S = 2.0  # the node's exit after SIGINT, as promised


def _launch_ros_missing() -> str:
    try:
        import launch_ros.actions  # noqa: F401
    except ImportError as exc:
        return (f"launch_ros is not importable ({exc}; no wheels on PyPI): build the scratch "
                "environment with scripts/launch_env.sh and source build/launch_env/setup.sh")
    return ""


needs_launch_ros = pytest.mark.skipif(bool(_launch_ros_missing()), reason=_launch_ros_missing())


def test_launch_file_compiles(tmp_path):
    py_compile.compile(str(LAUNCH_FILE), cfile=str(tmp_path / "segment.pyc"), doraise=True)


def _load_module():
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_launch_ros
def test_launch_description_declares_arguments_node_and_lifecycle_events():
    from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
    from launch_ros.actions import LifecycleNode

    entities = _load_module().generate_launch_description().entities
    names = {e.name for e in entities if isinstance(e, DeclareLaunchArgument)}
    assert names == {"params_file", "image_topic", "image_topics", "namespace", "autostart",
                     "use_sim_time",
                     "rviz"}
    assert len([e for e in entities if isinstance(e, LifecycleNode)]) == 1
    assert any(isinstance(e, EmitEvent) for e in entities)
    assert sum(isinstance(e, RegisterEventHandler) for e in entities) == 2


def test_make_setup_made_the_venv_an_ament_prefix_for_davss_ros(monkeypatch):
    # What `ros2 launch davss_ros ...` and launch_ros's executable lookup need.
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    prefix = pathlib.Path(sys.prefix)
    if not (prefix / "share/ament_index/resource_index/packages/davss_ros").is_file():
        pytest.skip(f"{prefix} is not the venv make setup builds")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert pathlib.Path(get_package_prefix("davss_ros")) == prefix
    share = pathlib.Path(get_package_share_directory("davss_ros"))
    # ros2launch finds launch files by os.walk, which does not enter linked directories.
    found = [pathlib.Path(d) / f for d, _, files in os.walk(share) for f in files]
    assert share / "launch" / "segment.launch.py" in found
    for name in ("davss.yaml", "davss.rviz"):
        assert share / "config" / name in found
    assert (share / "package.xml").is_file()
    exe = prefix / "lib" / "davss_ros" / "segmenter"
    assert os.access(exe, os.X_OK)
    shebang = exe.resolve().read_text().splitlines()[0]
    assert shebang.startswith("#!") and pathlib.Path(shebang[2:].split()[0]).parent == \
        pathlib.Path(sys.executable).parent


@needs_launch_ros
def test_launch_file_loads_without_ament_prefix_path(monkeypatch):
    # ament_index raises OSError then, not PackageNotFoundError: the source tree is used.
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    from launch.actions import DeclareLaunchArgument

    entities = _load_module().generate_launch_description().entities
    params = next(e for e in entities
                  if isinstance(e, DeclareLaunchArgument) and e.name == "params_file")
    assert "".join(t.text for t in params.default_value) == str(ROOT / "config" / "davss.yaml")


def _rviz_topics(path: str | pathlib.Path) -> dict[str, str]:
    """Display name -> topic of an RViz config."""
    import yaml

    config = yaml.safe_load(pathlib.Path(path).read_text())
    return {d["Name"]: d["Topic"]["Value"]
            for d in config["Visualization Manager"]["Displays"] if "Topic" in d}


@needs_launch_ros
@pytest.mark.parametrize("namespace, image_topic, image, prefix", [
    ("", "/camera/image_raw", "/camera/image_raw", "/davss_segmenter"),
    ("front", "/front/cam", "/front/cam", "/front/davss_segmenter"),
    ("/robot/rear/", "image_raw", "/robot/rear/image_raw", "/robot/rear/davss_segmenter"),
])
def test_rviz_config_follows_namespace_and_image_topic(tmp_path, namespace, image_topic, image,
                                                       prefix):
    path = _load_module().rviz_config(str(ROOT / "config" / "davss.rviz"), namespace,
                                      image_topic, str(tmp_path))
    assert _rviz_topics(path) == {
        "Camera input": image,
        "Labels (colour)": f"{prefix}/labels_color",
        "Overlay": f"{prefix}/overlay",
        "Distortion map": f"{prefix}/distortion",
    }


# -- the launch file run for real --------------------------------------------------------------
class Launch:
    """`ros2 launch davss_ros segment.launch.py ARGS` in its own process group."""

    def __init__(self, args: list[str], domain_id: int) -> None:
        prefix = sys.prefix  # the venv: make setup made it an ament prefix for davss_ros
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1",
                   AMENT_PREFIX_PATH=os.pathsep.join(
                       p for p in [prefix, os.environ.get("AMENT_PREFIX_PATH", "")] if p))
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "ros2_launch.py"), "davss_ros",
             "segment.launch.py", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = STARTUP_S) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output}")
                self.cond.wait(min(left, 0.5))

    @property
    def node_pid(self) -> int:
        return int(self.wait_for(r"\[segmenter-\d+\]: process started with pid \[(\d+)\]")[1])

    def interrupt(self, whole_group: bool) -> tuple[float, float]:
        """SIGINT as Ctrl-C does (the group) or to the launch process only.

        Returns the seconds until the node process and until launch had exited.
        """
        pid = self.node_pid
        t0 = time.monotonic()
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        node_s = None
        while time.monotonic() - t0 < 15.0:
            if node_s is None and not _running(pid):
                node_s = time.monotonic() - t0
            if self.proc.poll() is not None and node_s is not None:
                break
            time.sleep(0.02)
        launch_s = time.monotonic() - t0
        assert node_s is not None, f"the node did not exit within 15 s:\n{self.output}"
        assert self.proc.wait(timeout=5.0) == 0, self.output
        return node_s, launch_s

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10.0)


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


_domains = iter(range(0, 3))


def _domain_id() -> int:
    # Unique per test process and test, so parallel runs do not see each other's topics.
    return unique_domain_id(salt=next(_domains))


@pytest.fixture
def launched(request):
    """launched(args, node_fqn, image_topic) -> (Launch, Probe); both closed at the end."""
    pytest.importorskip("rclpy")
    if not (pathlib.Path(sys.prefix) / "share/ament_index/resource_index/packages/davss_ros"
            ).is_file():
        pytest.skip(f"{sys.prefix} holds no ament index entry for davss_ros: run make setup")
    made: list = []

    def start(args: list[str], node_fqn: str, image_topic: str):
        domain = _domain_id()
        probe = Probe(domain, node_fqn, image_topic)
        made.append(probe)
        launch = Launch(args, domain)
        made.append(launch)
        return launch, probe

    yield start
    for thing in reversed(made):
        thing.close()


@needs_launch_ros
@pytest.mark.ros
@pytest.mark.slow
def test_launch_from_the_venv_activates_answers_a_frame_and_exits_within_2s_of_sigint(launched):
    launch, probe = launched([], "/davss_segmenter", "/camera/image_raw")
    launch.wait_for(r"davss_segmenter\]: active: segmenting /camera/image_raw")
    assert probe.state() == "active"
    assert probe.answers_a_frame(), launch.output
    # SIGINT to the launch process alone (a supervisor, `kill -INT`): launch itself would
    # only send SIGTERM after 5 s.
    node_s, launch_s = launch.interrupt(whole_group=False)
    print(f"SIGINT to the launch process: node exited after {node_s:.2f} s, "
          f"launch after {launch_s:.2f} s")
    assert node_s < EXIT_S, launch.output
    assert "escalating to 'SIGTERM'" not in launch.output


@needs_launch_ros
@pytest.mark.ros
@pytest.mark.slow
def test_namespace_image_topic_and_rviz_without_rviz2(launched):
    launch, probe = launched(["namespace:=front", "image_topic:=/front/cam", "rviz:=true"],
                             "/front/davss_segmenter", "/front/cam")
    config = launch.wait_for(r"rviz2 not found.*RViz config for these topics: (\S+)")[1]
    launch.wait_for(r"davss_segmenter\]: active: segmenting /front/cam")
    assert probe.state() == "active"
    assert probe.answers_a_frame(), launch.output
    assert _running(launch.node_pid)
    assert _rviz_topics(config)["Camera input"] == "/front/cam"
    assert _rviz_topics(config)["Overlay"] == "/front/davss_segmenter/overlay"
    # Ctrl-C in a terminal: SIGINT to the whole process group.
    node_s, launch_s = launch.interrupt(whole_group=True)
    print(f"Ctrl-C (process group): node exited after {node_s:.2f} s, "
          f"launch after {launch_s:.2f} s")
    assert node_s < EXIT_S, launch.output


@needs_launch_ros
@pytest.mark.ros
@pytest.mark.slow
def test_autostart_acts_once_so_an_external_cleanup_and_configure_stays_inactive(launched):
    from lifecycle_msgs.msg import Transition

    launch, probe = launched([], "/davss_segmenter", "/camera/image_raw")
    launch.wait_for(r"davss_segmenter\]: active: ")
    assert probe.state() == "active"
    assert probe.transition(Transition.TRANSITION_DEACTIVATE)
    assert probe.transition(Transition.TRANSITION_CLEANUP)
    assert probe.transition(Transition.TRANSITION_CONFIGURE)
    time.sleep(3.0)  # time for a launch event handler to (wrongly) activate it again
    assert probe.state() == "inactive", launch.output
    assert launch.output.count("is configured; activating") == 1
    launch.interrupt(whole_group=False)
