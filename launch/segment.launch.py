"""Launch the davss_segmenter lifecycle node, and drive it to active.

    ros2 launch davss_ros segment.launch.py image_topic:=/front/image_raw namespace:=front
    ros2 launch davss_ros segment.launch.py params_file:=my.yaml autostart:=false rviz:=true
    ros2 launch davss_ros segment.launch.py \
        image_topics:="['/front/image_raw', '/rear/image_raw']"

Arguments: params_file, image_topic, image_topics, namespace, autostart, use_sim_time, rviz.
image_topics (a YAML list) runs several cameras in the one node, outputs under
~/<camera>/ (see config/davss.yaml); "[]" (default) keeps the single image_topic.

With autostart true the launch file requests configure once, and activate once that
configure has succeeded; after that it leaves the lifecycle alone, so a lifecycle manager
can cleanup, configure and keep the node inactive. The node's own autostart parameter is
forced to false so the two do not both drive the transitions. With autostart false the node
waits unconfigured for a lifecycle manager (or ``ros2 lifecycle set``).

rviz:=true starts RViz2 on a copy of config/davss.rviz whose topics follow namespace and
image_topic; without rviz2 installed it says so and the segmenter runs on alone.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessStart, OnShutdown
from launch.events import Shutdown, matches_action
from launch.events.process import ProcessStarted
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

PACKAGE = "davss_ros"
NODE_NAME = "davss_segmenter"
# Topics config/davss.rviz names, as the node has them with the default arguments.
RVIZ_IMAGE_TOPIC = "/camera/image_raw"
RVIZ_NODE_PREFIX = "/" + NODE_NAME + "/"


def _share_dir() -> str:
    """The installed share directory; the source tree when the package is not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    # PackageNotFoundError is a KeyError; without AMENT_PREFIX_PATH ament_index raises
    # OSError (EnvironmentError).
    except (ImportError, LookupError, OSError):
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _node_namespace(namespace: str) -> str:
    """'', 'front', '/front/' -> '', '/front', '/front'."""
    ns = namespace.strip("/")
    return "/" + ns if ns else ""


def rviz_config(template: str, namespace: str, image_topic: str, out_dir: str) -> str:
    """Write a copy of the RViz config whose topics are those of this launch; its path."""
    node_ns = _node_namespace(namespace)
    # A relative input topic resolves in the node's namespace, like the remapping does.
    image = image_topic if image_topic.startswith("/") else f"{node_ns}/{image_topic}"
    with open(template, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"(Value: )" + re.escape(RVIZ_IMAGE_TOPIC) + r"\s*$",
                  lambda m: m.group(1) + image, text, flags=re.M)
    text = text.replace("Value: " + RVIZ_NODE_PREFIX, f"Value: {node_ns}{RVIZ_NODE_PREFIX}")
    os.makedirs(out_dir, exist_ok=True)
    name = (node_ns.strip("/").replace("/", "_") or "root") + ".rviz"
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _rviz2_installed() -> bool:
    try:
        from ament_index_python.packages import get_package_prefix

        prefix = get_package_prefix("rviz2")
    except (ImportError, LookupError, OSError):
        return False
    return os.access(os.path.join(prefix, "lib", "rviz2", "rviz2"), os.X_OK)


def _rviz(context: LaunchContext, share: str) -> list:
    """RViz2 on this launch's topics, or a note that rviz2 is not installed."""
    namespace = LaunchConfiguration("namespace").perform(context)
    image_topic = LaunchConfiguration("image_topic").perform(context)
    out_dir = os.path.join(tempfile.gettempdir(), f"davss_ros-{os.getuid()}")
    config = rviz_config(os.path.join(share, "config", "davss.rviz"), namespace, image_topic,
                         out_dir)
    if not _rviz2_installed():
        # Launch would otherwise fail on the missing package and take the segmenter down.
        return [LogInfo(msg=f"rviz2 not found (not in the ament index); {NODE_NAME} runs "
                            f"without it. RViz config for these topics: {config}")]
    return [Node(
        package="rviz2",
        executable="rviz2",
        name="davss_rviz",
        namespace=namespace,
        arguments=["-d", config],
        parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                                    value_type=bool)}],
        output="screen",
    )]


