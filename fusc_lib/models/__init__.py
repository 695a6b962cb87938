"""Networks of FUSC: backbones by name, self-supervised methods by name, the encoder."""

from __future__ import annotations

import torch

from fusc_lib.config import SSLConfig
from fusc_lib.models.backbones import RANDOM, Backbone, create_backbone
from fusc_lib.models.dino import DINO
from fusc_lib.models.fusc_network import FUSCNetwork
from fusc_lib.models.self_label_network import SelfLabelNetwork
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker
from fusc_lib.models.two_views import BarlowTwins, SimCLR, VICReg

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "barlowtwins": BarlowTwins,
                                       "vicreg": VICReg, "dino": DINO, "fusc": FUSCNetwork,
                                       "selflabel": SelfLabelNetwork}


def create_method(config: SSLConfig) -> SSLMethod:
    """The method `config.method` around a fresh `config.backbone`, seeded by `config.seed`;
    its first `config.frozen_stages` stages frozen where it starts from trained weights."""
    torch.manual_seed(config.seed)
    backbone = create_backbone(config.backbone, config.init, config.image_size)
    if config.init != RANDOM:
        backbone.freeze_stages(config.frozen_stages)
    return METHODS[config.method].from_config(config, backbone)


def create_views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
    """How `config.method` turns one scan into its training views."""
    return METHODS[config.method].views(config, backbone)


__all__ = [
    "METHODS",
    "Backbone",
    "SSLMethod",
    "ViewMaker",
    "create_backbone",
    "create_method",
    "create_views",
]
