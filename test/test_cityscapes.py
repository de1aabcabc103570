import re

import cv2
import numpy as np
import pytest

from davss_ros.data.cityscapes import CityscapesSequences
from davss_ros.data.synthetic import write_cityscapes_layout

H, W = 8, 16
# (city, seq, annotated frame): frankfurt's val snippets are not numbered from 0
SNIPPETS = [("frankfurt", 0, 294), ("aachen", 3, 19)]


def _frame(seq: int, frame: int) -> np.ndarray:
    """A frame whose pixels encode where it came from (RGB)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = seq
    img[..., 1] = frame % 256
    img[..., 2] = frame // 256
    return img


def _label_ids() -> np.ndarray:
    ids = np.full((H, W), 7, np.uint8)  # road
    ids[0] = 23  # sky
    ids[1, :4] = 26  # car
    ids[2, :4] = 0  # unlabeled
    return ids


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


def _tree(root, split="val", dense=False):
    for city, seq, ann in SNIPPETS:
        for f in range(ann - 19, ann + 11):
            stem = f"{city}_{seq:06d}_{f:06d}"
            _write(root / "leftImg8bit_sequence" / split / city / f"{stem}_leftImg8bit.png",
                   _frame(seq, f))
            if dense:
                _write(root / "gtFine_sequence" / split / city / f"{stem}_gtFine_labelIds.png",
                       _label_ids())
        stem = f"{city}_{seq:06d}_{ann:06d}"
        _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _label_ids())
        # the official tree also has colour and instance files next to the labelIds
        _write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png",
               np.zeros((H, W, 3), np.uint8))
    return root


def test_snippets_are_indexed_from_gtfine_in_city_order(tmp_path):
    ds = CityscapesSequences(_tree(tmp_path), "val")
    assert len(ds) == 2
    assert [s.name for s in ds] == ["aachen_000003_000019", "frankfurt_000000_000294"]
    assert ds[1].first_frame == 275
    assert ds.frame_path(1, 0).name == "frankfurt_000000_000275_leftImg8bit.png"
    assert ds.frame_path(1, 29).name == "frankfurt_000000_000304_leftImg8bit.png"
    assert ds.frame_path(0, 19) == (tmp_path / "leftImg8bit_sequence" / "val" / "aachen"
                                    / "aachen_000003_000019_leftImg8bit.png")
    with pytest.raises(IndexError):
        ds.frame_path(0, 30)


def test_frames_load_as_rgb_of_the_right_number(tmp_path):
    ds = CityscapesSequences(_tree(tmp_path), "val")
    img = ds.load_frame(1, 19)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert np.array_equal(img, _frame(0, 294))


def test_labels_map_ids_to_train_ids(tmp_path):
    ds = CityscapesSequences(_tree(tmp_path), "val")
    lab = ds.load_label(0)
    assert lab.dtype == np.uint8 and lab.shape == (H, W)
    assert lab[0, 0] == 10 and lab[1, 0] == 13 and lab[2, 0] == 255 and lab[5, 5] == 0


@pytest.mark.parametrize("d", [1, 5, 9])
def test_pda_sample_runs_from_key_frame_to_annotated_frame(tmp_path, d):
    ds = CityscapesSequences(_tree(tmp_path), "val")
    s = ds.pda_sample(1, d)
    assert s.distance == d and len(s.frames) == d + 1
    numbers = [int(re.search(r"_(\d{6})_leftImg8bit", p.name)[1]) for p in s.frame_paths]
    assert numbers == list(range(294 - d, 295))
    assert np.array_equal(s.frames[0], _frame(0, 294 - d))
    assert np.array_equal(s.frames[-1], _frame(0, 294))
    assert s.label[1, 0] == 13


def test_pda_samples_iterate_every_snippet_and_distance(tmp_path):
    ds = CityscapesSequences(_tree(tmp_path), "val")
    pairs = [(s.name, s.distance) for s in ds.pda_samples(range(1, 4))]
    assert len(pairs) == 6 and pairs[0] == ("aachen_000003_000019", 1)


def test_missing_frame_raises_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    gone = (root / "leftImg8bit_sequence" / "val" / "frankfurt"
            / "frankfurt_000000_000290_leftImg8bit.png")
    gone.unlink()
    ds = CityscapesSequences(root, "val")
    with pytest.raises(FileNotFoundError, match="frankfurt_000000_000290_leftImg8bit.png"):
        ds.pda_sample(1, 9)


def test_ids_outside_the_table_raise_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    bad = root / "gtFine" / "val" / "aachen" / "aachen_000003_000019_gtFine_labelIds.png"
    ids = _label_ids()
    ids[4, 4] = 40
    _write(bad, ids)
    ds = CityscapesSequences(root, "val")
    with pytest.raises(ValueError, match=r"aachen_000003_000019_gtFine_labelIds.png.*\[40\]"):
        ds.load_label(0)


def test_size_mismatch_raises_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    frame = (root / "leftImg8bit_sequence" / "val" / "aachen"
             / "aachen_000003_000017_leftImg8bit.png")
    _write(frame, np.zeros((H + 2, W, 3), np.uint8))
    ds = CityscapesSequences(root, "val")
    with pytest.raises(ValueError, match="aachen_000003_000017_leftImg8bit.png"):
        ds.load_frame(0, 17)
    with pytest.raises(ValueError, match="aachen_000003_000017_leftImg8bit.png"):
        ds.pda_sample(0, 2)
    ann = root / "leftImg8bit_sequence" / "val" / "aachen" / "aachen_000003_000019_leftImg8bit.png"
    _write(ann, np.zeros((H, W + 1, 3), np.uint8))
    with pytest.raises(ValueError, match="aachen_000003_000019"):
        ds.load_label(0)


def test_colour_label_is_refused_naming_the_file(tmp_path):
    root = _tree(tmp_path)
    bad = root / "gtFine" / "val" / "aachen" / "aachen_000003_000019_gtFine_labelIds.png"
    _write(bad, np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="aachen_000003_000019_gtFine_labelIds.png"):
        CityscapesSequences(root, "val").load_label(0)


def test_missing_split_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="gtFine"):
        CityscapesSequences(tmp_path, "train")


def test_dense_labels_only_where_gtfine_sequence_exists(tmp_path):
    ds = CityscapesSequences(_tree(tmp_path / "a"), "val")
    assert not ds.has_dense_labels
    with pytest.raises(FileNotFoundError, match="gtFine_sequence"):
        ds.dense_label(0, 3)
    ds = CityscapesSequences(_tree(tmp_path / "b", dense=True), "val")
    assert ds.has_dense_labels
    assert ds.dense_label(1, 3)[1, 0] == 13


def test_reads_what_the_synthetic_writer_wrote(tmp_path):
    write_cityscapes_layout(tmp_path, "train", 1, 24, 48, seed=1, frames=30, progress=False)
    ds = CityscapesSequences(tmp_path, "train")
    assert len(ds) == 1 and ds.has_dense_labels
    s = ds.pda_sample(0, 9)
    assert len(s.frames) == 10 and s.frames[0].shape == (24, 48, 3)
    assert np.array_equal(ds.dense_label(0, 19), s.label)
    assert 0 in s.label  # road, mapped from id 7
