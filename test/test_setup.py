"""scripts/setup.sh: the venv it makes works, it refuses a wrong Python, and it is idempotent.

None of these tests can rebuild or recreate the repository's .venv: the wrong-Python test
runs a copy of the script in a temporary copy of the repository, and the up-to-date test
only runs when the stamp is current (so the script only reads the stamp and returns).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
VENV = ROOT / ".venv"
STAMP = VENV / ".davss-setup-stamp"

needs_venv = pytest.mark.skipif(
    not VENV_PYTHON.exists(), reason=".venv does not exist; run scripts/setup.sh"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(extra)
    return env


@needs_venv
def test_venv_imports_rclpy_davss_msgs_torch_cv2_rosbags():
    proc = subprocess.run(
        [str(VENV_PYTHON), "-c", "import rclpy, davss_msgs.msg, torch, cv2, rosbags"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr


def _version(python: str) -> str | None:
    try:
        proc = subprocess.run(
            [python, "-c", 'import sys; print("%d.%d" % sys.version_info[:2])'],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _other_python(tmp_path: Path) -> tuple[str, str]:
    """A real interpreter that is not 3.11, else a stand-in that reports 3.10."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 16) if minor != 11]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    candidates += sorted(glob.glob("/usr/bin/python3.*[0-9]"))
    for python in filter(None, candidates):
        version = _version(python)
        if version and version != "3.11":
            return python, version
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    return str(fake), "3.10"


def _copy_repo(dest: Path) -> Path:
    skip_at_root = {".venv", ".git", "build", "install", "log", "out"}

    def ignore(directory, names):
        skip = {n for n in names if n == "__pycache__"}
        if Path(directory).resolve() == ROOT:
            skip |= skip_at_root & set(names)
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def test_setup_sh_with_a_python_other_than_3_11_fails_fast_saying_it_needs_3_11(tmp_path):
    python, version = _other_python(tmp_path)
    repo = _copy_repo(tmp_path / "repo")  # no .venv there, so no stamp to short-cut on
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(PYTHON=python),
    )
    assert proc.returncode != 0
    # Fast means before any work: not a step was announced, nothing was created.
    assert proc.stdout == "", proc.stdout
    assert "needs CPython 3.11" in proc.stderr, proc.stderr
    assert f"Python {version}" in proc.stderr, proc.stderr
    assert not (repo / ".venv").exists()


def _inputs_hash() -> str | None:
    """setup.sh's own inputs_hash function, run on the repository (None if not found)."""
    text = SETUP.read_text()
    start = text.find("inputs_hash() {")
    end = text.find("\n}\n", start)
    if start < 0 or end < 0:
        return None
    proc = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{text[start : end + 3]}\ninputs_hash"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


@needs_venv
def test_second_setup_sh_run_is_quick_and_says_up_to_date():
    if not STAMP.exists() or _inputs_hash() != STAMP.read_text().strip():
        pytest.skip("setup.sh's inputs changed since the last set-up; run scripts/setup.sh")
    # Quick means no install step ran: the interpreter, the installed packages and the
    # stamp are untouched, and the only thing said is that .venv is current.
    watched = [VENV / "bin" / "python", STAMP,
               *sorted((VENV / "lib").glob("python3*/site-packages"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    proc = subprocess.run(
        ["bash", str(SETUP)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in _env().items() if k != "PYTHON"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[setup] .venv is up to date", proc.stdout
    assert {p: p.stat().st_mtime_ns for p in watched} == before
