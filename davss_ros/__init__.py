"""davss_ros: fast video semantic segmentation with distortion-aware feature correction.

The core (models, pipeline, data, training, evaluation) needs no ROS; only
``davss_ros.ros`` (the node), ``davss_ros.bag`` and ``davss_ros.tools`` (what drives a
node: the harness, the node bench, the soak) import rclpy.
"""

__version__ = "0.1.0"
