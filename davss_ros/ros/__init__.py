"""The ROS 2 layer of davss_ros: the lifecycle node, image conversion, QoS, diagnostics.

Only this package and ``davss_ros.bag`` import rclpy.
"""
