"""VideoSegmenter: one frame in, one label image out, key frames scheduled inside.

The same object serves the ROS node, the bag replayer, the evaluator and the benchmark::

    from davss_ros.pipeline import VideoSegmenter
    seg = VideoSegmenter.from_checkpoint("model.pt")     # + keyword-only runtime overrides
    for rgb in frames:                                   # HxWx3 uint8 RGB, any size
        result = seg.step(rgb)
        result.labels                                    # HxW uint8 class ids, 255 = ignore

Per frame (paper Sec. III, and ../shared/notes/method.md): a key frame goes through the key
segmenter (the checkpoint's DeepLabv3+, or any :mod:`davss_ros.segmenters` kind: a
TorchScript or ONNX file); its logits at 1/4 resolution and the 1/4 key image become the
propagated state. Other frames run :class:`davss_ros.model.step.NonKeyStep` for the mode
(flow, warps, DMNet, the current-frame branch and fusion, as ``MODE_TABLE`` says). Here
live the scheduling, the state, the timings, and the numpy side: resizing the camera image
to the network input (:mod:`davss_ros.resize`) and the labels back.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint, load_weights
from .classes import IGNORE_ID, default_class_names, default_palette
from .config import DavssConfig, ScheduleConfig, load_config, read_config_file
from .model import build_davss_net, build_flow, fold_batchnorm
from .model.refiner import cue_trust
from .model.step import FrameParts, PropagationState, mode_spec
from .registry import FLOW_PROVIDERS
from .resize import RESIZE_POLICIES, Framing
from .schedule import COLD_KEY_REASONS, CostEstimate, KeyFrameScheduler, photometric_error
from .segmenters import KeySegmenter, KeySegmenterError, NativeSegmenter, SegmenterInfo
from .threads import set_threads

STAGES = ("flow", "warp", "dmnet", "cfnet", "fuse", "segmenter", "total")
# Smallest image side ``step`` accepts (the 1/4-resolution state needs at least one pixel).
MIN_IMAGE_SIZE = 4
DEFAULT_RESIZE = "letterbox"

__all__ = ["FrameParts", "FrameResult", "VideoSegmenter", "resolve_device"]


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
    framing: Framing | None = field(default=None, repr=False)
    logits: torch.Tensor | None = field(default=None, repr=False)  # output, 1 x C x h x w
    _distortion: np.ndarray | None = field(default=None, repr=False)
    _confidence: np.ndarray | None = field(default=None, repr=False)

    @property
    def distortion(self) -> np.ndarray:
        """Distortion map M at the input resolution (float32 in [0, 1]; zeros on key frames,
        1 where a crop left input pixels unseen).

        Computed on first access only, so callers that never look pay nothing.
        """
        if self._distortion is None:
            h, w = self.labels.shape
            if self.distortion_small is None:
                self._distortion = np.zeros((h, w), np.float32)
            elif self.framing is None:
                self._distortion = np.clip(cv2.resize(
                    self.distortion_small, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
            else:
                nh, nw = self.framing.network_size
                net = cv2.resize(self.distortion_small, (nw, nh), interpolation=cv2.INTER_LINEAR)
                self._distortion = np.clip(self.framing.to_image(net, 1.0), 0.0, 1.0)
        return self._distortion

    @property
    def confidence(self) -> np.ndarray:
        """Per-pixel confidence, HxW uint8 at the input resolution: 255 x the probability
        that the pixel's label equals what the key segmenter would give this frame.

        Key frames: 255 (the key segmenter's own labels). Other frames: 255 x the largest
        softmax probability of the output logits, bilinear to the input. Chosen on the val
        clips over DMNet's 1 - M, which ranks wrong pixels far worse (ROC-AUC 0.65 against
        0.91) and is less calibrated (``davss eval --reliability`` measures it). 0 where a
        crop left input pixels unseen and where the output was not finite.
        """
        if self._confidence is None:
            h, w = self.labels.shape
            seen = self.labels != IGNORE_ID if self.framing is not None \
                and self.framing.policy == "crop" and not self.framing.is_plain else None
            if not self.valid:
                self._confidence = np.zeros((h, w), np.uint8)
            elif self.is_key or self.logits is None:
                self._confidence = np.full((h, w), 255, np.uint8)
                if seen is not None:
                    self._confidence[~seen] = 0
            else:
                prob = torch.softmax(self.logits[0].float(), 0).amax(0).cpu().numpy()
                if self.framing is None:
                    full = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
                else:
                    nh, nw = self.framing.network_size
                    full = self.framing.to_image(
                        cv2.resize(prob, (nw, nh), interpolation=cv2.INTER_LINEAR), 0.0)
                self._confidence = np.clip(np.rint(full * 255.0), 0, 255).astype(np.uint8)
                if seen is not None:
                    self._confidence[~seen] = 0
        return self._confidence


# What a caller may change on a checkpoint's configuration: it does not change the networks'
# weights. Everything else (backbone, widths, classes, the fusion map) is the checkpoint's.
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

    Build one with :meth:`from_checkpoint` (a checkpoint plus keyword-only runtime
    overrides); the constructor is the low-level form.

    Args:
        config: None (the checkpoint's configuration, or the default preset without one), a
            DavssConfig, a dict, a YAML path or, without a checkpoint, a preset name. With a
            checkpoint, a dict or YAML changes only the fields it names, and only runtime
            ones (mode, input size, flow provider and preset, propagate_corrected, schedule);
            a DavssConfig is a complete configuration whose runtime fields are all taken.
        checkpoint: path of a davss_ros checkpoint, or a loaded one. Its configuration builds
            the networks. None = untrained weights (tests, benchmarks).
        device: 'auto' (CUDA when present), 'cpu' or 'cuda:N'.
        key_segmenter: the network for key frames: a :class:`KeySegmenter` or a path to a
            TorchScript / ONNX file with its declaration (see ``davss_ros.segmenters``).
            None = the checkpoint's own DeepLabv3+, or the file the checkpoint references.
            Its class count must be the checkpoint's; a fixed input size it declares becomes
            the network input size unless the configuration names another (an error).
        resize: how images of another aspect ratio reach the network input: ``letterbox``
            (default), ``stretch`` or ``crop`` (see ``davss_ros.resize``).
        threads: CPU threads of torch, OpenCV and onnxruntime for this process (0 = the
            default for a shared machine, ``davss_ros.threads``); None = leave as they are.
        max_stamp_gap: seconds; a stamp jumping forward by more than this between two
            consecutive frames (a camera pause, frames lost, a bag skipping ahead) clears the
            propagated state and forces a key frame ('stamp_jump'). None or 0 = never.
        keep_parts: give every non-key FrameResult its ``parts`` (propagated logits, cue,
            fused logits, distortion map). Off by default: it keeps tensors alive that are
            otherwise freed. An attribute of the same name, which may be changed between
            steps.
    """

    def __init__(self, config: DavssConfig | dict | str | Path | None = None,
                 checkpoint: str | Path | Checkpoint | None = None,
                 device: str | torch.device = "auto", *,
                 key_segmenter: KeySegmenter | str | Path | None = None,
                 resize: str = DEFAULT_RESIZE, threads: int | None = None,
                 max_stamp_gap: float | None = None, keep_parts: bool = False) -> None:
        if threads is not None:
            set_threads(threads)
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got "
                             f"{resize!r}")
        self.device = resolve_device(device)
        self.checkpoint: Checkpoint | None = None
        if checkpoint is not None:
            self.checkpoint = (checkpoint if isinstance(checkpoint, Checkpoint)
                               else load_checkpoint(checkpoint))
        explicit_size = _names_input_size(config)
        cfg = _resolve_config(config, self.checkpoint)
        key = _load_key_segmenter(key_segmenter, self.checkpoint, self.device)
        if key is not None:
            cfg = _fit_to_key_segmenter(cfg, key, self.checkpoint, explicit_size)
        cfg.validate()
        self.config = cfg
        self.ignore_id = IGNORE_ID
        self.resize = resize
        self.max_stamp_gap = max_stamp_gap
        self.keep_parts = keep_parts
        # The networks are built as the checkpoint was trained (with or without a flow
        # network); the flow provider actually used is the runtime choice.
        arch = self.checkpoint.config.model if self.checkpoint is not None else cfg.model
        self.net = build_davss_net(arch)
        if self.checkpoint is not None:
            load_weights(self.net, self.checkpoint)
        provider = cfg.model.flow.provider
        if FLOW_PROVIDERS.get(provider).needs_network and self.net.flownet is None:
            msg = f"flow.provider {provider!r} needs a flow network, and this model has none " \
                "(it was built for DIS flow)"
            if self.checkpoint is not None:
                raise CheckpointError(f"{self.checkpoint.path}: {msg}")
            raise ValueError(msg)
        self.net.to(self.device).eval()
        # Inference only: BatchNorm folded into the preceding convs (same outputs, faster).
        fold_batchnorm(self.net)
        if key is None:
            names, palette = ((self.checkpoint.class_names, self.checkpoint.palette)
                              if self.checkpoint is not None else
                              (default_class_names(cfg.model.num_classes),
                               default_palette(cfg.model.num_classes)))
            key = NativeSegmenter(self.net.segmenter, SegmenterInfo(
                class_names=tuple(names), palette=tuple(tuple(c) for c in palette)))
        self.key_segmenter: KeySegmenter = key.to(self.device)
        self.key_segmenter.check_input_size(cfg.model.input_height, cfg.model.input_width)
        self.class_names = list(key.info.class_names)
        self.palette = [tuple(c) for c in key.info.palette]
        self.flow = build_flow(cfg.model.flow, flownet=self.net.flownet)
        self._non_key = self.net.non_key_step(self.flow)
        self.scheduler = KeyFrameScheduler(cfg.schedule)
        self._framing: Framing | None = None
        self._frame_index = 0
        self._cost = _new_costs()
        self._owner = True
        self._clear_state()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | Checkpoint | None, *,
                        mode: str | None = None,
                        input_size: tuple[int, int] | None = None,
                        flow: str | None = None, dis_preset: str | None = None,
                        propagate_corrected: bool | None = None,
                        schedule: ScheduleConfig | dict | None = None,
                        key_segmenter: KeySegmenter | str | Path | None = None,
                        resize: str = DEFAULT_RESIZE, device: str | torch.device = "auto",
                        threads: int | None = None,
                        preset: str | DavssConfig = "cpu",
                        max_stamp_gap: float | None = None,
                        keep_parts: bool = False) -> VideoSegmenter:
        """The one way to build a segmenter: a checkpoint plus runtime overrides.

        Each override changes only what it names; None keeps the checkpoint's value.
        ``checkpoint`` None = untrained weights of ``preset`` (a preset name or a
        DavssConfig). ``input_size`` is (height, width) of the network input; ``flow``
        the provider (``dis`` / ``learned``); ``schedule`` a ScheduleConfig, or a dict of the
        fields to change.
        """
        over: dict[str, Any] = {}
        model: dict[str, Any] = {}
        if mode is not None:
            model["mode"] = mode
        if input_size is not None:
            model["input_height"], model["input_width"] = int(input_size[0]), int(input_size[1])
        if propagate_corrected is not None:
            model["propagate_corrected"] = bool(propagate_corrected)
        flow_over = {k: v for k, v in (("provider", flow), ("dis_preset", dis_preset))
                     if v is not None}
        if flow_over:
            model["flow"] = flow_over
        if model:
            over["model"] = model
        if schedule is not None:
            over["schedule"] = (schedule.__dict__ if isinstance(schedule, ScheduleConfig)
                                else dict(schedule))
        if checkpoint is None:  # a preset name, or a whole configuration, plus the overrides
            if isinstance(preset, DavssConfig):
                data = preset.to_dict()
            elif preset.endswith((".yaml", ".yml")):
                data = read_config_file(preset)
            else:
                data = {"preset": preset}
            config: Any = _merge_dicts(data, over)
        else:
            config = over or None
        return cls(config, checkpoint, device, key_segmenter=key_segmenter, resize=resize,
                   threads=threads, max_stamp_gap=max_stamp_gap, keep_parts=keep_parts)

    def new_stream(self) -> VideoSegmenter:
        """Another stream (a second camera) on the same networks and key segmenter: its own
        schedule, propagated state, flow state, frame count and cost estimates. Two streams
        may step at the same time on two threads (the node's model.workers): they share only
        the networks, which inference does not change; one stream steps one frame at a
        time."""
        if self.net is None:
            raise RuntimeError("VideoSegmenter.new_stream() after close()")
        other = copy.copy(self)
        other.config = DavssConfig.from_dict(self.config.to_dict())
        other.flow = build_flow(other.config.model.flow, flownet=self.net.flownet)
        other._non_key = self.net.non_key_step(other.flow)
        other.scheduler = KeyFrameScheduler(other.config.schedule)
        other._framing = None
        other._frame_index = 0
        other._cost = _new_costs()
        other._owner = False
        other._clear_state()
        return other

    # -- public --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    @property
    def mode(self) -> str:
        return self.config.model.mode

    @property
    def state(self) -> PropagationState | None:
        """What is propagated to the next frame (last frame, propagated logits and key
        image at 1/4); None before the first frame and after a reset."""
        return self._state

    @property
    def network_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.config.model.input_height, self.config.model.input_width

    def framing(self, image_size: tuple[int, int]) -> Framing:
        """How an image of ``image_size`` (H, W) is placed in the network input."""
        size = (int(image_size[0]), int(image_size[1]))
        f = self._framing
        if f is None or f.image_size != size:
            f = self._framing = Framing.of(self.resize, size, self.network_size)
        return f

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
        blank = np.zeros(self.network_size + (3,), np.uint8)
        saved = self.config.schedule
        self.set_schedule(replace(saved, policy="fixed", key_interval=2))
        self.step(blank)
        self.step(blank)
        self.set_schedule(saved)
        self._frame_index = 0
        self._cost = _new_costs()  # first runs are slow: not typical
        self._clear_state()
        self.scheduler.reset()

    def close(self) -> None:
        """Free the networks (and CUDA memory); the object cannot step afterwards. A stream
        made by ``new_stream`` only lets go of its own state."""
        self._clear_state()
        if not self._owner:
            self.net = None
            return
        self.net = None
        self.flow = None
        self._non_key = None
        self.key_segmenter = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def expected_ms(self) -> dict[str, float | None]:
        """Running averages of the whole step's time on key and non-key frames (ms; None
        before the first of each), which the budget policy weighs against its budget."""
        return {kind: c.mean for kind, c in self._cost.items()}

    @property
    def key_cost_bound_ms(self) -> float | None:
        """What the budget policy counts a key frame's step as costing: the slowest of the
        recent warm ones (``schedule.CostEstimate``); None before there are enough."""
        return self._cost["key"].bound

    @torch.inference_mode()
    def step(self, image: np.ndarray, stamp: float | None = None, *,
             budget_ms: float | None = None) -> FrameResult:
        """Segment the next frame of the stream.

        Args:
            image: HxWx3 uint8 RGB, any size (placed in the network input by the resize
                policy, the outputs mapped back to its pixels).
            stamp: the frame's time in seconds; a stamp going backwards (a looped bag)
                clears the propagated state and forces a key frame ('stamp_backwards'), as
                does one jumping forward by more than ``max_stamp_gap`` ('stamp_jump').
            budget_ms: with the ``budget`` schedule, the time this frame's step may take
                before a frame is dropped (the node: ``schedule.key_budget_ms`` over its
                cameras; one camera at period P, L late: 2P - L): a key frame when one fits
                (``key_cost_bound_ms``), else propagation.
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

        def timer(name: str) -> _Stage:
            return _Stage(timings, name, self.device)

        framing = self.framing(image.shape[:2])
        x = self._to_tensor(framing.to_network(image))
        mode = self.config.model.mode
        spec = mode_spec(mode)
        reason = self.scheduler.pre_decision(image.shape, budget_ms=budget_ms,
                                             key_cost_ms=self._cost["key"].bound,
                                             key_mean_ms=self._cost["key"].warm_mean)
        if reason is None and not spec.propagates:
            reason = "per_frame_mode"
        m = None
        m_mean = m_ratio = 0.0
        perr = None
        parts = None
        if reason is None:
            adaptive = self.config.schedule.policy == "adaptive"
            estimate = self._non_key.estimate(self._state, x,
                                              distortion=spec.distortion or adaptive,
                                              timer=timer)
            perr = photometric_error(estimate.warped_image, estimate.current_image)
            m = estimate.distortion_map
            if (adaptive and self.config.schedule.source == "refined" and mode == "davss"
                    and self._non_key.refiner is not None):
                # Decide on the map the fusion uses: the cue runs first (a key frame needs
                # it anyway, for the cue trust), the refined map comes with the fusion.
                parts = self._non_key.complete(self._state, estimate, x, mode, timer=timer)
                m = parts.distortion_map
            if m is not None:
                m_mean = float(m.mean())
                m_ratio = float((m > 0.5).float().mean())
            reason = self.scheduler.post_decision(
                distortion_mean=m_mean, distortion_ratio=m_ratio, photometric_error=perr)

        if reason is not None:
            with timer("segmenter"):
                out = self.key_segmenter(x)
            trust = 1.0
            if self._non_key.refiner is not None and mode == "davss":
                # The signals fusion leans on the cue: measure how far it agrees with the
                # key segmenter here (davss_ros/model/refiner.py, cue_trust).
                with timer("cfnet"):
                    cue = self.net.cfnet(x) if parts is None else parts.cue
                    trust = cue_trust(cue, out)
            self._state = PropagationState.from_key(x, out, trust=trust)
            m, m_mean, m_ratio, parts = None, 0.0, 0.0, None
        else:
            if parts is None:
                parts = self._non_key.complete(self._state, estimate, x, mode, timer=timer)
            out = parts.fused
            if parts.distortion_map is not None and parts.distortion_map is not m:
                # The signals estimator refines DMNet's map once the cue exists: the map
                # published is the refined one (with schedule.source dmnet, the schedule
                # decided on DMNet's, above).
                m = parts.distortion_map
                m_mean = float(m.mean())
                m_ratio = float((m > 0.5).float().mean())
            self._state = parts.next_state(x, corrected=self.config.model.propagate_corrected)
        is_key = reason is not None
        self.scheduler.commit(is_key=is_key, photometric_error=perr)

        with timer("fuse"):
            labels, valid = self._labels(out, framing)
        if not valid:
            # A non-finite network output poisons everything propagated from it.
            self._clear_state()
            self.scheduler.request_key("nonfinite_output")
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        kind = "key" if is_key else "nonkey"
        self._cost[kind].update(timings["total"], cold=reason in COLD_KEY_REASONS)
        result = FrameResult(
            labels=labels, is_key=is_key,
            propagation_distance=0 if is_key else self.scheduler.propagation_distance,
            key_reason=reason or "", distortion_mean=m_mean, distortion_ratio=m_ratio,
            timings_ms=timings, frame_index=self._frame_index, valid=valid,
            distortion_small=None if m is None else m[0, 0].float().cpu().numpy(),
            parts=parts if self.keep_parts else None, framing=framing,
            logits=None if is_key else out)
        self._frame_index += 1
        return result

    @torch.inference_mode()
    def labels_from_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """1 x C x h x w logits (e.g. a ``FrameParts`` tensor) -> H x W uint8 labels at
        ``size`` = (H, W), the way ``step`` makes its output for an image of that size:
        bilinear (half-pixel centres, ``align_corners=False``) to the network input, argmax,
        then back to the image's pixels by the resize policy. All ignore (255) when the
        logits are not finite."""
        return self._labels(logits, self.framing(size))[0]

    # -- internals -----------------------------------------------------------------------
    def _clear_state(self) -> None:
        self._state: PropagationState | None = None
        self._last_stamp: float | None = None

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    def _labels(self, logits: torch.Tensor, framing: Framing) -> tuple[np.ndarray, bool]:
        if not bool(torch.isfinite(logits).all()):
            return np.full(framing.image_size, IGNORE_ID, np.uint8), False
        nh, nw = self.network_size
        # Logits are bilinearly upsampled x4 to the network input, as in the paper; the
        # argmax then goes to the image's pixels by nearest neighbour (cheap and exact for
        # labels, where upsampling logits to e.g. 1280x720 would cost more than the net).
        if logits.device.type == "cpu":
            # OpenCV's bilinear resize (same half-pixel convention as align_corners=False)
            # of the H x W x C logits is several times faster than torch's NCHW upsampling
            # on a CPU, and the argmax over the then contiguous channels is too.
            hwc = logits[0].permute(1, 2, 0).contiguous().numpy()
            up = cv2.resize(hwc, (nw, nh), interpolation=cv2.INTER_LINEAR)
            if up.ndim == 2:  # OpenCV drops a single channel
                up = up[..., None]
            labels = torch.from_numpy(up).argmax(-1).to(torch.uint8).numpy()
        else:
            up = torch.nn.functional.interpolate(logits, size=(nh, nw), mode="bilinear",
                                                 align_corners=False)
            labels = up.argmax(1)[0].to(torch.uint8).cpu().numpy()
        return framing.to_image(labels, IGNORE_ID), True


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


def _new_costs() -> dict[str, CostEstimate]:
    """Running step times of key and non-key frames (what the budget policy weighs)."""
    return {"key": CostEstimate(), "nonkey": CostEstimate()}


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


def _merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def _names_input_size(config: Any) -> bool:
    """Whether a caller's configuration names the network input size (a preset's own size
    is a default, which a key segmenter's fixed input size replaces)."""
    if isinstance(config, DavssConfig):
        return True
    if isinstance(config, dict):
        model = config.get("model") or {}
        return "input_height" in model or "input_width" in model
    return False