def _activate_after_first_configure(context: LaunchContext, segmenter: LifecycleNode) -> list:
    """Activate if the first configure succeeded; either way autostart is done."""
    if context.locals.event.goal_state != "inactive":
        return [LogInfo(msg=f"{NODE_NAME}: configure failed; autostart stops here (configure "
                            "it again with a lifecycle manager or ros2 lifecycle set)")]
    return [
        LogInfo(msg=f"{NODE_NAME} is configured; activating"),
        EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(segmenter),
                                    transition_id=Transition.TRANSITION_ACTIVATE)),
    ]


def _forward_sigint(event: ProcessStarted, context: LaunchContext) -> list:
    """Once the node runs: on a shutdown launch got by SIGINT, SIGINT the node at once."""
    pid = event.pid

    def on_shutdown(shutdown: Shutdown, context: LaunchContext) -> None:
        # Launch itself signals its processes only when it did not get SIGINT. Signalled
        # here, not by a SignalProcess event: events queue behind launch_ros's own shutdown
        # handler, which takes up to a second.
        if shutdown.due_to_sigint and not context.noninteractive:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # Registered now, after launch_ros registered its handlers: the newest runs first.
    return [RegisterEventHandler(OnShutdown(on_shutdown=on_shutdown))]


def generate_launch_description() -> LaunchDescription:
    # The node selects FastDDS's LARGE_DATA transports unless told otherwise
    # (davss_ros.ros.env), and participants with the default transports do not discover it
    # (seen with FastDDS 3.2). This process's own participant, which sends the lifecycle
    # requests, and RViz started from here must use the same transports. Set before
    # launch_ros creates that participant (when the first ROS action runs).
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    share = _share_dir()
    params_file = LaunchConfiguration("params_file")
    image_topic = LaunchConfiguration("image_topic")
    image_topics = LaunchConfiguration("image_topics")
    namespace = LaunchConfiguration("namespace")
    autostart = LaunchConfiguration("autostart")
    use_sim_time = LaunchConfiguration("use_sim_time")
    rviz = LaunchConfiguration("rviz")

    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "davss.yaml"),
            description="ROS parameters file of the segmenter"),
        DeclareLaunchArgument(
            "image_topic", default_value=RVIZ_IMAGE_TOPIC,
            description="camera topic (sensor_msgs/Image), remapped onto the node's 'image'"),
        DeclareLaunchArgument(
            "image_topics", default_value="[]",
            description="several cameras in one node: a YAML list of image topics (entries "
            "TOPIC or NAME=TOPIC), outputs under ~/<camera>/; [] = the single image_topic"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="namespace of the node and its outputs (one per camera)"),
        DeclareLaunchArgument(
            "autostart", default_value="true",
            description="configure and activate the node once through lifecycle events"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="use /clock (bag replay with --clock)"),
        DeclareLaunchArgument(
            "rviz", default_value="false",
            description="start RViz2 with config/davss.rviz on this launch's topics"),
    ]

    segmenter = LifecycleNode(
        package=PACKAGE,
        executable="segmenter",
        name=NODE_NAME,
        namespace=namespace,
        parameters=[
            params_file,
            {
                "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
                # [] leaves the parameter unset: the node's default, one camera.
                "image_topics": ParameterValue(image_topics, value_type=list[str]),
                # This launch file drives the lifecycle (below), not the node itself.
                "autostart": False,
            },
        ],
        remappings=[("image", image_topic)],
        output="screen",
    )

    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(segmenter),
            transition_id=Transition.TRANSITION_CONFIGURE,
        ),
        condition=IfCondition(autostart),
    )
    # The result of the first configure, whichever it is, and only that one: handle_once.
    # A later cleanup + configure by someone else leaves the node inactive.
    activate_once = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=segmenter,
            start_state="configuring",
            entities=[OpaqueFunction(function=_activate_after_first_configure,
                                     args=[segmenter])],
            handle_once=True,
        ),
        condition=IfCondition(autostart),
    )
    # Launch forwards SIGINT to its processes only when it did not get SIGINT itself (it
    # assumes a terminal's Ctrl-C reached the whole process group), and sends SIGTERM 5 s
    # later. A SIGINT to the launch process alone would leave the node running for those
    # 5 s, so it is passed on (a second SIGINT after a Ctrl-C does the node no harm).
    forward_sigint = RegisterEventHandler(
        OnProcessStart(target_action=segmenter, on_start=_forward_sigint))

    rviz_node = OpaqueFunction(function=_rviz, args=[share], condition=IfCondition(rviz))

    # The handlers are registered before the node starts, so the first transition is seen.
    return LaunchDescription(
        arguments + [activate_once, forward_sigint, segmenter, configure, rviz_node])
