"""CamVid for video segmentation: labelled frames and the video frames that precede them.

Expected layout under ``root``: the common SegNet-style split (11 classes) plus the
video frames extracted from the original sequences::

    {split}/{sequence}_{frame}.png        labelled RGB frames, e.g. train/0001TP_006690.png
    {split}annot/{sequence}_{frame}.png   8-bit label indices 0..10, 11 = void
    video/{sequence}/{sequence}_{frame:06d}.png   every video frame of the sequence

``split`` is ``train``, ``val`` or ``test``. Sequences are named as in CamVid (``0001TP``,
``0006R0``, ``0016E5``, ``Seq05VD``). A labelled file's frame number is the integer in its
name after the sequence and an optional ``f`` (``0001TP_006690`` -> 6690,
``0006R0_f00930`` -> 930, ``Seq05VD_f00000`` -> 0); the video frames must be extracted so
that ``video/{sequence}/{sequence}_{n:06d}.png`` is that same frame number ``n`` (for
example ``ffmpeg -i 0001TP.MXF -start_number 0 video/0001TP/0001TP_%06d.png``, with the
numbering offset of the original label files). For a labelled frame ``n``, propagation at
distance ``d`` starts at video frame ``n - d``.

The SegNet split is 360x480 while the raw video is 720x960: extract the video frames at
the label size, or pass ``resize_frames=True`` to resize them on load (INTER_AREA).
Otherwise a size mismatch is an error.

Classes (``davss_ros.data.labels.CAMVID_CLASSES``): Sky, Building, Pole, Road, Sidewalk,
Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist; void (11) becomes 255. The original
32-class colour labels (``*_L.png``) can be converted with
``labels.camvid32_rgb_to_train_id`` (grouping documented there).

Errors name the file: a missing frame or label raises FileNotFoundError; a label value
above 11, a label that is not 8-bit single-channel, or a size mismatch raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from davss_ros.data.cityscapes import PdaSample
from davss_ros.data.imageio import check_same_size, png_size, read_label, read_rgb
from davss_ros.data.labels import camvid_index_to_train_id

_NAME_RE = re.compile(r"^(?P<seq>[A-Za-z0-9]+)_f?(?P<frame>\d+)\.png$")


@dataclass(frozen=True)
class LabelledFrame:
    name: str  # file stem, e.g. "0001TP_006690"
    sequence: str
    frame: int  # video frame number
    image_path: Path
    label_path: Path


def load_camvid_label(path: str | Path) -> np.ndarray:
    """A SegNet-style CamVid annotation as train ids (void -> 255)."""
    raw = read_label(path)
    try:
        return camvid_index_to_train_id(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class CamVidSequences:
    """The labelled frames of one split, each with up to ``max_distance`` preceding frames."""

    def __init__(self, root: str | Path, split: str, *, max_distance: int = 9,
                 resize_frames: bool = False) -> None:
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.root = Path(root)
        self.split = split
        self.max_distance = max_distance
        self.resize_frames = resize_frames
        img_dir = self.root / split
        ann_dir = self.root / f"{split}annot"
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"missing CamVid folder: {d}")
        items = []
        for path in sorted(img_dir.glob("*.png")):
            m = _NAME_RE.match(path.name)
            if m is None:
                raise ValueError(f"labelled frame name does not follow "
                                 f"{{sequence}}_[f]{{frame}}.png: {path}")
            label_path = ann_dir / path.name
            if not label_path.is_file():
                raise FileNotFoundError(f"missing label file for {path}: {label_path}")
            items.append(LabelledFrame(path.stem, m["seq"], int(m["frame"]), path, label_path))
        if not items:
            raise FileNotFoundError(f"no labelled frames (*.png) in {img_dir}")
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> LabelledFrame:
        return self.items[i]

    def __iter__(self) -> Iterator[LabelledFrame]:
        return iter(self.items)

    def frame_path(self, i: int, distance: int) -> Path:
        """The frame ``distance`` frames before labelled frame i (0: the labelled image)."""
        if not 0 <= distance <= self.max_distance:
            raise ValueError(f"distance must be in [0, {self.max_distance}], got {distance}")
        item = self.items[i]
        if distance == 0:
            return item.image_path
        n = item.frame - distance
        if n < 0:
            raise ValueError(f"frame {n} precedes the start of sequence {item.sequence} "
                             f"(labelled frame {item.image_path})")
        return self.root / "video" / item.sequence / f"{item.sequence}_{n:06d}.png"

    def load_label(self, i: int) -> np.ndarray:
        return load_camvid_label(self.items[i].label_path)

    def load_frame(self, i: int, distance: int) -> np.ndarray:
        """H x W x 3 uint8 RGB at the label's size (resized only if ``resize_frames``)."""
        path = self.frame_path(i, distance)
        label_path = self.items[i].label_path
        return self._fit(read_rgb(path), png_size(label_path), path, label_path)

    def _fit(self, img: np.ndarray, size: tuple[int, int], path: Path,
             label_path: Path) -> np.ndarray:
        if img.shape[:2] != tuple(size) and self.resize_frames:
            return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        check_same_size(img.shape, size, path, label_path)
        return img

    def pda_sample(self, i: int, distance: int) -> PdaSample:
        """Frames n - distance .. n (key frame first) and the label of frame n."""
        label = self.load_label(i)
        label_path = self.items[i].label_path
        paths = [self.frame_path(i, d) for d in range(distance, -1, -1)]
        frames = [self._fit(read_rgb(p), label.shape, p, label_path) for p in paths]
        return PdaSample(self.items[i].name, distance, paths, frames, label, label_path)

    def pda_samples(self, distances: Iterable[int] = range(1, 10)) -> Iterator[PdaSample]:
        for i in range(len(self)):
            for d in distances:
                yield self.pda_sample(i, d)


def open_sequences(root: str | Path, split: str, *, max_distance: int = 9,
                   resize_frames: bool = False, **_: object) -> CamVidSequences:
    """The registry's builder for ``camvid``; the other loaders' options do not apply."""
    return CamVidSequences(root, split, max_distance=max_distance, resize_frames=resize_frames)
