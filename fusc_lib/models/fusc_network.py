"""Stage 2 on the full network (the paper's mode): backbone and cluster heads trained together.

A scan and one of its mined neighbours, each augmented, must get the same cluster from every
head (FUSC loss: neighbour consistency + λ·entropy of the mean prediction, SCAN's recipe on
images). It plugs into the SSL training loop as one more method, so Ray Train, checkpoints,
resume and mixed precision come with it; what it exports is the fine-tuned backbone, which
`fusc embed` and the frozen heads then use like any SSL run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fusc_lib.augment import UltrasoundView
from fusc_lib.config import SSLConfig
from fusc_lib.losses import fusc_loss
from fusc_lib.models.backbones import Backbone
from fusc_lib.models.cluster_head import MultiHead
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker
from fusc_lib.ultrasound import fan_area

HEAD_LR_SCALE = 100.0  # heads at 1e-2 when the backbone fine-tunes at 1e-4 (frozen mode's 1e-2)


class FUSCNetwork(SSLMethod):
    def __init__(self, backbone: Backbone, n_clusters: int, n_heads: int, entropy_weight: float):
        super().__init__()
        self.backbone = backbone
        self.heads = MultiHead(backbone.dim, n_clusters, n_heads)
        self.entropy_weight = entropy_weight

    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> FUSCNetwork:
        return cls(backbone, config.fusc_clusters, config.fusc_heads, config.entropy_weight)

    @staticmethod
    def views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
        return PairViews(config.image_size, backbone.mean, backbone.std, config.strength)

    def parameter_groups(self) -> list[dict]:
        """The fresh heads step HEAD_LR_SCALE times faster than the pretrained backbone: at the
        backbone's rate they barely leave the uniform prediction in a short CPU run."""
        return [{"params": list(self.backbone.parameters())},
                {"params": list(self.heads.parameters()), "lr_scale": HEAD_LR_SCALE}]

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        """views = [anchors, neighbours]; the heads' losses are summed, as in SCAN."""
        features = F.normalize(self.backbone(torch.cat(views)), dim=1)
        logits = [head.chunk(2) for head in self.heads(features)]
        return sum(fusc_loss(anchor, neighbour, self.entropy_weight)[0]
                   for anchor, neighbour in logits)


class PairViews:
    """One augmented view of a scan and one of its neighbour (SCAN's standard augmentation)."""

    def __init__(self, size: int, mean, std, strength: float):
        self.view = UltrasoundView(size, mean, std, scale=(0.5, 1.0), strength=strength)

    def __call__(self, image: np.ndarray, neighbour: np.ndarray,
                 rng: np.random.Generator) -> list[torch.Tensor]:
        return [self.view(picture, fan_area(picture), rng) for picture in (image, neighbour)]
