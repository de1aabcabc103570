"""VideoSegmenter: one frame in, one label image out, key frames scheduled inside.

The same object serves the ROS node, the bag replayer, the evaluator and the benchmark::

    from davss_ros.pipeline import VideoSegmenter
    seg = VideoSegmenter(checkpoint="model.pt")          # or VideoSegmenter() for the default
    for rgb in frames:                                   # HxWx3 uint8 RGB, any size
        result = seg.step(rgb)
        result.labels                                    # HxW uint8 class ids, 255 = ignore

Per frame (paper Sec. III, and ../shared/notes/method.md):

- key frame: DeepLabv3+ logits at 1/4 resolution; they and the 1/4-resolution key image
  become the propagated state;
- other frames: flow (current -> previous, at 1/4) warps the propagated logits and image one
  step; DMNet compares warped image and current frame into the distortion map M; CFNet gives
  correction cues f_CC; output f_P * (1 - M) + f_CC * M (``davss``), or the warped logits
  alone (``dff``), or an Accel-style learned fusion with its own light branch (``accel``).
  The raw warped logits are propagated (as the authors do) unless ``propagate_corrected``.
  A model trained without DGFC (``distortion_map: constant``) fuses with M = 0.5 instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_weights
from .classes import IGNORE_ID, default_class_names, default_palette
from .config import DavssConfig, ModelConfig, ScheduleConfig, load_config
from .model import build_davss_net, build_flow, fold_batchnorm, warp
from .model.fusion import fusion_map
from .schedule import KeyFrameScheduler, photometric_error

STAGES = ("flow", "warp", "dmnet", "cfnet", "fuse", "segmenter", "total")
# Smallest image side ``step`` accepts (the 1/4-resolution state needs at least one pixel).
MIN_IMAGE_SIZE = 4


@dataclass(frozen=True)
class FrameParts:
    """The logits a non-key frame's output was made from, at network 1/4 resolution
    (1 x C x h x w tensors on the pipeline's device); ``VideoSegmenter.labels_from_logits``
    turns any of them into labels exactly as the pipeline does its output.

    Only kept when ``VideoSegmenter.keep_parts`` is set (the oracle evaluations need them).
    """

    propagated: torch.Tensor  # f_P: the key logits warped to this frame
    cue: torch.Tensor | None  # current-frame logits: CFNet's f_CC (davss), Accel's branch
    fused: torch.Tensor  # the output logits: f_C (davss), Accel's fusion, f_P (dff)


@dataclass
class FrameResult:
    """What the pipeline made of one frame."""

    labels: np.ndarray  # HxW uint8 class ids at the input resolution, 255 = ignore
    is_key: bool
    propagation_distance: int
    key_reason: str  # '' on non-key frames
    distortion_mean: float
    distortion_ratio: float
    timings_ms: dict[str, float]
    frame_index: int
    valid: bool = True  # False when the network produced NaN/Inf (labels are all ignore)
    distortion_small: np.ndarray | None = field(default=None, repr=False)  # 1/4 network res
    parts: FrameParts | None = field(default=None, repr=False)  # non-key, with keep_parts
    _distortion: np.ndarray | None = field(default=None, repr=False)

    @property
    def distortion(self) -> np.ndarray:
        """Distortion map M at the input resolution (float32 in [0, 1]; zeros on key frames).

        Computed on first access only, so callers that never look pay nothing.
        """
        if self._distortion is None:
            h, w = self.labels.shape
            if self.distortion_small is None:
                self._distortion = np.zeros((h, w), np.float32)
            else:
                self._distortion = np.clip(cv2.resize(
                    self.distortion_small, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        return self._distortion


# Fields of ModelConfig a caller may change on a checkpoint's model: they do not change the
# networks' weights. Everything else (backbone, widths, classes) comes from the checkpoint.
RUNTIME_MODEL_FIELDS = ("mode", "propagate_corrected", "input_height", "input_width")
RUNTIME_FLOW_FIELDS = ("provider", "dis_preset")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        return dev
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


class VideoSegmenter:
    """Distortion-aware video semantic segmentation of a frame stream (and its baselines).

    Args:
        config: a DavssConfig, a dict, a preset name or a YAML path; None = default preset
            (or, with a checkpoint, the checkpoint's own configuration).
        checkpoint: path of a davss_ros checkpoint. Its configuration builds the networks;
            a ``config`` given as well only changes runtime fields (mode, input size, flow
            provider and preset, schedule). None = untrained weights (tests, benchmarks).
        device: 'auto' (CUDA when present), 'cpu' or 'cuda:N'.
        max_stamp_gap: seconds; a stamp jumping forward by more than this between two
            consecutive frames (a camera pause, frames lost, a bag skipping ahead) clears the
            propagated state and forces a key frame ('stamp_jump'). None or 0 = never.
        keep_parts: give every non-key FrameResult its ``parts`` (propagated logits, cue,
            fused logits). Off by default: it keeps tensors alive that are otherwise freed.
            An attribute of the same name, which may be changed between steps.
    """

    def __init__(self, config: DavssConfig | dict | str | Path | None = None,
                 checkpoint: str | Path | Checkpoint | None = None,
                 device: str | torch.device = "auto", *,
                 max_stamp_gap: float | None = None, keep_parts: bool = False) -> None:
        user_cfg = config if isinstance(config, DavssConfig) else (
            load_config(config) if config is not None else None)
        self.checkpoint: Checkpoint | None = None
        if checkpoint is not None:
            ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
            self.checkpoint = ck
            cfg = _with_runtime_fields(ck.config, user_cfg) if user_cfg else ck.config
            self.class_names, self.palette = list(ck.class_names), list(ck.palette)
        else:
            cfg = user_cfg or load_config(None)
            n = cfg.model.num_classes
            self.class_names, self.palette = default_class_names(n), default_palette(n)
        cfg.validate()
        self.config = cfg
        self.device = resolve_device(device)
        self.ignore_id = IGNORE_ID
        self.max_stamp_gap = max_stamp_gap
        self.keep_parts = keep_parts
        # The networks are built as the checkpoint was trained (with or without a flow
        # network); the flow provider actually used is the runtime choice.
        arch = self.checkpoint.config.model if self.checkpoint is not None else cfg.model
        self.net = build_davss_net(arch)
        if self.checkpoint is not None:
            load_weights(self.net, self.checkpoint)
        if cfg.model.flow.provider == "learned" and self.net.flownet is None:
            msg = "flow.provider 'learned' needs a flow network, and this model has none " \
                "(it was built for DIS flow)"
            if self.checkpoint is not None:
                raise CheckpointError(f"{self.checkpoint.path}: {msg}")
            raise ValueError(msg)
        self.net.to(self.device).eval()
        # Inference only: BatchNorm folded into the preceding convs (same outputs, faster).
        fold_batchnorm(self.net)
        self.flow = build_flow(cfg.model.flow, flownet=self.net.flownet)
        self.scheduler = KeyFrameScheduler(cfg.schedule)
        self._frame_index = 0
        self._clear_state()

    # -- public --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    @property
    def mode(self) -> str:
        return self.config.model.mode

    def set_schedule(self, schedule: ScheduleConfig) -> None:
        """Change key-frame scheduling while running (keeps the propagated state)."""
        cfg = replace(self.config, schedule=schedule)
        cfg.validate()
        self.config = cfg
        self.scheduler.update_config(schedule)

    def reset(self, reason: str = "reset") -> None:
        """Forget the propagated state: the next frame is a key frame with this reason.

        Also the way back after a failed ``step`` (an exception part-way, e.g. out of
        memory), which may have left the state half updated.
        """
        self._clear_state()
        self.scheduler.reset()
        self.scheduler.request_key(reason)

    def warmup(self) -> None:
        """Run one key and one non-key frame on a blank image, then reset."""
        m = self.config.model
        blank = np.zeros((m.input_height, m.input_width, 3), np.uint8)
        saved = self.config.schedule
        self.set_schedule(replace(saved, policy="fixed", key_interval=2))
        self.step(blank)
        self.step(blank)
        self.set_schedule(saved)
        self._frame_index = 0
        self._clear_state()
        self.scheduler.reset()

    def close(self) -> None:
        """Free the networks (and CUDA memory); the object cannot step afterwards."""
        self._clear_state()
        self.net = None
        self.flow = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def step(self, image: np.ndarray, stamp: float | None = None) -> FrameResult:
        """Segment the next frame of the stream.

        Args:
            image: HxWx3 uint8 RGB, any size (resized to the network input and back).
            stamp: the frame's time in seconds; a stamp going backwards (a looped bag)
                clears the propagated state and forces a key frame ('stamp_backwards'), as
                does one jumping forward by more than ``max_stamp_gap`` ('stamp_jump').
        """
        if self.net is None:
            raise RuntimeError("VideoSegmenter.step() after close()")
        _check_image(image)
        timings = dict.fromkeys(STAGES, 0.0)
        t_start = time.perf_counter()
        if stamp is not None and self._last_stamp is not None:
            if stamp < self._last_stamp:
                self._clear_state()
                self.scheduler.request_key("stamp_backwards")
            elif self.max_stamp_gap and stamp - self._last_stamp > self.max_stamp_gap:
                self._clear_state()
                self.scheduler.request_key("stamp_jump")
        self._last_stamp = stamp

        x = self._to_tensor(image)
        x_small = F.avg_pool2d(x, 4)  # the key image lives at 1/4 resolution, like the logits
        mode = self.config.model.mode
        reason = self.scheduler.pre_decision(image.shape)
        if reason is None and mode == "per_frame":
            reason = "per_frame_mode"
        m = None
        m_mean = m_ratio = 0.0
        perr = None
        parts = None
        if reason is None:
            with _Stage(timings, "flow", self.device):
                flow = self.flow(x, self._prev_x)
            with _Stage(timings, "warp", self.device):
                warped_image = warp(self._prop_image, flow)
            perr = photometric_error(warped_image, x_small)
            if mode == "davss" or self.config.schedule.policy == "adaptive":
                with _Stage(timings, "dmnet", self.device):
                    m = self.net.dmnet(warped_image, x_small)
                    m_mean = float(m.mean())
                    m_ratio = float((m > 0.5).float().mean())
            reason = self.scheduler.post_decision(
                distortion_mean=m_mean, distortion_ratio=m_ratio, photometric_error=perr)

        if reason is not None:
            with _Stage(timings, "segmenter", self.device):
                logits = self.net.segmenter(x)
            self._prop_logits, self._prop_image = logits, x_small
            out, m, m_mean, m_ratio = logits, None, 0.0, 0.0
        else:
            with _Stage(timings, "warp", self.device):
                warped = warp(self._prop_logits, flow)
            cue = None
            if mode == "davss":
                with _Stage(timings, "cfnet", self.device):
                    cue = self.net.cfnet(x)
                with _Stage(timings, "fuse", self.device):
                    # m itself stays DMNet's map (distortion output, adaptive schedule)
                    weight = fusion_map(m, self.config.model.distortion_map)
                    out = warped * (1.0 - weight) + cue * weight
            elif mode == "accel":
                with _Stage(timings, "cfnet", self.device):
                    cue = self.net.accel_cfnet(x)
                with _Stage(timings, "fuse", self.device):
                    out = self.net.accel_fusion(warped, cue)
            else:  # dff
                out = warped
            if self.keep_parts:
                parts = FrameParts(propagated=warped, cue=cue, fused=out)
            self._prop_logits = out if self.config.model.propagate_corrected else warped
            self._prop_image = warped_image
        self._prev_x = x
        is_key = reason is not None
        self.scheduler.commit(is_key=is_key, photometric_error=perr)

        with _Stage(timings, "fuse", self.device):
            labels, valid = self._labels(out, image.shape[:2])
        if not valid:
            # A non-finite network output poisons everything propagated from it.
            self._clear_state()
            self.scheduler.request_key("nonfinite_output")
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        result = FrameResult(
            labels=labels, is_key=is_key,
            propagation_distance=0 if is_key else self.scheduler.propagation_distance,
            key_reason=reason or "", distortion_mean=m_mean, distortion_ratio=m_ratio,
            timings_ms=timings, frame_index=self._frame_index, valid=valid,
            distortion_small=None if m is None else m[0, 0].float().cpu().numpy(),
            parts=parts)
        self._frame_index += 1
        return result

    @torch.inference_mode()
    def labels_from_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """1 x C x h x w logits (e.g. a ``FrameParts`` tensor) -> H x W uint8 labels at
        ``size`` = (H, W), the way ``step`` makes its output: bilinear (half-pixel centres,
        ``align_corners=False``) to the network input, argmax, nearest neighbour to ``size``.
        All ignore (255) when the logits are not finite."""
        return self._labels(logits, (int(size[0]), int(size[1])))[0]

    # -- internals -----------------------------------------------------------------------
    def _clear_state(self) -> None:
        self._prev_x: torch.Tensor | None = None
        self._prop_logits: torch.Tensor | None = None
        self._prop_image: torch.Tensor | None = None
        self._last_stamp: float | None = None

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        m = self.config.model
        if image.shape[0] != m.input_height or image.shape[1] != m.input_width:
            image = cv2.resize(image, (m.input_width, m.input_height),
                               interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    def _labels(self, logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
        if not bool(torch.isfinite(logits).all()):
            return np.full(size, IGNORE_ID, np.uint8), False
        m = self.config.model
        # Logits are bilinearly upsampled x4 to the network input, as in the paper; the
        # argmax then goes to the caller's size by nearest neighbour (cheap and exact for
        # labels, where upsampling logits to e.g. 1280x720 would cost more than the net).
        if logits.device.type == "cpu":
            # OpenCV's bilinear resize (same half-pixel convention as align_corners=False)
            # of the H x W x C logits is several times faster than torch's NCHW upsampling
            # on a CPU, and the argmax over the then contiguous channels is too.
            hwc = logits[0].permute(1, 2, 0).contiguous().numpy()
            up = cv2.resize(hwc, (m.input_width, m.input_height), interpolation=cv2.INTER_LINEAR)
            labels = torch.from_numpy(up).argmax(-1).to(torch.uint8).numpy()
        else:
            up = F.interpolate(logits, size=(m.input_height, m.input_width), mode="bilinear",
                               align_corners=False)
            labels = up.argmax(1)[0].to(torch.uint8).cpu().numpy()
        if labels.shape != size:
            labels = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return labels, True


class _Stage:
    """Adds the wall time of a block to ``timings[name]`` (synchronising CUDA first)."""

    __slots__ = ("timings", "name", "device", "t0")

    def __init__(self, timings: dict[str, float], name: str, device: torch.device) -> None:
        self.timings, self.name, self.device = timings, name, device

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[self.name] += (time.perf_counter() - self.t0) * 1000.0


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array HxWx3 uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {image.dtype}")
    if image.shape[0] < MIN_IMAGE_SIZE or image.shape[1] < MIN_IMAGE_SIZE:
        raise ValueError(f"image too small: {image.shape[1]}x{image.shape[0]}, expected "
                         f"at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")


def _with_runtime_fields(base: DavssConfig, user: DavssConfig) -> DavssConfig:
    """The checkpoint's architecture with the caller's runtime choices."""
    model: ModelConfig = replace(
        base.model,
        **{k: getattr(user.model, k) for k in RUNTIME_MODEL_FIELDS},
        flow=replace(base.model.flow,
                     **{k: getattr(user.model.flow, k) for k in RUNTIME_FLOW_FIELDS}))
    return DavssConfig(model=model, schedule=user.schedule)
