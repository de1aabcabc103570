"""The key-segmenter interface: whatever network segments key frames.

DAVSS is an accelerator around a segmenter: key frames go through it, the frames between are
propagated and corrected. A key segmenter declares what the pipeline needs to know about it
(:class:`SegmenterInfo`: classes, input normalisation, input size, logit stride); the
pipeline hands it an RGB image in [0, 1] and gets logits on the 1/4 propagation grid back,
whatever kind it is (the native DeepLabv3+, a TorchScript file, an ONNX file).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from ..classes import IGNORE_ID

CHANNEL_ORDERS = ("rgb", "bgr")
# The stride of the propagation grid: propagated logits, the key image and the distortion
# map all live at 1/4 of the network input, as in the paper.
PROPAGATION_STRIDE = 4


class KeySegmenterError(ValueError):
    """A key-segmenter file or declaration that cannot be used; one line naming the file and
    what was expected."""


@dataclass(frozen=True)
class SegmenterInfo:
    """What a key segmenter declares about itself.

    The network sees ``((rgb_or_bgr * value_range) - mean) / std`` per channel, where the
    pipeline's image is RGB in [0, 1]. ``input_size`` is the (H, W) the network requires, or
    None when it takes any size; its logits come out at 1/``logit_stride`` of its input.
    """

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_id: int = IGNORE_ID
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"
    value_range: float = 1.0
    input_size: tuple[int, int] | None = None
    logit_stride: int = PROPAGATION_STRIDE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if not 1 <= n <= 255:
            raise ValueError(f"a key segmenter needs 1..255 classes, got {n}")
        if len(self.palette) != n:
            raise ValueError(f"{n} class names but {len(self.palette)} palette colours")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be rgb or bgr, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each, std non-zero; got mean "
                             f"{self.mean}, std {self.std}")
        if self.value_range <= 0:
            raise ValueError(f"value_range must be > 0, got {self.value_range}")
        if self.logit_stride < 1:
            raise ValueError(f"logit_stride must be >= 1, got {self.logit_stride}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML sidecars, ONNX metadata, TorchScript extra files); ``extra``
        only when it holds something."""
        return {
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_id": self.ignore_id,
            "mean": list(self.mean), "std": list(self.std),
            "channel_order": self.channel_order, "value_range": self.value_range,
            "input_size": None if self.input_size is None else list(self.input_size),
            "logit_stride": self.logit_stride,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterInfo:
        """From plain data; a ValueError names the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of fields, got {type(data).__name__}")
        unknown = sorted(set(data) - set(DECLARATION_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(DECLARATION_FIELDS)}")
        if "class_names" not in data:
            raise ValueError("class_names is required")
        from ..classes import default_palette

        names = _field(data, "class_names", "a list of names",
                       lambda v: tuple(str(n) for n in _seq(v)))
        palette = _field(data, "palette", "a list of [r, g, b] colours in 0..255",
                         lambda v: tuple(_colour(c) for c in _seq(v)))
        size = _field(data, "input_size", "[height, width] or null",
                      lambda v: None if v is None else _size(v))
        return cls(
            class_names=names,
            palette=palette or tuple(default_palette(len(names))),
            ignore_id=_field(data, "ignore_id", "an integer", _int, IGNORE_ID),
            mean=_field(data, "mean", "3 numbers", _triple, (0.0, 0.0, 0.0)),
            std=_field(data, "std", "3 non-zero numbers", _triple, (1.0, 1.0, 1.0)),
            channel_order=_field(data, "channel_order", "rgb or bgr", str, "rgb"),
            value_range=_field(data, "value_range", "a number", _float, 1.0),
            input_size=size,
            logit_stride=_field(data, "logit_stride", "an integer", _int, PROPAGATION_STRIDE),
            extra=_field(data, "extra", "a mapping", _mapping, {}),
        )


# The fields of a declaration (SegmenterInfo.to_dict / from_dict, sidecars, metadata).
DECLARATION_FIELDS = ("class_names", "palette", "ignore_id", "mean", "std", "channel_order",
                      "value_range", "input_size", "logit_stride", "extra")


def _field(data: dict[str, Any], name: str, expected: str, convert: Any,
           default: Any = None) -> Any:
    if name not in data or (data[name] is None and name != "input_size"):
        return default
    try:
        return convert(data[name])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {expected}, got {data[name]!r}") from exc


def _seq(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError("not a list")
    return list(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError("not an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("not a number")
    return float(value)


def _triple(value: Any) -> tuple[float, float, float]:
    v = tuple(_float(x) for x in _seq(value))
    if len(v) != 3:
        raise ValueError("not 3 values")
    return v  # type: ignore[return-value]


def _colour(value: Any) -> tuple[int, int, int]:
    c = tuple(_int(x) for x in _seq(value))
    if len(c) != 3 or not all(0 <= x <= 255 for x in c):
        raise ValueError("not an RGB colour")
    return c  # type: ignore[return-value]


def _size(value: Any) -> tuple[int, int]:
    s = tuple(_int(x) for x in _seq(value))
    if len(s) != 2 or min(s) < 1:
        raise ValueError("not a size")
    return s  # type: ignore[return-value]


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    return dict(value)


class KeySegmenter(ABC):
    """A segmenter for key frames.

    ``segmenter(image)`` takes N x 3 x H x W float RGB in [0, 1] on ``self.device`` and
    returns float32 logits N x C x H/4 x W/4 on that device: the kind's own normalisation is
    applied here, and logits of another stride are resampled bilinearly
    (``align_corners=False``) onto the 1/4 propagation grid.
    """

    kind: ClassVar[str] = ""

    def __init__(self, info: SegmenterInfo, *, source: Path | None = None,
                 sha256: str | None = None) -> None:
        self.info = info
        self.source = source
        self.sha256 = sha256
        self.device = torch.device("cpu")
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def to(self, device: torch.device | str) -> KeySegmenter:
        self.device = torch.device(device)
        self._norm = None
        self._move(self.device)
        return self

    def check_input_size(self, height: int, width: int) -> None:
        """Raise KeySegmenterError when the network cannot take an H x W input."""
        need = self.info.input_size
        if need is not None and tuple(need) != (height, width):
            raise KeySegmenterError(
                f"{self.name}: takes {need[1]}x{need[0]} (WxH) input, the pipeline's network "
                f"input is {width}x{height}; set input.width/height (or model.input_width/"
                f"height) to {need[1]}x{need[0]}")
        if height % PROPAGATION_STRIDE or width % PROPAGATION_STRIDE:
            raise KeySegmenterError(f"{self.name}: input {width}x{height} is not a multiple "
                                    f"of {PROPAGATION_STRIDE}")

    @property
    def name(self) -> str:
        return str(self.source) if self.source is not None else f"{self.kind} segmenter"

    def describe(self) -> str:
        """One line for logs: kind, file, classes."""
        where = f" {self.source}" if self.source is not None else ""
        sha = f" (sha256 {self.sha256[:12]})" if self.sha256 else ""
        return f"{self.kind}{where}{sha}, {self.num_classes} classes"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"{self.name}: expects N x 3 x H x W RGB, got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if self.info.input_size is not None and tuple(self.info.input_size) != (h, w):
            self.check_input_size(h, w)
        logits = self.forward_logits(self.normalise(image))
        if logits.dim() != 4 or logits.shape[0] != image.shape[0]:
            raise KeySegmenterError(f"{self.name}: expected logits N x C x h x w (rank 4, "
                                    f"N = {image.shape[0]}), got shape {tuple(logits.shape)}")
        if logits.shape[1] != self.num_classes:
            raise KeySegmenterError(f"{self.name}: gives {logits.shape[1]} classes, declared "
                                    f"{self.num_classes}")
        grid = (h // PROPAGATION_STRIDE, w // PROPAGATION_STRIDE)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != grid:
            logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False)
        return logits

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> what the network expects (channel order, value range, mean/std)."""
        info = self.info
        if info.channel_order == "bgr":
            image = image.flip(1)
        if (info.value_range == 1.0 and info.mean == (0.0, 0.0, 0.0)
                and info.std == (1.0, 1.0, 1.0)):
            return image
        if self._norm is None or self._norm[0].device != image.device:
            mean = torch.tensor(info.mean, dtype=torch.float32, device=image.device)
            std = torch.tensor(info.std, dtype=torch.float32, device=image.device)
            self._norm = (mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1))
        mean, std = self._norm
        return (image * info.value_range - mean) / std

    @abstractmethod
    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network on its normalised input; logits at 1/logit_stride."""

    def _move(self, device: torch.device) -> None:  # noqa: B027 - optional hook
        """Put the network on ``device`` (kinds that hold torch modules)."""


# Where a file's declaration lives: a YAML sidecar beside it (wins), else inside the file.
SIDECAR_SUFFIX = ".yaml"
DECLARATION_KEY = "davss_ros.segmenter"  # ONNX metadata_props key, JSON
DECLARATION_FILE = "davss_ros.segmenter.json"  # TorchScript archive extra file, JSON


def sidecar_path(path: str | Path) -> Path:
    """The YAML sidecar of a segmenter file: ``seg.onnx`` -> ``seg.onnx.yaml``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> SegmenterInfo | None:
    """The declaration in ``path``'s sidecar, None when there is none.

    Raises KeySegmenterError (one line naming the sidecar and the field) when it is invalid.
    """
    import yaml

    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = yaml.safe_load(side.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KeySegmenterError(f"{side}: invalid sidecar: not readable YAML "
                                f"({one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise KeySegmenterError(f"{side}: invalid sidecar: expected a mapping of declaration "
                                f"fields ({', '.join(DECLARATION_FIELDS)}), got "
                                f"{type(data).__name__}")
    try:
        return SegmenterInfo.from_dict(data)
    except ValueError as exc:
        raise KeySegmenterError(f"{side}: invalid sidecar: {one_line(exc)}") from exc


def write_sidecar(path: str | Path, info: SegmenterInfo) -> Path:
    """Write ``info`` as the YAML sidecar of the segmenter file ``path``; returns its path."""
    import yaml

    side = sidecar_path(path)
    text = yaml.safe_dump(info.to_dict(), sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=100)
    side.write_text(f"# davss_ros key-segmenter declaration of {Path(path).name}\n{text}",
                    encoding="utf-8")
    return side


def declaration_json(info: SegmenterInfo) -> str:
    """``info`` as the JSON embedded in a file (ONNX metadata, TorchScript extra file)."""
    return json.dumps(info.to_dict(), sort_keys=True)


def resolve_declaration(path: Path | None, *, info: SegmenterInfo | None,
                        embedded: str | None, embedded_where: str,
                        name: str | None = None) -> SegmenterInfo:
    """The declaration of a segmenter file: ``info`` when given, else the sidecar of
    ``path`` (None: no file, no sidecar), else ``embedded``, the JSON found inside the file
    at ``embedded_where``. ``name`` names the file in errors (default ``path``)."""
    name = name or str(path)
    if info is not None:
        return info
    side = read_sidecar(path) if path is not None else None
    if side is not None:
        return side
    if not embedded:
        looked = f"a sidecar {sidecar_path(path)} or " if path is not None else ""
        raise KeySegmenterError(
            f"{name}: no declaration found: expected {looked}{embedded_where} (classes, "
            f"normalisation, logit stride)")
    try:
        return SegmenterInfo.from_dict(json.loads(embedded))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise KeySegmenterError(f"{name}: invalid declaration in {embedded_where}: "
                                f"{one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (native libraries often write several)."""
    text = " ".join(str(exc).split())
    return text[:300] + " ..." if len(text) > 300 else text or type(exc).__name__
