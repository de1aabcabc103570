"""Run the test suite: ROS test files each in a fresh process, the rest together.

Why not one pytest process: every ROS test module starts its own rclpy contexts and
FastDDS participants (LARGE_DATA: TCP + shared memory). A participant that is finalised by
the garbage collector while another module's participants are busy can block inside
FastDDS for good, so one module's leftovers must not outlive its process. Each process has
a time limit, so a hang fails that file instead of stalling CI.

A file whose process hangs is run once more, and the retry is reported. Seen here: FastDDS
3.2's TCP transport (part of LARGE_DATA) now and then blocks for good in
TCPChannelResourceBasic::disconnect while a participant is deleted (rcl_node_fini of a
context's last node), after the test's own checks have passed.

A ROS test file with failures is also run once more, and the failed tests of the first run
are printed by name. Seen here: on a loaded 2-core machine, DDS discovery after a
subscription is re-created (lifecycle cycles, a publisher coming back) now and then takes
longer than a test waits. A file that fails twice, or that hangs twice, fails the run.

    python scripts/run_tests.py [pytest args...]     (what `make test` runs)

Prints one closing line: "N passed, N failed, N skipped".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROS_MARKERS = re.compile(r"\brclpy\b|davss_ros\.(ros|bag)\b|davss_ros\.demo\b|\"demo\"|\"replay\"")
TIME_LIMIT_S = int(os.environ.get("DAVSS_TEST_FILE_TIMEOUT", "480"))


def groups(files: list[Path]) -> list[list[Path]]:
    plain = [f for f in files if not ROS_MARKERS.search(f.read_text())]
    ros = [f for f in files if f not in plain]
    return ([plain] if plain else []) + [[f] for f in ros]


def run_group(files: list[Path], extra: list[str], xml: Path) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *extra, *map(str, files)]
    names = " ".join(f.name for f in files) if len(files) < 4 else f"{len(files)} files"
    print(f"\n=== {names}", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=TIME_LIMIT_S)
        status = "ok" if proc.returncode in (0, 5) else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"TIMED OUT after {TIME_LIMIT_S} s"
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += total - failed - skipped
    if status != "ok" and counts["failed"] == 0:
        counts["failed"] = 1  # a crash or a hang is a failure even with no failed test
    print(f"=== {names}: {status} ({time.monotonic() - start:.0f} s)", flush=True)
    return counts, status


def failed_tests(xml: Path) -> list[str]:
    """Names of the failed or erroring tests in a junit XML file."""
    if not xml.exists():
        return []
    return [case.get("name", "?") for case in ET.parse(xml).getroot().iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None]


def main(argv: list[str]) -> int:
    is_file = [a.endswith(".py") and (ROOT / a).is_file() for a in argv]
    extra = [a for a, f in zip(argv, is_file, strict=True) if not f]
    chosen = [ROOT / a for a, f in zip(argv, is_file, strict=True) if f]
    files = chosen or sorted((ROOT / "test").glob("test_*.py"))
    total = {"passed": 0, "failed": 0, "skipped": 0}
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        retried = []
        for i, group in enumerate(groups(files)):
            counts, status = run_group(group, extra, Path(tmp) / f"{i}.xml")
            if status.startswith("TIMED OUT"):
                retried.append(", ".join(f.name for f in group) + " (hung)")
                print("=== hung: running it once more", flush=True)
                counts, status = run_group(group, extra, Path(tmp) / f"{i}-retry.xml")
            elif counts["failed"] and len(group) == 1 and ROS_MARKERS.search(
                    group[0].read_text()):
                names = failed_tests(Path(tmp) / f"{i}.xml")
                retried.append(f"{group[0].name} (failed: {', '.join(names) or status})")
                print("=== failed: running it once more", flush=True)
                counts, status = run_group(group, extra, Path(tmp) / f"{i}-retry.xml")
            for k in total:
                total[k] += counts[k]
            if status != "ok" or counts["failed"]:
                bad.append(", ".join(f.name for f in group) + f" ({status})")
    if retried:
        print("\nrun twice (the second run's results count): " + "; ".join(retried))
    if bad:
        print("\nfailing: " + "; ".join(bad))
    print(f"\n{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if total["failed"] or total["passed"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
