"""davss_ros: fast video semantic segmentation with distortion-aware feature correction.

The core (models, pipeline, data, training, evaluation) needs no ROS; only
``davss_ros.ros`` and ``davss_ros.bag`` import rclpy.
"""

__version__ = "0.1.0"
