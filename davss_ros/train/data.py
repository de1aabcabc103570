"""Training samples of the four stages, drawn from a snippet data set.

A *snippet source* is one of the sequence loaders of ``davss_ros.data`` (Cityscapes layout,
which the synthetic clips use too, or CamVid): snippets of consecutive frames, one annotated
frame each, and for synthetic data a label on every frame. The data sets here turn it into
the samples each stage trains on; every random choice of a sample (which frames, crop,
flip, scale) comes from a generator seeded by the sampler's ``(epoch, position)`` key and the
run's seed, so a sample does not depend on loader workers or on where a run was resumed.

Images leave as uint8 ``3 x H x W`` arrays and labels as uint8 ``H x W`` (255 = ignore);
the training step converts them on its device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from davss_ros.classes import IGNORE_ID
from davss_ros.registry import DATASETS

# ------------------------------------------------------------------------ sources


def open_source(kind: str, root: str | Path, split: str, *, size: tuple[int, int] | None = None,
                cache: bool = False, snippet_length: int = 30,
                max_distance: int = 10, resize_frames: bool = False) -> SnippetSource:
    """The snippets of a split as a :class:`SnippetSource`.

    ``synthetic`` and ``cityscapes`` read the Cityscapes sequence layout (synthetic clips have
    a label on every frame, in gtFine_sequence/); ``camvid`` reads each labelled frame with
    the ``max_distance`` video frames before it.
    """
    loader = DATASETS.get(kind)(Path(root), split, snippet_length=snippet_length,
                                max_distance=max_distance, resize_frames=resize_frames)
    return SnippetSource(loader, size=size, cache=cache)


class SnippetSource:
    """A uniform, optionally caching view of a sequence loader.

    Snippet i has ``num_frames`` frames indexed k = 0, 1, ... in time order, one of them
    (``annotated_index``) annotated. ``frame(i, k)`` is H x W x 3 uint8 RGB; ``label(i, k)``
    the trainId label of the annotated frame, or of any frame where the data set has dense
    labels (synthetic clips), else None. Frames and labels are resized to ``size`` (height,
    width) when given. Files are checked by the loaders, whose errors name the file.
    """

    def __init__(self, loader: Any, *, size: tuple[int, int] | None = None,
                 cache: bool = False) -> None:
        self.loader = loader
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.cache = cache
        # CamVid counts frames back from the labelled one; Cityscapes counts from the first.
        self._backwards = not hasattr(loader, "snippet_length")
        if self._backwards:
            self.num_frames_per_snippet = int(loader.max_distance) + 1
            self._annotated = self.num_frames_per_snippet - 1
            self.has_dense_labels = False
        else:
            self.num_frames_per_snippet = int(loader.snippet_length)
            self._annotated = int(loader.annotated_index)
            self.has_dense_labels = bool(getattr(loader, "has_dense_labels", False))
        self._frames: dict[tuple[int, int], np.ndarray] = {}
        self._labels: dict[tuple[int, int], np.ndarray | None] = {}

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def annotated_index(self) -> int:
        return self._annotated

    def num_frames(self, i: int) -> int:
        return self.num_frames_per_snippet

    def labelled_frames(self, i: int) -> list[int]:
        """Indices of the frames of snippet i that have a label."""
        if not self.has_dense_labels:
            return [self._annotated]
        return list(range(self.num_frames_per_snippet))

    def frame(self, i: int, k: int) -> np.ndarray:
        key = (i, k)
        if key in self._frames:
            return self._frames[key]
        if not 0 <= k < self.num_frames_per_snippet:
            raise IndexError(f"frame index {k} outside 0..{self.num_frames_per_snippet - 1}")
        if self._backwards:
            img = self.loader.load_frame(i, self._annotated - k)
        else:
            img = self.loader.load_frame(i, k)
        img = self._resize(img, cv2.INTER_AREA if self.size and img.shape[0] > self.size[0]
                           else cv2.INTER_LINEAR)
        if self.cache:
            self._frames[key] = img
        return img

    def label(self, i: int, k: int) -> np.ndarray | None:
        key = (i, k)
        if key in self._labels:
            return self._labels[key]
        if k == self._annotated:
            lab = self.loader.load_label(i)
        elif self.has_dense_labels:
            lab = self.loader.dense_label(i, k)
        else:
            lab = None
        if lab is not None:
            lab = self._resize(lab, cv2.INTER_NEAREST)
        if self.cache:
            self._labels[key] = lab
        return lab

    def _resize(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        if self.size is None or img.shape[:2] == self.size:
            return img
        h, w = self.size
        return cv2.resize(img, (w, h), interpolation=interpolation)


def _describe(loader: Any) -> str:
    return f"{type(loader).__name__}({getattr(loader, 'root', '?')}, " \
           f"{getattr(loader, 'split', '?')})"


# ------------------------------------------------------------------- augmentation


@dataclass
class Augment:
    """Joint random rescale, crop and horizontal flip of the frames and labels of a sample."""

    crop: tuple[int, int] | None = None
    flip: bool = False
    scale: tuple[float, float] = (1.0, 1.0)

    def __call__(self, rng: np.random.Generator, frames: Sequence[np.ndarray],
                 labels: Sequence[np.ndarray | None] = (),
                 flows: Sequence[np.ndarray] = (),
                 masks: Sequence[np.ndarray] = ()) -> tuple[list, list, list, list]:
        """Frames HxWx3 uint8, labels HxW uint8 (or None), flows HxWx2 float (pixels; x
        component negated on a flip, both scaled with the image), masks HxW uint8 (0/1).
        Returns the four lists transformed alike."""
        frames, labels, flows, masks = list(frames), list(labels), list(flows), list(masks)
        lo, hi = self.scale
        s = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        if s != 1.0:
            h, w = frames[0].shape[:2]
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            frames = [cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR) for f in frames]
            labels = [None if lab is None else
                      cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST)
                      for lab in labels]
            flows = [cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
                     * np.array([nw / w, nh / h], np.float32) for f in flows]
            masks = [cv2.resize(m, (nw, nh), interpolation=cv2.INTER_NEAREST) for m in masks]
        if self.crop is not None:
            ch, cw = self.crop
            h, w = frames[0].shape[:2]
            ph, pw = max(0, ch - h), max(0, cw - w)
            if ph or pw:  # pad at the bottom / right: image 0, label ignore, flow invalid
                frames = [np.pad(f, ((0, ph), (0, pw), (0, 0))) for f in frames]
                labels = [None if lab is None else
                          np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE_ID)
                          for lab in labels]
                flows = [np.pad(f, ((0, ph), (0, pw), (0, 0))) for f in flows]
                masks = [np.pad(m, ((0, ph), (0, pw))) for m in masks]
                h, w = h + ph, w + pw
            y = int(rng.integers(0, h - ch + 1))
            x = int(rng.integers(0, w - cw + 1))
            frames = [f[y:y + ch, x:x + cw] for f in frames]
            labels = [None if lab is None else lab[y:y + ch, x:x + cw] for lab in labels]
            flows = [f[y:y + ch, x:x + cw] for f in flows]
            masks = [m[y:y + ch, x:x + cw] for m in masks]
        if self.flip and rng.random() < 0.5:
            frames = [f[:, ::-1] for f in frames]
            labels = [None if lab is None else lab[:, ::-1] for lab in labels]
            flows = [f[:, ::-1] * np.array([-1.0, 1.0], np.float32) for f in flows]
            masks = [m[:, ::-1] for m in masks]
        return frames, labels, flows, masks


def _chw(frames: Sequence[np.ndarray]) -> np.ndarray:
    """T HxWx3 frames -> T x 3 x H x W uint8, contiguous."""
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))


def frame_id(snippet: int, k: int) -> int:
    """One integer per (snippet, frame), for caching what the frozen segmenter makes of it."""
    return int(snippet) * 4096 + int(k)


class _Seeded(Dataset):
    """A data set indexed by ``(index, (epoch, position))`` keys (see ``ResumableSampler``);
    a plain int index draws with epoch 0, position = index."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def _split_key(self, key: Any) -> tuple[int, np.random.Generator]:
        if isinstance(key, (tuple, list)):
            index, (epoch, pos) = int(key[0]), key[1]
        else:
            index, epoch, pos = int(key), 0, int(key)
        return index, np.random.default_rng([self.seed, int(epoch), int(pos), index])


