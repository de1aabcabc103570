"""Cityscapes video snippets: indexing and loading in the official sequence layout.

Expected layout under ``root`` (the official packages ``leftImg8bit_sequence_trainvaltest``
and ``gtFine_trainvaltest``, or what ``davss make-data`` writes)::

    leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
    gtFine_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
        (optional, synthetic data only: a label for every frame)

Each gtFine label defines one snippet. Its frame number ``ann`` is the annotated frame,
the 20th of a 30-frame snippet, so the snippet is frames ``ann - 19 .. ann + 10``
(``annotated_index`` and ``snippet_length`` change that). Frame numbers are not always
``000019``: e.g. ``frankfurt_000000_000294`` has frames 000275..000304.

Labels are read as Cityscapes *ids* and mapped to trainIds by the official table
(``davss_ros.data.labels``). Errors name the file: a missing frame or label raises
FileNotFoundError; an id outside the table, a file that is not an 8-bit single-channel
label, or a frame whose size differs from its label raises ValueError.

For the paper's PDA evaluation (propagation distance d = 1..9), ``pda_sample(i, d)`` gives
the frames ``ann - d .. ann`` (the key frame first) and the annotated frame's label.

A *recording* (what ``davss adapt`` caches: a camera's frames with a teacher segmenter's
labels) is the same layout with two differences, which its ``recording.json`` states:
labels hold class indices as they are (``label_format: train_ids``, any class count up to
255, 255 = ignore) rather than Cityscapes ids, and the snippet length and annotated index
are the recording's own (``open_recording``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from davss_ros.data.imageio import check_same_size, png_size, read_label, read_rgb
from davss_ros.data.labels import id_to_train_id

LABEL_FORMATS = ("ids", "train_ids")  # Cityscapes ids mapped by the table; class indices as-is
RECORDING_FILE = "recording.json"

_LABEL_RE = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_gtFine_labelIds\.png$")


@dataclass(frozen=True)
class Snippet:
    city: str
    seq: int
    annotated_frame: int  # the frame number in the gtFine file name
    first_frame: int  # frame number of snippet index 0
    label_path: Path

    @property
    def name(self) -> str:
        return f"{self.city}_{self.seq:06d}_{self.annotated_frame:06d}"


@dataclass
class PdaSample:
    """Frames from the key frame (distance frames back) to the labelled frame, its label.

    Shared by the Cityscapes and CamVid loaders."""

    name: str
    distance: int
    frame_paths: list[Path]
    frames: list[np.ndarray]  # distance + 1 frames, H x W x 3 uint8 RGB, key frame first
    label: np.ndarray  # H x W uint8 train ids of the last frame, 255 = ignore
    label_path: Path


def load_cityscapes_label(path: str | Path) -> np.ndarray:
    """A ``*_labelIds.png`` as trainIds; ValueError naming the file for ids not in the table."""
    ids = read_label(path)
    try:
        return id_to_train_id(ids)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class CityscapesSequences:
    """The snippets of one split, ordered by (city, seq, annotated frame)."""

    def __init__(self, root: str | Path, split: str, *, snippet_length: int = 30,
                 annotated_index: int = 19, label_format: str = "ids") -> None:
        if not 0 <= annotated_index < snippet_length:
            raise ValueError(f"annotated_index must be in [0, snippet_length), got "
                             f"{annotated_index} with snippet_length {snippet_length}")
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got "
                             f"{label_format!r}")
        self.label_format = label_format
        self.root = Path(root)
        self.split = split
        self.snippet_length = snippet_length
        self.annotated_index = annotated_index
        gt_dir = self.root / "gtFine" / split
        if not gt_dir.is_dir():
            raise FileNotFoundError(f"missing label folder: {gt_dir}")
        snippets = []
        for path in sorted(gt_dir.glob("*/*_gtFine_labelIds.png")):
            m = _LABEL_RE.match(path.name)
            if m is None or m["city"] != path.parent.name:
                raise ValueError(f"label file name does not follow "
                                 f"{{city}}_{{seq:06d}}_{{frame:06d}}_gtFine_labelIds.png: {path}")
            ann = int(m["frame"])
            first = ann - annotated_index
            if first < 0:
                raise ValueError(f"annotated frame {ann} has fewer than {annotated_index} "
                                 f"frames before it: {path}")
            snippets.append(Snippet(m["city"], int(m["seq"]), ann, first, path))
        if not snippets:
            raise FileNotFoundError(f"no *_gtFine_labelIds.png files under {gt_dir}")
        self.snippets = sorted(snippets, key=lambda s: (s.city, s.seq, s.annotated_frame))
        self.has_dense_labels = (self.root / "gtFine_sequence" / split).is_dir()

    def __len__(self) -> int:
        return len(self.snippets)

    def __getitem__(self, i: int) -> Snippet:
        return self.snippets[i]

    def __iter__(self) -> Iterator[Snippet]:
        return iter(self.snippets)

    # ---- paths
    def _frame_number(self, i: int, k: int) -> int:
        if not 0 <= k < self.snippet_length:
            raise IndexError(f"snippet index k must be in [0, {self.snippet_length}), got {k}")
        return self.snippets[i].first_frame + k

    def _stem(self, i: int, k: int) -> tuple[str, str]:
        s = self.snippets[i]
        return s.city, f"{s.city}_{s.seq:06d}_{self._frame_number(i, k):06d}"

    def frame_path(self, i: int, k: int) -> Path:
        """Path of frame k (0 .. snippet_length - 1) of snippet i."""
        city, stem = self._stem(i, k)
        return self.root / "leftImg8bit_sequence" / self.split / city / f"{stem}_leftImg8bit.png"

    def frame_paths(self, i: int) -> list[Path]:
        return [self.frame_path(i, k) for k in range(self.snippet_length)]

    def label_path(self, i: int) -> Path:
        return self.snippets[i].label_path

    def dense_label_path(self, i: int, k: int) -> Path:
        city, stem = self._stem(i, k)
        return self.root / "gtFine_sequence" / self.split / city / f"{stem}_gtFine_labelIds.png"

    # ---- loading
    def load_frame(self, i: int, k: int) -> np.ndarray:
        """Frame k of snippet i as H x W x 3 uint8 RGB, checked against the label's size."""
        path = self.frame_path(i, k)
        img = read_rgb(path)
        label_path = self.label_path(i)
        check_same_size(img.shape, png_size(label_path), path, label_path)
        return img

    def load_label(self, i: int, *, check_size: bool = True) -> np.ndarray:
        """The annotated frame's label, H x W uint8 trainIds (255 = ignore).

        With ``check_size`` the annotated frame must exist and have the label's size."""
        path = self.label_path(i)
        label = self._read_label(path)
        if check_size:
            frame = self.frame_path(i, self.annotated_index)
            check_same_size(label.shape, png_size(frame), path, frame)
        return label

    def dense_label(self, i: int, k: int) -> np.ndarray:
        """Label of frame k from gtFine_sequence/ (synthetic data), as trainIds."""
        path = self.dense_label_path(i, k)
        if not path.is_file():
            raise FileNotFoundError(f"missing dense label file (gtFine_sequence/ exists only "
                                    f"for synthetic data): {path}")
        label = self._read_label(path)
        frame = self.frame_path(i, k)
        check_same_size(label.shape, png_size(frame), path, frame)
        return label

    def _read_label(self, path: Path) -> np.ndarray:
        if self.label_format == "train_ids":
            return read_label(path)
        return load_cityscapes_label(path)

    def pda_frame_indices(self, distance: int) -> list[int]:
        """Snippet indices of the frames ann - distance .. ann (key frame first)."""
        if not 0 <= distance <= self.annotated_index:
            raise ValueError(f"distance must be in [0, {self.annotated_index}], got {distance}")
        return list(range(self.annotated_index - distance, self.annotated_index + 1))

    def pda_sample(self, i: int, distance: int) -> PdaSample:
        """Key frame at ann - distance, the frames up to the annotated one, and its label."""
        ks = self.pda_frame_indices(distance)
        label = self.load_label(i, check_size=False)
        label_path = self.label_path(i)
        paths = [self.frame_path(i, k) for k in ks]
        frames = []
        for path in paths:
            img = read_rgb(path)
            check_same_size(img.shape, label.shape, path, label_path)
            frames.append(img)
        return PdaSample(self.snippets[i].name, distance, paths, frames, label, label_path)

    def pda_samples(self, distances: Iterable[int] = range(1, 10)) -> Iterator[PdaSample]:
        """Every (snippet, distance) pair, snippet-major."""
        for i in range(len(self)):
            for d in distances:
                yield self.pda_sample(i, d)


def open_sequences(root: str | Path, split: str, *, snippet_length: int = 30,
                   **_: object) -> CityscapesSequences:
    """The registry's builder for ``cityscapes`` and ``synthetic`` (the same layout); the
    other loaders' options do not apply."""
    return CityscapesSequences(root, split, snippet_length=snippet_length)


def open_recording(root: str | Path, split: str, *, snippet_length: int | None = None,
                   **_: object) -> CityscapesSequences:
    """The registry's builder for ``recording``: the layout's snippet length, annotated index
    and label format come from ``root/recording.json``; a ``snippet_length`` given must agree."""
    path = Path(root) / RECORDING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a recording folder is written by davss "
                                f"adapt and describes itself in {RECORDING_FILE})")
    try:
        meta = json.loads(path.read_text())
        length, ann = int(meta["snippet_length"]), int(meta["annotated_index"])
        fmt = str(meta.get("label_format", "train_ids"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a recording description ({exc})") from None
    if snippet_length is not None and int(snippet_length) != length:
        raise ValueError(f"{path}: the recording has snippets of {length} frames, "
                         f"{snippet_length} were asked for")
    return CityscapesSequences(root, split, snippet_length=length, annotated_index=ann,
                               label_format=fmt)
