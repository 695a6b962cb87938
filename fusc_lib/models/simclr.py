"""SimCLR (Chen et al. 2020): two views of a scan must pick each other out of the batch.

backbone -> projection MLP -> NT-Xent over the 2N views of a batch, gathered over all workers so
every worker's images are negatives for every other's (lightly's head and loss).
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from fusc_lib.augment import SimCLRViews
from fusc_lib.config import SSLConfig
from fusc_lib.models.backbones import Backbone
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker

PROJECTION_DIM = 128


class SimCLR(SSLMethod):
    def __init__(self, backbone: Backbone, temperature: float):
        super().__init__()
        self.backbone = backbone
        self.projection = SimCLRProjectionHead(backbone.dim, backbone.dim, PROJECTION_DIM)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> SimCLR:
        return cls(backbone, config.temperature)

    @staticmethod
    def views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
        return SimCLRViews(config.image_size, backbone.mean, backbone.std, config.strength)

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        # Both views in one pass: one BatchNorm statistic over the pair, half the kernel launches.
        first, second = self.projection(self.backbone(torch.cat(views))).chunk(2)
        return self.criterion(first, second)
