import cv2
import numpy as np
import pytest

from davss_ros.data.camvid import CamVidSequences

H, W = 6, 8
# labelled frames as named in the SegNet split: 6-digit, "f" + 5 digits
LABELLED = [("0001TP", "006690", 6690), ("Seq05VD", "f00030", 30)]


def _frame(value: int, h: int = H, w: int = W) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = value % 256
    img[..., 1] = value // 256
    return img


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


def _label() -> np.ndarray:
    lab = np.full((H, W), 3, np.uint8)  # road
    lab[0] = 0  # sky
    lab[1, :2] = 11  # void
    lab[2, :2] = 8  # car
    return lab


def _tree(root, split="test", video_scale=1):
    for seq, tail, n in LABELLED:
        _write(root / split / f"{seq}_{tail}.png", _frame(n))
        _write(root / f"{split}annot" / f"{seq}_{tail}.png", _label())
        for f in range(n - 9, n + 1):
            _write(root / "video" / seq / f"{seq}_{f:06d}.png",
                   _frame(f, H * video_scale, W * video_scale))
    return root


def test_labelled_frames_are_indexed_with_their_video_frame_numbers(tmp_path):
    ds = CamVidSequences(_tree(tmp_path), "test")
    assert len(ds) == 2
    assert [(it.sequence, it.frame) for it in ds] == [("0001TP", 6690), ("Seq05VD", 30)]
    assert ds.frame_path(0, 0) == tmp_path / "test" / "0001TP_006690.png"
    assert ds.frame_path(0, 3) == tmp_path / "video" / "0001TP" / "0001TP_006687.png"
    assert ds.frame_path(1, 9).name == "Seq05VD_000021.png"


def test_label_maps_void_to_255(tmp_path):
    lab = CamVidSequences(_tree(tmp_path), "test").load_label(0)
    assert lab[0, 0] == 0 and lab[1, 0] == 255 and lab[2, 0] == 8 and lab[4, 4] == 3


@pytest.mark.parametrize("d", [1, 4, 9])
def test_pda_sample_gives_the_preceding_video_frames(tmp_path, d):
    ds = CamVidSequences(_tree(tmp_path), "test")
    s = ds.pda_sample(0, d)
    assert len(s.frames) == d + 1
    assert [int(f[0, 0, 0]) + 256 * int(f[0, 0, 1]) for f in s.frames] == list(
        range(6690 - d, 6691))
    assert s.frame_paths[-1].parent.name == "test"
    assert s.label[2, 0] == 8


def test_distance_beyond_max_is_refused(tmp_path):
    ds = CamVidSequences(_tree(tmp_path), "test", max_distance=4)
    with pytest.raises(ValueError, match="distance"):
        ds.frame_path(0, 5)


def test_missing_video_frame_raises_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    (root / "video" / "Seq05VD" / "Seq05VD_000025.png").unlink()
    ds = CamVidSequences(root, "test")
    with pytest.raises(FileNotFoundError, match="Seq05VD_000025.png"):
        ds.pda_sample(1, 6)


def test_missing_annotation_raises_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    (root / "testannot" / "0001TP_006690.png").unlink()
    with pytest.raises(FileNotFoundError, match="0001TP_006690.png"):
        CamVidSequences(root, "test")


def test_label_values_above_void_raise_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    lab = _label()
    lab[3, 3] = 12
    _write(root / "testannot" / "Seq05VD_f00030.png", lab)
    with pytest.raises(ValueError, match=r"Seq05VD_f00030.png.*\[12\]"):
        CamVidSequences(root, "test").load_label(1)


def test_size_mismatch_raises_unless_resizing(tmp_path):
    root = _tree(tmp_path, video_scale=2)  # raw video at twice the label size
    ds = CamVidSequences(root, "test")
    with pytest.raises(ValueError, match="0001TP_006689.png"):
        ds.load_frame(0, 1)
    resized = CamVidSequences(root, "test", resize_frames=True).pda_sample(0, 2)
    assert all(f.shape == (H, W, 3) for f in resized.frames)
    assert int(resized.frames[0][0, 0, 0]) == 6688 % 256


def test_badly_named_frame_is_refused(tmp_path):
    root = _tree(tmp_path)
    _write(root / "test" / "frame.png", _frame(0))
    with pytest.raises(ValueError, match="frame.png"):
        CamVidSequences(root, "test")
