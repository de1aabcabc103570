"""~/label_info's type (vision_msgs/LabelInfo where importable) and ~/camera_info.

The node and a probe share one rclpy Context (test_node's helpers): messages pass FastDDS's
writers and readers. vision_msgs is not on PyPI: its tests skip unless it is importable
(a ROS install, or scripts/launch_env.sh with a vision_msgs source).
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_node import SUCCESS, Probe, Segmenter, _domain_id, base_overrides, frame  # noqa: E402

from davss_ros.bag.io import typestore  # noqa: E402
from davss_ros.classes import default_class_names, default_palette  # noqa: E402
from davss_ros.ros.label_info import (  # noqa: E402
    DAVSS_TYPE,
    UNLABELED,
    VISION_TYPE,
    label_info_class,
    label_info_type_name,
    make_label_info,
    read_label_info,
)
from davss_ros.ros.node import camera_info_topic  # noqa: E402

HAVE_VISION = importlib.util.find_spec("vision_msgs") is not None
NAMES = default_class_names(19)
PALETTE = default_palette(19)


def _stamp():
    from builtin_interfaces.msg import Time

    return Time(sec=5, nanosec=7)


def test_label_info_is_vision_msgs_where_importable_else_davss_msgs():
    if HAVE_VISION:
        assert label_info_type_name() == VISION_TYPE
        assert label_info_class().__module__.startswith("vision_msgs")
    else:
        assert label_info_type_name() == DAVSS_TYPE
        assert label_info_class().__module__.startswith("davss_msgs")


def test_label_info_round_trips_through_cdr_and_the_bag_typestore():
    # What the node publishes, as davss replay's recorder reads it back.
    msg = make_label_info(NAMES, PALETTE, 255, _stamp())
    back = typestore().deserialize_cdr(serialize_message(msg), label_info_type_name())
    for table in (read_label_info(msg), read_label_info(back)):
        assert table.class_names == NAMES
        assert table.ignore_id == 255
        if HAVE_VISION:
            assert table.palette is None  # vision_msgs has no palette
        else:
            np.testing.assert_array_equal(table.palette, np.asarray(PALETTE, np.uint8))


@pytest.mark.skipif(not HAVE_VISION, reason="vision_msgs is not importable here")
def test_vision_label_info_maps_ids_to_names_with_255_unlabeled():
    msg = make_label_info(NAMES, PALETTE, 255, _stamp())
    assert [(c.class_id, c.class_name) for c in msg.class_map] == (
        list(enumerate(NAMES)) + [(255, UNLABELED)])
    assert msg.header.stamp.sec == 5 and msg.threshold == 0.0


def test_camera_info_topic_is_beside_the_image_topic():
    assert camera_info_topic("/camera/image_raw") == "/camera/camera_info"
    assert camera_info_topic("/front/cam/image") == "/front/cam/camera_info"
    assert camera_info_topic("/image") == "/camera_info"


@pytest.mark.ros
def test_node_publishes_label_info_and_republishes_camera_info_with_the_labels_header(
        tmp_path):
    model_yaml = tmp_path / "small.yaml"
    model_yaml.write_text("preset: cpu\nmodel:\n  segmenter:\n    aspp_channels: 16\n"
                          "    decoder_channels: 16\n")
    domain = _domain_id()
    probe = Probe(domain)
    seg = None
    try:
        probe.listen("/davss_segmenter/labels", Image)
        probe.listen("/davss_segmenter/camera_info", CameraInfo)
        probe.listen("/davss_segmenter/label_info", label_info_class(), QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        info_pub = probe.node.create_publisher(CameraInfo, "/camera_info", 10)
        seg = Segmenter(domain, base_overrides(str(model_yaml)), share=probe)
        assert seg.node.trigger_configure() == SUCCESS
        assert seg.node.trigger_activate() == SUCCESS

        assert probe.wait(lambda: probe.got["/davss_segmenter/label_info"])
        table = read_label_info(probe.messages("/davss_segmenter/label_info")[0])
        assert table.class_names == list(seg.node.segmenter.class_names)

        cam = CameraInfo(width=128, height=64, distortion_model="plumb_bob")
        cam.header.frame_id = "camera_optical"
        cam.k = [100.0, 0.0, 64.0, 0.0, 100.0, 32.0, 0.0, 0.0, 1.0]
        deadline = time.monotonic() + 30.0
        for i in range(1000):  # a driver sends camera_info with every frame
            assert time.monotonic() < deadline, "no ~/camera_info"
            img = frame(i)
            cam.header.stamp = img.header.stamp
            info_pub.publish(cam)
            probe.publisher("/image").publish(img)
            if probe.wait(lambda: probe.got["/davss_segmenter/camera_info"], timeout=0.3):
                break
        out = probe.messages("/davss_segmenter/camera_info")[-1]
        stamp = (out.header.stamp.sec, out.header.stamp.nanosec)
        assert probe.wait(lambda: any(
            (m.header.stamp.sec, m.header.stamp.nanosec) == stamp
            for m in probe.got["/davss_segmenter/labels"]))
        labels = next(m for m in probe.messages("/davss_segmenter/labels")
                      if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
        assert out.header == labels.header  # the image's header: stamp and frame_id
        assert out.header.frame_id == "camera"
        assert (out.width, out.height, list(out.k)) == (128, 64, list(cam.k))
    finally:
        if seg is not None:
            seg.close()
        probe.close()
