"""VideoSegmenter: scheduling, propagation, modes and input handling on tiny real models."""

import dataclasses

import numpy as np
import pytest
import torch

from davss_ros.config import load_config
from davss_ros.model import warp
from davss_ros.pipeline import VideoSegmenter
from davss_ros.schedule import COST_MIN_SAMPLES

H, W = 64, 128


def make(mode="davss", **schedule):
    cfg = load_config({
        "model": {"mode": mode, "input_height": H, "input_width": W,
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16}},
        "schedule": {"policy": "fixed", "key_interval": 3, **schedule}})
    return VideoSegmenter(cfg, device="cpu")


def textured(seed=0, h=H, w=W):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def shifted(img, dx):
    return np.roll(img, dx, axis=1)


def test_fixed_schedule_gives_keys_every_interval_with_reasons():
    seg = make(key_interval=3)
    base = textured()
    results = [seg.step(shifted(base, i)) for i in range(7)]
    assert [r.is_key for r in results] == [True, False, False, True, False, False, True]
    assert [r.key_reason for r in results][:4] == ["first_frame", "", "", "interval"]
    assert [r.propagation_distance for r in results] == [0, 1, 2, 0, 1, 2, 0]
    assert [r.frame_index for r in results] == list(range(7))


@pytest.mark.parametrize("mode", ["per_frame", "dff", "accel", "davss"])
def test_every_mode_gives_labels_at_the_input_resolution(mode):
    seg = make(mode)
    for i in range(3):
        r = seg.step(textured(i, 50, 70))
        assert r.labels.shape == (50, 70) and r.labels.dtype == np.uint8
        assert r.labels.max() < seg.num_classes
        assert r.distortion.shape == (50, 70) and r.distortion.dtype == np.float32
        assert 0.0 <= r.distortion.min() <= r.distortion.max() <= 1.0
    if mode == "per_frame":
        assert r.is_key and r.key_reason == "per_frame_mode"


def test_static_scene_propagates_the_key_frame_labels_unchanged():
    # Identical frames: flow 0, warped image == current, distortion 0, so DAVSS's output
    # is the propagated key-frame prediction itself.
    seg = make("davss", key_interval=10)
    img = textured()
    key = seg.step(img)
    for _ in range(3):
        r = seg.step(img)
        assert not r.is_key
        assert r.distortion_mean < 1e-3
        np.testing.assert_array_equal(r.labels, key.labels)


def test_davss_output_follows_the_fusion_equation():
    seg = make("davss", key_interval=10)
    base = textured()
    seg.step(base)
    prev_x, prop = seg.state.frame, seg.state.logits
    cur = shifted(base, 4)
    r = seg.step(cur)
    warped, cue, m = _fusion_inputs(seg, prev_x, prop, cur)
    expected = warped * (1 - m) + cue * m
    # the raw warped logits are what gets propagated (the authors' choice)
    torch.testing.assert_close(seg.state.logits, warped)
    up = torch.nn.functional.interpolate(expected, size=(H, W), mode="bilinear")
    np.testing.assert_array_equal(r.labels, up.argmax(1)[0].to(torch.uint8).numpy())
    assert r.distortion_mean == pytest.approx(float(m.mean()), abs=1e-6)


def test_propagate_corrected_is_refused_with_the_mixing_estimator():
    with pytest.raises(ValueError, match="propagate_corrected cannot be used"):
        load_config({"model": {"distortion": "signals_mix", "propagate_corrected": True}})
    assert load_config({"model": {"distortion": "signals", "propagate_corrected": True}})
    from davss_ros.weights import default_checkpoint
    with pytest.raises(ValueError, match="propagate_corrected cannot be used"):
        VideoSegmenter.from_checkpoint(default_checkpoint(), propagate_corrected=True,
                                       device="cpu")


def test_propagate_corrected_option_propagates_the_fused_logits():
    cfg = load_config({"model": {"mode": "davss", "input_height": H, "input_width": W,
                                 "propagate_corrected": True},
                       "schedule": {"key_interval": 10}})
    seg = VideoSegmenter(cfg, device="cpu")
    base = textured()
    seg.step(base)
    before = seg.state.logits.clone()
    seg.step(shifted(base, 4))
    x = seg._to_tensor(shifted(base, 4))
    with torch.no_grad():
        flow = seg.flow(x, seg._to_tensor(base))
        warped = warp(before, flow)
    assert not torch.allclose(seg.state.logits, warped)


