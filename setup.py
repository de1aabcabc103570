"""ament_python packaging of davss_ros (works with colcon and with plain pip)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "davss_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    # The shipped model (weights/davss_cpu.pt) is package data, installed once, next to
    # davss_ros.weights, which finds it (see davss_ros/weights/__init__.py).
    package_data={package_name: ["weights/*.pt", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/config/train", glob("config/train/*.yaml")),
    ],
    python_requires=">=3.10",
    # A range, not a pin: CUDA builds of torch on users' machines satisfy it too.
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        "torch>=2.2,<3",
        "opencv-python-headless>=4.8",
        "PyYAML>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "rosbags>=0.10",
        # ONNX key segmenters; onnxruntime-gpu provides the same module with CUDA.
        "onnxruntime>=1.17",
    ],
    zip_safe=True,
    maintainer="davss_ros maintainers",
    maintainer_email="davss-maintainers@example.org",
    description="Fast video semantic segmentation (DAVSS) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "davss = davss_ros.cli:main",
            "segmenter = davss_ros.ros.node:main",
        ],
    },
)
