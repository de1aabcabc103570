"""A probe for tests that run the node in another process (launch, colcon): the harness's
camera with a label listener and the node's lifecycle services."""

from __future__ import annotations

import time

import numpy as np

from davss_ros.tools.harness import Camera


class Probe(Camera):
    """Camera, label listener and lifecycle client (davss_ros.tools.harness.Camera)."""

    def __init__(self, domain_id: int, node_fqn: str, image_topic: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        super().__init__(domain_id, name="davss_launch_probe", threads=1)
        self.node_fqn, self.image_topic = node_fqn, image_topic
        self.labels_topic = f"{node_fqn}/labels"
        self.listen(self.labels_topic, Image,
                    QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    @property
    def labels(self) -> list:
        return self.messages(self.labels_topic)

    def state(self) -> str:
        return self.lifecycle_state(self.node_fqn)

    def transition(self, transition_id: int) -> bool:
        return self.change_state(self.node_fqn, transition_id)

    def answers_a_frame(self, timeout: float = 30.0) -> bool:
        """Publish a frame every 0.2 s (the node's reader may match this camera a moment
        after the camera matched it) until its labels come back."""
        from davss_ros.ros.image import numpy_to_image

        rgb = np.random.default_rng(0).integers(0, 255, (64, 128, 3), np.uint8)
        deadline = time.monotonic() + timeout
        sec = 100
        while time.monotonic() < deadline:
            sec += 1
            msg = numpy_to_image(rgb, "rgb8")
            msg.header.stamp.sec, msg.header.frame_id = sec, "camera"
            self.publisher(self.image_topic).publish(msg)
            if self.wait(lambda: any(m.header.stamp.sec >= 101
                                     for m in self.got[self.labels_topic]), timeout=0.2):
                m = self.messages(self.labels_topic)[-1]
                return (m.encoding, m.height, m.width, m.header.frame_id) == (
                    "mono8", 64, 128, "camera")
        return False