def _resolve_config(config: DavssConfig | dict | str | Path | None,
                    checkpoint: Checkpoint | None) -> DavssConfig:
    """The runtime configuration: the checkpoint's (or a preset's) with the caller's
    runtime changes (see VideoSegmenter)."""
    if checkpoint is None:
        if isinstance(config, DavssConfig):
            return DavssConfig.from_dict(config.to_dict())
        return load_config(config)
    base = checkpoint.config
    if config is None:
        return DavssConfig.from_dict(base.to_dict())
    if isinstance(config, DavssConfig):
        model = replace(
            base.model, **{k: getattr(config.model, k) for k in RUNTIME_MODEL_FIELDS},
            flow=replace(base.model.flow, **{k: getattr(config.model.flow, k)
                                             for k in RUNTIME_FLOW_FIELDS}))
        return DavssConfig(model=model, schedule=replace(config.schedule))
    if isinstance(config, str) and not config.endswith((".yaml", ".yml")):
        raise ValueError(f"config {config!r} is a preset, which sets the architecture; with a "
                         f"checkpoint the architecture is the checkpoint's (pass a dict of "
                         f"runtime fields, or use VideoSegmenter.from_checkpoint)")
    if isinstance(config, dict):
        over = config
    else:
        import yaml

        with open(config) as f:
            over = yaml.safe_load(f) or {}
        over.pop("preset", None)
    model = dict(over.get("model") or {})
    flow = dict(model.pop("flow", None) or {})
    fixed = sorted([f"model.{k}" for k in model if k not in RUNTIME_MODEL_FIELDS]
                   + [f"model.flow.{k}" for k in flow if k not in RUNTIME_FLOW_FIELDS]
                   + [k for k in over if k not in ("model", "schedule")])
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: part of the checkpoint's trained model, not a "
                         f"runtime setting (runtime: model.{', model.'.join(RUNTIME_MODEL_FIELDS)}"
                         f", model.flow.{', model.flow.'.join(RUNTIME_FLOW_FIELDS)}, schedule)")
    if flow:
        model["flow"] = flow
    merged = _merge_dicts(base.to_dict(), {"model": model, "schedule": over.get("schedule")
                                           or {}})
    return DavssConfig.from_dict(merged)