def test_reset_stamp_jump_and_resolution_change_force_key_frames():
    seg = make(key_interval=10)
    img = textured()
    seg.step(img, stamp=1.0)
    assert not seg.step(img, stamp=1.1).is_key
    seg.reset()
    r = seg.step(img, stamp=1.2)
    assert r.is_key and r.key_reason == "reset"
    r = seg.step(img, stamp=0.5)
    assert r.is_key and r.key_reason == "stamp_backwards"
    r = seg.step(textured(1, 80, 100), stamp=0.6)
    assert r.is_key and r.key_reason == "resolution_change"
    assert r.labels.shape == (80, 100)


def test_a_forward_stamp_jump_beyond_max_stamp_gap_forces_a_key_frame():
    seg = make(key_interval=10)
    img = textured()
    seg.step(img, stamp=1.0)
    assert not seg.step(img, stamp=6.0).is_key  # off by default
    seg.max_stamp_gap = 1.0
    assert not seg.step(img, stamp=6.9).is_key  # within the gap
    r = seg.step(img, stamp=8.0)
    assert r.is_key and r.key_reason == "stamp_jump"
    seg.reset("recovery")
    r = seg.step(img, stamp=8.1)
    assert r.is_key and r.key_reason == "recovery"


def test_nonfinite_output_is_flagged_and_the_next_frame_is_key():
    seg = make(key_interval=10)
    img = textured()
    seg.step(img)
    with torch.no_grad():
        seg.net.cfnet.parameters().__next__().fill_(float("nan"))
    r = seg.step(shifted(img, 2))
    assert not r.valid and (r.labels == 255).all()
    r = seg.step(shifted(img, 4))
    assert r.is_key and r.key_reason == "nonfinite_output" and r.valid


@pytest.mark.parametrize("bad", [
    np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
    np.zeros((10, 10, 3), np.float32), [[1, 2, 3]],
])
def test_bad_images_raise_a_clear_value_error(bad):
    seg = make()
    with pytest.raises(ValueError, match="expected"):
        seg.step(bad)


def test_adaptive_schedule_makes_a_key_frame_when_distortion_is_high():
    # threshold 0: any measured distortion on a moving scene exceeds it
    seg = make("davss", policy="adaptive", threshold=0.0, max_interval=50)
    base = textured()
    seg.step(base)
    r = seg.step(shifted(base, 7))
    assert r.is_key and r.key_reason == "distortion"


def test_timings_cover_the_stages_that_ran():
    seg = make("davss", key_interval=2)
    base = textured()
    key, nonkey = seg.step(base), seg.step(shifted(base, 2))
    assert key.timings_ms["segmenter"] > 0 and key.timings_ms["cfnet"] == 0
    for stage in ("flow", "warp", "dmnet", "cfnet", "fuse"):
        assert nonkey.timings_ms[stage] > 0
    assert nonkey.timings_ms["segmenter"] == 0
    assert nonkey.timings_ms["total"] >= sum(
        nonkey.timings_ms[s] for s in ("flow", "warp", "dmnet", "cfnet")) * 0.99


def test_set_schedule_changes_the_interval_live():
    from davss_ros.config import ScheduleConfig

    seg = make(key_interval=10)
    img = textured()
    seg.step(img)
    seg.set_schedule(ScheduleConfig(policy="fixed", key_interval=2))
    assert seg.step(img).is_key is False
    assert seg.step(img).is_key is True


def _fusion_inputs(seg, prev_x, prop, cur):
    """f_P, f_CC and DMNet's M of a davss step, recomputed outside the pipeline."""
    x = seg._to_tensor(cur)
    with torch.no_grad():
        flow = seg.flow(x, prev_x)
        warped = warp(prop, flow)
        m = seg.net.dmnet(warp(torch.nn.functional.avg_pool2d(prev_x, 4), flow),
                          torch.nn.functional.avg_pool2d(x, 4))
        return warped, seg.net.cfnet(x), m


