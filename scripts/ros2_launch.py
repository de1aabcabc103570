"""`ros2 launch PACKAGE FILE [name:=value ...]` without the ros2 command line tool.

The `ros2` command needs ros2cli, which has no wheels; its `launch` verb is a thin layer over
ros2launch's api, which this calls the same way. Needs launch, launch_ros and ros2launch on
the path (a ROS install, or scripts/launch_env.sh) and AMENT_PREFIX_PATH naming the prefix
that holds PACKAGE (.venv after `make setup`):

    . build/launch_env/setup.sh
    .venv/bin/python scripts/ros2_launch.py davss_ros segment.launch.py namespace:=front
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ros2_launch.py", description=__doc__.splitlines()[0])
    parser.add_argument("package_name")
    parser.add_argument("launch_file_name")
    parser.add_argument("launch_arguments", nargs="*", metavar="name:=value")
    parser.add_argument("-n", "--noninteractive", action="store_true",
                        help="do not take over stdin (as ros2 launch -n)")
    parser.add_argument("-d", "--debug", action="store_true", help="launch's debug output")
    args = parser.parse_args(argv)
    try:
        from ros2launch.api import get_share_file_path_from_package, launch_a_launch_file
    except ImportError as exc:
        parser.exit(2, f"ros2launch is not importable ({exc}); see scripts/launch_env.sh\n")
    try:
        path = get_share_file_path_from_package(
            package_name=args.package_name, file_name=args.launch_file_name)
    except (LookupError, OSError) as exc:  # PackageNotFoundError, no AMENT_PREFIX_PATH, ...
        parser.exit(2, f"{exc}\n")
    return launch_a_launch_file(
        launch_file_path=path, launch_file_arguments=list(args.launch_arguments),
        noninteractive=args.noninteractive, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