# ----------------------------------------------------------------- stage 0 samples


class LabelledFrames(_Seeded):
    """Stage 0: one labelled frame and its label per sample.

    ``labelled='annotated'`` uses the annotated frame of every snippet; ``'dense'`` every
    frame with a label (synthetic clips); ``'auto'`` picks dense where the source has it.
    """

    def __init__(self, source: SnippetSource, *, augment: Augment, seed: int = 0,
                 labelled: str = "auto") -> None:
        super().__init__(seed)
        if labelled not in ("auto", "annotated", "dense"):
            raise ValueError(f"labelled must be auto, annotated or dense; got {labelled!r}")
        dense = source.has_dense_labels if labelled == "auto" else labelled == "dense"
        if dense and not source.has_dense_labels:
            raise ValueError(f"{_describe(source.loader)}: labelled='dense' needs a label on "
                             f"every frame, and this data set has only the annotated ones")
        self.source, self.augment = source, augment
        if dense:
            self.items = [(i, k) for i in range(len(source)) for k in source.labelled_frames(i)]
        else:
            self.items = [(i, source.annotated_index) for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> dict[str, np.ndarray]:
        index, rng = self._split_key(key)
        i, k = self.items[index]
        img = self.source.frame(i, k)
        lab = self.source.label(i, k)
        (img,), (lab,), _, _ = self.augment(rng, [img], [lab])
        return {"image": _chw([img])[0], "label": np.ascontiguousarray(lab)}


# ----------------------------------------------------------------- stage 1 samples


class SyntheticFlowPairs(_Seeded):
    """Stage 1: a freshly rendered synthetic frame pair with its true backward flow.

    Sample n renders a two-frame clip from its own seed (``davss_ros.data.synthetic``), so
    the supply of pairs is unlimited; ``length`` only sets what counts as an epoch. Returns
    ``frames`` (current, previous) 2 x 3 x H x W, ``flow`` 2 x H x W in full-resolution
    pixels (current(x) ~ previous(x + flow(x))) and ``valid`` H x W (0/1).
    """

    def __init__(self, length: int, *, height: int, width: int, augment: Augment,
                 seed: int = 0) -> None:
        super().__init__(seed)
        self.length, self.height, self.width, self.augment = int(length), height, width, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Any) -> dict[str, np.ndarray]:
        from davss_ros.data.synthetic import SceneConfig, render_clip

        index, rng = self._split_key(key)
        scene_seed = int(rng.integers(0, 2**31 - 1))
        clip = render_clip(SceneConfig(height=self.height, width=self.width, frames=2,
                                       seed=scene_seed))
        frames, _, flows, masks = self.augment(
            rng, [clip.images[1], clip.images[0]], flows=[clip.flows[1]],
            masks=[clip.flow_valid[1].astype(np.uint8)])
        return {"frames": _chw(frames),
                "flow": np.ascontiguousarray(flows[0].transpose(2, 0, 1), np.float32),
                "valid": np.ascontiguousarray(masks[0])}


