"""What the training loop asks of a self-supervised method, whatever the method."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fusc_lib.models.backbones import Backbone
from fusc_lib.models.encoder import save_encoder

# (image uint8 HxW[, its neighbour], random generator) -> the views the method expects
ViewMaker = Callable[..., list[torch.Tensor]]


class SSLMethod(nn.Module):
    """A backbone plus whatever a method trains around it.

    `forward` returns the training loss, not features: under DistributedDataParallel gradients
    are synchronised only for what runs through the wrapped module's forward. Batch columns
    other than the views (`site` for self-labeling) arrive as keyword arguments.
    """

    backbone: Backbone

    def forward(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        """The loss of one batch; `views[i]` holds view i of every image in the batch."""
        raise NotImplementedError

    def export(self, folder: str, image_size: int) -> None:
        """Write what the run hands to later stages: the encoder (and method extras)."""
        save_encoder(self.backbone, image_size, folder)

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step with the share of training done (0..1)."""

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups; a group's `lr_scale` multiplies the scheduled learning rate."""
        return [{"params": list(self.parameters())}]
