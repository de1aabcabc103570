"""The label table on ``~/label_info``: which message type, how it is built and read.

Where vision_msgs is importable (a ROS install with ros-<distro>-vision-msgs) the table is a
``vision_msgs/LabelInfo``, the type Nav2's semantic segmentation layer and other
vision_msgs consumers read: one ``VisionClass`` (id, name) per class, plus the ignore id
(255 in mono8 labels) as "unlabeled", as vision_msgs defines the dtype's maximum. Elsewhere
it is ``davss_msgs/LabelInfo``, which also carries the palette of ``~/labels_color``.
The choice is made once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

VISION_TYPE = "vision_msgs/msg/LabelInfo"
DAVSS_TYPE = "davss_msgs/msg/LabelInfo"
UNLABELED = "unlabeled"

# vision_msgs' definitions (vision_msgs 4.x), for rosbags typestores that do not ship them.
VISION_MSG_DEFINITIONS = {
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo": (
        "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n"),
}


@dataclass
class LabelTable:
    """What a label_info message says, whichever its type."""

    class_names: list[str]
    palette: np.ndarray | None  # (N, 3) uint8; None when the message has none (vision_msgs)
    ignore_id: int


@functools.cache
def label_info_class() -> type:
    """vision_msgs.msg.LabelInfo where importable, else davss_msgs.msg.LabelInfo."""
    try:
        from vision_msgs.msg import LabelInfo
    except ImportError:
        from davss_msgs.msg import LabelInfo
    return LabelInfo


def label_info_type_name() -> str:
    """The ROS type name of :func:`label_info_class` ("pkg/msg/LabelInfo")."""
    return VISION_TYPE if label_info_class().__module__.startswith("vision_msgs") else DAVSS_TYPE


def make_label_info(class_names: list[str], palette, ignore_id: int, stamp):
    """The label_info message for these classes (ids 0..N-1), of :func:`label_info_class`."""
    msg = label_info_class()()
    msg.header.stamp = stamp
    msg.threshold = 0.0
    if label_info_type_name() == VISION_TYPE:
        from vision_msgs.msg import VisionClass

        msg.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(class_names)]
        if ignore_id >= len(class_names):
            msg.class_map.append(VisionClass(class_id=int(ignore_id), class_name=UNLABELED))
        return msg
    msg.class_ids = list(range(len(class_names)))
    msg.class_names = list(class_names)
    msg.palette = [int(v) for c in palette for v in c]
    msg.ignore_id = int(ignore_id)
    return msg


def read_label_info(msg) -> LabelTable:
    """The table of a davss_msgs or vision_msgs LabelInfo (rclpy or rosbags message)."""
    if hasattr(msg, "class_map"):
        named = {int(c.class_id): str(c.class_name) for c in msg.class_map}
        if named.get(255) == UNLABELED:  # mono8 labels: the maximum is "unlabeled"
            del named[255]
        names = [named.get(i, f"class_{i}") for i in range(max(named, default=-1) + 1)]
        return LabelTable(names, None, 255)
    palette = np.asarray(msg.palette, np.uint8).reshape(-1, 3)
    return LabelTable(list(msg.class_names), palette, int(msg.ignore_id))
