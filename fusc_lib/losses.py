"""The two clustering losses of FUSC, as SCAN defines them (SCANLoss, ConfidenceBasedCE).

Plain torch: lightly 1.6 has no SCAN loss, and these are a few lines each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8  # SCAN clamps probabilities here before taking logs


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p of one distribution (≥ 0)."""
    p = probabilities.clamp_min(EPS)
    return -(p * p.log()).sum()


def spread(mean_prediction: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """How well the mean prediction p̄ (C,) spreads over the clusters: H(p̄) (SCAN's), or with
    a `prior` (C,) of cluster shares, log C − KL(p̄ ‖ prior). The two agree for the uniform
    prior; either is at most log C, reached when p̄ is the prior.

    SCAN's entropy pulls every cluster to the same size, which splits a large view and merges
    small ones on an imbalanced archive; a prior from k-means' cluster sizes (label-free) keeps
    the sizes the data shows while the consistency term refines the members.
    """
    if prior is None:
        return entropy(mean_prediction)
    p = mean_prediction.clamp_min(EPS)
    return math.log(len(p)) - (p * (p.log() - prior.clamp_min(EPS).log())).sum()


def fusc_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor,
              entropy_weight: float, prior: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, consistency, spread) with total = consistency − λ·spread, SCAN's convention.

    consistency = −mean log ⟨softmax(anchor), softmax(neighbor)⟩ pulls an image and its mined
    neighbour into the same cluster; spread (`spread`: H(p̄) ≥ 0 of the batch-mean prediction p̄
    without a prior), and subtracting it (λ·Σ p̄ log p̄ in the paper) keeps everything from
    collapsing into one cluster.
    """
    anchor = F.softmax(anchor_logits, dim=1)
    neighbor = F.softmax(neighbor_logits, dim=1)
    agreement = (anchor * neighbor).sum(dim=1)
    consistency = -agreement.clamp_min(EPS).log().mean()
    balance = spread(anchor.mean(dim=0), prior)
    return consistency - entropy_weight * balance, consistency, balance


def class_balance_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse frequency of each class among `targets` (1 for absent classes), so that a large
    confident cluster does not swallow the small ones during self-labeling."""
    weights = torch.ones(n_classes, device=targets.device)
    classes, counts = torch.unique(targets, return_counts=True)
    weights[classes] = len(targets) / counts.float()
    return weights


def confident_targets(probabilities: torch.Tensor, threshold: float, min_per_cluster: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster of every sample, which samples are targets): those predicted with probability
    ≥ `threshold`, plus, for each predicted cluster without a confident member, its
    `min_per_cluster` most probable members, so a cluster that is merely unsure is not emptied
    by self-labeling."""
    confidence, labels = probabilities.max(dim=1)
    labelled = confidence >= threshold
    if min_per_cluster:
        for cluster in labels.unique():
            members = (labels == cluster).nonzero().flatten()
            if not labelled[members].any():
                top = probabilities[members, cluster].topk(min(min_per_cluster, len(members)))
                labelled[members[top.indices]] = True
    return labels, labelled


def confidence_ce_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                       threshold: float, balance: bool = True,
                       min_per_cluster: int = 0) -> torch.Tensor:
    """Self-labeling loss: the clusters the weak view predicts with probability ≥ `threshold`
    (and the lent members of unsure clusters, see `confident_targets`) become targets for the
    strong view (cross-entropy, class-balanced within the batch).

    The weak view only names targets, so it carries no gradient. With nothing confident the
    loss is 0 but still attached to `strong_logits`, so a training step stays valid.
    """
    labels, labelled = confident_targets(F.softmax(weak_logits.detach().float(), dim=1),
                                         threshold, min_per_cluster)
    if not labelled.any():
        return strong_logits.sum() * 0.0
    targets = labels[labelled]
    weights = class_balance_weights(targets, strong_logits.shape[1]) if balance else None
    return F.cross_entropy(strong_logits[labelled].float(), targets, weight=weights)
