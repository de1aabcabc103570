"""Tools that drive a segmenter node from outside: the harness they share
(``harness.py``), the node benchmark (``node_bench.py``) and the soak (``soak.py``).

With ``davss_ros/ros`` (the node) and ``davss_ros/bag``, the only places that import rclpy.
"""