def _load_key_segmenter(key: KeySegmenter | str | Path | None, checkpoint: Checkpoint | None,
                        device: torch.device) -> KeySegmenter | None:
    """The external key segmenter asked for, or referenced by the checkpoint, or None."""
    if isinstance(key, KeySegmenter):
        return key
    ref = (checkpoint.meta.get("key_segmenter") if checkpoint is not None else None)
    if key is None and not ref:
        return None
    from .segmenters import load_key_segmenter

    if key is not None:
        return load_key_segmenter(Path(key), device=device)
    path = Path(ref["path"])
    if not path.is_absolute() and checkpoint.path is not None:
        path = checkpoint.path.parent / path
    if not path.is_file():
        raise KeySegmenterError(f"{checkpoint.path}: references key segmenter {path}, which "
                                f"does not exist")
    if ref.get("sha256") and file_sha256(path) != ref["sha256"]:
        raise KeySegmenterError(f"{checkpoint.path}: key segmenter {path} has sha256 "
                                f"{file_sha256(path)[:12]}, the checkpoint was made with "
                                f"{str(ref['sha256'])[:12]}")
    return load_key_segmenter(path, device=device)


def _fit_to_key_segmenter(cfg: DavssConfig, key: KeySegmenter, checkpoint: Checkpoint | None,
                          explicit_size: bool) -> DavssConfig:
    """Class count and input size agreed between the key segmenter and the networks."""
    n = key.num_classes
    if checkpoint is not None and checkpoint.config.model.num_classes != n:
        raise KeySegmenterError(
            f"{key.name}: gives {n} classes, the checkpoint {checkpoint.path} has "
            f"{checkpoint.config.model.num_classes}; use a checkpoint trained (or adapted) for "
            f"this segmenter's classes, or model.checkpoint 'untrained'")
    model = replace(cfg.model, num_classes=n)
    need = key.info.input_size
    if need is not None and tuple(need) != (model.input_height, model.input_width):
        if explicit_size:
            key.check_input_size(model.input_height, model.input_width)  # raises
        model = replace(model, input_height=int(need[0]), input_width=int(need[1]))
    return replace(cfg, model=model)
