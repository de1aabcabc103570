"""Key segmenters (davss_ros/segmenters): native, TorchScript and ONNX (real onnxruntime)
behind one contract, their declarations, their errors, and ``davss export --onnx/
--torchscript``."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from davss_ros import cli
from davss_ros.checkpoint import file_sha256, save_checkpoint
from davss_ros.config import load_config
from davss_ros.export import export_key_segmenter, render_frames
from davss_ros.model import build_davss_net, fold_batchnorm
from davss_ros.segmenters import (
    DECLARATION_FILE,
    DECLARATION_KEY,
    KEY_SEGMENTER_KINDS,
    KeySegmenterError,
    NativeSegmenter,
    OnnxSegmenter,
    SegmenterInfo,
    TorchScriptSegmenter,
    declaration_json,
    load_key_segmenter,
    sidecar_path,
)

H, W = 64, 128
# Exported vs eager logits: float32 kernels of another library sum in another order (and
# BatchNorm is folded); on these networks the difference stays near 1e-5.
LOGIT_TOL = 1e-4


def _config(num_classes: int = 5):
    return load_config({"model": {"input_height": H, "input_width": W,
                                  "num_classes": num_classes,
                                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16,
                                                "width_mult": 0.5}}})


def _checkpoint(path, num_classes: int = 5, seed: int = 1):
    cfg = _config(num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_davss_net(cfg.model)
    save_checkpoint(path, config=cfg, state_dict=net.state_dict(), meta={"untrained": True})
    return path, net


def _info(n: int = 3, **fields) -> SegmenterInfo:
    return SegmenterInfo(class_names=tuple(f"c{i}" for i in range(n)),
                         palette=tuple((i, i, i) for i in range(n)), **fields)


def _frames(n: int = 3) -> list[torch.Tensor]:
    return [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0
            for f in render_frames(H, W, n, seed=5)]


def _save_onnx(module: nn.Module, path, info: SegmenterInfo | None = None,
               size: tuple[int, int] = (H, W)):
    """A module as an ONNX file (static size), its declaration in the metadata if given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, *size),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    if info is not None:
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = DECLARATION_KEY, declaration_json(info)
        onnx.save(model, str(path))
    return path


def _save_ts(module: nn.Module, path, info: SegmenterInfo | None = None):
    extra = {DECLARATION_FILE: declaration_json(info)} if info is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, deprecated in 2.13
        torch.jit.save(torch.jit.script(module.eval()), str(path), _extra_files=extra)
    return path


def _save(kind: str, module: nn.Module, path, info: SegmenterInfo | None = None):
    return (_save_onnx if kind == "onnx" else _save_ts)(module, path, info)


class Pool(nn.Module):
    """Logits = the input's local means at a stride (1: the input itself)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x * 1.0
        return F.avg_pool2d(x, self.stride)


class Rank3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4).mean(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small untrained cpu-preset model: its checkpoint, network and ONNX + TorchScript
    exports (with the export's figures)."""
    root = tmp_path_factory.mktemp("exported")
    ck, net = _checkpoint(root / "tiny.pt")
    out = {"checkpoint": ck, "net": net}
    for kind, name in (("onnx", "seg.onnx"), ("torchscript", "seg.ts")):
        out[kind] = export_key_segmenter(ck, root / name, kind, frames=2)
    return out


def test_registry_names_every_kind():
    assert KEY_SEGMENTER_KINDS == {"native": NativeSegmenter,
                                   "torchscript": TorchScriptSegmenter, "onnx": OnnxSegmenter}