def test_constant_distortion_map_from_a_checkpoint_fuses_half_and_half(tmp_path):
    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.model import DistortionGuidedFusion, build_davss_net
    from davss_ros.model.fusion import CONSTANT_DISTORTION

    assert CONSTANT_DISTORTION == 0.5
    trained = load_config({"model": {"input_height": H, "input_width": W,
                                     "distortion_map": "constant",
                                     "segmenter": {"aspp_channels": 16,
                                                   "decoder_channels": 16}}})
    path = save_checkpoint(tmp_path / "no_dgfc.pt", config=trained,
                           state_dict=build_davss_net(trained.model).state_dict())
    # The caller's config says "predicted" (the default): the checkpoint's choice wins, as
    # the weights were trained for it.
    runtime = load_config({"model": {"mode": "davss", "input_height": H, "input_width": W},
                           "schedule": {"key_interval": 10}})
    seg = VideoSegmenter(runtime, checkpoint=path, device="cpu")
    assert seg.config.model.distortion_map == "constant"
    base = textured()
    seg.step(base)
    prev_x, prop = seg.state.frame, seg.state.logits
    cur = shifted(base, 4)
    r = seg.step(cur)
    warped, cue, m = _fusion_inputs(seg, prev_x, prop, cur)
    expected = DistortionGuidedFusion()(warped, cue, torch.full_like(m, 0.5))
    up = torch.nn.functional.interpolate(expected, size=(H, W), mode="bilinear",
                                         align_corners=False)
    np.testing.assert_array_equal(r.labels, up.argmax(1)[0].to(torch.uint8).numpy())
    # and not what DMNet's map would have given (so the check above tells the two apart)
    with_m = torch.nn.functional.interpolate(warped * (1 - m) + cue * m, size=(H, W),
                                             mode="bilinear", align_corners=False)
    assert (with_m.argmax(1)[0].to(torch.uint8).numpy() != r.labels).any()
    # DMNet still runs: its map is the distortion output (not the constant)
    assert r.distortion_mean == pytest.approx(float(m.mean()), abs=1e-6)
    assert not torch.allclose(m, torch.full_like(m, 0.5))


