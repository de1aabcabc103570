"""``davss report`` end to end on tiny untrained checkpoints and tiny synthetic clips, and the
consistency of the committed README / model card with the committed report."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from davss_ros import report
from davss_ros.checkpoint import save_checkpoint
from davss_ros.cli import main
from davss_ros.config import load_config
from davss_ros.data.synthetic import write_cityscapes_layout
from davss_ros.evaluate.pda import untrained_checkpoint

H, W = 64, 128
REPO = Path(__file__).resolve().parents[1]
TINY = {"model": {"input_height": H, "input_width": W,
                  "segmenter": {"backbone": "resnet18", "width_mult": 0.25,
                                "aspp_channels": 16, "decoder_channels": 16,
                                "low_level_channels": 8},
                  "cfnet": {"width_mult": 0.125}}}


def _save(path, seed, **model):
    cfg = load_config({**TINY, "model": {**TINY["model"], **model}})
    ck = untrained_checkpoint(cfg, seed=seed)
    save_checkpoint(path, config=ck.config, state_dict=ck.state_dict,
                    class_names=ck.class_names, palette=ck.palette,
                    meta={"train_config": {"seed": 3, "dataset": {
                        "kind": "synthetic", "generate": {"clips": {"train": 2}, "height": H,
                                                          "width": W, "frames": 30,
                                                          "seed": 0}}},
                          "config_file": "tiny.yaml",
                          "stages": {"0": {"iterations": 5, "seconds": 1.5},
                                     "1": {"seeded_from": "earlier/davss.pt"},
                                     "2": {"seeded_from": "earlier/davss.pt"},
                                     "3": {"iterations": 2, "seconds": 0.5}}})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(2)  # the report's --threads 1 below must take over from this
    tmp = tmp_path_factory.mktemp("report")
    write_cityscapes_layout(tmp / "data", "test", n_clips=2, height=H, width=W, seed=0,
                            frames=30, progress=False)
    write_cityscapes_layout(tmp / "dusk", "test", n_clips=1, height=H, width=W, seed=0,
                            frames=30, progress=False, look="dusk")
    write_cityscapes_layout(tmp / "pan", "test", n_clips=1, height=H, width=W, seed=0,
                            frames=30, progress=False, pan_deg=20.0)
    main_ck = _save(tmp / "main.pt", 0, distortion="signals")
    abl_ck = _save(tmp / "abl.pt", 1, distortion_map="constant")
    matched_ck = _save(tmp / "matched.pt", 2)
    spec = {"dataset": {"kind": "synthetic", "root": str(tmp / "data"), "split": "test"},
            "model": {"checkpoint": str(main_ck), "train_config": "tiny.yaml"},
            "ablations": [{"name": "without DGFC", "checkpoint": str(abl_ck)},
                          {"name": "without DDS", "checkpoint": str(tmp / "nope.pt"),
                           "train_config": "no_dds.yaml"}],
            "distances": [1, 2, 3, 4, 5, 6, 7, 8, 9],
            "schedule": {"clips": 2, "fixed_intervals": [1, 3, 5],
                         "adaptive_thresholds": [0.2, 0.5], "max_interval": 6,
                         "oracle_thresholds": [-1.0, 1.0],
                         "clip_sets": [{"name": "a pan", "root": str(tmp / "pan")}]},
            "bench": {"frames": 6, "key_interval": 3},
            "matched": {"name": "light per-frame", "checkpoint": str(matched_ck),
                        "train_config": "matched.yaml"},
            "domain_shift": {"root": str(tmp / "dusk"), "split": "test", "look": "dusk",
                             "previous": str(abl_ck)},
            "reliability": {"distances": [1, 3]},
            "shipped": str(main_ck)}
    (tmp / "report.yaml").write_text(yaml.safe_dump(spec))
    readme = tmp / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nold\n{report.README_END}\nafter\n")
    card = tmp / "MODEL_CARD.md"
    card.write_text(f"card\n{report.README_BEGIN}\n{report.README_END}\n")
    out = tmp / "docs" / "RESULTS.md"
    rc = main(["report", "--config", str(tmp / "report.yaml"), "--out", str(out),
               "--readme", str(readme), "--model-card", str(card), "--no-progress",
               "--device", "cpu", "--threads", "1"])
    results = json.loads((tmp / "docs" / "results" / "results.json").read_text())
    return {"rc": rc, "tmp": tmp, "out": out, "results": results, "readme": readme,
            "card": card}


def _table_row(text: str, name: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {name} |"):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"no table row {name!r}")


def test_report_writes_markdown_figures_and_json(run):
    assert run["rc"] == 0
    folder = run["tmp"] / "docs" / "results"
    for name in ("pda.png", "cca_gflops.png", "cca_ms.png", "schedule.png"):
        assert (folder / name).stat().st_size > 1000, name
    text = run["out"].read_text()
    for image in ("results/pda.png", "results/cca_gflops.png", "results/schedule.png"):
        assert f"]({image})" in text


def test_the_report_measures_with_the_threads_asked_for_and_says_so(run):
    assert run["results"]["machine"]["torch_threads"] == 1
    assert "(1 thread)," in run["out"].read_text()


def test_the_report_names_stages_taken_from_an_earlier_model_instead_of_trained(run):
    assert run["results"]["training"]["seeded"] == {"1": "earlier/davss.pt",
                                                    "2": "earlier/davss.pt"}
    setup = next(line for line in run["out"].read_text().splitlines()
                 if line.startswith("- Training:"))
    assert "(stage 0: 2 s, stage 3: 0 s)" in setup  # the stages this run trained
    assert ("stages 1, 2 were not retrained for this model: the weights come from "
            "`earlier/davss.pt`") in setup


def test_the_schedule_section_bounds_the_adaptive_goal_with_the_oracle(run):
    sched, text = run["results"]["schedule"], run["out"].read_text()
    fixed = {r["key_interval"]: r for r in sched["fixed"]}
    oracle = {r["oracle_threshold"]: r for r in sched["oracle"]}
    # margin -1 keys every other frame (fixed k=2's cost); margin 1 never fires, leaving
    # max_interval: one key every 7 frames, the cost of fixed k=7 (not swept: interpolated)
    assert oracle[-1.0]["key_fraction"] > oracle[1.0]["key_fraction"]
    assert oracle[1.0]["key_fraction"] < fixed[5]["key_fraction"]
    assert [r["threshold"] for r in sched["oracle_matched"]] == [-1.0, 1.0]
    for r in sched["oracle_matched"]:
        assert (f"| {r['threshold']:g} | {r['key_fraction']:.3f} | {r['cost']:.2f} | "
                f"{r['adaptive_miou']:.2f} |") in text


def test_each_extra_clip_set_gets_its_own_schedule_sweep_and_tables(run):
    sets, text = run["results"]["schedule_sets"], run["out"].read_text()
    assert list(sets) == ["a pan"]
    pan, plain = sets["a pan"], run["results"]["schedule"]
    assert pan["root"].endswith("pan") and pan["fixed"][0]["frames"] == 30  # its one clip
    assert plain["fixed"][0]["frames"] == 60  # the main sweep's two clips
    assert [r["name"] for r in pan["fixed"]] == [r["name"] for r in plain["fixed"]]
    assert [r["name"] for r in pan["oracle"]] == [r["name"] for r in plain["oracle"]]
    section = text.split("### The same on clips with a pan", 1)[1].split("## ", 1)[0]
    for r in pan["oracle_matched"]:
        assert (f"| {r['threshold']:g} | {r['key_fraction']:.3f} | {r['cost']:.2f} | "
                f"{r['adaptive_miou']:.2f} |") in section


def test_a_clip_set_without_a_root_is_refused(tmp_path):
    spec = {"dataset": {"kind": "synthetic", "root": str(tmp_path), "split": "test"},
            "model": {"checkpoint": "x.pt"},
            "schedule": {"clip_sets": [{"name": "a pan"}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="clip_sets"):
        report.load_spec(tmp_path / "r.yaml")


def test_pda_table_in_markdown_is_the_json(run):
    res, text = run["results"], run["out"].read_text()
    for mode in report.MAIN_MODES:
        row = res["pda"][mode]
        want = [f"{row['miou'][str(d)]:.2f}" for d in range(1, 10)] + \
            [f"{row['mean_miou']:.2f}"]
        assert _table_row(text, mode) == want
    # every mode of one run shares the weights: per_frame does not depend on d
    assert len(set(res["pda"]["per_frame"]["miou"].values())) == 1


def test_ablation_and_upper_bound_rows_are_reported(run):
    res, text = run["results"], run["out"].read_text()
    abl = res["ablations"]["without DGFC"]
    assert _table_row(text, "without DGFC")[-1] == f"{abl['mean_miou']:.2f}"
    # other weights (seed 1, constant fusion map): not the main model's numbers
    assert abl["miou"] != res["pda"]["davss"]["miou"]
    for mode in ("davss", "accel"):
        bound = res["pda"][f"{mode}_gt"]
        gap = bound["mean_miou"] - res["pda"][mode]["mean_miou"]
        assert _table_row(text, f"{mode}*")[-1] == f"{gap:.2f}"


def test_matched_baseline_domain_shift_calibration_and_onnx_rows_are_reported(run):
    res, text = run["results"], run["out"].read_text()
    mt = res["matched"]
    row = _table_row(text, f"per_frame at matched cost ({mt['gflops']:.2f} GFLOPs)")
    assert row[-1] == f"{mt['mean_miou']:.2f}"
    assert any(p[0] == "matched per_frame" for p in res["cca_gflops"])
    davss = res["domain_shift"]["rows"]["davss"]["pixel_accuracy"]
    assert _table_row(text, "davss")  # the PDA row
    shift_rows = text.split("## Robustness")[1].split("##")[0]
    assert f"| davss | {davss['1']:.2f} |" in shift_rows
    assert "previous davss" in shift_rows and "| per_frame |" not in shift_rows
    cal = res["reliability"]
    assert set(cal["ece_by_d"]) == {"1", "3"} and 0 <= cal["agreement"] <= 100
    assert f"ECE {cal['ece']:.2f} points" in text
    assert set(res["bench_onnx"]) == {"per_frame", "davss"}
    assert res["bench_onnx"]["davss"]["key"] == "onnx"
    assert "davss, key segmenter on onnxruntime" in text
    assert "distortion estimator `signals`" in text
    cons = res["consistency"]["modes"]
    assert set(cons) == {"per_frame", "dff", "accel", "davss", "matched per_frame"}
    assert all(0 <= c["flicker_percent"] <= 100 and c["counted_pixels"] > 0
               for c in cons.values())
    assert f"| davss | {cons['davss']['flicker_percent']:.2f} |" in text


def test_an_untrained_ablation_is_reported_missing_and_its_goal_missed(run):
    res, text = run["results"], run["out"].read_text()
    assert "without DDS" not in res["ablations"]
    assert "without DDS: not trained for this report" in text
    goal = next(g for g in res["goals"] if g["goal"].startswith("without DDS"))
    assert not goal["met"] and "not trained" in goal["measured"]


def test_costs_follow_eq8_from_flops_and_bench(run):
    res = run["results"]
    key, nonkey = res["flops"]["key_by_mode"]["davss"], res["flops"]["non_key"]["davss"]
    # a signals model's key frames also run CFNet (the cue trust)
    assert key == pytest.approx(res["flops"]["key"] + res["flops"]["modules"]["cfnet"])
    pts = [p for p in res["cca_gflops"] if p[0] == "davss"]
    assert len(pts) == 9
    for d, (_, cost, miou) in zip(range(1, 10), pts, strict=True):
        assert cost == pytest.approx((key + d * nonkey) / (d + 1))
        assert miou == res["pda"]["davss"]["miou"][str(d)]
    b = res["bench"]["davss"]
    ms = [p for p in res["cca_ms"] if p[0] == "davss"]
    assert ms[4][1] == pytest.approx((b["key_ms"] + 5 * b["nonkey_ms"]) / 6)


def test_goals_are_judged_from_the_reported_numbers(run):
    res = run["results"]
    goals = {g["goal"]: g for g in res["goals"]}
    pda = res["pda"]
    gap = pda["per_frame"]["miou"]["9"] - pda["davss"]["miou"]["9"]
    assert goals["davss at d=9 within 2 points of per_frame"]["met"] == (gap <= 2.0)
    assert goals["davss at least accel at every d"]["met"] == all(
        pda["davss"]["miou"][d] >= pda["accel"]["miou"][d] for d in pda["davss"]["miou"])
    matched = goals["davss (mean over d) above the per-frame baseline of matched cost"]
    assert matched["met"] == (pda["davss"]["mean_miou"] > res["matched"]["mean_miou"])
    cue = goals["per_frame at least 5 points above CFNet's cue alone"]
    assert cue["met"] == (pda["per_frame"]["mean_miou"] - res["cue"]["miou"]["1"] >= 5.0)
    shift = res["domain_shift"]
    agree = {m: r["pixel_accuracy"]["9"] for m, r in shift["rows"].items()}
    assert agree["per_frame"] == 100.0  # the reference agrees with itself
    look = next(g for g in res["goals"] if g["goal"].startswith("dusk look"))
    assert look["met"] == (
        all(agree["davss"] > agree[m] for m in ("accel", "dff", "hold"))
        and agree["davss"] >= shift["previous_rows"]["davss"]["pixel_accuracy"]["9"])
    lead = pda["davss"]["miou"]["9"] - pda["dff"]["miou"]["9"]
    assert goals["davss at d=9 at least 5 points above dff"]["met"] == (lead >= 5.0)
    abl = goals["without DGFC below the full model (mean mIoU over d)"]
    assert abl["met"] == (res["ablations"]["without DGFC"]["mean_miou"]
                          < pda["davss"]["mean_miou"])


def test_check_goals_marks_missed_goals():
    def row(values):
        return {"miou": {str(d): v for d, v in zip(range(1, 10), values, strict=True)},
                "mean_miou": sum(values) / 9}
    results = {"distances": list(range(1, 10)),
               "pda": {"per_frame": row([60.0] * 9), "dff": row([50.0] * 9),
                       "accel": row([57.0] * 8 + [57.0]),
                       "davss": row([58.0] * 8 + [56.0])},
               "matched": dict(row([57.0] * 9), gflops=1.0),
               "cue": row([56.0] * 9),
               "ablations": {"without DDS": row([58.0] * 9)},
               "schedule": {"matched": [{"difference": 0.4, "fixed_miou": 50.0},
                                        {"difference": -0.1, "fixed_miou": 51.0}],
                            "oracle_matched": [{"difference": 0.2, "fixed_miou": 50.0},
                                               {"difference": -0.3, "fixed_miou": 51.0},
                                               {"difference": None, "fixed_miou": None}]}}
    goals = report.check_goals(results)
    met = [g["met"] for g in goals]
    # accel above at d=9 (missed), gap 4 (missed), lead 6 (met), matched 57.8 > 57 (met),
    # ablation 58 > 57.8 (missed), adaptive 1 of 2 with 2 needed (missed), cue gap 4 (missed)
    assert met == [False, False, True, True, False, False, False]
    # the adaptive goal names the oracle's bound, over the oracle points with a fixed match
    assert goals[5]["measured"] == ("1 of 2; adaptive - fixed from -0.10 to +0.40 points; "
                                    "an oracle that knows the labels: at least as accurate "
                                    "at 1 of 2, oracle - fixed from -0.30 to +0.20")


def test_readme_and_model_card_blocks_are_rewritten_from_the_results(run):
    res = run["results"]
    text = run["readme"].read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert "old" not in text and report.readme_block(res) in text
    assert _table_row(text, "davss")[-1] == f"{res['pda']['davss']['mean_miou']:.2f}"
    assert report.model_card_block(res) in run["card"].read_text()


def test_a_file_without_markers_is_left_alone_and_the_command_fails(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert main(["report", "--config", str(run["tmp"] / "report.yaml"),
                 "--out", str(tmp_path / "R.md"), "--readme", str(readme), "--no-bench",
                 "--limit", "1", "--no-progress", "--device", "cpu"]) == 1
    assert readme.read_text() == "no markers\n"


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    spec = {"dataset": {"kind": "synthetic", "root": str(tmp_path), "split": "test"},
            "model": {"checkpoint": str(tmp_path / "nope.pt")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    assert main(["report", "--config", str(tmp_path / "r.yaml"),
                 "--out", str(tmp_path / "R.md")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


@pytest.mark.parametrize("broken", ["dusk split", "previous model", "matched model"])
def test_a_missing_input_fails_the_report_before_any_measurement(run, broken, capsys):
    tmp = run["tmp"]
    spec = yaml.safe_load((tmp / "report.yaml").read_text())
    missing = tmp / "absent"
    if broken == "dusk split":
        spec["domain_shift"]["root"] = str(missing)
    elif broken == "previous model":
        spec["domain_shift"]["previous"] = str(missing / "prev.pt")
    else:
        spec["matched"]["checkpoint"] = str(missing / "matched.pt")
    (tmp / f"broken_{broken[:4]}.yaml").write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    out = tmp / "broken" / "RESULTS.md"
    assert main(["report", "--config", str(tmp / f"broken_{broken[:4]}.yaml"),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err
    assert "report: PDA" not in captured.out  # nothing was measured
    assert not out.exists()


# ------------------------------------------------------- the committed report and docs


COMMITTED = REPO / "docs" / "results" / "results.json"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed report yet")
@pytest.mark.parametrize("doc,block", [("README.md", report.readme_block),
                                       ("docs/MODEL_CARD.md", report.model_card_block)])
def test_committed_docs_quote_the_committed_report(doc, block):
    results = json.loads(COMMITTED.read_text())
    assert block(results) in (REPO / doc).read_text(), \
        f"{doc} is out of date: rerun davss report with --readme/--model-card"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed report yet")
def test_committed_report_is_about_the_shipped_model():
    results = json.loads(COMMITTED.read_text())
    shipped = REPO / "davss_ros" / "weights" / "davss_cpu.pt"
    assert shipped.is_file()
    info = report.shipped_info(shipped)
    assert results["shipped"]["sha256"] == info["sha256"], \
        "the shipped weights changed after the report was written"
    assert re.search(r"\| davss \|", (REPO / "docs" / "RESULTS.md").read_text())
