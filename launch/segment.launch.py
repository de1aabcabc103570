"""Launch the davss_segmenter lifecycle node, and drive it to active.

    ros2 launch davss_ros segment.launch.py image_topic:=/front/image_raw namespace:=front
    ros2 launch davss_ros segment.launch.py params_file:=my.yaml autostart:=false rviz:=true

Arguments: params_file, image_topic, namespace, autostart, use_sim_time, rviz.

With autostart true the launch file requests configure, and activate once the node reports
'inactive'. The node's own autostart parameter is forced to false so the two do not both
drive the transitions. With autostart false the node waits unconfigured for a lifecycle
manager (or ``ros2 lifecycle set``).
"""

import os

from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

PACKAGE = "davss_ros"


def _share_dir() -> str:
    """The installed share directory; the source tree when the package is not installed."""
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        PackageNotFoundError, get_package_share_directory = LookupError, None
    if get_package_share_directory is not None:
        try:
            return get_package_share_directory(PACKAGE)
        except PackageNotFoundError:
            pass
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description() -> LaunchDescription:
    share = _share_dir()
    params_file = LaunchConfiguration("params_file")
    image_topic = LaunchConfiguration("image_topic")
    namespace = LaunchConfiguration("namespace")
    autostart = LaunchConfiguration("autostart")
    use_sim_time = LaunchConfiguration("use_sim_time")
    rviz = LaunchConfiguration("rviz")

    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "davss.yaml"),
            description="ROS parameters file of the segmenter"),
        DeclareLaunchArgument(
            "image_topic", default_value="/camera/image_raw",
            description="camera topic (sensor_msgs/Image), remapped onto the node's 'image'"),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="namespace of the node and its outputs (one per camera)"),
        DeclareLaunchArgument(
            "autostart", default_value="true",
            description="configure and activate the node through lifecycle events"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="use /clock (bag replay with --clock)"),
        DeclareLaunchArgument(
            "rviz", default_value="false",
            description="start RViz2 with config/davss.rviz"),
    ]

    segmenter = LifecycleNode(
        package=PACKAGE,
        executable="segmenter",
        name="davss_segmenter",
        namespace=namespace,
        parameters=[
            params_file,
            {
                "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
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
    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=segmenter,
            # configuring -> inactive only: a later deactivate (active -> inactive) must not
            # bounce the node straight back to active.
            start_state="configuring",
            goal_state="inactive",
            entities=[
                LogInfo(msg="davss_segmenter is configured; activating"),
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(segmenter),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                ),
            ],
        ),
        condition=IfCondition(autostart),
    )

    rviz_node = Node(
        package="rviz2",
        executable="rviz2",
        name="davss_rviz",
        namespace=namespace,
        arguments=["-d", os.path.join(share, "config", "davss.rviz")],
        parameters=[{"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}],
        condition=IfCondition(rviz),
        output="screen",
    )

    # The handler is registered before the node starts, so the first 'inactive' is seen.
    return LaunchDescription(
        arguments + [activate_when_inactive, segmenter, configure, rviz_node])
