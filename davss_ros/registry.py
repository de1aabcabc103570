"""Registries of the named kinds of parts: backbones, flow providers, key segmenters, data
sets.

Each name is bound to where its builder lives (``module:attribute``), imported only when
that kind is built, so the configuration can check names without importing torch or
OpenCV. A new kind is one file plus one entry here (or ``REGISTRY.register`` at run time).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any


class Registry:
    """Names of one kind of part, each bound to a builder imported on first use."""

    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind = kind
        self._targets: dict[str, str | Any] = {}
        for name, target in entries.items():
            self.register(name, target)

    def register(self, name: str, target: str | Any) -> None:
        """Bind ``name`` to a builder, or to ``'module:attribute'`` naming one."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: expected 'module:attribute', got {target!r}")
        self._targets[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def check(self, field: str, name: Any) -> None:
        """ValueError naming ``field`` unless ``name`` is registered."""
        if name not in self._targets:
            raise ValueError(f"{field} must be one of {', '.join(self._targets)}; got {name!r}")

    def get(self, name: str) -> Any:
        """The builder registered as ``name`` (imported now if need be)."""
        self.check(f"{self.kind}", name)
        target = self._targets[name]
        if isinstance(target, str):
            module, attr = target.split(":", 1)
            target = getattr(importlib.import_module(module), attr)
            self._targets[name] = target
        return target


# builder(*, output_stride, width_mult) -> nn.Module with out_channels, low_level_channels
BACKBONES = Registry("backbone", {
    "xception65": "davss_ros.model.backbones:xception65",
    "resnet18": "davss_ros.model.backbones:resnet18",
    "resnet50": "davss_ros.model.backbones:resnet50",
    "mobilenet_v3_large": "davss_ros.model.backbones:mobilenet_v3_large",
})
# FlowProvider class with from_config(cfg: FlowConfig, flownet) and needs_network
FLOW_PROVIDERS = Registry("flow provider", {
    "dis": "davss_ros.model.flow:DISFlow",
    "learned": "davss_ros.model.flow:LearnedFlow",
})
# KeySegmenter class with from_file(path, *, info=None, device, sha256) (native: from a checkpoint)
KEY_SEGMENTERS = Registry("key segmenter kind", {
    "native": "davss_ros.segmenters.native:NativeSegmenter",
    "torchscript": "davss_ros.segmenters.torchscript:TorchScriptSegmenter",
    "onnx": "davss_ros.segmenters.onnx:OnnxSegmenter",
})
# open_sequences(root, split, *, snippet_length, max_distance, resize_frames) -> a loader
DATASETS = Registry("dataset", {
    "synthetic": "davss_ros.data.cityscapes:open_sequences",
    "cityscapes": "davss_ros.data.cityscapes:open_sequences",
    "camvid": "davss_ros.data.camvid:open_sequences",
    "recording": "davss_ros.data.cityscapes:open_recording",  # davss adapt's cache
})
