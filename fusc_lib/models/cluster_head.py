"""SCAN's multi-head clustering model: several linear heads on one shared feature.

Heads start from different random weights and are trained together at the cost of one;
the one with the lowest loss is kept, which guards against an unlucky start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiHead(nn.Module):
    """`n_heads` independent `Linear(dim, n_clusters)` heads; forward returns their logits."""

    def __init__(self, dim: int, n_clusters: int, n_heads: int = 10):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, n_clusters) for _ in range(n_heads))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]

    def start_from(self, prototypes: Sequence[torch.Tensor], temperature: float) -> None:
        """Start head h at `prototypes[h]` (C, D unit vectors): logits = cosine / temperature
        on unit-length features, a soft nearest-prototype assignment."""
        with torch.no_grad():
            for head, start in zip(self.heads, prototypes, strict=True):
                head.weight.copy_(start / temperature)
                head.bias.zero_()


def best_head(losses: Sequence[float]) -> int:
    """Index of the head with the lowest loss (the first, on ties)."""
    return min(range(len(losses)), key=lambda i: float(losses[i]))

