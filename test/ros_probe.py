"""A ROS probe for tests that run the node in another process: camera, label listener and
lifecycle client, in its own rclpy Context spun on a background thread."""

from __future__ import annotations

import threading
import time

import numpy as np


class Probe:
    """Camera, label listener and lifecycle client in its own rclpy Context."""

    def __init__(self, domain_id: int, node_fqn: str, image_topic: str) -> None:
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from davss_ros.ros.spin import BackgroundSpin

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("davss_launch_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.labels: list = []
        self.pub = self.node.create_publisher(Image, image_topic, 10)
        self.node.create_subscription(
            Image, f"{node_fqn}/labels", self._on_labels,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.get_state = self.node.create_client(GetState, f"{node_fqn}/get_state")
        self.change_state = self.node.create_client(ChangeState, f"{node_fqn}/change_state")
        self.spin = BackgroundSpin(self.executor, name="launch_probe_spin")

    def _on_labels(self, msg) -> None:
        with self.cond:
            self.labels.append(msg)
            self.cond.notify_all()

    def _call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=timeout), f"no {client.srv_name} service"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name} did not answer"
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self.get_state, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        return self._call(self.change_state, request).success

    def answers_a_frame(self, timeout: float = 30.0) -> bool:
        """Publish a frame every 0.2 s (discovery may lag) until its labels come back."""
        from davss_ros.ros.image import numpy_to_image

        rgb = np.random.default_rng(0).integers(0, 255, (64, 128, 3), np.uint8)
        deadline = time.monotonic() + timeout
        sec = 100
        while time.monotonic() < deadline:
            sec += 1
            msg = numpy_to_image(rgb, "rgb8")
            msg.header.stamp.sec, msg.header.frame_id = sec, "camera"
            self.pub.publish(msg)
            with self.cond:
                if self.cond.wait_for(lambda: any(m.header.stamp.sec >= 101
                                                  for m in self.labels), timeout=0.2):
                    m = self.labels[-1]
                    return (m.encoding, m.height, m.width, m.header.frame_id) == (
                        "mono8", 64, 128, "camera")
        return False

    def close(self) -> None:
        import rclpy

        if self.spin.stop():
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