def test_exported_onnx_and_torchscript_give_the_native_logits_and_labels(exported):
    net = exported["net"]
    module = fold_batchnorm(net.segmenter.eval())
    native = NativeSegmenter(module, _info(5))
    for kind, cls in (("onnx", OnnxSegmenter), ("torchscript", TorchScriptSegmenter)):
        figures = exported[kind]
        assert figures["label_agreement"] >= 99.5 and figures["max_abs_logit_diff"] < LOGIT_TOL
        seg = load_key_segmenter(figures["path"])
        assert isinstance(seg, cls) and seg.kind == kind
        assert seg.info.input_size == (H, W) and seg.info.logit_stride == 4
        assert seg.info.class_names == tuple(f"class_{i}" for i in range(5))
        assert str(seg.source) == figures["path"]
        assert seg.sha256 == file_sha256(figures["path"]) == figures["sha256"]
        assert kind in seg.describe() and "5 classes" in seg.describe()
        same = []
        with torch.inference_mode():
            for x in _frames() + [torch.rand(1, 3, H, W)]:
                a, b = native(x), seg(x)
                assert b.dtype == torch.float32 and b.shape == (1, 5, H // 4, W // 4)
                torch.testing.assert_close(b, a, rtol=0, atol=LOGIT_TOL)
                same.append(float((a.argmax(1) == b.argmax(1)).float().mean()))
        assert np.mean(same) >= 0.999, (kind, same)


def test_the_declaration_inside_the_file_serves_without_a_sidecar(exported, tmp_path):
    for kind in ("onnx", "torchscript"):
        path = tmp_path / f"alone.{'onnx' if kind == 'onnx' else 'jit'}"
        shutil.copy(exported[kind]["path"], path)
        seg = load_key_segmenter(path)
        assert seg.kind == kind and seg.num_classes == 5 and seg.info.input_size == (H, W)
        assert seg.info.extra["export"]["source"] == "tiny.pt"


def test_the_sidecar_wins_over_the_embedded_declaration(exported, tmp_path):
    path = tmp_path / "renamed.onnx"
    shutil.copy(exported["onnx"]["path"], path)
    names = ["road", "car", "sky", "tree", "person"]
    sidecar_path(path).write_text(yaml.safe_dump({"class_names": names}))
    seg = load_key_segmenter(path)
    assert seg.info.class_names == tuple(names)
    assert seg.info.input_size == (H, W)  # from the model's static input shape


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_the_declared_normalisation_is_what_the_network_receives(kind, tmp_path):
    # Channel order, value range, mean and std: the network's stride-4 local means of a
    # constant image are exactly what it was fed.
    info = _info(3, channel_order="bgr", value_range=255.0, mean=(10.0, 20.0, 30.0),
                 std=(2.0, 4.0, 8.0))
    seg = load_key_segmenter(_save(kind, Pool(4), tmp_path / f"norm.{kind}", info),
                             kind=kind, input_size=(H, W))
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, H, W).contiguous()
    with torch.inference_mode():
        out = seg(rgb)
    # Channel 0 is blue: (0.6 * 255 - 10) / 2; then green, then red.
    want = torch.tensor([(153.0 - 10) / 2, (102.0 - 20) / 4, (51.0 - 30) / 8])
    torch.testing.assert_close(out, want.view(1, 3, 1, 1).expand_as(out), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
@pytest.mark.parametrize("stride", [1, 8])
def test_logits_of_another_stride_are_resampled_to_the_quarter_grid(kind, stride, tmp_path):
    path = _save(kind, Pool(stride), tmp_path / "s.model", _info(3, logit_stride=stride))
    seg = load_key_segmenter(path, kind=kind)
    x = torch.rand(2, 3, H, W)
    with torch.inference_mode():
        out = seg(x)  # a batch of 2 through a model exported for batch 1 (ONNX)
    native = F.avg_pool2d(x, stride) if stride > 1 else x
    want = F.interpolate(native, size=(H // 4, W // 4), mode="bilinear", align_corners=False)
    assert out.shape == (2, 3, H // 4, W // 4)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_an_eleven_class_model_exported_to_onnx_loads_with_eleven_classes(tmp_path):
    ck, _ = _checkpoint(tmp_path / "eleven.pt", num_classes=11)
    figures = export_key_segmenter(ck, tmp_path / "eleven.onnx", "onnx", frames=1)
    seg = load_key_segmenter(figures["path"], input_size=(H, W))
    assert seg.num_classes == 11 and len(seg.info.palette) == 11
    with torch.inference_mode():
        assert seg(torch.rand(1, 3, H, W)).shape == (1, 11, H // 4, W // 4)
    # Declared otherwise: refused at load, from the model's static output shape.
    sidecar_path(figures["path"]).write_text(yaml.safe_dump(
        {"class_names": [f"k{i}" for i in range(19)]}))
    with pytest.raises(KeySegmenterError, match=r"gives 11 classes, declared 19"):
        load_key_segmenter(figures["path"])


def test_native_kind_loads_a_davss_checkpoint(exported):
    seg = load_key_segmenter(exported["checkpoint"], kind="native", input_size=(H, W))
    assert isinstance(seg, NativeSegmenter) and seg.num_classes == 5
    assert seg.sha256 == file_sha256(exported["checkpoint"]) and seg.info.input_size is None


def _bad_cases(tmp_path, exported):
    """(path, load keywords, what the message must say) for each unusable file."""
    cases = []
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "junk.onnx").write_bytes(junk)
    cases.append((tmp_path / "junk.onnx", {}, "not an ONNX model"))
    (tmp_path / "notes.onnx").write_text("this is a text file, not a model\n" * 20)
    cases.append((tmp_path / "notes.onnx", {}, "not an ONNX model"))
    (tmp_path / "junk.ts").write_bytes(junk)
    cases.append((tmp_path / "junk.ts", {}, "not a TorchScript archive"))
    # A davss_ros checkpoint is a torch.save file: the message says how to load it.
    shutil.copy(exported["checkpoint"], tmp_path / "weights.pt")
    cases.append((tmp_path / "weights.pt", {}, "not a TorchScript archive.*kind='native'"))
    cases.append((tmp_path / "absent.onnx", {}, "no such file"))
    cases.append((tmp_path / "model.bin", {}, "cannot tell the key-segmenter kind"))
    (tmp_path / "model.bin").write_bytes(b"x")

    bare_onnx = _save_onnx(Pool(4), tmp_path / "bare.onnx")
    cases.append((bare_onnx, {}, r"no declaration found: expected a sidecar .*bare\.onnx\.yaml"
                                 r" or the ONNX metadata_props key 'davss_ros\.segmenter'"))
    bare_ts = _save_ts(Pool(4), tmp_path / "bare.ts")
    cases.append((bare_ts, {}, r"no declaration found: .*bare\.ts\.yaml or the archive's "
                               r"extra file davss_ros\.segmenter\.json"))

    for name, text, says in (
        ("yamlerr", "class_names: [a, b\n", "invalid sidecar: not readable YAML"),
        ("listed", "- a\n- b\n", "invalid sidecar: expected a mapping"),
        ("unknown", "classes: [a, b, c]\n", "invalid sidecar: unknown field.*classes"),
        ("nomean", "class_names: [a, b, c]\nmean: abc\n", "invalid sidecar: mean must be"),
        ("order", "class_names: [a, b, c]\nchannel_order: xyz\n",
         "invalid sidecar: channel_order must be rgb or bgr"),
        ("colours", "class_names: [a, b, c]\npalette: [[0, 0, 0], [1, 1, 1]]\n",
         "invalid sidecar: 3 class names but 2 palette colours"),
        ("stride", "class_names: [a, b, c]\nlogit_stride: 2.5\n",
         "invalid sidecar: logit_stride must be an integer"),
    ):
        path = _save_onnx(Pool(4), tmp_path / f"{name}.onnx")
        sidecar_path(path).write_text(text)
        cases.append((path, {}, says))

    cases.append((_save_onnx(Rank3(), tmp_path / "rank3.onnx", _info(3)), {},
                  r"expected logits N x C x h x w \(rank 4\)"))
    cases.append((_save_ts(Rank3(), tmp_path / "rank3.ts", _info(3, input_size=(H, W))), {},
                  r"expected logits N x C x h x w \(rank 4"))
    cases.append((_save_onnx(Pool(4), tmp_path / "classes.onnx", _info(11)), {},
                  "gives 3 classes, declared 11"))
    cases.append((_save_ts(Pool(4), tmp_path / "classes.ts", _info(19)),
                  {"input_size": (H, W)}, "gives 3 classes, declared 19"))
    cases.append((_save_onnx(Pool(4), tmp_path / "size.onnx", _info(3, input_size=(32, 64))),
                  {}, r"declared input_size 64x32 \(WxH\), the model's input is fixed at "
                      r"128x64"))
    cases.append((_save_onnx(Pool(4), tmp_path / "asked.onnx", _info(3)),
                  {"input_size": (32, 64)}, r"takes 128x64 \(WxH\) input"))
    cases.append((_save_ts(Pool(4), tmp_path / "odd.ts", _info(3)),
                  {"input_size": (30, 64)}, "not a multiple of 4"))
    return cases


def test_every_unusable_file_is_one_line_naming_it(tmp_path, exported):
    for path, kwargs, says in _bad_cases(tmp_path, exported):
        with pytest.raises(KeySegmenterError, match=says) as err:
            load_key_segmenter(path, **kwargs)
        message = str(err.value)
        assert "\n" not in message, message
        assert path.name in message, message
        assert isinstance(err.value, ValueError)


def test_a_frame_of_the_wrong_size_is_refused_naming_the_file(exported):
    seg = load_key_segmenter(exported["onnx"]["path"])
    with pytest.raises(KeySegmenterError, match=r"seg\.onnx: takes 128x64 \(WxH\) input"):
        seg(torch.rand(1, 3, 32, 64))


def test_davss_export_writes_onnx_and_torchscript_with_sidecars(exported, tmp_path, capsys):
    ck = exported["checkpoint"]
    a, b = tmp_path / "out" / "m.onnx", tmp_path / "out" / "m.torchscript"
    assert cli.main(["export", "--checkpoint", str(ck), "--onnx", str(a),
                     "--torchscript", str(b), "--frames", "2"]) == 0
    printed = capsys.readouterr().out
    for path in (a, b):
        assert path.is_file() and sidecar_path(path).is_file()
        assert f"wrote {path}" in printed
        declared = yaml.safe_load(sidecar_path(path).read_text())
        assert declared["input_size"] == [H, W] and declared["logit_stride"] == 4
        assert declared["mean"] == [0.0, 0.0, 0.0] and declared["std"] == [1.0, 1.0, 1.0]
        assert declared["channel_order"] == "rgb" and declared["value_range"] == 1.0
        assert declared["extra"]["export"]["label_agreement"] >= 99.5
    assert printed.count("label agreement") == 2 and "max |logit difference|" in printed
    assert sorted(p.name for p in a.parent.iterdir()) == [
        "m.onnx", "m.onnx.yaml", "m.torchscript", "m.torchscript.yaml"]  # no scratch left

    # Other sizes on request; arguments that cannot work are refused before writing.
    c = tmp_path / "small.onnx"
    assert cli.main(["export", "--checkpoint", str(ck), "--onnx", str(c), "--height", "32",
                     "--width", "64", "--frames", "2"]) == 0
    assert load_key_segmenter(c).info.input_size == (32, 64)
    for argv, says in (
        ([], "nothing to write"),
        (["--onnx", str(tmp_path / "h.onnx"), "--half"], "--half applies to --out"),
        (["--onnx", str(tmp_path / "h.onnx"), "--height", "40", "--width", "64"],
         "multiples of 16"),
    ):
        assert cli.main(["export", "--checkpoint", str(ck), "--frames", "2", *argv]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "h.onnx").exists()


def test_an_export_that_labels_unlike_its_source_is_refused_and_nothing_written(
        tmp_path, capsys):
    # Two classes whose weights differ by float32's last bit: which one wins depends on
    # rounding, and the exported network (BatchNorm folded, other kernels) rounds
    # differently from the checkpoint's, so about a tenth of the labels flip.
    cfg = _config(num_classes=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        state = build_davss_net(cfg.model).state_dict()
    weight = state["segmenter.decoder.classifier.weight"]
    weight[1] = weight[0] * (1 + 2.0 ** -23)
    state["segmenter.decoder.classifier.bias"].zero_()
    ck = save_checkpoint(tmp_path / "tied.pt", config=cfg, state_dict=state)
    out = tmp_path / "out"
    assert cli.main(["export", "--checkpoint", str(ck), "--onnx", str(out / "t.onnx"),
                     "--torchscript", str(out / "t.ts"), "--frames", "2"]) == 1
    captured = capsys.readouterr()
    assert "label agreement" in captured.out
    assert "below --min-agreement 99.5%: not written" in captured.err
    assert list(out.iterdir()) == []  # neither file, sidecar nor scratch folder
    # Asked for less, the same export passes.
    assert cli.main(["export", "--checkpoint", str(ck), "--onnx", str(out / "t.onnx"),
                     "--frames", "2", "--min-agreement", "50"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t.onnx", "t.onnx.yaml"]
