"""The node with an external key segmenter: an 11-class ONNX model end to end (labels,
colour image, LabelInfo), and bad key-segmenter files refused at configure with the node
left up to configure again. Real rclpy, FastDDS and onnxruntime."""

import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from test_node import (
    TIMEOUT,
    H,
    Probe,
    Segmenter,
    W,
    _domain_id,
    frame,
    send_closed_loop,
    stamp_key,
)

from davss_msgs.msg import FrameInfo
from davss_ros.ros.label_info import label_info_class, read_label_info
from davss_ros.ros.qos import latched_qos

pytest.importorskip("onnxruntime")

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
CLASSES = [f"camvid_{i}" for i in range(11)]


@pytest.fixture(scope="module")
def onnx_11(tmp_path_factory):
    """A randomly initialised 11-class segmenter exported to ONNX with its sidecar."""
    import torch

    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.config import load_config
    from davss_ros.export import export_key_segmenter
    from davss_ros.model import build_davss_net

    folder = tmp_path_factory.mktemp("key")
    cfg = load_config({"model": {"num_classes": 11, "input_height": H, "input_width": W,
                                 "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}})
    torch.manual_seed(11)
    ck = save_checkpoint(folder / "camvid11.pt", config=cfg,
                         state_dict=build_davss_net(cfg.model).state_dict(),
                         class_names=CLASSES)
    figures = export_key_segmenter(ck, folder / "camvid11.onnx", "onnx", frames=2)
    return figures["path"] if "path" in figures else str(folder / "camvid11.onnx")


def _overrides(**extra):
    return {"model.checkpoint": "untrained", "model.device": "cpu", "input.width": W,
            "input.height": H, "schedule.key_interval": 3, **extra}


def test_an_11_class_onnx_key_segmenter_runs_in_the_node(onnx_11):
    domain = _domain_id()
    probe = Probe(domain)
    for topic, msg_type in [("/davss_segmenter/labels", Image),
                            ("/davss_segmenter/labels_color", Image),
                            ("/davss_segmenter/frame_info", FrameInfo)]:
        probe.listen(topic, msg_type)
    probe.listen("/davss_segmenter/label_info", label_info_class(), latched_qos())
    seg = Segmenter(domain, _overrides(**{"model.key_segmenter": str(onnx_11)}), share=probe)
    try:
        node = seg.node
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert node.trigger_activate() == SUCCESS
        assert node.segmenter.key_segmenter.kind == "onnx"
        assert node.segmenter.num_classes == 11
        probe.wait_matched(["/image"], ["/davss_segmenter/labels",
                                        "/davss_segmenter/labels_color",
                                        "/davss_segmenter/frame_info"])
        seg.wait_input_matched(1)  # the node's reader has the camera's writer
        infos = send_closed_loop(probe, "/image", "/davss_segmenter/frame_info",
                                 [frame(i) for i in range(4)])
        assert infos[0].is_key_frame and not all(m.is_key_frame for m in infos)
        assert probe.wait(lambda: len(probe.messages("/davss_segmenter/labels")) >= 4
                          and probe.messages("/davss_segmenter/label_info"), timeout=TIMEOUT)
        table = read_label_info(probe.messages("/davss_segmenter/label_info")[-1])
        assert table.class_names == CLASSES
        for msg in probe.messages("/davss_segmenter/labels"):
            ids = np.frombuffer(bytes(msg.data), np.uint8)
            assert ids.max() < 11 and msg.encoding == "mono8"
        colour = probe.messages("/davss_segmenter/labels_color")[-1]
        pixels = np.frombuffer(bytes(colour.data), np.uint8).reshape(-1, 3)
        palette = np.asarray(node.segmenter.palette, np.uint8).reshape(11, 3)
        assert all((palette == p).all(1).any() for p in np.unique(pixels, axis=0))
    finally:
        seg.close()
        probe.close()


def test_bad_key_segmenter_files_fail_configure_with_one_line_and_the_node_recovers(
        onnx_11, tmp_path):
    domain = _domain_id()
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("this is not a network")
    seg = Segmenter(domain, _overrides(**{"model.key_segmenter": str(tmp_path / "gone.onnx")}))
    try:
        node = seg.node
        for path, words in ((tmp_path / "gone.onnx", "gone.onnx"), (not_onnx, "notes.onnx")):
            node.set_parameters([Parameter("model.key_segmenter", value=str(path))])
            assert node.trigger_configure() == FAILURE
            assert node.state == "unconfigured" and node.segmenter is None
            assert words in node.configure_error and "\n" not in node.configure_error
        node.set_parameters([Parameter("model.key_segmenter", value=str(onnx_11))])
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert node.segmenter.num_classes == 11
        assert node.trigger_cleanup() == SUCCESS
        # the 19-class shipped model cannot take 11 classes: said at configure
        node.set_parameters([Parameter("model.checkpoint", value="")])
        assert node.trigger_configure() == FAILURE
        assert "11 classes" in node.configure_error and "19" in node.configure_error
    finally:
        seg.close()


def test_an_exported_key_segmenter_labels_like_the_native_one_in_every_mode(tmp_path):
    """The native DeepLabv3+ of a checkpoint and its ONNX export, through the node on the
    same frames, in each mode: (nearly) the same labels."""
    import torch

    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.config import load_config
    from davss_ros.export import export_key_segmenter
    from davss_ros.model import build_davss_net

    cfg = load_config({"model": {"input_height": H, "input_width": W,
                                 "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}})
    torch.manual_seed(5)
    ck = save_checkpoint(tmp_path / "small.pt", config=cfg,
                         state_dict=build_davss_net(cfg.model).state_dict())
    export_key_segmenter(ck, tmp_path / "small.onnx", "onnx", frames=2)
    domain = _domain_id()
    probe = Probe(domain)
    probe.listen("/davss_segmenter/labels", Image)
    probe.listen("/davss_segmenter/frame_info", FrameInfo)
    seg = Segmenter(domain, _overrides(**{"model.checkpoint": str(ck)}), share=probe)
    frames = [frame(i) for i in range(6)]
    try:
        node = seg.node
        for mode in ("per_frame", "dff", "accel", "davss"):
            labels = {}
            for key in ("", str(tmp_path / "small.onnx")):
                node.set_parameters([Parameter("model.mode", value=mode),
                                     Parameter("model.key_segmenter", value=key)])
                assert node.trigger_configure() == SUCCESS, node.configure_error
                assert node.trigger_activate() == SUCCESS
                probe.wait_matched(["/image"], ["/davss_segmenter/labels",
                                                "/davss_segmenter/frame_info"])
                seg.wait_input_matched(1)  # the node's reader has the camera's writer
                probe.clear()
                send_closed_loop(probe, "/image", "/davss_segmenter/frame_info", frames)
                assert probe.wait(
                    lambda: len(probe.messages("/davss_segmenter/labels")) >= len(frames))
                first = {}  # per stamp, the first answer (a resent first frame may repeat)
                for m in probe.messages("/davss_segmenter/labels"):
                    first.setdefault(stamp_key(m.header), np.frombuffer(bytes(m.data), np.uint8))
                labels[key or "native"] = np.stack([first[stamp_key(f.header)]
                                                    for f in frames])
                assert node.trigger_deactivate() == SUCCESS
                assert node.trigger_cleanup() == SUCCESS
            a, b = labels.values()
            assert (a == b).mean() >= 0.995, mode
    finally:
        seg.close()
        probe.close()
