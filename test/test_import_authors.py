"""davss import-authors: the DAVSS authors' state dict (names and shapes from the committed
fixture, read from their code; random values) maps completely onto our networks, the
pipeline runs on the result, and any missing, extra or mis-shaped tensor is refused in one
line that names it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from davss_ros.checkpoint import file_sha256, load_checkpoint
from davss_ros.classes import CITYSCAPES_CLASSES
from davss_ros.cli import main as davss_main
from davss_ros.config import DMNetConfig, SegmenterConfig
from davss_ros.importers.authors import (
    AUTHORS_COMMIT,
    UNTRAINED_PARTS,
    AuthorsImportError,
    authors_config,
    authors_model_state,
    convert,
    import_authors,
    read_authors_files,
)
from davss_ros.model import build_segmenter
from davss_ros.model.dmnet import DMNet, build_dmnet
from davss_ros.pipeline import VideoSegmenter

FIXTURE = Path(__file__).parent / "fixtures" / "authors_params.json"


def _fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def _synthetic(prefix: str = "module.", only: str | None = None) -> dict[str, torch.Tensor]:
    """Random tensors of the fixture's names, shapes and dtypes (positive variances)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape, dtype in _fixture()["tensors"]:
        if only is not None and not name.startswith(only + "."):
            continue
        key = prefix + (name[len(only) + 1:] if only else name)
        if dtype == "int64":
            out[key] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        elif name.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Their SCNet file as their training script writes it ('module.' prefix, torch's
    legacy format of their torch 1.5), imported once."""
    tmp = tmp_path_factory.mktemp("authors")
    src = tmp / "best.pth"
    torch.save(_synthetic(), src, _use_new_zipfile_serialization=False)
    out, result, sources = import_authors([src], tmp / "model.pt", input_height=128,
                                          input_width=256)
    return src, out, result, sources


def test_fixture_names_the_commit_it_was_read_from():
    fx = _fixture()
    assert fx["commit"] == AUTHORS_COMMIT
    assert fx["repository"].endswith("jfzhuang/DAVSS")
    assert len(fx["tensors"]) == 1041


def test_every_tensor_of_theirs_lands_in_ours(imported):
    src, out, result, _ = imported
    theirs = {k[len("module."):]: v for k, v in _synthetic().items()}
    used = [k for sources in result.provenance.values() for k in sources]
    assert sorted(set(used)) == sorted(theirs)
    # Every tensor of ours comes from theirs, but the Accel branch, which they do not have.
    own = authors_model_state(authors_config(input_height=128, input_width=256))
    assert set(result.state_dict) == set(own)
    for key, sources in result.provenance.items():
        assert bool(sources) != key.startswith(tuple(p + "." for p in UNTRAINED_PARTS)), key
    # Plain copies keep their values; the checkpoint holds exactly what was mapped.
    ck = load_checkpoint(out)
    copies = [(k, s[0]) for k, s in result.provenance.items() if len(s) == 1
              and k != "segmenter.aspp.project.0.0.weight"]  # permuted, checked below
    assert len(copies) > 900
    for ours, theirs_key in copies:
        assert torch.equal(ck.state_dict[ours], theirs[theirs_key]), ours
    w = theirs["deeplab.concat_projection.0.weight"]
    torch.testing.assert_close(ck.state_dict["segmenter.aspp.project.0.0.weight"],
                               torch.cat([w[:, 256:], w[:, :256]], dim=1), rtol=0, atol=0)


def test_checkpoint_carries_config_classes_and_source_hashes(imported):
    src, out, _, sources = imported
    ck = load_checkpoint(out)
    seg, dm = ck.config.model.segmenter, ck.config.model.dmnet
    assert seg.backbone == "xception65" and seg.aspp_channels == 256
    assert (seg.backbone_bn_eps, seg.low_level_bn_eps, seg.decoder_align_corners) == \
        (1e-3, 1e-3, True)
    assert dm.extra_bn_relu and ck.config.model.flow.provider == "learned"
    assert ck.config.model.cfnet.width_mult == 1.0
    assert ck.class_names == list(CITYSCAPES_CLASSES) and ck.palette[0] == (128, 64, 128)
    record = ck.meta["imported_from"]
    assert record["commit"] == AUTHORS_COMMIT
    assert record["sources"] == [{"file": "best.pth", "sha256": file_sha256(src),
                                  "tensors": 1041}]
    assert sources.files == record["sources"]


def test_the_pipeline_runs_on_the_imported_model(imported):
    _, out, _, _ = imported
    seg = VideoSegmenter.from_checkpoint(out, input_size=(128, 256), mode="davss",
                                         schedule={"key_interval": 3}, device="cpu")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    results = [seg.step(np.roll(frame, 2 * i, axis=1)) for i in range(3)]
    assert [r.is_key for r in results] == [True, False, False]
    for r in results:
        assert r.valid and r.labels.shape == (128, 256)
        assert int(r.labels.max()) < len(CITYSCAPES_CLASSES)
    assert 0.0 <= results[-1].distortion_mean <= 1.0


def test_a_missing_tensor_is_named_in_one_line():
    theirs = _synthetic(prefix="")
    del theirs["cfnet.predict_cc.bias"]
    with pytest.raises(AuthorsImportError) as err:
        convert(theirs)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing 1 tensor(s): cfnet.predict_cc.bias (19,)" in msg


def test_an_extra_tensor_is_named_in_one_line():
    theirs = _synthetic(prefix="")
    theirs["deeplab.aspp4.atrous_convolution.conv.weight"] = torch.zeros(256, 2048, 1, 1)
    with pytest.raises(AuthorsImportError) as err:
        convert(theirs, origin={"deeplab.aspp4.atrous_convolution.conv.weight": "x.pth"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 unexpected tensor(s): deeplab.aspp4.atrous_convolution.conv.weight in x.pth" in msg


def test_a_wrong_shape_is_named_in_one_line():
    theirs = _synthetic(prefix="")
    theirs["flownet.conv1.0.weight"] = torch.zeros(64, 6, 7, 7)  # full-width FlowNet-S
    with pytest.raises(AuthorsImportError) as err:
        convert(theirs)
    msg = str(err.value)
    assert "\n" not in msg
    assert ("1 tensor(s) of another shape: flownet.conv1.0.weight is (64, 6, 7, 7), "
            "expected (24, 6, 7, 7)") in msg


def test_the_command_refuses_an_incomplete_set_in_one_line(tmp_path, capsys):
    dmnet_only = tmp_path / "now.pth"  # their dmnet_cityscapes release: bare DMNet keys
    torch.save(_synthetic(prefix="", only="dmnet"), dmnet_only)
    out = tmp_path / "model.pt"
    assert davss_main(["import-authors", str(dmnet_only), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and not out.exists()
    assert err.startswith("davss import-authors: not the DAVSS authors' Cityscapes model: "
                          "missing 982 tensor(s): deeplab.")
    assert "(no deeplab, flownet, cfnet at all)" in err


def test_bare_and_prefixed_files_merge_and_a_conflict_is_refused(tmp_path):
    bare_dmnet, scnet_flow = tmp_path / "dmnet.pth", tmp_path / "flow.pth"
    torch.save(_synthetic(prefix="", only="dmnet"), bare_dmnet)
    torch.save({k: v for k, v in _synthetic().items() if ".flownet." in k}, scnet_flow)
    merged = read_authors_files([bare_dmnet, scnet_flow]).tensors
    names = {n for n, _, _ in _fixture()["tensors"] if n.startswith(("dmnet.", "flownet."))}
    assert set(merged) == names
    # The same tensors twice are fine; other values under the same name are not.
    assert set(read_authors_files([bare_dmnet, bare_dmnet]).tensors) == set(
        k for k in names if k.startswith("dmnet."))
    other = _synthetic(prefix="", only="dmnet")
    other["conv4.bias"] = other["conv4.bias"] + 1
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(AuthorsImportError, match=r"^tensor dmnet\.conv4\.bias is in .*dmnet\.pth "
                                                 r"and in .*other\.pth with different values"):
        read_authors_files([bare_dmnet, tmp_path / "other.pth"])


def test_a_file_of_something_else_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(AuthorsImportError, match=r"resnet\.pth: not a DAVSS authors' state "
                                                 r"dict: keys such as 'fc\.weight'"):
        read_authors_files([path])


def test_the_options_default_to_todays_networks():
    seg_cfg = SegmenterConfig()
    assert (seg_cfg.backbone_bn_eps, seg_cfg.low_level_bn_eps,
            seg_cfg.decoder_align_corners) == (1e-5, 1e-5, False)
    seg = build_segmenter(seg_cfg, num_classes=3)
    assert {m.eps for m in seg.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    assert seg.decoder.upsample.align_corners is False
    assert not DMNetConfig().extra_bn_relu
    assert list(build_dmnet().state_dict()) == list(DMNet().state_dict())
