"""``davss bench --node``: what the ROS node adds on top of the pipeline.

The segmenter node runs in this process in its own rclpy Context (its own DDS participant);
a camera node in a second Context publishes frames and records the outputs, so every
message really crosses FastDDS. Frames are sent closed-loop: the next one when the previous
one's labels arrived, so nothing queues or drops and each frame's latency is its own.

Per frame:
- end-to-end latency: camera ``publish()`` -> ``~/labels`` arrival at the camera node;
- pipeline time: ``VideoSegmenter.step``'s own total (``timings_ms['total']``);
- node overhead = end-to-end - pipeline: transport both ways, (de)serialisation, the
  executor and worker hand-off, image decoding and encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

OUTPUT_TOPICS = ("labels", "labels_color", "overlay", "distortion")


class _Rig:
    """The segmenter node and a camera in two rclpy Contexts of one process (the harness),
    matched over FastDDS; outputs and FrameInfos recorded by stamp. A context manager."""

    def __init__(self, overrides: dict, topics: tuple[str, ...], *, domain_id: int | None,
                 timeout: float) -> None:
        self.overrides, self.topics, self.timeout = overrides, topics, timeout
        self.domain_id = domain_id

    def __enter__(self) -> _Rig:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from davss_msgs.msg import FrameInfo

        from .harness import Harness, HarnessError, unique_domain_id

        self.harness = Harness(self.domain_id if self.domain_id is not None
                               else unique_domain_id(salt=3))
        try:
            host = self.harness.host(self.overrides, namespace="bench", threads=1)
            self.node = host.node
            try:
                host.bring_up()
            except HarnessError as exc:
                raise RuntimeError(str(exc)) from None
            self.cam = self.harness.camera(name="davss_bench_camera", threads=1)
            self.cond = threading.Condition()
            self.arrivals: dict[str, dict[tuple[int, int], float]] = {t: {} for t in self.topics}
            self.infos: dict = {}

            def on_output(msg, topic):
                now = time.perf_counter()
                with self.cond:
                    self.arrivals[topic][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
                    self.cond.notify_all()

            def on_info(msg):
                with self.cond:
                    self.infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
                    self.cond.notify_all()

            reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
            outputs = [f"/bench/davss_segmenter/{t}" for t in self.topics]
            for t, topic in zip(self.topics, outputs, strict=True):
                self.cam.node.create_subscription(
                    Image, topic, lambda m, t=t: on_output(m, t), reliable)
            self.cam.node.create_subscription(
                FrameInfo, "/bench/davss_segmenter/frame_info", on_info,
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            self.pub = self.cam.publisher("/bench/image", Image, reliable)
            try:
                host.wait_input_matched(timeout=self.timeout)
                host.wait_outputs_seen(outputs + ["/bench/davss_segmenter/frame_info"],
                                       timeout=self.timeout)
                self.cam.wait_matched(["/bench/image"], [], timeout=self.timeout)
            except (HarnessError, AssertionError) as exc:
                raise RuntimeError(f"camera and node did not discover each other: {exc}") \
                    from None
        except BaseException:
            self.harness.close()
            raise
        return self

    def frame(self, texture: np.ndarray, i: int, width: int, height: int):
        from davss_ros.ros.image import new_image

        msg, view = new_image(height, width, "rgb8")
        np.copyto(view, texture[:, i % (texture.shape[1] - width):][:, :width])
        msg.header.frame_id = "camera"
        msg.header.stamp = self.cam.node.get_clock().now().to_msg()
        return msg, (msg.header.stamp.sec, msg.header.stamp.nanosec)

    def __exit__(self, *exc) -> None:
        self.harness.close()


def _overrides(config, checkpoint, device, key_interval, key_segmenter=None) -> dict:
    overrides = {"model.device": device, "schedule.policy": "fixed",
                 "schedule.key_interval": key_interval}
    if key_segmenter:
        overrides["model.key_segmenter"] = str(key_segmenter)
    if config:
        overrides["model.config"] = config
    if checkpoint:
        overrides["model.checkpoint"] = checkpoint
    return overrides


def run_node_bench(width: int = 640, height: int = 480, frames: int = 60, *,
                   config: str | None = None, checkpoint: str | None = None,
                   device: str = "auto", warmup: int = 5,
                   subscribe: tuple[str, ...] = ("labels",), key_interval: int = 5,
                   domain_id: int | None = None, timeout: float = 30.0,
                   key_segmenter: str | None = None) -> dict:
    """Measure end-to-end latency and node overhead at ``width`` x ``height``.

    ``subscribe``: outputs the camera node subscribes to (``labels`` always; colour, overlay
    and distortion are computed only when subscribed). ``warmup`` frames are not counted.
    Returns medians and 95th percentiles in milliseconds.
    """
    topics = ("labels",) + tuple(t for t in subscribe if t in OUTPUT_TOPICS and t != "labels")
    with _Rig(_overrides(config, checkpoint, device, key_interval, key_segmenter), topics,
              domain_id=domain_id, timeout=timeout) as rig:
        node = rig.node
        rng = np.random.default_rng(0)
        texture = rng.integers(0, 256, (height, width + frames + warmup + 1, 3), dtype=np.uint8)
        e2e, pipeline, node_total, overhead, extra = [], [], [], [], []
        pipeline_by_index = {}
        for i in range(warmup + frames):
            msg, key = rig.frame(texture, i, width, height)
            sent = time.perf_counter()
            rig.pub.publish(msg)
            with rig.cond:
                ok = rig.cond.wait_for(lambda key=key: key in rig.infos and all(
                    key in rig.arrivals[t] for t in topics), timeout=timeout)
            if not ok:
                raise RuntimeError(f"frame {i}: no outputs within {timeout} s")
            info = rig.infos[key]
            # The node records a frame after its last publish (frame_info), on its worker
            # thread, so the record may come a moment after the outputs have arrived here.
            deadline = time.monotonic() + timeout
            while True:
                for rec in list(node.stats.frames):
                    pipeline_by_index[rec.frame_index] = rec.pipeline_ms
                if info.frame_index in pipeline_by_index:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"frame {i}: the node published frame "
                                       f"{info.frame_index} but never recorded it")
                time.sleep(0.001)
            if i < warmup:
                continue
            pipe_ms = pipeline_by_index[info.frame_index]
            lat = (rig.arrivals["labels"][key] - sent) * 1e3
            last = max(rig.arrivals[t][key] for t in topics)
            e2e.append(lat)
            pipeline.append(pipe_ms)
            node_total.append(info.total_ms)
            overhead.append(lat - pipe_ms)
            extra.append((last - sent) * 1e3 - pipe_ms)

        def stats(values: list[float], name: str) -> dict:
            a = np.asarray(values)
            return {f"{name}_median_ms": float(np.median(a)),
                    f"{name}_p95_ms": float(np.percentile(a, 95))}

        return {
            "width": width, "height": height, "frames": frames,
            "network_input": [node.segmenter.config.model.input_width,
                              node.segmenter.config.model.input_height],
            "device": str(node.segmenter.device), "mode": node.segmenter.mode,
            "subscribed": list(topics), "dropped": int(node.stats.dropped),
            **stats(e2e, "e2e"), **stats(pipeline, "pipeline"),
            **stats(overhead, "node_overhead"),
            **stats(node_total, "node_receive_to_publish"),
            **stats(extra, "all_outputs_overhead"),
        }


# Drop share below which a rate counts as held (the ros2_benchmark definition).
PEAK_MAX_DROPPED = 0.05


def run_peak(width: int = 640, height: int = 480, *, seconds: float = 3.0,
             config: str | None = None, checkpoint: str | None = None, device: str = "auto",
             key_interval: int = 5, rates: tuple[float, ...] | None = None,
             domain_id: int | None = None, timeout: float = 30.0, log=print,
             key_segmenter: str | None = None) -> dict:
    """The highest camera rate the node holds with under 5 % of frames dropped.

    Frames are published open-loop at each rate for ``seconds`` (after a second of warm-up
    at that rate); a frame counts as dropped when no FrameInfo with its stamp came back.
    Rates double from 5 Hz until one fails, then a bisection narrows the edge to 5 %.
    """
    with _Rig(_overrides(config, checkpoint, device, key_interval, key_segmenter),
              ("labels",), domain_id=domain_id, timeout=timeout) as rig:
        rng = np.random.default_rng(1)
        texture = rng.integers(0, 256, (height, width + 64, 3), dtype=np.uint8)
        trials: list[dict] = []
        counter = [0]

        def trial(rate: float) -> dict:
            period = 1.0 / rate
            sent_keys = []
            n_warm, n = int(rate), max(int(rate * seconds), 10)
            t_next = time.perf_counter()
            for i in range(n_warm + n):
                msg, key = rig.frame(texture, counter[0], width, height)
                counter[0] += 1
                rig.pub.publish(msg)
                if i >= n_warm:
                    sent_keys.append(key)
                t_next += period
                time.sleep(max(0.0, t_next - time.perf_counter()))
            time.sleep(min(2.0, 10 * period) + 0.5)  # the last frames' outputs
            with rig.cond:
                answered = sum(k in rig.infos for k in sent_keys)
            row = {"rate_hz": round(rate, 2), "sent": len(sent_keys), "answered": answered,
                   "dropped_share": round(1.0 - answered / len(sent_keys), 4)}
            row["held"] = row["dropped_share"] < PEAK_MAX_DROPPED
            trials.append(row)
            log(f"  {row['rate_hz']:7.2f} Hz: {answered}/{len(sent_keys)} answered, "
                f"{100 * row['dropped_share']:.1f}% dropped -> "
                f"{'held' if row['held'] else 'not held'}")
            return row

        held, failed = 0.0, None
        for rate in (rates or (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)):
            if trial(rate)["held"]:
                held = rate
            else:
                failed = rate
                break
        if failed is not None and held and not rates:
            lo, hi = held, failed
            while hi / lo > 1.1:
                mid = (lo * hi) ** 0.5
                if trial(mid)["held"]:
                    lo = mid
                else:
                    hi = mid
            held = lo
        node = rig.node
        return {"width": width, "height": height, "mode": node.segmenter.mode,
                "device": str(node.segmenter.device), "key_interval": key_interval,
                "network_input": [node.segmenter.config.model.input_width,
                                  node.segmenter.config.model.input_height],
                "peak_rate_hz": round(held, 2), "max_dropped_share": PEAK_MAX_DROPPED,
                "trials": trials}


def format_result(r: dict) -> str:
    lines = [
        f"node bench: {r['width']}x{r['height']} camera, network "
        f"{r['network_input'][0]}x{r['network_input'][1]}, {r['mode']} on {r['device']}, "
        f"{r['frames']} frames closed-loop, subscribed: {', '.join(r['subscribed'])}",
        f"  end-to-end (publish -> labels)  median {r['e2e_median_ms']:7.2f} ms  "
        f"p95 {r['e2e_p95_ms']:7.2f} ms",
        f"  pipeline (VideoSegmenter.step)  median {r['pipeline_median_ms']:7.2f} ms  "
        f"p95 {r['pipeline_p95_ms']:7.2f} ms",
        f"  node overhead (e2e - pipeline)  median {r['node_overhead_median_ms']:7.2f} ms  "
        f"p95 {r['node_overhead_p95_ms']:7.2f} ms",
        f"  overhead until the last output  median {r['all_outputs_overhead_median_ms']:7.2f} ms"
        f"  p95 {r['all_outputs_overhead_p95_ms']:7.2f} ms",
        f"  dropped frames: {r['dropped']}",
    ]
    return "\n".join(lines)


def main_from_args(args: argparse.Namespace) -> int:
    """``davss bench --node``: takes bench's options (config, checkpoint, frames, device,
    key_interval, threads, json path) where present, 640x480 frames unless told otherwise."""
    threads = getattr(args, "threads", 0)
    if threads:
        import torch

        torch.set_num_threads(threads)
    width, height = getattr(args, "width", 640), getattr(args, "height", 480)
    keys = list(getattr(args, "key_segmenter", None) or [])
    if len(keys) > 1:
        print("davss bench --node: give one --key-segmenter (the node runs one)",
              file=sys.stderr)
        return 2
    key_segmenter = str(keys[0]) if keys else None
    camera = getattr(args, "camera", None)
    if camera:
        width, height = (int(v) for v in str(camera).lower().split("x"))
    if getattr(args, "peak", False):
        print(f"davss bench --node --peak: {width}x{height} camera, open-loop at rising "
              f"rates, held = under {100 * PEAK_MAX_DROPPED:.0f}% of frames dropped")
        result = run_peak(width, height, config=getattr(args, "config", None),
                          checkpoint=getattr(args, "checkpoint", None),
                          device=getattr(args, "device", "auto"),
                          key_interval=getattr(args, "key_interval", 5),
                          key_segmenter=key_segmenter)
        print(f"peak rate held: {result['peak_rate_hz']:.1f} frames/s ({result['mode']}, key "
              f"interval {result['key_interval']}, network {result['network_input'][0]}x"
              f"{result['network_input'][1]} on {result['device']})")
        _write_json(getattr(args, "json", None), result)
        return 0
    result = run_node_bench(
        width, height,
        getattr(args, "frames", 60), config=getattr(args, "config", None),
        checkpoint=getattr(args, "checkpoint", None), device=getattr(args, "device", "auto"),
        key_interval=getattr(args, "key_interval", 5), key_segmenter=key_segmenter,
        subscribe=OUTPUT_TOPICS if getattr(args, "all_outputs", False) else ("labels",))
    print(format_result(result))
    _write_json(getattr(args, "json", None), result)
    return 0


def _write_json(out, result: dict) -> None:
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")
    elif out:
        print(json.dumps(result, indent=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--config", help="model preset or YAML (default: cpu)")
    parser.add_argument("--checkpoint", help="checkpoint (default: the shipped model for the "
                        "cpu configuration; \"untrained\" for random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--all-outputs", action="store_true",
                        help="also subscribe to labels_color, overlay and distortion")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    return main_from_args(args)


if __name__ == "__main__":
    import sys

    p = argparse.ArgumentParser(prog="python -m davss_ros.tools.node_bench",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
