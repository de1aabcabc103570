"""FastDDS's shared memory in /dev/shm: the room left, and the segments dead processes left.

With FastDDS's LARGE_DATA transports (``env.ensure_large_data_transport``) every participant
(every rclpy context: a node process, a camera driver, RViz) maps a shared-memory segment
of about 8.7 MB in /dev/shm. A process that ends without deleting its participant (killed,
crashed, ``os._exit``) leaves its segment there for good. Docker gives a container 64 MB of
/dev/shm unless told otherwise: room for seven participants on the whole machine, and fewer
with every dead one. Past that, a new participant gets no shared memory; seen here, its
local peers then talk TCP to it, discovery with it can fail to complete, and deleting a
participant can block for good inside FastDDS's TCP transport.

FastDDS ships the clean-up (``fastdds shm clean``: a segment whose lock file nobody holds
belongs to a dead process). Its launcher runs the system's ``python3``, which needs
``psutil``; :func:`clean_zombies` runs the same tool with this interpreter instead.

``davss shm`` prints the state of /dev/shm; ``davss shm --clean`` removes the dead segments.
No rclpy here: the test runner loads this file on its own.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# The size of one LARGE_DATA participant's segment file with FastDDS 3.2 (read off
# /dev/shm here: 9,112,544 bytes). tmpfs holds only the pages written, so this is what a
# participant can take, up to once its largest messages went through.
SEGMENT_BYTES = 9_112_544
# Fewer free segments than this and the node warns: a camera, the node, RViz and a recorder.
ROOM_WANTED = 4
_SEGMENT = re.compile(r"^fastdds_[0-9a-f]{16}$")
MB = 1024 * 1024


@dataclass(frozen=True)
class SharedMemory:
    """What /dev/shm holds now."""

    total: int
    free: int
    segments: int  # FastDDS participant segments, live or dead (segment_names)

    @property
    def room(self) -> int:
        """How many more LARGE_DATA participants fit."""
        return self.free // SEGMENT_BYTES

    def describe(self) -> str:
        return (f"{SHM_DIR} {self.total / MB:.0f} MB, {self.free / MB:.0f} MB free, "
                f"{self.segments} FastDDS segments")


def segment_names(folder: Path = SHM_DIR) -> set[str]:
    """The FastDDS participant segments in ``folder``, live or dead: the files with an
    ``_el`` lock file beside them (empty where there is no such folder)."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return set()
    return {n for n in names if _SEGMENT.match(n) and f"{n}_el" in names}


def shared_memory(folder: Path = SHM_DIR) -> SharedMemory | None:
    """The state of ``folder``; None where there is none (not Linux)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return SharedMemory(total=stat.f_blocks * stat.f_frsize,
                        free=stat.f_bavail * stat.f_frsize,
                        segments=len(segment_names(folder)))


def low_room_warning(state: SharedMemory | None) -> str | None:
    """The warning a node logs when too few LARGE_DATA participants fit; None when enough do."""
    if state is None or state.room >= ROOM_WANTED:
        return None
    return (f"shared memory is nearly full: {state.describe()}. FastDDS's LARGE_DATA "
            f"transports put a {SEGMENT_BYTES / MB:.1f} MB segment per participant there and "
            f"only {state.room} more fit; a participant without one makes discovery and "
            "shutdown unreliable. Remove the segments of dead processes with "
            "`davss shm --clean` (or `fastdds shm clean`), and give a container more "
            "(docker run --shm-size=512m, or --ipc=host)")


def _fastdds_tool() -> list[str] | None:
    bundled = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"  # the fastdds wheel's
    if bundled.is_file():
        return [sys.executable, str(bundled)]
    found = shutil.which("fastdds")  # a ROS install's
    return [found] if found else None


def clean_zombies(timeout: float = 60.0) -> str:
    """Remove the segments and ports of dead FastDDS processes with FastDDS's own tool.

    Returns what the tool printed. Raises FileNotFoundError when no FastDDS tool is found and
    RuntimeError when it fails.
    """
    tool = _fastdds_tool()
    if tool is None:
        raise FileNotFoundError("FastDDS's `fastdds` tool is not installed here")
    done = subprocess.run([*tool, "shm", "clean"], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`fastdds shm clean` failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clean", action="store_true",
                        help="remove the segments and ports of dead FastDDS processes")


def run(args: argparse.Namespace) -> int:
    state = shared_memory()
    if state is None:
        print(f"{SHM_DIR} is not there: FastDDS's shared memory is elsewhere on this system")
        return 0
    print(f"before: {state.describe()}; room for {state.room} more LARGE_DATA participants")
    if args.clean:
        print(clean_zombies())
        state = shared_memory()
        print(f"after: {state.describe()}; room for {state.room} more")
    warning = low_room_warning(state)
    if warning:
        print(warning)
    return 1 if warning else 0