# --------------------------------------------------------------- stage 2/3 samples


class DistortionClips(_Seeded):
    """Stage 2: frames F_{t-j} .. F_t for a random t and j in 1..max_distance.

    ``frames`` is (max_distance + 1) x 3 x H x W with the chain at the end (F_t last) and
    zeros before the key frame; ``distance`` is j; ``frame_ids`` (see ``frame_id``, -1 for the
    padding). No label is needed: the target comes from the frozen segmenter. With
    ``labels`` (stage 4), ``label`` is F_t's label where the data set has one, else all 255
    (ignored), and ``has_label`` says which.
    """

    def __init__(self, source: SnippetSource, *, max_distance: int, augment: Augment,
                 seed: int = 0, labels: bool = False) -> None:
        super().__init__(seed)
        if max_distance < 1:
            raise ValueError(f"max_distance must be >= 1, got {max_distance}")
        self.source, self.max_distance, self.augment = source, int(max_distance), augment
        self.labels = labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Any) -> dict[str, np.ndarray]:
        index, rng = self._split_key(key)
        n = self.source.num_frames(index)
        if n < 2:
            raise ValueError(f"snippet {index} has {n} frame(s); DMNet training needs >= 2")
        t = int(rng.integers(1, n))
        j = int(rng.integers(1, min(self.max_distance, t) + 1))
        chain = [self.source.frame(index, k) for k in range(t - j, t + 1)]
        label = self.source.label(index, t) if self.labels else None
        chain, (label,), _, _ = self.augment(rng, chain, [label])
        pad = [np.zeros_like(chain[0])] * (self.max_distance - j)
        ids = [-1] * (self.max_distance - j) + [frame_id(index, k) for k in range(t - j, t + 1)]
        out = {"frames": _chw(pad + chain), "distance": np.int64(j),
               "frame_ids": np.array(ids, np.int64)}
        if self.labels:
            out["has_label"] = np.bool_(label is not None)
            out["label"] = (np.ascontiguousarray(label) if label is not None else
                            np.full(chain[0].shape[:2], IGNORE_ID, np.uint8))
        return out


