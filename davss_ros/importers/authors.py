"""``davss import-authors``: the DAVSS authors' released models as a davss_ros checkpoint.

    davss import-authors best.pth --out davss_paper_cityscapes.pt

The authors' code (github.com/jfzhuang/DAVSS, read at :data:`AUTHORS_COMMIT`) saves the
whole framework as one ``torch.save(net.state_dict())`` of the DistributedDataParallel-
wrapped ``SCNet``: keys ``module.deeplab.*`` (DeepLabv3+ Xception-65), ``module.flownet.*``
(FlowNet-S at 3/8 width), ``module.dmnet.*`` and ``module.cfnet.*``; that is the
``spatial_correction_cityscapes`` release. Their ``dmnet_cityscapes`` release is the bare
DMNet state dict. Any set of files that together hold the four networks is accepted
(``module.`` prefixes stripped; a bare single-network state dict is recognised by its
keys); a tensor given twice must be equal in both files.

Every tensor of theirs lands in ours or the import is refused, with one line naming the
missing, unexpected or mis-shaped tensors. Where the layouts differ, the tensors are
transformed exactly (inference outputs unchanged):

- ASPP: their concatenation puts the image-pooling branch first, ours last, so the
  projection's input channels are permuted.
- ASPP image pooling: their 1x1 conv is followed by BatchNorm; ours has a bias instead
  (a BatchNorm on a 1x1 map cannot train at batch 1), so their BatchNorm is folded into it.
- DMNet: their depthwise and pointwise convs have a bias right before a BatchNorm; it is
  folded into that BatchNorm's running mean.

Where their networks compute differently, the checkpoint's configuration sets the matching
option (:func:`authors_config`): BatchNorm eps 1e-3 in the Xception-65 backbone and the
decoder's low-level projection, ``align_corners=True`` in the decoder's upsampling, and the
extra BatchNorm + ReLU after each of DMNet's separable convs. The Accel baseline's branch
has no counterpart in their release and keeps fresh weights (the meta says so).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..checkpoint import file_sha256, save_checkpoint
from ..classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from ..config import DavssConfig, preset
from ..model import build_davss_net

AUTHORS_REPOSITORY = "https://github.com/jfzhuang/DAVSS"
AUTHORS_COMMIT = "5dc785ee1417ade5b82f5e34b34817e3c4492acb"
# Their SCNet's networks, in the order of their state dict.
NETWORKS = ("deeplab", "flownet", "cfnet", "dmnet")
NUM_CLASSES = len(CITYSCAPES_CLASSES)
# Our tensors with no counterpart in their release: the Accel baseline's branch.
UNTRAINED_PARTS = ("accel_cfnet", "accel_fusion")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_IMAGE_POOLING_BN_EPS = 1e-5  # their ASPP image pooling's SyncBatchNorm(eps=1e-05)
_SHOWN = 3  # names shown per kind of problem in an error line


class AuthorsImportError(ValueError):
    """The given files are not (all of) the authors' model; the message says what is wrong."""


def authors_config(*, input_height: int = 1024, input_width: int = 2048) -> DavssConfig:
    """The ``paper`` configuration with the options that make our networks compute what the
    authors' do, for Cityscapes' 19 classes at ``input_height`` x ``input_width``."""
    cfg = preset("paper")
    m = cfg.model
    m.num_classes = NUM_CLASSES
    m.input_height, m.input_width = int(input_height), int(input_width)
    m.segmenter.backbone_bn_eps = 1e-3
    m.segmenter.low_level_bn_eps = 1e-3
    m.segmenter.decoder_align_corners = True
    m.dmnet.extra_bn_relu = True
    cfg.validate()
    return cfg


def authors_model_state(cfg: DavssConfig) -> dict[str, torch.Tensor]:
    """A fresh state dict of the model ``cfg`` builds: the tensors an import must fill."""
    return dict(build_davss_net(cfg.model).state_dict())


