"""``davss soak``: the segmenter node under a steady camera stream for minutes or hours.

A perception node runs for hours on a robot; this command checks the three things that
fail there and not in a unit test: memory creeping up, latency drifting, and frames going
missing without a trace.

How it runs:

- the node is a separate process, started as a user would (the ``segmenter`` console
  script, i.e. ``davss_ros.ros.node:main``, with autostart), so its memory is its own:
  the resident set size (VmRSS) and thread count are read from ``/proc/<pid>/status``
  once a second;
- this process is the camera: it renders a synthetic driving clip (``davss_ros.data.
  synthetic``, rendered at up to 640 pixels wide and scaled to ``--size``, played forwards
  and backwards so the motion never jumps), and publishes it as rgb8 at ``--rate`` on a
  fixed clock, reliable like a camera driver; the node subscribes best-effort with depth 1
  (its default), so it always works on the newest frame and drops the rest;
- it stamps each frame with the wall clock just before ``publish()`` and measures latency
  as the arrival of the frame's ``~/labels`` here minus that stamp: camera publish ->
  labels received, transport both ways included;
- it reads the node's frame counters from ``/diagnostics`` at the end.

Accounting: every frame published must end in exactly one of the node's counters:
processed, dropped (the one-frame slot kept a newer one), lost in transport (gaps in the
publisher's sequence numbers at the node), rejected, failed or discarded. The report
checks ``published = processed + dropped (all kinds)`` and that every processed frame's
labels arrived.

Goals (defaults; ``--max-rss-growth``, ``--max-p95-drift``): RSS growth from the end of the
warm-up to the end below 50 MB; the last interval's p95 latency within 20 % of the first
interval's; no frame unaccounted for. The exit status is 0 when all goals pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from davss_ros.ros.diagnostics import process_rss_bytes, process_threads
from davss_ros.ros.env import ensure_large_data_transport

NAMESPACE = "/soak"
NODE_FQN = f"{NAMESPACE}/davss_segmenter"


@dataclass
class SoakConfig:
    minutes: float = 10.0
    rate: float = 30.0
    width: int = 1280
    height: int = 720
    config: str = "cpu"
    checkpoint: str = ""
    device: str = "cpu"
    warmup_s: float = 10.0  # excluded from the latency table; RSS "start" is taken after it
    interval_s: float | None = None  # table rows; None = 60 s, or a sixth of short runs
    clip_frames: int = 45
    all_outputs: bool = False  # also subscribe to labels_color, overlay and distortion
    max_rss_growth_mb: float = 50.0
    max_p95_drift: float = 0.20
    domain_id: int | None = None
    node_log: str | None = None
    node_params: list[str] = field(default_factory=list)  # extra "name:=value"
    start_timeout_s: float = 180.0


# -- frames -------------------------------------------------------------------------------------
def make_frames(width: int, height: int, count: int, seed: int = 7) -> list[np.ndarray]:
    """A synthetic driving clip at ``width`` x ``height``, played forwards then backwards.

    Rendering is about 0.4 s per 1280x720 frame on this CPU, so the clip is rendered at up
    to 640 pixels wide and scaled up; the content (textured road, buildings, cars) is the
    same, only less detailed.
    """
    import cv2

    from davss_ros.data.synthetic import SceneConfig, render_clip

    scale = min(1.0, 640 / width)
    rw = max(64, int(round(width * scale / 8)) * 8)
    rh = max(64, int(round(height * scale / 8)) * 8)
    clip = render_clip(SceneConfig(width=rw, height=rh, frames=count, seed=seed))
    frames = [f if (rw, rh) == (width, height) else
              cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
              for f in clip.images]
    return frames + frames[-2:0:-1]  # ping-pong: no jump when the clip repeats


# -- the node process ---------------------------------------------------------------------------
def node_command(cfg: SoakConfig) -> list[str]:
    """The command that starts the node: the ``segmenter`` console script when installed
    next to this interpreter, else the same entry point through ``python -m``."""
    script = Path(sys.executable).with_name("segmenter")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "davss_ros.ros.node"]
    ros = ["--ros-args", "-r", f"__ns:={NAMESPACE}", "-r", f"image:={NAMESPACE}/image",
           "-p", f"model.device:={cfg.device}", "-p", f"model.config:={cfg.config}",
           "-p", "qos.reliability:=best_effort"]
    if cfg.checkpoint:
        ros += ["-p", f"model.checkpoint:='{cfg.checkpoint}'"]
    for p in cfg.node_params:
        ros += ["-p", p]
    return cmd + ros


# -- the run ------------------------------------------------------------------------------------
class _Recorder:
    """Outputs arriving from the node (executor thread) and samples (main thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[int, float] = {}  # stamp ns -> labels arrival latency ms
        self.infos = 0
        self.key_stamps: set[int] = set()
        self.last_output = 0.0
        self.diag: dict[str, str] = {}
        self.diag_time = 0.0

    def on_labels(self, msg) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.latency[stamp] = (now - stamp) / 1e6
            self.last_output = time.monotonic()

    def on_info(self, msg) -> None:
        with self.lock:
            self.infos += 1
            if msg.is_key_frame:
                self.key_stamps.add(msg.header.stamp.sec * 1_000_000_000
                                    + msg.header.stamp.nanosec)

    def on_diag(self, msg) -> None:
        for status in msg.status:
            if status.hardware_id == NODE_FQN:
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag["__message"] = status.message
                    self.diag_time = time.monotonic()


def run_soak(cfg: SoakConfig, progress=print) -> dict:
    """Run the soak and return the report (see ``format_report``)."""
    ensure_large_data_transport()
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from davss_msgs.msg import FrameInfo
    from davss_ros.ros.image import new_image

    from .harness import Harness

    duration = cfg.minutes * 60.0
    if duration <= cfg.warmup_s:
        raise ValueError(f"--minutes {cfg.minutes} leaves nothing after the "
                         f"{cfg.warmup_s:g} s warm-up")
    domain = cfg.domain_id if cfg.domain_id is not None else 1 + (os.getpid() * 31 + 17) % 200
    progress(f"soak: rendering a {cfg.clip_frames}-frame synthetic clip at "
             f"{cfg.width}x{cfg.height} ...")
    frames = make_frames(cfg.width, cfg.height, cfg.clip_frames)

    log_path = Path(cfg.node_log) if cfg.node_log else Path(
        tempfile.mkstemp(prefix="davss_soak_node_", suffix=".log")[1])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = node_command(cfg)
    progress(f"soak: starting the node (ROS_DOMAIN_ID={domain}, log {log_path}):\n  "
             + " ".join(cmd))

    harness = Harness(domain)
    node = None
    rec = _Recorder()
    stop = threading.Event()
    try:
        node = harness.spawn(cmd, env=os.environ, log_path=log_path)
        cam = harness.camera(name="davss_soak_camera", threads=1)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub = cam.publisher(f"{NAMESPACE}/image", Image, reliable)
        subs = [cam.node.create_subscription(Image, f"{NODE_FQN}/labels", rec.on_labels,
                                             reliable),
                cam.node.create_subscription(FrameInfo, f"{NODE_FQN}/frame_info", rec.on_info,
                                             QoSProfile(depth=50,
                                                        reliability=ReliabilityPolicy.RELIABLE))]
        if cfg.all_outputs:
            subs += [cam.node.create_subscription(Image, f"{NODE_FQN}/{t}", lambda _m: None,
                                                  reliable)
                     for t in ("labels_color", "overlay", "distortion")]
        cam.node.create_subscription(DiagnosticArray, "/diagnostics", rec.on_diag, reliable)

        # Ready: the node process is up, active and matched both ways.
        deadline = time.monotonic() + cfg.start_timeout_s
        while not (pub.get_subscription_count() > 0
                   and all(s.get_publisher_count() > 0 for s in subs)
                   and rec.diag.get("lifecycle state") == "active"):
            if node.poll() is not None:
                raise RuntimeError(f"the node exited with status {node.poll()} before "
                                   f"it was ready; its log:\n{node.tail()}")
            if time.monotonic() > deadline:
                # Which side never matched: what tells a discovery failure between the two
                # processes from a node that is slow to come up.
                seen = (f"camera -> node: {pub.get_subscription_count()} subscriber(s); "
                        f"node -> here: {[sb.get_publisher_count() for sb in subs]} "
                        f"publisher(s) per output; lifecycle state in the diagnostics "
                        f"received: {rec.diag.get('lifecycle state')!r}")
                raise RuntimeError(f"the node was not ready within {cfg.start_timeout_s:g} "
                                   f"s ({seen}); its log:\n{node.tail()}")
            time.sleep(0.1)
        time.sleep(1.0)  # let the node's reader finish matching this writer
        pid = node.pid
        rss_ready = process_rss_bytes(pid)
        progress(f"soak: node ready (pid {pid}, RSS {_mb(rss_ready):.1f} MB); publishing "
                 f"{cfg.width}x{cfg.height} rgb8 at {cfg.rate:g} Hz for {cfg.minutes:g} min")

        # The camera: a fixed clock; a slot it is late for by a whole period is skipped
        # (a camera does not send the frames it missed later in a burst).
        pool = []
        for f in frames:
            msg, view = new_image(cfg.height, cfg.width, "rgb8")
            np.copyto(view, f)
            msg.header.frame_id = "soak_camera"
            pool.append(msg)
        sent: list[tuple[float, int]] = []  # (seconds since start, stamp ns)
        pub_state = {"skipped": 0, "late_max": 0.0}
        period = 1.0 / cfg.rate
        t0 = time.monotonic()

        def camera() -> None:
            i = slot = 0
            while not stop.is_set():
                target = t0 + slot * period
                if target - t0 >= duration:
                    return
                delay = target - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                    if stop.is_set():
                        return
                msg = pool[i % len(pool)]
                ns = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                pub.publish(msg)
                sent.append((time.monotonic() - t0, ns))
                i += 1
                late = time.monotonic() - target
                pub_state["late_max"] = max(pub_state["late_max"], late)
                slot += 1
                behind = int((time.monotonic() - (t0 + slot * period)) // period)
                if behind > 0:
                    slot += behind
                    pub_state["skipped"] += behind

        publisher = threading.Thread(target=camera, name="soak_camera", daemon=True)
        publisher.start()

        samples: list[dict] = []  # once a second: node RSS and threads
        rss_start = None
        next_report = t0 + _interval(cfg, duration)
        while publisher.is_alive():
            publisher.join(1.0)
            now = time.monotonic()
            rss = process_rss_bytes(pid)
            samples.append({"t": now - t0, "rss": rss, "threads": process_threads(pid)})
            if rss_start is None and now - t0 >= cfg.warmup_s:
                rss_start = rss
            if node.poll() is not None:
                raise RuntimeError(f"the node died during the soak (status {node.poll()})"
                                   f"; its log:\n{node.tail()}")
            if now >= next_report:
                next_report += _interval(cfg, duration)
                with rec.lock:
                    done = len(rec.latency)
                progress(f"  {now - t0:6.0f} s: published {len(sent)}, labels {done}, "
                         f"node RSS {_mb(rss):.1f} MB")

        # Drain: wait until the node is idle and its counters cover every frame sent.
        end_pub = time.monotonic()
        published = len(sent)
        deadline = end_pub + 60.0
        while time.monotonic() < deadline:
            with rec.lock:
                diag, diag_time, quiet = dict(rec.diag), rec.diag_time, rec.last_output
            fresh = diag_time > max(end_pub, quiet) + 0.05
            idle = fresh and diag.get("frames in flight") == "0"
            seen = _int(diag, "frames received") + _int(diag, "frames lost in transport")
            if idle and (seen >= published or time.monotonic() - max(end_pub, quiet) > 5.0):
                break  # complete, or the missing frames are not coming
            time.sleep(0.2)
        time.sleep(0.5)
        rss_end = process_rss_bytes(pid)
        threads_end = process_threads(pid)
        with rec.lock:
            diag = dict(rec.diag)
            latency = dict(rec.latency)
            infos = rec.infos
            keys = set(rec.key_stamps)
    finally:
        stop.set()
        harness.close()  # the node process gets Ctrl-C before the camera goes
        rc = node.proc.returncode if node is not None else None

    report = _report(cfg, duration, sent, latency, keys, infos, diag, samples, rss_ready,
                     rss_start, rss_end, threads_end, pub_state, rc, str(log_path))
    return report


def _interval(cfg: SoakConfig, duration: float) -> float:
    if cfg.interval_s:
        return cfg.interval_s
    return 60.0 if duration >= 180 else max(5.0, (duration - cfg.warmup_s) / 5)


def _report(cfg, duration, sent, latency, keys, infos, diag, samples, rss_ready, rss_start,
            rss_end, threads_end, pub_state, rc, log_path) -> dict:
    published = len(sent)
    counts = {
        "published": published,
        "received": _int(diag, "frames received"),
        "lost_in_transport": _int(diag, "frames lost in transport"),
        "processed": _int(diag, "frames processed"),
        "dropped": _int(diag, "frames dropped"),
        "rejected": _int(diag, "frames rejected"),
        "failed": _int(diag, "frames failed"),
        "discarded": _int(diag, "frames discarded"),
        "invalid": _int(diag, "frames invalid"),
        "in_flight": _int(diag, "frames in flight"),
        "labels_received": len(latency),
        "frame_infos_received": infos,
    }
    c = counts
    dropped_all = (c["dropped"] + c["lost_in_transport"] + c["rejected"] + c["failed"]
                   + c["discarded"])
    counts["dropped_all_kinds"] = dropped_all
    counts["unaccounted"] = published - c["processed"] - dropped_all
    accounting = {
        "published = received + lost in transport":
            published == c["received"] + c["lost_in_transport"],
        "received = processed + dropped + rejected + failed + discarded":
            c["received"] == c["processed"] + c["dropped"] + c["rejected"] + c["failed"]
            + c["discarded"],
        "labels received = processed": c["labels_received"] == c["processed"],
        "published = processed + dropped (all kinds)": counts["unaccounted"] == 0,
    }

    # Latency per interval after the warm-up, by publish time.
    measured = duration - cfg.warmup_s
    n = max(1, int(round(measured / _interval(cfg, duration))))
    step = measured / n
    rows = []
    for k in range(n):
        lo, hi = cfg.warmup_s + k * step, cfg.warmup_s + (k + 1) * step
        in_row = [ns for t, ns in sent if lo <= t < hi]
        lat = np.array([latency[ns] for ns in in_row if ns in latency])
        key_lat = np.array([latency[ns] for ns in in_row if ns in latency and ns in keys])
        rss = [s["rss"] for s in samples if lo <= s["t"] < hi + 1 and s["rss"]]
        rows.append({
            "from_s": round(lo, 1), "to_s": round(hi, 1), "published": len(in_row),
            "processed": int(lat.size),
            "output_hz": lat.size / step,
            "median_ms": float(np.median(lat)) if lat.size else None,
            "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "max_ms": float(lat.max()) if lat.size else None,
            "key_median_ms": float(np.median(key_lat)) if key_lat.size else None,
            "rss_mb": _mb(rss[-1]) if rss else None,
        })
    first, last = rows[0]["p95_ms"], rows[-1]["p95_ms"]
    drift = (last / first - 1.0) if first and last else None
    rss_values = [s["rss"] for s in samples if s["rss"]]
    start = rss_start if rss_start is not None else rss_ready
    growth = _mb(rss_end) - _mb(start) if rss_end and start else None
    goals = {
        f"RSS growth < {cfg.max_rss_growth_mb:g} MB":
            growth is not None and growth < cfg.max_rss_growth_mb,
        f"p95 latency flat (last interval within {cfg.max_p95_drift:.0%} of the first)":
            drift is not None and abs(drift) <= cfg.max_p95_drift,
        "no frame unaccounted for": all(accounting.values()),
    }
    all_lat = np.array(list(latency.values())) if latency else np.array([])
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "node_params"}
        | {"node_params": list(cfg.node_params)},
        "duration_s": duration,
        "publisher": {"achieved_hz": published / duration,
                      "slots_skipped": pub_state["skipped"],
                      "late_max_ms": pub_state["late_max"] * 1e3},
        "counts": counts,
        "accounting": accounting,
        "intervals": rows,
        "latency": {
            "median_ms": float(np.median(all_lat)) if all_lat.size else None,
            "p95_ms": float(np.percentile(all_lat, 95)) if all_lat.size else None,
            "p95_drift": drift,
        },
        "memory": {
            "rss_ready_mb": _mb(rss_ready), "rss_start_mb": _mb(start),
            "rss_end_mb": _mb(rss_end), "rss_max_mb": _mb(max(rss_values)) if rss_values
            else None, "rss_growth_mb": growth,
            "threads_end": threads_end,
            "threads_max": max((s["threads"] or 0) for s in samples) if samples else None,
        },
        "node": {"exit_status": rc, "log": log_path,
                 "diagnostics_message": diag.get("__message", ""),
                 "errors": diag.get("errors", ""), "errors_by_kind":
                 diag.get("errors by kind", ""), "forced_key_frames":
                 diag.get("forced key frames", ""), "model": diag.get("model", ""),
                 "mode": diag.get("mode", ""), "device": diag.get("device", ""),
                 "key_frame_ratio": diag.get("key frame ratio", "")},
        "goals": goals,
        "passed": all(goals.values()),
    }