class TripletClips(_Seeded):
    """Stage 3: the DDS triplet (F1 key, F2, F3 labelled) and F3's label.

    F3 is the annotated frame (or, where every frame has a label, any labelled frame with
    at least ``min_distance`` frames before it); F1 = F3 - j, j uniform in
    min_distance..max_distance, clipped to the snippet; F2 uniform strictly between.
    ``frames`` is 3 x 3 x H x W (F1, F2, F3), ``label`` H x W, ``indices`` (f1, f2, f3),
    ``frame_ids`` their ``frame_id``.
    """

    def __init__(self, source: SnippetSource, *, min_distance: int, max_distance: int,
                 augment: Augment, seed: int = 0) -> None:
        super().__init__(seed)
        if not 2 <= min_distance <= max_distance:
            raise ValueError(f"need 2 <= min_distance <= max_distance, got {min_distance}, "
                             f"{max_distance}")
        self.source, self.augment = source, augment
        self.min_distance, self.max_distance = int(min_distance), int(max_distance)
        ann = source.annotated_index
        if source.has_dense_labels:
            self.candidates = [[k for k in source.labelled_frames(i) if k >= min_distance]
                               for i in range(len(source))]
        else:
            self.candidates = [[ann] if ann >= min_distance else []
                               for _ in range(len(source))]
        self.items = [i for i, c in enumerate(self.candidates) if c]
        if not self.items:
            raise ValueError(f"{_describe(source.loader)}: no labelled frame has "
                             f"{min_distance} frames before it")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> dict[str, np.ndarray]:
        index, rng = self._split_key(key)
        i = self.items[index]
        cands = self.candidates[i]
        f3 = int(cands[int(rng.integers(0, len(cands)))])
        j = int(rng.integers(self.min_distance, min(self.max_distance, f3) + 1))
        f1 = f3 - j
        f2 = int(rng.integers(f1 + 1, f3))
        frames = [self.source.frame(i, k) for k in (f1, f2, f3)]
        label = self.source.label(i, f3)
        frames, (label,), _, _ = self.augment(rng, frames, [label])
        return {"frames": _chw(frames), "label": np.ascontiguousarray(label),
                "indices": np.array([f1, f2, f3], np.int64),
                "frame_ids": np.array([frame_id(i, k) for k in (f1, f2, f3)], np.int64)}