# ----------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class Rule:
    """Our tensors ``ours`` computed by ``fn`` from their tensors ``theirs`` (whose expected
    shapes are ``shapes``); ``fn`` is None for a plain copy of one tensor."""

    theirs: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    ours: tuple[str, ...]
    fn: Callable[..., tuple[torch.Tensor, ...]] | None = None


def mapping_rules(own: Mapping[str, torch.Tensor]) -> list[Rule]:
    """Every tensor of the authors' SCNet (without ``module.``) and where it goes in ``own``,
    our state dict built by :func:`authors_model_state`."""
    rules: list[Rule] = []

    def shape(key: str) -> tuple[int, ...]:
        return tuple(own[key].shape)

    def copy(theirs: str, ours: str) -> None:
        rules.append(Rule((theirs,), (shape(ours),), (ours,)))

    def bn(theirs: str, ours: str) -> None:
        for p in _BN:
            copy(f"{theirs}.{p}", f"{ours}.{p}")

    def separable(theirs: str, ours: str) -> None:
        # their depthwise/depthwise_bn/pointwise/pointwise_bn; ours two ConvBNAct
        copy(f"{theirs}.depthwise.weight", f"{ours}.0.0.weight")
        bn(f"{theirs}.depthwise_bn", f"{ours}.0.1")
        copy(f"{theirs}.pointwise.weight", f"{ours}.1.0.weight")
        bn(f"{theirs}.pointwise_bn", f"{ours}.1.1")

    # DeepLabv3+ Xception-65
    t, o = "deeplab.xception_features.", "segmenter.backbone."
    for i in (1, 2):
        copy(f"{t}entry_flow_conv1_{i}.conv.weight", f"{o}stem.{i - 1}.0.weight")
        bn(f"{t}entry_flow_bn1_{i}", f"{o}stem.{i - 1}.1")
    blocks = [(f"entry_flow_block{i}_unit_1", f"entry_flow.{i - 1}", True, True)
              for i in (1, 2, 3)]
    blocks += [(f"middle_flow_block1_unit_{i}", f"middle_flow.{i - 1}", True, False)
               for i in range(1, 17)]
    blocks += [("exit_flow_block1_unit_1", "exit_flow.0", True, True),
               ("exit_flow_block2_unit_1", "exit_flow.1", False, False)]
    for theirs, ours, preact, conv_shortcut in blocks:
        # Our pre-activated convs are Sequential(ReLU, SeparableConv2d): index 1.
        for j in range(3):
            separable(f"{t}{theirs}.separable_conv{j + 1}",
                      f"{o}{ours}.convs.{j}.{1 if preact else 0}")
        if conv_shortcut:
            copy(f"{t}{theirs}.shortcut.0.weight", f"{o}{ours}.shortcut.0.weight")
            bn(f"{t}{theirs}.shortcut.1", f"{o}{ours}.shortcut.1")
    t, o = "deeplab.", "segmenter."
    copy(f"{t}aspp0.atrous_convolution.conv.weight", f"{o}aspp.branches.0.0.weight")
    bn(f"{t}aspp0.atrous_convolution.bn", f"{o}aspp.branches.0.1")
    for i in (1, 2, 3):
        separable(f"{t}aspp{i}.atrous_convolution", f"{o}aspp.branches.{i}")
    pool_w, pool_b = f"{o}aspp.branches.4.conv.weight", f"{o}aspp.branches.4.conv.bias"
    rules.append(Rule((f"{t}image_pooling.1.weight",) + tuple(f"{t}image_pooling.2.{p}"
                                                             for p in _BN),
                      (shape(pool_w),) + (shape(pool_b),) * 4 + ((),),
                      (pool_w, pool_b), _fold_batchnorm_into_conv))
    proj = f"{o}aspp.project.0.0.weight"
    rules.append(Rule((f"{t}concat_projection.0.weight",), (shape(proj),), (proj,),
                      _image_pooling_last))
    bn(f"{t}concat_projection.1", f"{o}aspp.project.0.1")
    copy(f"{t}feature_projection0_conv.weight", f"{o}decoder.low_level_project.0.weight")
    bn(f"{t}feature_projection0_bn", f"{o}decoder.low_level_project.1")
    for i in (0, 1):
        separable(f"{t}decoder.{i}", f"{o}decoder.refine.{i}")
    for p in ("weight", "bias"):
        copy(f"{t}logits.{p}", f"{o}decoder.classifier.{p}")

    # FlowNet-S
    levels = ("1", "2", "3", "3_1", "4", "4_1", "5", "5_1", "6", "6_1")
    for i, name in enumerate(levels):
        for p in ("weight", "bias"):
            copy(f"flownet.conv{name}.0.{p}", f"flownet.encoder.{i}.0.{p}")
    for i, level in enumerate((6, 5, 4, 3, 2)):
        for p in ("weight", "bias"):
            copy(f"flownet.predict_flow{level}.{p}", f"flownet.predict_flow.{i}.{p}")
    for i, level in enumerate((5, 4, 3, 2)):
        copy(f"flownet.deconv{level}.0.weight", f"flownet.deconv.{i}.0.weight")
        copy(f"flownet.upsample_flow{level + 1}to{level}.weight",
             f"flownet.upsample_flow.{i}.weight")

    # CFNet
    for i, name in enumerate(levels):
        copy(f"cfnet.conv{name}.0.weight", f"cfnet.encoder.{i}.0.weight")
        bn(f"cfnet.conv{name}.1", f"cfnet.encoder.{i}.1")
    for i, level in enumerate((5, 4, 3, 2)):
        copy(f"cfnet.deconv{level}.0.weight", f"cfnet.decoder.{i}.0.weight")
    for p in ("weight", "bias"):
        copy(f"cfnet.predict_cc.{p}", f"cfnet.classifier.{p}")

    # DMNet: features = [separable, BN, ReLU] x 3 + 1x1 conv (extra_bn_relu)
    for k, idx in ((1, 0), (2, 3), (3, 6)):
        for part, sub in (("depthwise", 0), ("pointwise", 1)):
            theirs, ours = f"dmnet.conv{k}.0.{part}", f"dmnet.features.{idx}.{sub}"
            copy(f"{theirs}.weight", f"{ours}.0.weight")
            bn_ours = tuple(f"{ours}.1.{p}" for p in _BN)
            rules.append(Rule((f"{theirs}.bias",) + tuple(f"{theirs}_bn.{p}" for p in _BN),
                              tuple(shape(k_) for k_ in (bn_ours[0],) + bn_ours),
                              bn_ours, _fold_bias_into_batchnorm))
        bn(f"dmnet.conv{k}.1", f"dmnet.features.{idx + 1}")
    for p in ("weight", "bias"):
        copy(f"dmnet.conv4.{p}", f"dmnet.features.9.{p}")
    return rules


