"""Run the test suite: ROS test files each in a fresh process, the rest together.

Why not one pytest process: every ROS test module starts its own rclpy contexts and
FastDDS participants (TCP, UDP, shared memory). A participant that is finalised by
the garbage collector while another module's participants are busy can block inside
FastDDS for good, so one module's leftovers must not outlive its process. Each process has
a time limit, so a hang fails that file instead of stalling CI.

A retry never hides a failure. A ROS test file that fails or hangs is run once more, to
say whether the failure repeats (a deterministic bug) or not (a race: still a bug), but the
first run is the one that counts: its failed tests are named and fail the run. The one
exception is a test marked ``@pytest.mark.known_flaky(reason="...")`` with a written
reason (conftest.py refuses the mark without one): when every failure of the first run is
such a test and the second run passes, the run stays green and the failures are listed
with their reasons. A hang (no junit report for the tests of the file) is never excused.

    python scripts/run_tests.py [pytest args...]     (what `make test` runs)

Prints one closing line: "N passed, N failed, N skipped".
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROS_MARKERS = re.compile(r"\brclpy\b|davss_ros\.(ros|bag)\b|davss_ros\.demo\b|\"demo\"|\"replay\"")
# Mirrors davss_ros.tools.harness (not imported: the runner works without the package).
DOMAIN_IDS, DOMAIN_BLOCK = 100, 5
TIME_LIMIT_S = int(os.environ.get("DAVSS_TEST_FILE_TIMEOUT", "480"))


def _load_shm():
    """davss_ros/ros/shm.py on its own (stdlib only), without importing the package."""
    spec = spec_from_file_location("davss_shm", ROOT / "davss_ros" / "ros" / "shm.py")
    module = module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


shm = _load_shm()


def clean_shared_memory() -> None:
    """Remove what dead FastDDS processes left in /dev/shm before the next file starts.

    Camera processes of the tests end with os._exit (FastDDS's TCP transport can block for
    good deleting a participant), and each leaves an 8.7 MB segment. On a machine with
    Docker's 64 MB /dev/shm, a few files' worth fill it, and the next files' participants
    get no shared memory: discovery then fails and teardown hangs (reproduced here with a
    64 MB /dev/shm). Says so when it removed something.
    """
    before = shm.shared_memory()
    try:
        shm.clean_zombies()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"shared memory: not cleaned ({exc})", flush=True)
        return
    after = shm.shared_memory()
    if before and after and after.segments < before.segments:
        print(f"shared memory: removed {before.segments - after.segments} segments of dead "
              f"processes; {after.describe()}", flush=True)


# Blocks handed out in turn from a random start, so consecutive runs differ too.
_blocks = itertools.count(random.randrange(DOMAIN_IDS // DOMAIN_BLOCK))


def next_domain_base() -> int:
    return 1 + (next(_blocks) * DOMAIN_BLOCK) % DOMAIN_IDS


def groups(files: list[Path]) -> list[list[Path]]:
    plain = [f for f in files if not ROS_MARKERS.search(f.read_text())]
    ros = [f for f in files if f not in plain]
    return ([plain] if plain else []) + [[f] for f in ros]


def run_group(files: list[Path], extra: list[str], xml: Path,
              domain_base: int = 1) -> tuple[dict, str]:
    # faulthandler: a test still running after 240 s prints every thread's stack, so a hang
    # names where it sits (the file's limit then ends it)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-o", "faulthandler_timeout=240", f"--junitxml={xml}", *extra, *map(str, files)]
    names = " ".join(f.name for f in files) if len(files) < 4 else f"{len(files)} files"
    print(f"\n=== {names}", flush=True)
    start = time.monotonic()
    # Each file its own block of ROS domain ids (davss_ros.tools.harness.unique_domain_id)
    # (unbuffered: its output passes through a pipe here and must not wait for a flush)
    stack_file = xml.with_suffix(".stacks")  # conftest.py writes it on SIGUSR1
    env = dict(os.environ, DAVSS_TEST_DOMAIN_BASE=str(domain_base), PYTHONUNBUFFERED="1",
               DAVSS_TEST_STACK_FILE=str(stack_file))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[str] = []
    echo = threading.Thread(target=_echo, args=(proc.stdout, lines), daemon=True)
    echo.start()
    try:
        proc.wait(timeout=TIME_LIMIT_S)
        status = "ok" if proc.returncode in (0, 5) else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"TIMED OUT after {TIME_LIMIT_S} s"
        # conftest.py makes SIGUSR1 print every thread's stack: where the file sat
        if hasattr(signal, "SIGUSR1"):
            proc.send_signal(signal.SIGUSR1)
            time.sleep(3.0)
        proc.kill()
        proc.wait()
        if stack_file.exists():
            lines += [SIGNAL_DUMP, *stack_file.read_text(errors="replace").splitlines()]
    echo.join(timeout=10)
    if status.startswith("TIMED OUT"):
        _stacks[names] = _hang_stacks(lines)
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


# The stacks pytest's faulthandler printed for each file that hung, repeated at the end of
# the run, where a CI log that shows only its tail still has them.
_stacks: dict[str, list[str]] = {}
STACK_LINES = 150


def _echo(stream, lines: list[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line.rstrip("\n"))


TEST_FRAME = re.compile(r'File ".*/test/(test_\w+\.py)", line (\d+) in (test_\w+)')
SIGNAL_DUMP = "(the time limit is up: every thread's stack, most recent call first)"


def _hang_stacks(lines: list[str]) -> list[str]:
    """For a file that ran out of time: the tests that failed before (conftest.py says each
    as it happens), then faulthandler's dump of every thread's stack, from a test that ran
    240 s ('Timeout (' line) or else from the signal sent at the file's limit, cut at
    STACK_LINES lines."""
    failed = [line for line in lines if line.startswith("[davss-failed]")]
    start = next((i for i, line in enumerate(lines) if line.startswith("Timeout (")), None)
    if start is None:
        start = next((i for i, line in enumerate(lines) if line == SIGNAL_DUMP), None)
    dump = (lines[start:start + STACK_LINES] if start is not None
            else ["(no stack dump came back)"])
    return (failed or ["(no test had failed before)"]) + dump


def failed_tests(xml: Path) -> dict[str, str | None]:
    """The failed or erroring tests of a junit XML file: name -> known-flaky reason or None.

    conftest.py writes the reason of ``known_flaky`` tests as a junit property.
    """
    if not xml.exists():
        return {}
    out: dict[str, str | None] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        reason = None
        for prop in case.iter("property"):
            if prop.get("name") == "known_flaky":
                reason = prop.get("value") or None
        out[case.get("name", "?")] = reason
    return out


def main(argv: list[str]) -> int:
    is_file = [a.endswith(".py") and (ROOT / a).is_file() for a in argv]
    extra = [a for a, f in zip(argv, is_file, strict=True) if not f]
    chosen = [ROOT / a for a, f in zip(argv, is_file, strict=True) if f]
    files = chosen or sorted((ROOT / "test").glob("test_*.py"))
    total = {"passed": 0, "failed": 0, "skipped": 0}
    bad: list[str] = []
    excused: list[str] = []
    state = shm.shared_memory()
    if state:
        print(f"shared memory at the start: {state.describe()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, group in enumerate(groups(files)):
            names = ", ".join(f.name for f in group)
            clean_shared_memory()
            first_xml = Path(tmp) / f"{i}.xml"
            counts, status = run_group(group, extra, first_xml, next_domain_base())
            failed = failed_tests(first_xml)
            is_ros = len(group) == 1 and ROS_MARKERS.search(group[0].read_text())
            hung = status.startswith("TIMED OUT")
            if (counts["failed"] or status != "ok") and (is_ros or hung):
                what = ", ".join(failed) or status
                print(f"=== {names}: {what}; running it once more to see whether it repeats",
                      flush=True)
                clean_shared_memory()
                again, again_status = run_group(group, extra, Path(tmp) / f"{i}-retry.xml",
                                                next_domain_base())
                repeats = bool(again["failed"]) or again_status != "ok"
                flaky_only = (not hung and failed and not repeats
                              and all(reason for reason in failed.values()))
                if flaky_only:
                    counts = again  # every failure is a known-flaky test, and it passed
                    excused += [f"{names}::{n} (known flaky: {r})" for n, r in failed.items()]
                else:
                    verdict = "failed again" if repeats else "passed on the second run: a race"
                    bad.append(f"{names} ({what}; {verdict})")
            elif counts["failed"] or status != "ok":
                bad.append(f"{names} ({', '.join(failed) or status})")
            for k in total:
                total[k] += counts[k]
    for names, stack in _stacks.items():
        print(f"\n=== where {names} hung (its failures, then faulthandler, first "
              f"{STACK_LINES} lines):")
        print("\n".join(stack))
    state = shm.shared_memory()
    if state:
        print(f"\nshared memory at the end: {state.describe()}")
    if excused:
        print("\nknown-flaky failures excused (each passed when run again): "
              + "; ".join(excused))
    if bad:
        print("\nfailing (first run counts): " + "; ".join(bad))
    for names, stack in _stacks.items():  # again, short, where a log's tail shows it
        said = [line for line in stack if line.startswith("[davss-failed]")][:5]
        sat = sorted({f"{m[1]}::{m[3]} line {m[2]}" for m in map(TEST_FRAME.search, stack)
                      if m})
        print(f"{names} timed out in {', '.join(sat) or '(no test frame in the stacks)'}; "
              + ("before that: " + " | ".join(said) if said else "no test had failed before"))
    print(f"\n{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped"
          + (f", {len(excused)} known-flaky excused" if excused else ""))
    return 1 if total["failed"] or bad or total["passed"] == 0 else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
