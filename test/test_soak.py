"""``davss soak``: a one-minute soak of the node process at the goal's camera stream.

The full goal (10 minutes, 1280x720 at 30 Hz: RSS growth < 50 MB, last minute's p95
latency within 20 % of the first, no frame unaccounted for) is checked by running
``davss soak`` on a quiet machine. This test runs the same code for one minute at the same
size and rate and asserts the parts that do not depend on what else the machine is doing:
exact frame accounting and bounded memory. The p95 drift is reported but not asserted: on
a shared 2-core CI machine it measures the neighbours as much as the node.
"""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("rclpy", reason="the ROS 2 Python client library is not installed")
pytest.importorskip("davss_msgs", reason="davss_msgs is not built into this environment")

from davss_ros.tools.harness import unique_domain_id  # noqa: E402
from davss_ros.tools.soak import (  # noqa: E402
    SoakConfig,
    add_arguments,
    format_report,
    run_soak,
)


@pytest.mark.slow
def test_one_minute_soak_accounts_for_every_frame_and_keeps_memory_bounded(tmp_path):
    # 416x240 rgb8 (300 KB) travels in FastDDS's shared memory with the DEFAULT transports
    # the tests run on (conftest.py; segments of 512 KB): the soak then measures the node,
    # not the UDP fragmentation that larger best-effort frames meet there. `davss soak`
    # itself defaults to 1280x720 on the node's LARGE_DATA.
    cfg = SoakConfig(minutes=1.0, rate=30.0, width=416, height=240, warmup_s=10.0,
                     domain_id=unique_domain_id(),
                     node_log=str(tmp_path / "node.log"))
    report = run_soak(cfg, progress=lambda _line: None)
    text = format_report(report)
    print(text)
    (tmp_path / "soak.json").write_text(json.dumps(report))

    c = report["counts"]
    # The camera kept its rate, and the node processed a good part of the stream.
    assert c["published"] >= 0.95 * 30 * 60
    assert c["processed"] > 100
    # Every frame published is accounted for, and every processed frame's labels arrived.
    assert all(report["accounting"].values()), report["accounting"]
    assert c["unaccounted"] == 0
    assert c["published"] == c["processed"] + c["dropped_all_kinds"]
    assert c["labels_received"] == c["processed"] == c["frame_infos_received"]
    assert c["rejected"] == c["failed"] == c["invalid"] == 0
    # Memory: bounded after the warm-up.
    assert report["memory"]["rss_growth_mb"] < 50, report["memory"]
    assert report["goals"]["RSS growth < 50 MB"]
    # The latency table has a row per 10 s after the warm-up, each with numbers.
    rows = report["intervals"]
    assert len(rows) == 5 and all(r["p95_ms"] and r["median_ms"] for r in rows)
    assert report["latency"]["p95_drift"] is not None
    assert report["node"]["exit_status"] == 0  # the node stopped cleanly on SIGINT
    assert f"published {c['published']} = processed {c['processed']}" in text
    assert "PASS  RSS growth < 50 MB" in text and "PASS  no frame unaccounted for" in text


def test_soak_command_line():
    from davss_ros.cli import SUBCOMMANDS

    assert SUBCOMMANDS["soak"][0] == "davss_ros.tools.soak"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--minutes", "2", "--rate", "15", "--size", "640x360",
                              "-p", "model.mode:=dff", "--json", "out.json"])
    assert (args.minutes, args.rate, args.size) == (2.0, 15.0, (640, 360))
    assert args.param == ["model.mode:=dff"] and args.json == "out.json"
    defaults = parser.parse_args([])
    assert (defaults.minutes, defaults.rate, defaults.size) == (10.0, 30.0, (1280, 720))
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "1280"])
