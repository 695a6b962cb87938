"""DINO (Caron et al. 2021): a student matches a momentum teacher across crops of one scan.

The teacher sees the two global views, the student every view (global and local); the loss is
the cross-entropy between their sharpened, centred distributions over `out_dim` prototypes
(lightly's DINOProjectionHead and DINOLoss). The teacher is not trained: after each step it moves
towards the student by an exponential moving average whose momentum rises to 1 (cosine).
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from fusc_lib.augment import DinoViews
from fusc_lib.config import SSLConfig
from fusc_lib.models.backbones import Backbone
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker

HIDDEN_DIM = 2048
BOTTLENECK_DIM = 256
GLOBAL_VIEWS = 2


class DINO(SSLMethod):
    def __init__(self, backbone: Backbone, out_dim: int, momentum: float,
                 teacher_temperature: float):
        super().__init__()
        self.backbone = backbone
        self.head = DINOProjectionHead(backbone.dim, HIDDEN_DIM, BOTTLENECK_DIM, out_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        # Built, not deep-copied: the weight-normalised last layer refuses deepcopy.
        self.teacher_head = DINOProjectionHead(backbone.dim, HIDDEN_DIM, BOTTLENECK_DIM, out_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.base_momentum = momentum
        self.criterion = DINOLoss(output_dim=out_dim, teacher_temp=teacher_temperature,
                                  warmup_teacher_temp=teacher_temperature)

    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> DINO:
        return cls(backbone, config.dino_out_dim, config.dino_momentum,
                   config.teacher_temperature)

    @staticmethod
    def views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
        return DinoViews(config.image_size, config.dino_local_size, config.dino_local_crops,
                         backbone.mean, backbone.std, config.strength, config.rotation)

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        global_views, local_views = views[:GLOBAL_VIEWS], views[GLOBAL_VIEWS:]
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(global_views)))
        student = self._student(global_views) + self._student(local_views)
        return self.criterion(list(teacher.chunk(GLOBAL_VIEWS)), student, epoch=epoch)

    def _student(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of one size go through the student together."""
        if not views:
            return []
        return list(self.head(self.backbone(torch.cat(views))).chunk(len(views)))

    def after_step(self, progress: float) -> None:
        momentum = cosine_schedule(round(progress * 1000), 1000, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.head, self.teacher_head, momentum)