def _fold_batchnorm_into_conv(weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                              mean: torch.Tensor, var: torch.Tensor,
                              _count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = gamma.double() / (var.double() + _IMAGE_POOLING_BN_EPS).sqrt()
    w = weight.double() * scale.view(-1, 1, 1, 1)
    b = beta.double() - mean.double() * scale
    return w.float(), b.float()


def _image_pooling_last(weight: torch.Tensor) -> tuple[torch.Tensor]:
    # theirs: cat(pool, 1x1, rate 6, 12, 18); ours: cat(1x1, rate 6, 12, 18, pool)
    c = weight.shape[1] // 5
    return (torch.cat([weight[:, c:], weight[:, :c]], dim=1),)


def _fold_bias_into_batchnorm(bias: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                              mean: torch.Tensor, var: torch.Tensor,
                              count: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # BN(conv(x) + b) with running mean mu is BN(conv(x)) with running mean mu - b.
    return gamma, beta, (mean.double() - bias.double()).float(), var, count


@dataclass
class Imported:
    """Our state dict, and for each of our tensors the tensors of theirs it came from
    (empty for :data:`UNTRAINED_PARTS`)."""

    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, tuple[str, ...]]


def convert(theirs: Mapping[str, torch.Tensor], cfg: DavssConfig | None = None, *,
            origin: Mapping[str, str] | None = None) -> Imported:
    """Map the authors' tensors (names without ``module.``) onto the model ``cfg`` builds
    (default :func:`authors_config`). Raises AuthorsImportError naming every missing,
    unexpected or mis-shaped tensor."""
    cfg = cfg or authors_config()
    own = authors_model_state(cfg)
    rules = mapping_rules(own)
    expected = {k: s for r in rules for k, s in zip(r.theirs, r.shapes, strict=True)}
    _check(theirs, expected, origin or {})
    out: dict[str, torch.Tensor] = {}
    provenance: dict[str, tuple[str, ...]] = {}
    for rule in rules:
        args = [theirs[k] for k in rule.theirs]
        values = args if rule.fn is None else rule.fn(*args)
        for key, value in zip(rule.ours, values, strict=True):
            value = value.detach().cpu()
            out[key] = value.to(own[key].dtype).contiguous().clone()
            provenance[key] = rule.theirs
    for key, value in own.items():
        if key not in out and key.split(".", 1)[0] in UNTRAINED_PARTS:
            out[key], provenance[key] = value.clone(), ()
    unfilled = sorted(set(own) - set(out))
    if unfilled:  # our model grew a tensor this importer does not know
        raise AuthorsImportError(f"no source for {len(unfilled)} tensor(s) of our model: "
                                 f"{_names(unfilled)}")
    return Imported(out, provenance)


def _check(theirs: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
           origin: Mapping[str, str]) -> None:
    def where(key: str) -> str:
        return f" in {origin[key]}" if key in origin else ""

    missing = [k for k in expected if k not in theirs]
    extra = [k for k in theirs if k not in expected]
    wrong = [k for k in expected if k in theirs
             and tuple(theirs[k].shape) != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): "
                     + _names(missing, lambda k: f"{k} {expected[k]}") + _whole_networks(
                         missing, expected))
    if extra:
        parts.append(f"{len(extra)} unexpected tensor(s): "
                     + _names(extra, lambda k: f"{k}{where(k)}"))
    if wrong:
        parts.append(f"{len(wrong)} tensor(s) of another shape: " + _names(
            wrong, lambda k: f"{k}{where(k)} is {tuple(theirs[k].shape)}, expected "
                             f"{expected[k]}"))
    if parts:
        raise AuthorsImportError("not the DAVSS authors' Cityscapes model: " + "; ".join(parts))


