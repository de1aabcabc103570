"""FLOPs as the paper counts them (Table I), by forward hooks on the modules that run.

Per layer, for one sample (a batch of N counts N times; the tables use N = 1):

- Convolution: ``2 Ho Wo (Ci/groups Kh Kw + 1) Co``. The ``+ 1`` is the bias term of the
  paper's formula and is counted whether or not the layer has a bias, as the paper does.
  Conv1d/Conv3d use the product of their spatial sizes in place of ``Ho Wo`` and ``Kh Kw``.
- Transposed convolution: the same multiply-adds as the convolution it is the gradient of,
  ``2 Hi Wi (Ci/groups Kh Kw) Co``, plus the bias term on the output, ``2 Ho Wo Co``
  (convention ``input``, the default). Convention ``output`` applies the convolution formula
  to the output, ``2 Ho Wo (Ci/groups Kh Kw + 1) Co``, i.e. 4x the work of a stride-2 layer;
  it reproduces the paper's Table II FlowNet and CFNet figures to about 2%, so the paper's
  counter evidently did this (see :class:`FlopCounter`).
- Linear: ``2 (in + 1) out`` per row (every leading dimension is a row).
- Bilinear upsampling (``nn.Upsample`` in a linear mode, and any module of a class named
  ``Interpolate``, the model's wrapper of ``F.interpolate``): ``11 Ho Wo Co``. Nearest
  upsampling is a copy and counts 0.
- Batch normalisation: ``2 H W C``.
- Activations: ``H W C``. The paper lists ReLU and LeakyReLU; ReLU6, Hardswish, Hardsigmoid,
  SiLU and Sigmoid (MobileNetV3's) are counted the same way, one operation per element.
- Pooling (average, adaptive average, max): one operation per input element, ``H W C``.

Modules outside this table (and outside the zero-cost set: dropout, identity, reshapes) count
0 and their type names are collected in ``FlopsReport.uncounted``, so nothing is missed
silently. Functional operations of the pipeline that are no module (flow warping, the fusion
of DAVSS) have analytic costs here in the same spirit: :func:`warp_flops`,
:func:`fusion_flops`; :func:`c_mean` is the paper's average cost per frame (Eq. 8).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from davss_ros.model.step import MODE_TABLE, mode_spec

if TYPE_CHECKING:
    from davss_ros.config import DavssConfig

GIGA = 1e9

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU,
                nn.Sigmoid)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
# Identity or reshapes at inference: zero cost, and known to be zero cost.
_FREE = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
         nn.Flatten, nn.Unflatten)
_LINEAR_MODES = ("linear", "bilinear", "trilinear")
_NEAREST_MODES = ("nearest", "nearest-exact")


@dataclass
class FlopsReport:
    """FLOPs per module that ran, in the order each first ran."""

    rows: list[tuple[str, str, int]] = field(default_factory=list)
    uncounted: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(flops for _, _, flops in self.rows)

    def by_prefix(self, depth: int = 1) -> dict[str, int]:
        """FLOPs summed per qualified-name prefix of ``depth`` parts (1: per top-level child)."""
        if depth < 1:
            raise ValueError(f"by_prefix expects depth >= 1, got {depth}")
        out: dict[str, int] = {}
        for name, _, flops in self.rows:
            key = ".".join(name.split(".")[:depth])
            out[key] = out.get(key, 0) + flops
        return out

    def format_table(self, title: str | None = None) -> str:
        names = [name or "(root)" for name, _, _ in self.rows]
        name_w = max([len("module"), *map(len, names)])
        type_w = max([len("type"), *(len(t) for _, t, _ in self.rows)])
        lines = [title] if title else []
        lines.append(f"{'module':<{name_w}}  {'type':<{type_w}}  {'GFLOPs':>12}")
        for name, (_, type_name, flops) in zip(names, self.rows, strict=True):
            lines.append(f"{name:<{name_w}}  {type_name:<{type_w}}  {flops / GIGA:>12.6f}")
        lines.append(f"{'total':<{name_w}}  {'':<{type_w}}  {self.total / GIGA:>12.6f}")
        if self.uncounted:
            lines.append("uncounted module types: " + ", ".join(sorted(self.uncounted)))
        return "\n".join(lines)


def conv_flops(module: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor, *,
               transposed: str = "input") -> int:
    """Table I convolution; transposed convolutions by the ``transposed`` convention
    (``input`` or ``output``, see the module docstring)."""
    _check_transposed(transposed)
    batch, c_out = out.shape[0], out.shape[1]
    kernel = math.prod(module.kernel_size)
    c_in_per_group = module.in_channels // module.groups
    out_spatial = math.prod(out.shape[2:])
    if module.transposed and transposed == "input":
        in_spatial = math.prod(inp.shape[2:])
        per_sample = 2 * in_spatial * c_in_per_group * kernel * c_out + 2 * out_spatial * c_out
    else:
        per_sample = 2 * out_spatial * (c_in_per_group * kernel + 1) * c_out
    return batch * per_sample


def warp_flops(channels: int, h: int, w: int) -> int:
    """Backward warping of a ``channels`` x h x w map: bilinear sampling, ``11 h w C``."""
    _check_sizes(channels=channels, h=h, w=w)
    return 11 * h * w * channels


def upsample_flops(channels: int, h: int, w: int) -> int:
    """Bilinear upsampling to an h x w output: ``11 h w C`` (Table I)."""
    _check_sizes(channels=channels, h=h, w=w)
    return 11 * h * w * channels


def fusion_flops(channels: int, h: int, w: int) -> int:
    """DAVSS fusion ``f_P (1 - M) + f_CC M`` on ``channels`` x h x w logits.

    Per logit element one multiply for each product and one add (3); ``1 - M`` once per
    pixel (M has one channel): ``3 h w C + h w``.
    """
    _check_sizes(channels=channels, h=h, w=w)
    return 3 * h * w * channels + h * w


def c_mean(c_seg: float, c_warp: float, d: int) -> float:
    """Average cost per frame, one key frame then ``d`` propagated ones (paper Eq. 8)."""
    if d < 0:
        raise ValueError(f"c_mean expects a propagation distance d >= 0, got {d}")
    return (c_seg + c_warp * d) / (d + 1)


TRANSPOSED_CONVENTIONS = ("input", "output")


def count_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> FlopsReport:
    """Run ``module(*inputs, **kwargs)`` once and count the FLOPs of every module that ran.

    The forward runs under ``no_grad`` in eval mode (BatchNorm and dropout behave as at
    inference); the training flags and the module's hooks are restored afterwards, also when
    the forward raises. A module called several times (a siamese branch) sums its calls.
    """
    return FlopCounter().count(module, *inputs, **kwargs)


@dataclass(frozen=True)
class FlopCounter:
    """:func:`count_flops` with a choice of convention for transposed convolutions."""

    transposed: str = "input"

    def __post_init__(self) -> None:
        _check_transposed(self.transposed)

    def count(self, module: nn.Module, *inputs: Any, **kwargs: Any) -> FlopsReport:
        """As :func:`count_flops`."""
        return _count(module, inputs, kwargs, self.transposed)


def _check_transposed(convention: str) -> None:
    if convention not in TRANSPOSED_CONVENTIONS:
        raise ValueError(f"transposed convention must be one of "
                         f"{', '.join(TRANSPOSED_CONVENTIONS)}; got {convention!r}")


def _count(module: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any],
           transposed: str) -> FlopsReport:
    flops: dict[str, int] = {}
    types: dict[str, str] = {}
    uncounted: set[str] = set()
    handles = []

    def make_hook(name: str, counter: Callable[..., int] | None) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
            types.setdefault(name, type(mod).__name__)
            value = 0
            if counter is None:
                uncounted.add(type(mod).__name__)
            elif counter is not _free:
                inp = _first_tensor(args) if args else _first_tensor(tuple(kw.values()))
                value = (conv_flops(mod, inp, _first_tensor(out), transposed=transposed)
                         if counter is conv_flops else counter(mod, inp, _first_tensor(out)))
                if value < 0:  # an upsampling mode outside the table
                    uncounted.add(f"{type(mod).__name__}(mode={getattr(mod, 'mode', '?')})")
                    value = 0
            flops[name] = flops.get(name, 0) + value

        return hook

    training = {m: m.training for m in module.modules()}
    try:
        for name, mod in module.named_modules():
            counter = _counter_for(mod)
            has_children = next(mod.children(), None) is not None
            has_own_params = next(mod.parameters(recurse=False), None) is not None
            if counter is not None or not has_children or has_own_params:
                handles.append(mod.register_forward_hook(make_hook(name, counter),
                                                         with_kwargs=True))
        module.eval()
        with torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for m, was_training in training.items():
            m.training = was_training
    return FlopsReport(rows=[(name, types[name], value) for name, value in flops.items()],
                       uncounted=uncounted)


def _counter_for(mod: nn.Module) -> Callable[..., int] | None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return conv_flops
    if isinstance(mod, nn.Linear):
        return _linear_flops
    if isinstance(mod, nn.Upsample) or any(c.__name__ == "Interpolate"
                                           for c in type(mod).__mro__):
        return _upsample_module_flops
    if isinstance(mod, _NORMS):
        return lambda m, i, o: 2 * i.numel()
    if isinstance(mod, (*_ACTIVATIONS, *_POOLS)):
        return lambda m, i, o: i.numel()
    if isinstance(mod, _FREE):
        return _free
    return None


def _free(mod: nn.Module, inp: Any, out: Any) -> int:
    return 0


def _linear_flops(mod: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    rows = inp.numel() // mod.in_features
    return 2 * (mod.in_features + 1) * mod.out_features * rows


def _upsample_module_flops(mod: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    # The model's Interpolate is bilinear by contract; a mode attribute, when present, decides.
    mode = getattr(mod, "mode", "bilinear")
    if out is inp:  # Interpolate passes an input already at the target size through
        return 0
    if mode in _LINEAR_MODES:
        return 11 * out.numel()
    if mode in _NEAREST_MODES:
        return 0
    return -1


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(value, dict):
        return _first_tensor(tuple(value.values()))
    raise ValueError(f"count_flops: expected a tensor among the inputs/outputs of a counted "
                     f"module, got {type(value).__name__}")


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


# -- the paper's Table II for a configuration, and the `davss flops` subcommand -----------

FRAME_MODES = tuple(MODE_TABLE)
DISTANCES = tuple(range(1, 10))


def network_reports(cfg: DavssConfig, *, transposed: str = "input") -> dict[str, FlopsReport]:
    """Per-module FLOPs of each network of ``cfg`` at its input size, batch 1, transposed
    convolutions by the ``transposed`` convention.

    The networks are built and run on the ``meta`` device: only shapes flow through, so the
    paper configuration at 1024 x 2048 is counted in seconds and without memory.
    """
    from davss_ros.model import build_davss_net

    m = cfg.model
    with torch.device("meta"):
        net = build_davss_net(m)
        image = torch.empty(1, 3, m.input_height, m.input_width)
        small = torch.empty(1, 3, m.input_height // 4, m.input_width // 4)
        logits = torch.empty(1, m.num_classes, m.input_height // 4, m.input_width // 4)
    count = FlopCounter(transposed=transposed).count
    reports = {"segmenter": count(net.segmenter, image)}
    if net.flownet is not None:
        reports["flownet"] = count(net.flownet, image, image)
    reports["cfnet"] = count(net.cfnet, image)
    reports["dmnet"] = count(net.dmnet, small, small)
    reports["accel_cfnet"] = count(net.accel_cfnet, image)
    reports["accel_fusion"] = count(net.accel_fusion, logits, logits)
    if net.refiner is not None:
        from davss_ros.model.refiner import SIGNALS

        with torch.device("meta"):
            signals = torch.empty(1, len(SIGNALS), m.input_height // 4, m.input_width // 4)
        # its head; the sigmoid and the floor's multiply-add are not counted elsewhere either
        reports["refiner"] = count(net.refiner.head, signals)
        if net.refiner.mix is not None:  # signals_mix: its 1x1 mixing over four logit maps
            with torch.device("meta"):
                stacked = torch.empty(1, 4 * m.num_classes, m.input_height // 4,
                                      m.input_width // 4)
            mix = count(net.refiner.mix, stacked)
            head = reports["refiner"]
            reports["refiner"] = FlopsReport(rows=head.rows + mix.rows,
                                             uncounted=head.uncounted | mix.uncounted)
    return reports


def non_key_cost(mode: str, modules: dict[str, float]) -> float:
    """GFLOPs of a non-key frame of ``mode``: the networks its row of the mode table runs
    (``davss_ros.model.step.MODE_TABLE``) on top of flow, the logits' warp and the x4
    upsampling; a mode without propagation costs a key frame."""
    spec = mode_spec(mode)
    if not spec.propagates:
        return modules["segmenter"] + modules["upsample"]
    cost = modules["flownet"] + modules["warp_logits"] + modules["upsample"]
    if spec.distortion:
        cost += modules["warp_image"] + modules["dmnet"] + modules.get("refiner", 0.0)
    if spec.cue is not None:
        cost += modules[spec.cue] + modules[spec.fusion]
    return cost


def frame_cost_table(cfg: DavssConfig, reports: dict[str, FlopsReport] | None = None, *,
                     transposed: str = "input") -> dict[str, Any]:
    """GFLOPs per module, per frame type and mode, and C_mean at D = 1..9 (JSON-ready).

    Costs follow the pipeline: logits, flow, warps, DMNet and the fusions at 1/4 of the input;
    every output (key or not) ends with the bilinear x4 upsampling of the logits, so both
    frame types include it. Non-key frames per mode:

    - ``per_frame``: every frame is a key frame.
    - ``dff``: flow + warp of the logits + upsampling.
    - ``accel``: flow + warp of the logits + Accel's branch + its 1x1 fusion + upsampling.
    - ``davss``: flow + warp of the logits and of the key image + DMNet + CFNet + fusion +
      upsampling, and the signals refiner when the model has one (its key frames then also
      run CFNet: ``key_by_mode``).

    DIS flow (OpenCV, not a network) counts 0. The image warp of the scene-cut test, which
    the pipeline also runs in ``dff`` and ``accel``, is counted in ``davss`` only, where the
    method needs it. ``reports`` (from :func:`network_reports`) saves counting again.
    """
    m = cfg.model
    reports = network_reports(cfg, transposed=transposed) if reports is None else reports
    h4, w4, c = m.input_height // 4, m.input_width // 4, m.num_classes
    g = {name: report.total / GIGA for name, report in reports.items()}
    modules = {
        "segmenter": g["segmenter"],
        "flownet": g.get("flownet", 0.0),
        "cfnet": g["cfnet"],
        "dmnet": g["dmnet"],
        "accel_cfnet": g["accel_cfnet"],
        "accel_fusion": g["accel_fusion"],
        "refiner": g.get("refiner", 0.0),
        "warp_logits": warp_flops(c, h4, w4) / GIGA,
        "warp_image": warp_flops(3, h4, w4) / GIGA,
        "fusion": fusion_flops(c, h4, w4) / GIGA,
        "upsample": upsample_flops(c, m.input_height, m.input_width) / GIGA,
    }
    key = modules["segmenter"] + modules["upsample"]
    non_key = {mode: non_key_cost(mode, modules) for mode in FRAME_MODES}
    # With the signals estimator a davss key frame also runs CFNet (the cue trust).
    key_by_mode = {mode: key + (modules["cfnet"] if mode == "davss" and "refiner" in g
                                else 0.0) for mode in FRAME_MODES}
    return {
        "units": "GFLOPs",
        "input_height": m.input_height,
        "input_width": m.input_width,
        "num_classes": c,
        "backbone": m.segmenter.backbone,
        "flow_provider": m.flow.provider,
        "transposed_conv": transposed,
        "flow_note": ("FlowNet-S (learned)" if m.flow.provider == "learned"
                      else "DIS optical flow (OpenCV, not a network): 0 GFLOPs counted"),
        "modules": modules,
        "key": key,
        "key_by_mode": key_by_mode,
        "non_key": non_key,
        "c_mean": {mode: {str(d): c_mean(key_by_mode[mode], non_key[mode], d)
                          for d in DISTANCES} for mode in FRAME_MODES},
        "uncounted": {name: sorted(r.uncounted) for name, r in reports.items() if r.uncounted},
    }


def format_table2(table: dict[str, Any]) -> str:
    """The cost table laid out like the paper's Table II, then per mode and C_mean."""
    mod = table["modules"]
    flow_label = "FlowNet" if table["flow_provider"] == "learned" else "FlowNet (DIS: 0)"
    rows = [
        (flow_label, mod["flownet"]),
        ("CFNet", mod["cfnet"]),
        ("DMNet", mod["dmnet"]),
        ("Overall for key", table["key"]),
        ("Overall for non-key", table["non_key"]["davss"]),
    ]
    lines = [f"Computation cost (GFLOPs), input {table['input_height']}x{table['input_width']}, "
             f"{table['num_classes']} classes, {table['backbone']}, flow: {table['flow_note']}; "
             f"transposed convs counted on the {table['transposed_conv']} side",
             f"{'Module':<24}{'GFLOPs':>12}"]
    lines += [f"{name:<24}{value:>12.3f}" for name, value in rows]
    lines += ["", "Parts (GFLOPs)"]
    lines += [f"  {name:<22}{value:>12.3f}" for name, value in mod.items()]
    lines += ["", "Per mode: non-key GFLOPs and C_mean (Eq. 8) at propagation distance D",
              f"{'mode':<10}{'non-key':>10}" + "".join(f"{'D=' + str(d):>9}" for d in DISTANCES)]
    for mode in FRAME_MODES:
        means = table["c_mean"][mode]
        lines.append(f"{mode:<10}{table['non_key'][mode]:>10.3f}"
                     + "".join(f"{means[str(d)]:>9.2f}" for d in DISTANCES))
    for name, types in table["uncounted"].items():
        lines.append(f"warning: {name} ran uncounted module types: {', '.join(types)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="cpu",
                        help="preset name (cpu, paper) or YAML config path (default: cpu)")
    parser.add_argument("--height", type=int, default=None,
                        help="input height (default: the config's)")
    parser.add_argument("--width", type=int, default=None,
                        help="input width (default: the config's)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the table as JSON to PATH")
    parser.add_argument("--modules", action="store_true",
                        help="print the per-module table of each network")
    parser.add_argument("--transposed", choices=TRANSPOSED_CONVENTIONS, default="input",
                        help="count transposed convs by their input-side work (default) or "
                             "by the conv formula on their output, as the paper's figures do")


def run(args: argparse.Namespace) -> int:
    from davss_ros.config import load_config

    cfg = load_config(args.config)
    if args.height is not None:
        cfg.model.input_height = args.height
    if args.width is not None:
        cfg.model.input_width = args.width
    cfg.validate()
    reports = network_reports(cfg, transposed=args.transposed)
    if args.modules:
        for name, report in reports.items():
            print(report.format_table(title=f"== {name}"))
            print()
    table = frame_cost_table(cfg, reports, transposed=args.transposed)
    print(format_table2(table))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
