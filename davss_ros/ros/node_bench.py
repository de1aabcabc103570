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
import threading
import time

import numpy as np

from .env import ensure_large_data_transport

OUTPUT_TOPICS = ("labels", "labels_color", "overlay", "distortion")


def run_node_bench(width: int = 640, height: int = 480, frames: int = 60, *,
                   config: str | None = None, checkpoint: str | None = None,
                   device: str = "auto", warmup: int = 5,
                   subscribe: tuple[str, ...] = ("labels",), key_interval: int = 5,
                   domain_id: int | None = None, timeout: float = 30.0) -> dict:
    """Measure end-to-end latency and node overhead at ``width`` x ``height``.

    ``subscribe``: outputs the camera node subscribes to (``labels`` always; colour, overlay
    and distortion are computed only when subscribed). ``warmup`` frames are not counted.
    Returns medians and 95th percentiles in milliseconds.
    """
    ensure_large_data_transport()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from davss_msgs.msg import FrameInfo

    from .image import new_image
    from .node import SUCCESS, SegmenterNode
    from .spin import BackgroundSpin

    topics = ("labels",) + tuple(t for t in subscribe if t in OUTPUT_TOPICS and t != "labels")
    domain = domain_id if domain_id is not None else 1 + (os.getpid() * 31) % 200
    overrides = {"model.device": device, "schedule.policy": "fixed",
                 "schedule.key_interval": key_interval}
    if config:
        overrides["model.config"] = config
    if checkpoint:
        overrides["model.checkpoint"] = checkpoint

    node_ctx, cam_ctx = rclpy.Context(), rclpy.Context()
    rclpy.init(context=node_ctx, domain_id=domain)
    rclpy.init(context=cam_ctx, domain_id=domain)
    node = cam = None
    executors: list = []
    threads: list = []
    try:
        node = SegmenterNode(
            context=node_ctx, namespace="bench",
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        if node.trigger_configure() != SUCCESS:
            raise RuntimeError(f"the node did not configure: {node._configure_error}")
        if node.trigger_activate() != SUCCESS:
            raise RuntimeError("the node did not activate")

        cam = rclpy.create_node("davss_bench_camera", context=cam_ctx)
        cond = threading.Condition()
        arrivals: dict[str, dict[tuple[int, int], float]] = {t: {} for t in topics}
        infos: dict[tuple[int, int], FrameInfo] = {}

        def on_output(msg, topic):
            now = time.perf_counter()
            with cond:
                arrivals[topic][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
                cond.notify_all()

        def on_info(msg):
            with cond:
                infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
                cond.notify_all()

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        subs = [cam.create_subscription(
            Image, f"/bench/davss_segmenter/{t}",
            lambda m, t=t: on_output(m, t), reliable) for t in topics]
        subs.append(cam.create_subscription(
            FrameInfo, "/bench/davss_segmenter/frame_info", on_info, reliable))
        pub = cam.create_publisher(Image, "/bench/image", reliable)

        for ctx, n in ((node_ctx, node), (cam_ctx, cam)):
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(n)
            executors.append(ex)
            threads.append(BackgroundSpin(ex, name="node_bench_spin"))

        deadline = time.monotonic() + timeout
        while not (pub.get_subscription_count() > 0 and all(
                s.get_publisher_count() > 0 for s in subs)):
            if time.monotonic() > deadline:
                raise RuntimeError("camera and node did not discover each other")
            time.sleep(0.05)
        time.sleep(0.5)  # let the node's side finish matching the camera's subscriptions

        rng = np.random.default_rng(0)
        texture = rng.integers(0, 256, (height, width + frames + warmup, 3), dtype=np.uint8)
        e2e, pipeline, node_total, overhead, extra = [], [], [], [], []
        pipeline_by_index = {}
        for i in range(warmup + frames):
            msg, view = new_image(height, width, "rgb8")
            np.copyto(view, texture[:, i:i + width])
            msg.header.frame_id = "camera"
            msg.header.stamp = cam.get_clock().now().to_msg()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            sent = time.perf_counter()
            pub.publish(msg)
            with cond:
                ok = cond.wait_for(lambda key=key: key in infos and all(
                    key in arrivals[t] for t in topics), timeout=timeout)
            if not ok:
                raise RuntimeError(f"frame {i}: no outputs within {timeout} s")
            info = infos[key]
            for rec in list(node.stats.frames):
                pipeline_by_index[rec.frame_index] = rec.pipeline_ms
            if i < warmup:
                continue
            pipe_ms = pipeline_by_index[info.frame_index]
            lat = (arrivals["labels"][key] - sent) * 1e3
            last = max(arrivals[t][key] for t in topics)
            e2e.append(lat)
            pipeline.append(pipe_ms)
            node_total.append(info.total_ms)
            overhead.append(lat - pipe_ms)
            extra.append((last - sent) * 1e3 - pipe_ms)

        def stats(values: list[float], name: str) -> dict:
            a = np.asarray(values)
            return {f"{name}_median_ms": float(np.median(a)),
                    f"{name}_p95_ms": float(np.percentile(a, 95))}

        result = {
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
        return result
    finally:
        stopped = all([t.stop() for t in threads])  # before destroying anything: see spin.py
        if stopped:
            for ex in executors:
                ex.shutdown(timeout_sec=2.0)
        if node is not None:
            node.close()
            if stopped:
                node.destroy_node()
        if cam is not None and stopped:
            cam.destroy_node()
        for ctx in (node_ctx, cam_ctx):
            rclpy.try_shutdown(context=ctx)


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
    camera = getattr(args, "camera", None)
    if camera:
        width, height = (int(v) for v in str(camera).lower().split("x"))
    result = run_node_bench(
        width, height,
        getattr(args, "frames", 60), config=getattr(args, "config", None),
        checkpoint=getattr(args, "checkpoint", None), device=getattr(args, "device", "auto"),
        key_interval=getattr(args, "key_interval", 5),
        subscribe=OUTPUT_TOPICS if getattr(args, "all_outputs", False) else ("labels",))
    print(format_result(result))
    out = getattr(args, "json", None)
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")
    elif out:
        print(json.dumps(result, indent=2))
    return 0


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

    p = argparse.ArgumentParser(prog="python -m davss_ros.ros.node_bench",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