def _names(keys: Sequence[str], fmt: Callable[[str], str] = str) -> str:
    shown = ", ".join(fmt(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _whole_networks(missing: Sequence[str], expected: Mapping[str, tuple[int, ...]]) -> str:
    gone = [n for n in NETWORKS
            if sum(k.startswith(n + ".") for k in missing)
            == sum(k.startswith(n + ".") for k in expected)]
    return f" (no {', '.join(gone)} at all)" if gone else ""


# ----------------------------------------------------------------------------- their files


@dataclass
class Sources:
    """The tensors read from the authors' files (SCNet names, no ``module.``), which file
    each came from, and one record per file (name, SHA-256, tensor count)."""

    tensors: dict[str, torch.Tensor]
    origin: dict[str, str]
    files: list[dict[str, object]]


def read_authors_files(paths: Iterable[str | Path]) -> Sources:
    """Read and merge the authors' state dicts (see the module's docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    files: list[dict[str, object]] = []
    for path in map(Path, paths):
        state = _qualified(_load_state_dict(path), path)
        for key, value in state.items():
            if key in tensors:
                if tensors[key].shape == value.shape and torch.equal(tensors[key], value):
                    continue
                raise AuthorsImportError(f"tensor {key} is in {origin[key]} and in {path} with "
                                         f"different values; give only one of the two files")
            tensors[key], origin[key] = value, str(path)
        files.append({"file": path.name, "sha256": file_sha256(path), "tensors": len(state)})
    if not files:
        raise AuthorsImportError("no checkpoint files given")
    return Sources(tensors, origin, files)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AuthorsImportError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AuthorsImportError(f"{path}: refused: holds pickled Python objects beyond "
                                 f"tensors (torch.load weights_only=True: "
                                 f"{_first_line(exc)})") from exc
    except Exception as exc:  # torch raises several kinds for damaged files
        raise AuthorsImportError(f"{path}: not a readable torch file: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise AuthorsImportError(f"{path}: expected a state dict (names to tensors), got "
                                 f"{type(payload).__name__}")
    return dict(payload)


def _qualified(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """SCNet names: ``module.`` prefixes (DistributedDataParallel) removed, and a bare
    single-network state dict given its network's prefix."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    if any(k.split(".", 1)[0] in NETWORKS for k in out):
        return out
    signatures = {"deeplab": lambda k: k.startswith("xception_features."),
                  "flownet": lambda k: k == "predict_flow6.weight",
                  "cfnet": lambda k: k == "predict_cc.weight",
                  "dmnet": lambda k: k == "conv1.0.depthwise.weight"}
    found = [n for n, test in signatures.items() if any(test(k) for k in out)]
    if len(found) != 1:
        raise AuthorsImportError(
            f"{path}: not a DAVSS authors' state dict: keys such as {next(iter(out))!r} "
            f"belong to none of their networks ({', '.join(NETWORKS)})")
    return {f"{found[0]}.{k}": v for k, v in out.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- the command


def import_authors(paths: Sequence[str | Path], out: str | Path, *, input_height: int = 1024,
                   input_width: int = 2048) -> tuple[Path, Imported, Sources]:
    """Read the authors' files, map them and write a davss_ros checkpoint to ``out``."""
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in paths):
        raise AuthorsImportError(f"--out {out} is one of the input files")
    sources = read_authors_files(paths)
    cfg = authors_config(input_height=input_height, input_width=input_width)
    imported = convert(sources.tensors, cfg, origin=sources.origin)
    meta = {
        "trained_by": "the DAVSS authors on Cityscapes (Zhuang et al., TCSVT 2020; "
                      "github.com/jfzhuang/DAVSS)",
        "imported_from": {
            "repository": AUTHORS_REPOSITORY,
            "commit": AUTHORS_COMMIT,
            "sources": sources.files,
            "tensors": len(sources.tensors),
            "untrained_parts": list(UNTRAINED_PARTS),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "davss_ros": __version__,
        },
    }
    path = save_checkpoint(out, config=cfg, state_dict=imported.state_dict,
                           class_names=list(CITYSCAPES_CLASSES),
                           palette=[tuple(c) for c in CITYSCAPES_PALETTE], meta=meta)
    return path, imported, sources


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 1024x2048, got {text!r}") \
            from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="the authors' .pth file(s): their spatial_correction_cityscapes "
                             "best.pth holds all four networks")
    parser.add_argument("--out", required=True, help="davss_ros checkpoint to write")
    parser.add_argument("--input-size", type=_size, default=(1024, 2048), metavar="HxW",
                        help="network input size stored in the checkpoint (default "
                             "1024x2048, Cityscapes; multiples of 64)")


def run(args: argparse.Namespace) -> int:
    try:
        path, imported, sources = import_authors(args.checkpoints, args.out,
                                                 input_height=args.input_size[0],
                                                 input_width=args.input_size[1])
    except (AuthorsImportError, ValueError) as exc:
        print(f"davss import-authors: {exc}", file=sys.stderr)
        return 1
    for f in sources.files:
        print(f"read {f['file']}: {f['tensors']} tensors, sha256 {f['sha256']}")
    used = {k for v in imported.provenance.values() for k in v}
    for net in NETWORKS:
        n = sum(k.startswith(net + ".") for k in used)
        print(f"  {net}: {n} tensors mapped")
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB): config 'paper' with the authors' options, "
          f"{NUM_CLASSES} Cityscapes classes; the Accel branch ({', '.join(UNTRAINED_PARTS)}) "
          f"has no counterpart and is untrained")
    print(f"run it: davss node --checkpoint {path} --image-topic /camera/image_raw")
    return 0
