import dataclasses
import json

import cv2
import numpy as np
import pytest

from davss_ros.data.imageio import read_label
from davss_ros.data.labels import id_to_train_id
from davss_ros.data.synthetic import (
    DUSK_HAZE,
    SceneConfig,
    clip_seed,
    render_clip,
    write_cityscapes_layout,
)

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = (
    0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 13)


def _static(seed=0, **kw):
    kw.setdefault("height", 96)
    kw.setdefault("width", 192)
    return render_clip(SceneConfig(seed=seed, noise=0.0, lighting_change=False, **kw))


def test_same_seed_gives_the_same_clip_and_different_seeds_differ():
    a = render_clip(SceneConfig(height=48, width=96, frames=3, seed=5))
    b = render_clip(SceneConfig(height=48, width=96, frames=3, seed=5))
    c = render_clip(SceneConfig(height=48, width=96, frames=3, seed=6))
    for name in ("images", "labels", "flows", "flow_valid"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.images, c.images)


def test_clip_shapes_and_dtypes():
    clip = render_clip(SceneConfig(height=48, width=96, frames=3, seed=1))
    assert clip.images.shape == (3, 48, 96, 3) and clip.images.dtype == np.uint8
    assert clip.labels.shape == (3, 48, 96) and clip.labels.dtype == np.uint8
    assert clip.flows.shape == (3, 48, 96, 2) and clip.flows.dtype == np.float32
    assert clip.flow_valid.shape == (3, 48, 96) and clip.flow_valid.dtype == bool
    assert not clip.flows[0].any() and not clip.flow_valid[0].any()


@pytest.mark.parametrize("size", [(48, 96), (64, 160)])
def test_any_resolution_gives_labels_of_that_size(size):
    clip = render_clip(SceneConfig(height=size[0], width=size[1], frames=2, seed=3))
    assert clip.labels.shape == (2, *size)
    assert clip.images.shape == (2, *size, 3)


def test_labels_are_the_same_scene_at_two_resolutions():
    lo = render_clip(SceneConfig(height=48, width=96, frames=1, seed=4)).labels[0]
    hi = render_clip(SceneConfig(height=96, width=192, frames=1, seed=4)).labels[0]
    down = cv2.resize(hi, (96, 48), interpolation=cv2.INTER_NEAREST)
    assert (down == lo).mean() > 0.9


def test_required_classes_appear_over_a_short_clip():
    clip = render_clip(SceneConfig(height=128, width=256, frames=6, seed=0))
    present = set(np.unique(clip.labels).tolist())
    for cls in (ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR):
        assert cls in present, cls
    assert present & {WALL, FENCE}
    assert present <= set(range(19)) | {255}


