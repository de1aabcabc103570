"""PDA protocol and ``davss eval`` on a tiny synthetic Cityscapes-layout tree, untrained."""

import json

import numpy as np
import pytest
import torch

from davss_ros.checkpoint import save_checkpoint
from davss_ros.cli import main
from davss_ros.config import MODES, load_config
from davss_ros.data.cityscapes import CityscapesSequences
from davss_ros.data.synthetic import write_cityscapes_layout
from davss_ros.evaluate import cli as eval_cli
from davss_ros.evaluate.metrics import ConfusionMatrix
from davss_ros.evaluate.pda import (
    build_segmenters,
    evaluate_pda,
    oracle_prediction,
    results_as_json,
    untrained_checkpoint,
)
from davss_ros.evaluate.plots import plot_cca
from davss_ros.model import build_davss_net

H, W = 64, 128
ANN = 19
TINY = {"model": {"input_height": H, "input_width": W,
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16}}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_cityscapes_layout(root, "val", n_clips=2, height=H, width=W, seed=0, frames=30,
                            all_labels=False, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def full_run(root):
    """All four modes, d = 1..9, both snippets, every frame step recorded."""
    torch.set_num_threads(1)
    dataset = CityscapesSequences(root, "val")
    segs = build_segmenters(untrained_checkpoint(load_config(TINY)), device="cpu")
    steps = []
    results = evaluate_pda(segs, dataset, on_step=steps.append)
    return dataset, segs, results, steps


def test_key_frame_is_ann_minus_d_and_the_annotated_frame_is_d_steps_away(full_run):
    dataset, _, _, steps = full_run
    frames = {(i, k): dataset.load_frame(i, k) for i in range(2) for k in range(ANN - 9, ANN + 1)}
    for mode in ("dff", "accel", "davss"):
        for i in range(2):
            for d in range(1, 10):
                run = [s for s in steps if s.mode == mode and s.snippet == i and s.distance == d]
                assert [s.offset for s in run] == list(range(d, -1, -1))
                # the images stepped are the snippet's frames ann - d .. ann, in order
                for s in run:
                    np.testing.assert_array_equal(s.image, frames[i, ANN - s.offset])
                assert [s.result.is_key for s in run] == [True] + [False] * d
                assert [s.result.propagation_distance for s in run] == list(range(d + 1))


def test_per_frame_scores_the_annotated_frame_alone_identically_for_every_d(full_run):
    _, _, results, steps = full_run
    dataset = full_run[0]
    pf = [s for s in steps if s.mode == "per_frame"]
    assert [(s.snippet, s.distance, s.offset, s.result.is_key) for s in pf] == [
        (0, None, 0, True), (1, None, 0, True)]
    for s in pf:
        np.testing.assert_array_equal(s.image, dataset.load_frame(s.snippet, ANN))
    matrices = results["per_frame"].matrices
    for d in range(2, 10):
        np.testing.assert_array_equal(matrices[d].matrix, matrices[1].matrix)


def test_one_matrix_per_distance_holds_every_snippets_labelled_pixels(full_run):
    dataset, _, results, _ = full_run
    labelled = sum(int((dataset.load_label(i) != 255).sum()) for i in range(2))
    for res in results.values():
        assert sorted(res.matrices) == list(range(1, 10))
        assert all(m.total == labelled for m in res.matrices.values())
        assert res.snippets == 2 and res.distance_mismatches == 0


def test_results_json_fields_per_mode(full_run):
    _, segs, results, _ = full_run
    names = segs["davss"].class_names
    rows = results_as_json(results, names)
    assert [r["mode"] for r in rows] == list(MODES)
    for row in rows:
        assert list(row["miou"]) == [str(d) for d in range(1, 10)]
        assert all(v is None or 0.0 <= v <= 100.0 for v in row["miou"].values())
        assert list(row["per_class_iou"]) == names
        assert row["per_class_iou"] == row["per_class_iou_by_distance"]["9"]
        assert list(row["per_class_iou_by_distance"]) == [str(d) for d in range(1, 10)]


def test_prediction_is_scored_at_the_label_resolution(root):
    class BigLabels(CityscapesSequences):  # labels at twice the image resolution
        def pda_sample(self, i, distance):
            sample = super().pda_sample(i, distance)
            sample.label = np.repeat(np.repeat(sample.label, 2, 0), 2, 1)
            return sample

    segs = build_segmenters(untrained_checkpoint(load_config(TINY)), ["dff"],
                            input_size=(64, 128), device="cpu")
    dataset = BigLabels(root, "val")
    res = evaluate_pda(segs, dataset, distances=[1], limit=1)["dff"]
    label = dataset.pda_sample(0, 1).label
    assert label.shape == (2 * H, 2 * W)
    assert res.matrices[1].total == int((label != 255).sum())


def test_distances_beyond_the_snippet_are_a_clear_error(root, tiny_yaml, capsys):
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--root", str(root),
               "--distances", "20", "--device", "cpu", "--no-progress"])
    assert rc == 2
    assert "distance must be in [0, 19]" in capsys.readouterr().err