def test_keep_parts_exposes_the_propagated_logits_cue_and_output_of_non_key_frames():
    seg = make("davss", key_interval=10)
    base = textured()
    assert seg.step(base).parts is None and seg.step(shifted(base, 2)).parts is None  # off
    seg.reset()
    seg.keep_parts = True
    key = seg.step(base)
    assert key.parts is None  # a key frame has nothing propagated
    prev_x, prop = seg.state.frame, seg.state.logits
    cur = shifted(base, 4)
    r = seg.step(cur)
    warped, cue, m = _fusion_inputs(seg, prev_x, prop, cur)
    torch.testing.assert_close(r.parts.propagated, warped)
    torch.testing.assert_close(r.parts.cue, cue)
    torch.testing.assert_close(r.parts.fused, warped * (1 - m) + cue * m)
    # the pipeline's own label making, applied to its output, gives its labels
    np.testing.assert_array_equal(seg.labels_from_logits(r.parts.fused, (H, W)), r.labels)
    small = seg.labels_from_logits(r.parts.propagated, (H // 2, W // 2))
    assert small.shape == (H // 2, W // 2) and small.dtype == np.uint8


# ------------------------------------------------------- building, key segmenters, resize


class _ColourSegmenter(torch.nn.Module):
    """Logits = the 1/4-pooled colour channels (class 0 red, 1 green, 2 blue), then
    ``extra`` classes that never win: a key segmenter whose answer is known per pixel."""

    def __init__(self, extra=0):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 4) * 10.0
        pad = torch.full((x.shape[0], self.extra) + pooled.shape[-2:], -10.0)
        return torch.cat([pooled, pad], 1)


def _colour_key(classes=3):
    from davss_ros.classes import default_palette
    from davss_ros.segmenters import NativeSegmenter, SegmenterInfo

    names = tuple(f"c{i}" for i in range(classes))
    return NativeSegmenter(_ColourSegmenter(classes - 3), SegmenterInfo(
        class_names=names, palette=tuple(default_palette(classes))))


def _colour_image(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 3, 0] = 255
    img[:, w // 3: 2 * w // 3, 1] = 255
    img[:, 2 * w // 3:, 2] = 255
    return img


def _checkpoint(tmp_path, **model):
    from davss_ros.checkpoint import save_checkpoint
    from davss_ros.model import build_davss_net

    cfg = load_config({"model": {"input_height": H, "input_width": W, "flow": {
        "provider": "dis", "dis_preset": "ultrafast"}, "propagate_corrected": True,
        "segmenter": {"aspp_channels": 16, "decoder_channels": 16}, **model}})
    return save_checkpoint(tmp_path / "ck.pt", config=cfg,
                           state_dict=build_davss_net(cfg.model).state_dict())


def test_a_runtime_override_changes_only_what_it_names(tmp_path):
    path = _checkpoint(tmp_path)
    for seg in (VideoSegmenter(config={"model": {"mode": "dff"}}, checkpoint=path,
                               device="cpu"),
                VideoSegmenter.from_checkpoint(path, mode="dff", device="cpu")):
        m = seg.config.model
        assert m.mode == "dff"
        assert (m.input_height, m.input_width) == (H, W)  # not the preset's 256x512
        assert m.flow.dis_preset == "ultrafast" and m.propagate_corrected
    seg = VideoSegmenter.from_checkpoint(path, input_size=(128, 192), dis_preset="fast",
                                         schedule={"key_interval": 7}, device="cpu")
    m = seg.config.model
    assert (m.input_height, m.input_width, m.flow.dis_preset) == (128, 192, "fast")
    assert m.mode == "davss" and m.propagate_corrected
    assert seg.config.schedule.key_interval == 7 and seg.config.schedule.policy == "fixed"
    with pytest.raises(ValueError, match="model.segmenter: part of the checkpoint"):
        VideoSegmenter(config={"model": {"segmenter": {"backbone": "resnet18"}}},
                       checkpoint=path, device="cpu")
    with pytest.raises(ValueError, match="preset"):
        VideoSegmenter(config="paper", checkpoint=path, device="cpu")


@pytest.mark.parametrize("policy", ["letterbox", "stretch", "crop"])
def test_labels_of_another_aspect_ratio_land_on_the_input_pixels(policy):
    seg = VideoSegmenter.from_checkpoint(None, preset=load_config({"model": {
        "input_height": H, "input_width": W}}), key_segmenter=_colour_key(), resize=policy,
        mode="per_frame", device="cpu")
    img = _colour_image(144, 176)
    r = seg.step(img)
    assert r.labels.shape == (144, 176) and r.distortion.shape == (144, 176)
    truth = np.argmax(img, axis=2)
    seen = r.labels != 255
    # every seen pixel carries its own colour's class, but within one network pixel of a
    # colour edge
    edges = np.zeros(176, bool)
    for x in (176 // 3, 2 * 176 // 3):
        edges[x - 3: x + 3] = True
    ok = (r.labels == truth) | edges[None, :] | ~seen
    assert ok.all()
    if policy == "crop":
        assert seen[72].all() and (~seen[0]).all() and (~seen[-1]).all()  # rows cut
    else:
        assert seen.all()


def test_letterbox_is_the_default_and_says_what_it_does():
    seg = VideoSegmenter.from_checkpoint(None, preset=load_config({"model": {
        "input_height": H, "input_width": W}}), device="cpu")
    assert seg.resize == "letterbox"
    assert "letterboxed" in seg.framing((144, 176)).describe()


def test_a_key_segmenter_of_other_classes_gives_its_classes_to_untrained_networks(tmp_path):
    key = _colour_key(11)
    seg = VideoSegmenter.from_checkpoint(None, preset=load_config({"model": {
        "input_height": H, "input_width": W}}), key_segmenter=key, device="cpu")
    assert seg.num_classes == 11 and seg.class_names == [f"c{i}" for i in range(11)]
    assert len(seg.palette) == 11
    for _ in range(3):
        r = seg.step(_colour_image(H, W))
    assert not r.is_key and r.labels.max() < 11
    # a trained checkpoint of 19 classes refuses it, naming both counts
    from davss_ros.segmenters import KeySegmenterError

    with pytest.raises(KeySegmenterError, match="gives 11 classes, the checkpoint .* has 19"):
        VideoSegmenter.from_checkpoint(_checkpoint(tmp_path), key_segmenter=key, device="cpu")


def test_a_fixed_propagation_distance_from_python():
    """The README's recipe: a long fixed interval, reset() for the key frame, d steps."""
    from davss_ros.config import ScheduleConfig

    seg = make("davss")
    seg.set_schedule(ScheduleConfig(policy="fixed", key_interval=100))
    base = textured(3)
    for start in (0, 1):
        seg.reset("start")
        distances = [seg.step(shifted(base, start + d)).propagation_distance for d in range(6)]
        assert distances == [0, 1, 2, 3, 4, 5]


def test_a_checkpoint_names_its_external_key_segmenter_and_refuses_a_replaced_one(tmp_path):
    from davss_ros.checkpoint import key_segmenter_reference, save_checkpoint
    from davss_ros.model import build_davss_net
    from davss_ros.segmenters import KeySegmenterError

    key_file = tmp_path / "colour.ts"
    torch.jit.script(_ColourSegmenter(0)).save(str(key_file))
    (tmp_path / "colour.ts.yaml").write_text("class_names: [red, green, blue]\n")
    cfg = load_config({"model": {"num_classes": 3, "input_height": H, "input_width": W,
                                 "mode": "per_frame"}})
    ck = save_checkpoint(tmp_path / "adapted.pt", config=cfg,
                         state_dict=build_davss_net(cfg.model).state_dict(),
                         meta={"key_segmenter": key_segmenter_reference(
                             key_file, checkpoint_path=tmp_path / "adapted.pt")})
    seg = VideoSegmenter.from_checkpoint(ck, device="cpu")
    assert seg.key_segmenter.kind == "torchscript" and seg.class_names == ["red", "green", "blue"]
    r = seg.step(_colour_image(H, W))
    assert (r.labels[:, 5] == 0).all() and (r.labels[:, -5] == 2).all()
    torch.jit.script(_ColourSegmenter(1)).save(str(key_file))  # another network, same name
    with pytest.raises(KeySegmenterError, match="sha256"):
        VideoSegmenter.from_checkpoint(ck, device="cpu")
    key_file.unlink()
    with pytest.raises(KeySegmenterError, match="does not exist"):
        VideoSegmenter.from_checkpoint(ck, device="cpu")


def test_confidence_is_255_on_key_frames_and_the_output_probability_between():
    seg = make("davss", key_interval=10)
    base = textured(4)
    key = seg.step(base)
    assert key.confidence.dtype == np.uint8 and (key.confidence == 255).all()
    r = seg.step(shifted(base, 2))
    prob = torch.softmax(r.logits[0], 0).amax(0).numpy()
    up = torch.nn.functional.interpolate(torch.from_numpy(prob)[None, None], size=(H, W),
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(r.confidence.astype(int) - np.rint(up * 255)).max() <= 1
    assert r.confidence.shape == r.labels.shape and r.confidence.min() < 255


def test_confidence_is_0_where_a_crop_saw_nothing():
    seg = VideoSegmenter.from_checkpoint(None, preset=load_config({"model": {
        "input_height": H, "input_width": W}}), resize="crop", device="cpu",
        schedule={"key_interval": 10})
    img = textured(5, 144, 176)
    for _ in range(2):
        r = seg.step(img)
        unseen = r.labels == 255
        assert unseen.any() and (r.confidence[unseen] == 0).all()


def test_two_streams_share_the_networks_but_not_their_state():
    a = make("davss", key_interval=3)
    b = a.new_stream()
    assert b.net is a.net and b.key_segmenter is a.key_segmenter
    assert b.flow is not a.flow and b.scheduler is not a.scheduler
    img_a, img_b = textured(6), textured(7)
    ra = [a.step(shifted(img_a, i)) for i in range(2)]
    rb = b.step(img_b)
    assert [r.is_key for r in ra] == [True, False] and rb.is_key  # b's own first frame
    assert a.step(shifted(img_a, 2)).propagation_distance == 2
    # the same frames through a fresh segmenter give the same labels: no state leaked
    torch.manual_seed(0)
    fresh = make("davss", key_interval=3)
    for i in range(3):
        expected = fresh.step(shifted(img_a, i))
    torch.manual_seed(0)
    a2 = make("davss", key_interval=3)
    c = a2.new_stream()
    c.step(img_b)
    for i in range(3):
        got = a2.step(shifted(img_a, i))
        c.step(shifted(img_b, i + 1))
    np.testing.assert_array_equal(got.labels, expected.labels)
    b.close()
    assert a.net is not None  # closing a stream leaves the owner's networks


def test_budget_schedule_keys_only_when_the_expected_key_cost_fits():
    seg = make("davss", policy="budget", max_interval=5, key_interval=2)
    base = textured(8)
    first = seg.step(base, budget_ms=1e-3)
    assert first.is_key and seg.expected_ms["key"] is not None
    # the first key frame is a cold one; until enough warm ones are measured to bound the
    # next one's cost, a key frame every key_interval frames
    assert seg.key_cost_bound_ms is None
    reasons = [seg.step(shifted(base, i), budget_ms=1e6).key_reason
               for i in range(1, 2 * COST_MIN_SAMPLES + 1)]
    assert reasons == ["", "interval"] * COST_MIN_SAMPLES
    assert seg.key_cost_bound_ms is not None
    i = 2 * COST_MIN_SAMPLES + 1
    tight = [seg.step(shifted(base, i + k), budget_ms=1e-3).is_key for k in range(3)]
    assert tight == [False, False, False]
    assert seg.step(shifted(base, i + 3), budget_ms=1e6).key_reason == "slack"


def test_a_key_segmenter_of_fixed_input_size_sets_the_network_size_unless_one_is_asked():
    from davss_ros.classes import default_palette
    from davss_ros.segmenters import KeySegmenterError, NativeSegmenter, SegmenterInfo

    info = SegmenterInfo(class_names=("r", "g", "b"), palette=tuple(default_palette(3)),
                         input_size=(128, 256))
    key = NativeSegmenter(_ColourSegmenter(), info)
    seg = VideoSegmenter.from_checkpoint(None, key_segmenter=key, device="cpu")
    assert seg.network_size == (128, 256)
    assert seg.step(_colour_image(144, 176)).labels.shape == (144, 176)
    with pytest.raises(KeySegmenterError, match="takes 256x128"):
        VideoSegmenter.from_checkpoint(None, key_segmenter=key, input_size=(64, 128),
                                       device="cpu")


def _signals_segmenter():
    cfg = load_config({
        "model": {"mode": "davss", "input_height": H, "input_width": W, "distortion": "signals",
                  "segmenter": {"aspp_channels": 16, "decoder_channels": 16}},
        "schedule": {"policy": "fixed", "key_interval": 10}})
    return VideoSegmenter(cfg, device="cpu", keep_parts=True)


def test_with_the_signals_estimator_the_published_map_is_the_refined_one():
    seg = _signals_segmenter()
    base = textured()
    seg.step(base)
    seg._state = dataclasses.replace(seg._state, trust=1.0)  # a trusted cue
    r = seg.step(shifted(base, 4))
    refined = r.parts.distortion_map
    dmnet = seg.net.dmnet(r.parts.warped_image, torch.nn.functional.avg_pool2d(
        seg.state.frame, 4))
    assert r.parts.trust == 1.0 and not torch.allclose(refined, dmnet)
    np.testing.assert_allclose(r.distortion_small, refined[0, 0].numpy(), rtol=0, atol=0)
    assert r.distortion_mean == pytest.approx(float(refined.mean()), abs=1e-6)


def test_a_key_frame_measures_the_cue_trust_and_an_untrusted_cue_fuses_with_dmnets_map():
    from davss_ros.model.refiner import cue_trust

    seg = _signals_segmenter()
    base = textured()
    seg.step(base)
    x = seg.state.frame
    with torch.no_grad():
        expected = cue_trust(seg.net.cfnet(x), seg.net.segmenter(x))
    assert seg.state.trust == pytest.approx(expected)
    seg._state = dataclasses.replace(seg._state, trust=0.0)
    r = seg.step(shifted(base, 4))
    p = r.parts
    with torch.inference_mode():
        dmnet = seg.net.dmnet(p.warped_image,
                              torch.nn.functional.avg_pool2d(seg.state.frame, 4))
        torch.testing.assert_close(p.distortion_map, dmnet)
        torch.testing.assert_close(p.fused, p.propagated * (1 - dmnet) + p.cue * dmnet)


@pytest.mark.parametrize("source", ["dmnet", "refined"])
def test_the_adaptive_policy_decides_on_the_map_its_source_names(source):
    """DMNet made to see no distortion (equal features: M = 0) and a refiner that calls
    every pixel distorted (M_s = 1): only the source ``refined`` makes a key frame."""
    from davss_ros.config import ScheduleConfig
    from davss_ros.model.refiner import cue_trust

    seg = _signals_segmenter()
    last = seg.net.dmnet.features[-1]
    last.weight.data.zero_()
    last.bias.data.fill_(1.0)
    seg.net.refiner.head[-1].bias.data.fill_(30.0)
    seg.set_schedule(ScheduleConfig(policy="adaptive", threshold=0.5, max_interval=50,
                                    source=source))
    base = textured()
    seg.step(base)
    seg._state = dataclasses.replace(seg._state, trust=1.0)  # a trusted cue
    r = seg.step(shifted(base, 4))
    assert r.is_key == (source == "refined")
    if source == "refined":
        assert r.key_reason == "distortion"
        # the key frame's cue trust is measured on this frame, from the cue already run
        x = seg.state.frame
        with torch.no_grad():
            assert seg.state.trust == pytest.approx(
                cue_trust(seg.net.cfnet(x), seg.net.segmenter(x)))
    else:  # DMNet's map decided; the map published is still the refined one
        assert r.key_reason == "" and r.distortion_mean > 0.99
