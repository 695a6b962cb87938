"""Two-view joint-embedding methods: two views of a scan, one backbone, a projection head and
a loss that makes the two projections agree (lightly's heads and losses, not rewritten).

- SimCLR (Chen et al. 2020): the two views must pick each other out of the batch (NT-Xent,
  contrastive: every other scan of the batch, over all workers, is a negative).
- Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two projections, feature by
  feature over the batch, is pushed to the identity (no negatives). A comparison of seven
  self-supervised methods on fetal ultrasound found it the best (METHOD.md).
- VICReg (Bardes et al. 2022): invariance between the two projections, with each feature's
  variance kept up and features decorrelated (no negatives).

The projection heads are narrower than the papers' (8,192): a CPU laptop trains them, and the
backbone's features, not the head's, are what later stages use.
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss, NTXentLoss, VICRegLoss
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    SimCLRProjectionHead,
    VICRegProjectionHead,
)
from torch import nn

from fusc_lib.augment import SimCLRViews
from fusc_lib.config import SSLConfig
from fusc_lib.models.backbones import Backbone
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker

SIMCLR_PROJECTION_DIM = 128
DECORRELATION_PROJECTION_DIM = 2048  # Barlow Twins and VICReg: hidden and output width


class TwoViewMethod(SSLMethod):
    """backbone -> `projection` -> `criterion(first view's, second view's)`."""

    def __init__(self, backbone: Backbone, projection: nn.Module, criterion: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.criterion = criterion

    @staticmethod
    def views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
        return SimCLRViews(config.image_size, backbone.mean, backbone.std, config.strength,
                           config.rotation)

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        # Both views in one pass: one BatchNorm statistic over the pair, half the kernel launches.
        first, second = self.projection(self.backbone(torch.cat(views))).chunk(2)
        return self.criterion(first, second)


class SimCLR(TwoViewMethod):
    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> SimCLR:
        return cls(backbone, SimCLRProjectionHead(backbone.dim, backbone.dim,
                                                  SIMCLR_PROJECTION_DIM),
                   NTXentLoss(temperature=config.temperature, gather_distributed=True))


class DecorrelationMethod(TwoViewMethod):
    """A two-view method without negatives: a `head_class` projection of
    DECORRELATION_PROJECTION_DIM, a `loss_class` over the whole (gathered) batch."""

    head_class: type[nn.Module]
    loss_class: type[nn.Module]

    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> DecorrelationMethod:
        width = DECORRELATION_PROJECTION_DIM
        return cls(backbone, cls.head_class(backbone.dim, width, width),
                   cls.loss_class(gather_distributed=True))


class BarlowTwins(DecorrelationMethod):
    head_class, loss_class = BarlowTwinsProjectionHead, BarlowTwinsLoss


class VICReg(DecorrelationMethod):
    head_class, loss_class = VICRegProjectionHead, VICRegLoss