def test_true_flow_warps_previous_frame_onto_current_on_valid_static_pixels():
    clip = _static(seed=2, frames=4, min_speed=10.0, max_speed=14.0)
    h, w = clip.labels.shape[1:]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for t in range(1, 4):
        ok = clip.flow_valid[t] & (clip.object_ids[t] == 0)
        assert ok.mean() > 0.7
        f = clip.flows[t]
        warped = cv2.remap(clip.images[t - 1], gx + f[..., 0], gy + f[..., 1],
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = np.abs(warped.astype(np.float32) - clip.images[t]).mean(-1)
        unwarped = np.abs(clip.images[t - 1].astype(np.float32) - clip.images[t]).mean(-1)
        # most error is at aliased edges: the median pixel is within a grey level or two
        assert np.median(err[ok]) < 2.0
        assert err[ok].mean() < 5.0
        moved = ok & (np.linalg.norm(f, axis=-1) > 1.5)
        assert moved.mean() > 0.2
        assert err[moved].mean() < 0.4 * unwarped[moved].mean()


def test_flow_is_the_rigid_scene_flow_except_on_moving_objects():
    clip = _static(seed=0, frames=3, moving_cars=4)
    K = clip.intrinsics
    t = 2
    h, w = clip.labels.shape[1:]
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    # back-project with depth and the camera pose of frame t, project with frame t - 1
    d = np.stack([(gx - K[0, 2]) / K[0, 0], -(gy - K[1, 2]) / K[1, 1], np.ones_like(gx)], -1)
    pose, prev = clip.cam_to_world[t], clip.cam_to_world[t - 1]
    z = np.where(np.isfinite(clip.depth[t]), clip.depth[t], 0)
    pw = pose[:3, 3] + z[..., None] * (d @ pose[:3, :3].T)
    q = (pw - prev[:3, 3]) @ prev[:3, :3]
    rigid = np.stack([K[0, 2] + K[0, 0] * q[..., 0] / q[..., 2] - gx,
                      K[1, 2] - K[1, 1] * q[..., 1] / q[..., 2] - gy], -1)
    diff = np.linalg.norm(rigid - clip.flows[t], axis=-1)
    solid = clip.flow_valid[t] & np.isfinite(clip.depth[t]) & (clip.labels[t] != 255)
    static = solid & (clip.object_ids[t] == 0)
    moving = solid & (clip.object_ids[t] > 0)
    assert static.sum() > 1000 and moving.sum() > 50
    assert np.percentile(diff[static], 99) < 0.05
    assert np.median(diff[moving]) > 0.3
    # and the moving pixels are cars or people
    assert set(np.unique(clip.labels[t][moving]).tolist()) <= {PERSON, CAR}


def test_valid_flow_lands_on_the_same_class_and_occlusions_are_invalid():
    clip = _static(seed=1, frames=6, min_speed=10.0, max_speed=14.0)
    h, w = clip.labels.shape[1:]
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    for t in range(1, 6):
        tx = np.rint(gx + clip.flows[t, ..., 0]).astype(int)
        ty = np.rint(gy + clip.flows[t, ..., 1]).astype(int)
        inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
        same = np.zeros((h, w), bool)
        same[inside] = clip.labels[t - 1][ty[inside], tx[inside]] == clip.labels[t][inside]
        valid = clip.flow_valid[t]
        assert (valid <= inside).all()
        assert same[valid].mean() > 0.99
        # pixels landing on another class were hidden in frame t - 1 (or sit on a class
        # border of the same surface, road/sidewalk): nearly all are marked invalid
        hidden = inside & ~same
        assert hidden.sum() > 0 and valid[hidden].mean() < 0.2


def test_write_cityscapes_layout_uses_official_names_and_ids(tmp_path):
    h, w, frames = 32, 64, 20
    paths = write_cityscapes_layout(tmp_path, "val", 2, h, w, seed=7, frames=frames,
                                    workers=2, progress=False)
    city_img = tmp_path / "leftImg8bit_sequence" / "val" / "synth"
    city_gt = tmp_path / "gtFine" / "val" / "synth"
    city_seq = tmp_path / "gtFine_sequence" / "val" / "synth"
    expected_imgs = {f"synth_{c:06d}_{f:06d}_leftImg8bit.png"
                     for c in range(2) for f in range(frames)}
    assert {p.name for p in city_img.iterdir()} == expected_imgs
    assert {p.name for p in city_gt.iterdir()} == {
        "synth_000000_000019_gtFine_labelIds.png", "synth_000001_000019_gtFine_labelIds.png"}
    assert len(list(city_seq.iterdir())) == 2 * frames
    assert paths[1] == city_gt / "synth_000001_000019_gtFine_labelIds.png"
    ids = read_label(paths[1])
    # Cityscapes ids, not trainIds: road is 7, sky 23; they map back to the rendered labels
    assert {7, 23} <= set(np.unique(ids).tolist())
    clip = render_clip(SceneConfig(height=h, width=w, frames=frames, seed=clip_seed(7, "val", 1)))
    assert np.array_equal(id_to_train_id(ids), clip.labels[19])


def test_write_refuses_clips_without_an_annotated_frame(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        write_cityscapes_layout(tmp_path, "train", 1, 32, 64, seed=0, frames=10, progress=False)


def test_dusk_look_changes_the_images_only_and_darkens_far_pixels_towards_the_haze():
    cfg = SceneConfig(height=64, width=128, frames=3, seed=11)
    day = render_clip(cfg)
    dusk = render_clip(dataclasses.replace(cfg, look="dusk"))
    assert np.array_equal(day.labels, dusk.labels)
    assert np.array_equal(day.flows, dusk.flows)
    assert dusk.images.mean() < 0.8 * day.images.mean()
    # near pixels keep more of their own colour than far ones (the haze thickens with depth)
    diff = np.abs(dusk.images.astype(float) - day.images.astype(float)).mean(-1)
    finite = np.isfinite(day.depth)
    near = finite & (day.depth < 10)
    far = finite & (day.depth > 60)
    assert near.any() and far.any()
    dusk_far = dusk.images[far].astype(float)
    assert np.abs(dusk_far - DUSK_HAZE * 255).mean() < np.abs(
        dusk.images[near].astype(float) - DUSK_HAZE * 255).mean()
    assert diff.mean() > 10


def test_unknown_look_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="day, dusk"):
        SceneConfig(look="noon")


def test_a_pan_turns_the_view_mid_clip_and_leaves_the_frames_before_it_unchanged():
    cfg = SceneConfig(height=48, width=96, frames=12, seed=3, noise=0.0)
    plain = render_clip(cfg)
    panned = render_clip(dataclasses.replace(cfg, pan_deg=20.0, pan_frames=2))
    start = panned.info["pan_start"]
    assert plain.info["pan_start"] is None and 4 <= start < 8  # the middle third
    # the pan has a stream of its own: everything before it is the unpanned clip's
    for name in ("images", "labels", "flows"):
        assert np.array_equal(getattr(plain, name)[:start], getattr(panned, name)[:start])
    assert not np.array_equal(plain.images[start:], panned.images[start:])

    def heading(clip, t):  # the camera's forward axis, angle about the vertical
        fwd = clip.cam_to_world[t, :3, 2]
        return np.degrees(np.arctan2(fwd[0], fwd[2]))

    turned = [heading(panned, t) - heading(plain, t) for t in range(12)]
    assert np.allclose(turned[:start], 0.0)
    assert abs(abs(turned[start + 1]) - 20.0) < 1e-6  # done after pan_frames, and stays
    assert np.allclose(turned[start + 1:], turned[start + 1])
    # the image moves sideways during the pan: about 10 degrees a frame at a 50 degree
    # field of view is a fifth of the width
    during = np.abs(panned.flows[start][..., 0][panned.flow_valid[start]]).mean()
    before = np.abs(panned.flows[start - 1][..., 0][panned.flow_valid[start - 1]]).mean()
    assert during > 0.1 * 96 and during > 5 * before


@pytest.mark.parametrize("bad", [{"pan_deg": -1.0}, {"pan_deg": 61.0}, {"pan_frames": 0}])
def test_bad_pan_settings_are_refused(bad):
    with pytest.raises(ValueError, match="pan_"):
        SceneConfig(**bad)


def test_make_data_renders_panned_clips_and_refuses_a_bad_pan_before_writing(tmp_path, capsys):
    from davss_ros.cli import main

    out = tmp_path / "pan"
    assert main(["make-data", "--out", str(out), "--train", "0", "--val", "1",
                 "--height", "32", "--width", "64", "--frames", "20", "--pan", "15",
                 "--workers", "1", "--quiet"]) == 0
    meta = json.loads((out / "synthetic_val.json").read_text())
    assert meta["knobs"] == {"look": "day", "pan_deg": 15.0, "pan_frames": 3}
    assert "a 15 degree pan in each" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert main(["make-data", "--out", str(bad), "--train", "0", "--val", "1",
                 "--pan", "90", "--quiet"]) == 2
    assert "pan_deg must be in [0, 60]" in capsys.readouterr().err
    assert not bad.exists()