def test_davss_eval_writes_the_json_and_the_plot(root, tiny_yaml, tmp_path, capsys):
    out, png = tmp_path / "pda.json", tmp_path / "pda.png"
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--dataset", "synthetic",
               "--root", str(root), "--limit", "1", "--device", "cpu", "--no-progress",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "synthetic" and report["split"] == "val"
    assert report["checkpoint"] == "untrained" and report["units"] == "percent"
    assert [r["mode"] for r in report["results"]] == list(MODES)
    row = report["results"][-1]
    assert list(row["miou"]) == [str(d) for d in range(1, 10)]
    assert isinstance(row["per_class_iou"], dict) and "road" in row["per_class_iou"]
    assert row["snippets"] == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "mIoU (%)" in table and "d=9" in table and "davss" in table


def test_davss_eval_with_a_checkpoint_and_another_input_size(root, tmp_path):
    cfg = load_config(TINY)
    ck = save_checkpoint(tmp_path / "tiny.pt", config=cfg,
                         state_dict=build_davss_net(cfg.model).state_dict())
    out = tmp_path / "pda.json"
    rc = main(["eval", "--checkpoint", str(ck), "--root", str(root), "--modes", "davss",
               "--distances", "1,3", "--limit", "1", "--input-height", "128",
               "--input-width", "64", "--device", "cpu", "--no-progress", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(ck) and report["input_height"] == 128
    assert list(report["results"][0]["miou"]) == ["1", "3"]


def test_missing_checkpoint_is_a_clear_error(root, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    rc = main(["eval", "--checkpoint", str(missing), "--root", str(root), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such checkpoint file" in err


def test_without_a_shipped_checkpoint_eval_asks_for_one(root, monkeypatch, capsys):
    monkeypatch.setattr("davss_ros.weights.default_checkpoint", lambda: None)
    rc = main(["eval", "--root", str(root), "--no-progress"])
    assert rc == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_distances_argument_accepts_lists_and_ranges():
    assert eval_cli.parse_distances("1-3,9") == [1, 2, 3, 9]
    with pytest.raises(ValueError, match="--distances"):
        eval_cli.parse_distances("0,2")


def test_cca_plot_writes_a_png(tmp_path):
    path = plot_cca([("dff", 1.0, 60.0), ("dff", 2.0, 65.0), ("davss", 2.5, 70.0)],
                    tmp_path / "cca.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def _argmax_at(logits, size):
    up = torch.nn.functional.interpolate(logits, size=size, mode="bilinear",
                                         align_corners=False)
    return up.argmax(1)[0].to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def oracle_run(root):
    dataset = CityscapesSequences(root, "val")
    segs = build_segmenters(untrained_checkpoint(load_config(TINY)),
                            ["dff", "davss_gt", "accel_gt"], device="cpu")
    steps = []
    results = evaluate_pda(segs, dataset, distances=[1, 4], on_step=steps.append)
    return dataset, segs, results, steps


@pytest.mark.parametrize("mode, base, source", [("davss_gt", "davss", "cue"),
                                                ("accel_gt", "accel", "fused")])
def test_oracle_takes_the_correction_exactly_where_propagation_is_wrong(oracle_run, mode,
                                                                        base, source):
    dataset, segs, results, steps = oracle_run
    assert segs[mode].mode == base
    for d in (1, 4):
        expected = ConfusionMatrix(segs[mode].num_classes)
        for i in range(2):
            gt = dataset.load_label(i)
            last = [s for s in steps if s.mode == mode and s.snippet == i and s.distance == d
                    and s.offset == 0]
            assert len(last) == 1 and not last[0].result.is_key
            parts = last[0].result.parts
            prop = _argmax_at(parts.propagated, (H, W))
            corr = _argmax_at(getattr(parts, source), (H, W))
            wrong = (prop != gt) & (gt != 255)
            assert wrong.any() and (~wrong & (gt != 255)).any()  # both cases occur
            pred = oracle_prediction(segs[mode], last[0].result, gt, mode, (H, W))
            np.testing.assert_array_equal(pred[wrong], corr[wrong])
            np.testing.assert_array_equal(pred[~wrong], prop[~wrong])
            expected.update(np.where(wrong, corr, prop), gt)
        # and that prediction is what the PDA run scored
        np.testing.assert_array_equal(results[mode].matrices[d].matrix, expected.matrix)


def test_oracle_never_scores_below_plain_propagation(oracle_run):
    # The oracle keeps every pixel the propagation (= dff's prediction, since the raw warped
    # logits are propagated) got right and only changes wrong ones, so per class its true
    # positives, and hence its pixel accuracy, can only grow.
    _, _, results, _ = oracle_run
    for mode in ("davss_gt", "accel_gt"):
        for d in (1, 4):
            dff, oracle = results["dff"].matrices[d], results[mode].matrices[d]
            assert oracle.total == dff.total
            assert (np.diag(oracle.matrix) >= np.diag(dff.matrix)).all()
            assert oracle.pixel_accuracy() >= dff.pixel_accuracy()
    # the cue does fix some pixels on this data, so the bound is not vacuous
    assert results["davss_gt"].matrices[4].pixel_accuracy() > \
        results["dff"].matrices[4].pixel_accuracy()


def test_davss_eval_runs_the_oracle_modes_on_request(root, tiny_yaml, tmp_path, capsys):
    out = tmp_path / "oracle.json"
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--root", str(root),
               "--modes", "davss_gt,accel_gt", "--distances", "1", "--limit", "1",
               "--device", "cpu", "--no-progress", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["results"]] == ["davss_gt", "accel_gt"]
    assert all(list(r["miou"]) == ["1"] for r in report["results"])
    table = capsys.readouterr().out
    assert "davss_gt" in table and "accel_gt" in table
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--root", str(root),
               "--modes", "davss_oracle", "--device", "cpu", "--no-progress"])
    assert rc == 2 and "davss_gt" in capsys.readouterr().err


def test_hold_scores_the_key_frames_own_labels_on_the_annotated_frame(root):
    torch.set_num_threads(1)
    dataset = CityscapesSequences(root, "val")
    segs = build_segmenters(untrained_checkpoint(load_config(TINY)), ["hold"], device="cpu")
    res = evaluate_pda(segs, dataset, distances=[2, 5], limit=1)["hold"]
    sample = dataset.pda_sample(0, 5)
    per_frame = build_segmenters(untrained_checkpoint(load_config(TINY)), ["per_frame"],
                                 device="cpu")["per_frame"]
    for d in (2, 5):
        per_frame.reset()
        labels = per_frame.step(sample.frames[5 - d]).labels
        expected = ConfusionMatrix(res.matrices[d].num_classes)
        expected.update(labels, sample.label)
        assert np.array_equal(res.matrices[d].matrix, expected.matrix)
    assert res.frames == 2


def test_teacher_reference_scores_against_the_per_frame_prediction(root):
    torch.set_num_threads(1)
    dataset = CityscapesSequences(root, "val")
    segs = build_segmenters(untrained_checkpoint(load_config(TINY)),
                            ["per_frame", "hold", "dff"], device="cpu")
    res = evaluate_pda(segs, dataset, distances=[1, 3], limit=2, reference="teacher")
    # the teacher agrees with itself on every pixel, labelled or not
    for d in (1, 3):
        m = res["per_frame"].matrices[d]
        assert m.pixel_accuracy() == 1.0 and m.total == 2 * H * W
    # hold at d scores the key frame's prediction against the teacher's annotated frame
    sample = dataset.pda_sample(0, 3)
    segs["per_frame"].reset()
    teacher = segs["per_frame"].step(sample.frames[-1]).labels
    segs["per_frame"].reset()
    key = segs["per_frame"].step(sample.frames[0]).labels
    one = ConfusionMatrix(res["hold"].matrices[3].num_classes)
    one.update(key, teacher)
    res1 = evaluate_pda({"hold": segs["hold"], "per_frame": segs["per_frame"]}, dataset,
                        distances=[3], limit=1, reference="teacher")
    assert np.array_equal(res1["hold"].matrices[3].matrix, one.matrix)


def test_teacher_reference_without_a_per_frame_segmenter_is_refused(root):
    dataset = CityscapesSequences(root, "val")
    segs = build_segmenters(untrained_checkpoint(load_config(TINY)), ["dff"], device="cpu")
    with pytest.raises(ValueError, match="per_frame or hold"):
        evaluate_pda(segs, dataset, distances=[1], limit=1, reference="teacher")


def test_davss_eval_reference_teacher_prints_agreement(root, tiny_yaml, tmp_path, capsys):
    out = tmp_path / "teacher.json"
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--root", str(root),
               "--limit", "1", "--distances", "1,2", "--modes", "hold,dff",
               "--reference", "teacher", "--device", "cpu", "--no-progress",
               "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["reference"] == "teacher"
    assert [r["mode"] for r in report["results"]] == ["hold", "dff"]
    assert "agree (%)" in capsys.readouterr().out


def test_cue_mode_scores_cfnets_cue_alone(root):
    torch.set_num_threads(1)
    dataset = CityscapesSequences(root, "val")
    ck = untrained_checkpoint(load_config(TINY))
    segs = build_segmenters(ck, ["cue"], device="cpu")
    res = evaluate_pda(segs, dataset, distances=[2], limit=1)["cue"]
    sample = dataset.pda_sample(0, 2)
    net = segs["cue"]
    net.reset()
    for frame in sample.frames:
        r = net.step(frame)
    expected = ConfusionMatrix(res.matrices[2].num_classes)
    expected.update(net.labels_from_logits(r.parts.cue, sample.frames[-1].shape[:2]),
                    sample.label)
    assert np.array_equal(res.matrices[2].matrix, expected.matrix)


def test_davss_eval_consistency_prints_each_modes_flicker(root, tiny_yaml, tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = main(["eval", "--untrained", "--config", str(tiny_yaml), "--root", str(root),
               "--limit", "1", "--distances", "1", "--modes", "per_frame,davss",
               "--consistency", "3", "--device", "cpu", "--no-progress", "--json", str(out)])
    assert rc == 0
    cons = json.loads(out.read_text())["consistency"]
    assert cons["key_interval"] == 3 and set(cons["modes"]) == {"per_frame", "davss"}
    assert cons["modes"]["davss"]["frame_pairs"] == 29
    assert "temporal consistency (key frame every 3)" in capsys.readouterr().out