def format_report(r: dict) -> str:
    c, m, cfg = r["counts"], r["memory"], r["config"]

    def ms(v):
        return "    n/a" if v is None else f"{v:7.1f}"

    lines = [
        f"davss soak: {cfg['width']}x{cfg['height']} rgb8 at {cfg['rate']:g} Hz for "
        f"{r['duration_s'] / 60:g} min; node: {r['node']['model']}, mode "
        f"{r['node']['mode']} on {r['node']['device']}; warm-up {cfg['warmup_s']:g} s "
        "excluded from the table",
        f"publisher: {c['published']} frames, {r['publisher']['achieved_hz']:.2f} Hz achieved"
        f", {r['publisher']['slots_skipped']} slots skipped (late max "
        f"{r['publisher']['late_max_ms']:.1f} ms)",
        "",
        "latency, camera publish -> labels received (ms):",
        "      from      to  published  processed  out Hz   median     p95     max  key med"
        "  RSS MB",
    ]
    for row in r["intervals"]:
        lines.append(
            f"  {row['from_s']:6.0f}s {row['to_s']:6.0f}s  {row['published']:9d}  "
            f"{row['processed']:9d}  {row['output_hz']:6.2f}  {ms(row['median_ms'])} "
            f"{ms(row['p95_ms'])} {ms(row['max_ms'])}  {ms(row['key_median_ms'])} "
            f"{'    n/a' if row['rss_mb'] is None else format(row['rss_mb'], '7.1f')}")
    lat = r["latency"]
    drift = "n/a" if lat["p95_drift"] is None else f"{lat['p95_drift']:+.1%}"
    lines += [
        f"  overall median {ms(lat['median_ms']).strip()} ms, p95 "
        f"{ms(lat['p95_ms']).strip()} ms; p95 last vs first interval {drift}",
        "",
        f"node memory: RSS at ready {m['rss_ready_mb']:.1f} MB, after warm-up "
        f"{m['rss_start_mb']:.1f} MB, end {m['rss_end_mb']:.1f} MB, max "
        f"{m['rss_max_mb']:.1f} MB; growth {m['rss_growth_mb']:+.1f} MB; threads "
        f"{m['threads_end']} (max {m['threads_max']})",
        "",
        f"frames: published {c['published']} = processed {c['processed']} + dropped "
        f"{c['dropped_all_kinds']} (newest-wins {c['dropped']}, lost in transport "
        f"{c['lost_in_transport']}, rejected {c['rejected']}, failed {c['failed']}, "
        f"discarded {c['discarded']}); unaccounted {c['unaccounted']}",
        f"        node received {c['received']}, labels received here "
        f"{c['labels_received']}, frame_info {c['frame_infos_received']}, invalid outputs "
        f"{c['invalid']}",
    ]
    for name, ok in r["accounting"].items():
        lines.append(f"  [{'ok' if ok else 'MISMATCH'}] {name}")
    node = r["node"]
    lines += ["", f"node: exit status {node['exit_status']}, errors {node['errors']} "
              f"({node['errors_by_kind']}), forced key frames {node['forced_key_frames']}, "
              f"key frame ratio {node['key_frame_ratio']}; log {node['log']}", "", "goals:"]
    for name, ok in r["goals"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    lines.append(f"soak {'PASSED' if r['passed'] else 'FAILED'}")
    return "\n".join(lines)


def _int(d: dict, key: str) -> int:
    try:
        return int(d.get(key, 0))
    except (TypeError, ValueError):
        return 0


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--size", type=_size, default=(1280, 720), metavar="WxH",
                        help="camera frame size (default 1280x720)")
    parser.add_argument("--config", default="cpu", help="model preset or YAML (model.config)")
    parser.add_argument("--checkpoint", default="",
                        help="model.checkpoint (default: the shipped model for the cpu "
                             "configuration; \"untrained\" for random weights)")
    parser.add_argument("--device", default="cpu", help="model.device (default cpu)")
    parser.add_argument("--warmup", type=float, default=10.0, metavar="S",
                        help="seconds excluded from the latency table (default 10)")
    parser.add_argument("--interval", type=float, default=None, metavar="S",
                        help="table row length (default 60 s; a fifth of short runs)")
    parser.add_argument("--all-outputs", action="store_true",
                        help="also subscribe to labels_color, overlay and distortion")
    parser.add_argument("--max-rss-growth", type=float, default=50.0, metavar="MB")
    parser.add_argument("--max-p95-drift", type=float, default=0.20, metavar="FRACTION")
    parser.add_argument("--domain-id", type=int, default=None)
    parser.add_argument("--node-log", default=None, metavar="PATH",
                        help="the node's output (default: a file in the temp directory)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="an extra node parameter (repeatable), e.g. model.mode:=dff")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    width, height = args.size
    cfg = SoakConfig(minutes=args.minutes, rate=args.rate, width=width, height=height,
                     config=args.config, checkpoint=args.checkpoint, device=args.device,
                     warmup_s=args.warmup, interval_s=args.interval,
                     all_outputs=args.all_outputs, max_rss_growth_mb=args.max_rss_growth,
                     max_p95_drift=args.max_p95_drift, domain_id=args.domain_id,
                     node_log=args.node_log, node_params=list(args.param))
    try:
        report = run_soak(cfg)
    except (RuntimeError, ValueError) as exc:
        print(f"davss soak: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m davss_ros.tools.soak",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
