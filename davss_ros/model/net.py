"""The DAVSS networks of one configuration, held together for checkpoints and devices."""

from __future__ import annotations

from torch import nn

from ..config import REFINED_DISTORTIONS, ModelConfig
from ..registry import FLOW_PROVIDERS
from .cfnet import CFNet
from .dmnet import DMNet
from .flow import FlowProvider
from .flownet import FlowNetS, build_flownet
from .fusion import AccelFusion, DistortionGuidedFusion
from .refiner import DistortionRefiner
from .segmenter import DeepLabV3Plus, build_segmenter
from .step import NonKeyStep


class DavssNet(nn.Module):
    """Container of the networks; :class:`~davss_ros.model.step.NonKeyStep` runs them on a
    non-key frame as the mode table says, the pipeline decides which frames are key frames.

    - ``segmenter``: DeepLabv3+ Net_seg for key frames.
    - ``flownet``: FlowNet-S when the flow provider is ``learned``, else None (DIS flow).
    - ``dmnet``: the distortion-map network.
    - ``cfnet``: the DAVSS correction branch (correction_cue).
    - ``accel_cfnet`` and ``accel_fusion``: the Accel baseline's current-frame branch and its
      learned 1x1 fusion.
    - ``fusion``: DAVSS's distortion-guided fusion (Eq. 4; no weights).
    - ``refiner``: the ``signals`` distortion estimator and fusion floor
      (:mod:`davss_ros.model.refiner`) when ``config.distortion`` is ``signals`` or
      ``signals_mix`` (with its mixing), else None.
    """

    def __init__(self, config: ModelConfig, *, segmenter: DeepLabV3Plus,
                 flownet: FlowNetS | None, dmnet: DMNet, cfnet: CFNet, accel_cfnet: CFNet,
                 accel_fusion: AccelFusion, refiner: DistortionRefiner | None = None) -> None:
        super().__init__()
        self.config = config
        self.segmenter = segmenter
        self.flownet = flownet
        self.dmnet = dmnet
        self.cfnet = cfnet
        self.accel_cfnet = accel_cfnet
        self.accel_fusion = accel_fusion
        self.fusion = DistortionGuidedFusion()
        self.refiner = refiner

    def non_key_step(self, flow: FlowProvider, *, fusion_map: str | None = None,
                     refine: bool = True) -> NonKeyStep:
        """The non-key step over these networks with ``flow`` (see NonKeyStep)."""
        return NonKeyStep(self, flow, fusion_map=fusion_map, refine=refine)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("DavssNet holds the networks; a non-key frame runs through "
                                  "DavssNet.non_key_step(flow), a key frame through its "
                                  "segmenter, a stream through davss_ros.pipeline.VideoSegmenter")


def build_davss_net(cfg: ModelConfig) -> DavssNet:
    """All networks of ``cfg`` with fresh weights."""
    FLOW_PROVIDERS.check("flow.provider", cfg.flow.provider)
    with_flownet = FLOW_PROVIDERS.get(cfg.flow.provider).needs_network
    refiner = None
    if cfg.distortion in REFINED_DISTORTIONS:
        mixing = cfg.distortion == "signals_mix"
        refiner = DistortionRefiner(num_classes=cfg.num_classes if mixing else None)
    return DavssNet(
        cfg,
        segmenter=build_segmenter(cfg.segmenter, num_classes=cfg.num_classes),
        flownet=build_flownet(cfg.flow) if with_flownet else None,
        dmnet=DMNet(channels=cfg.dmnet.channels, extra_bn_relu=cfg.dmnet.extra_bn_relu),
        cfnet=CFNet(cfg.num_classes, width_mult=cfg.cfnet.width_mult),
        accel_cfnet=CFNet(cfg.num_classes, width_mult=cfg.cfnet.width_mult),
        accel_fusion=AccelFusion(cfg.num_classes),
        refiner=refiner,
    )
