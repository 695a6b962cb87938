"""Stages 2 and 3 of FUSC on frozen embeddings: the clustering heads, then self-labeling.

Each stage reads as one story: `train_cluster_heads` (neighbours → multi-head → keep the
lowest-loss head) and `self_label` (confident samples → cross-entropy on perturbed features →
keep the result only if its own unsupervised checks did not get worse). No Ray here; the
jobs wrap these. With frozen features the "strong augmentation" of SCAN is feature noise and
dropout; image augmentation comes with the full network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from fusc_lib.config import ClusterConfig, NetworkOptions, SelfLabelConfig, default_of
from fusc_lib.losses import class_balance_weights, confident_targets, fusc_loss, spread
from fusc_lib.models.cluster_head import MultiHead, best_head

EVAL_CHUNK = 4096
# Heads started from k-means prototypes: logits = cosine similarity / this, a soft assignment
# (as a cosine classifier's scale of 10).
PROTOTYPE_TEMPERATURE = 0.1


@dataclass(frozen=True)
class HeadLoss:
    """FUSC loss of one head over the whole data set and all k neighbours."""

    total: float
    consistency: float
    entropy: float


@dataclass
class TrainedHead:
    """A trained cluster head: the head kept among those trained together (its weights), its
    probabilities on the training vectors, and how every head scored; `state_dict()` + `metadata()` (JSON) round-trip through `from_state`."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    probabilities: torch.Tensor  # (N, C)
    head_index: int
    head_losses: list[HeadLoss]
    config: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # mean training loss of each epoch

    @property
    def n_clusters(self) -> int:
        return self.weight.shape[0]

    @property
    def assignments(self) -> np.ndarray:
        return self.probabilities.argmax(dim=1).numpy()

    def loss_of(self, probabilities: torch.Tensor, neighbors: torch.Tensor) -> HeadLoss:
        """The FUSC loss of a clustering as this head was trained on it (its λ, prior and
        number of neighbours paired, `neighbours_used`; (N, k) `neighbors`, nearest first)."""
        return head_loss(probabilities, neighbors[:, :self.config.get("k", neighbors.shape[1])],
                         self.config.get("entropy_weight",
                                         default_of(ClusterConfig, "entropy_weight")),
                         self.config.get("prior"))

    def predict(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cluster probabilities (N, C) of new vectors under the kept head."""
        return head_probabilities(vectors, self.weight, self.bias)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "probabilities": self.probabilities}

    def metadata(self) -> dict:
        return {"head_index": self.head_index, "n_clusters": self.n_clusters,
                "head_losses": [asdict(loss) for loss in self.head_losses],
                "config": self.config, "history": self.history}

    def to_json(self) -> str:
        return json.dumps(self.metadata(), indent=2)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], metadata: dict | str) -> TrainedHead:
        meta = json.loads(metadata) if isinstance(metadata, str) else metadata
        return cls(weight=state["weight"], bias=state["bias"],
                   probabilities=state["probabilities"], head_index=meta["head_index"],
                   head_losses=[HeadLoss(**loss) for loss in meta["head_losses"]],
                   config=meta.get("config", {}), history=meta.get("history", []))


def head_probabilities(vectors: np.ndarray | torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
    """Cluster probabilities (N, C) of vectors under a linear head."""
    with torch.no_grad():
        return F.softmax(F.linear(_tensor(vectors), weight, bias), dim=1)


# ---------------------------------------------------------------- stage 2: clustering heads

def neighbours_used(mined: int, n_scans: int, n_clusters: int) -> int:
    """How many of each scan's `mined` nearest neighbours (nearest first) the FUSC loss pairs it
    with: at most half an average cluster, n_scans / (2 n_clusters), and at least 1.

    SCAN's loss assumes a scan's neighbours share its class; where k is as large as a cluster
    can be (20 neighbours among 100 scans of 5 views) most cannot, and the heads fell below
    k-means. fetal-planes-db (100 captures, 5 views, 3 SSL seeds, README "Levers measured"):
    heads + self-label at K = 5 CP / NMI 0.632 / 0.458 with 20 neighbours, 0.663 / 0.504 with
    10; at K = 15 0.730 → 0.749 with 3. Archives of a few hundred scans and more keep k.
    """
    return max(1, min(mined, n_scans // (2 * n_clusters)))


def train_cluster_heads(vectors: np.ndarray, neighbor_indices: np.ndarray, n_clusters: int, *,
                        n_heads: int = default_of(ClusterConfig, "heads"),
                        entropy_weight: float = default_of(ClusterConfig, "entropy_weight"),
                        epochs: int = default_of(ClusterConfig, "epochs"),
                        batch_size: int = default_of(ClusterConfig, "batch_size"),
                        lr: float = default_of(ClusterConfig, "lr"), weight_decay: float = 1e-4,
                        start: str = default_of(ClusterConfig, "start"),
                        sizes: str = default_of(ClusterConfig, "sizes"),
                        samples: int | None = default_of(NetworkOptions, "samples"),
                        seed: int = 0) -> TrainedHead:
    """Train `n_heads` linear heads with Adam on the FUSC loss and keep the lowest-loss one.

    Every epoch pairs each anchor with one of its nearest `neighbours_used` mined neighbours
    (`neighbor_indices`: (N, k) rows, nearest first) drawn at random (SCAN's
    neighbour dataset), so over the epochs every neighbour pulls on it; past the budget of
    `samples` anchors an epoch is a fresh random sample of them (`anchors_per_epoch`).
    `start`: "random" (SCAN's) or "kmeans": head h starts at the prototypes of a spherical k-means of seed
    `seed + h` (`kmeans_prototypes`), so the loss refines what k-means found. `sizes`: the
    cluster shares the entropy term pulls towards (`losses.spread`): "uniform" (SCAN's) or
    "kmeans", those of head h's k-means.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    used = neighbours_used(neighbor_indices.shape[1], len(vectors), n_clusters)
    x = _tensor(vectors)
    neighbors = torch.as_tensor(neighbor_indices[:, :used], dtype=torch.long)
    model = MultiHead(x.shape[1], n_clusters, n_heads)
    prototypes = [torch.as_tensor(kmeans_prototypes(vectors, n_clusters, seed + h))
                  for h in range(n_heads)] if "kmeans" in (start, sizes) else []
    if start == "kmeans":
        model.start_from(prototypes, PROTOTYPE_TEMPERATURE)
    priors = [_shares(x, p) for p in prototypes] if sizes == "kmeans" else [None] * n_heads
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = anchors_per_epoch(len(x), epochs, samples, batch_size)
    epoch_losses = [_train_epoch(model, optimizer, x, neighbors, per_epoch, batch_size,
                                 entropy_weight, priors, generator) for _ in range(epochs)]
    losses = [head_loss(F.softmax(logits, dim=1), neighbors, entropy_weight, prior)
              for logits, prior in zip(_eval(model, x), priors)]
    kept = best_head([loss.total for loss in losses])
    head = model.heads[kept]
    config = {"n_heads": n_heads, "entropy_weight": entropy_weight, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "start": start,
              "sizes": sizes, "samples": samples, "anchors_per_epoch": per_epoch,
              "seed": seed, "k": neighbors.shape[1],
              "prior": None if priors[kept] is None else priors[kept].tolist()}
    return TrainedHead(weight=head.weight.detach().clone(), bias=head.bias.detach().clone(),
                         probabilities=F.softmax(_eval(model, x)[kept], dim=1), head_index=kept,
                         head_losses=losses, config=config,
                         history=[losses_of_heads[kept] for losses_of_heads in epoch_losses])


def anchors_per_epoch(n: int, epochs: int, samples: int | None, batch_size: int) -> int:
    """Scans an epoch of a head's training draws: all `n`, or where `epochs` passes would
    exceed the budget of `samples` scans seen, a fresh random `samples / epochs` of them (at
    least one batch), so training costs at most ~`samples` whatever the archive's size."""
    return n if samples is None else min(n, max(batch_size, samples // epochs))


def _shares(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(C,) share of the vectors nearest each prototype (every cluster at least one vector)."""
    counts = torch.bincount((x @ prototypes.T).argmax(dim=1), minlength=len(prototypes))
    return (counts.clamp_min(1) / counts.clamp_min(1).sum()).float()


def kmeans_prototypes(vectors: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """(C, D) unit-length centroids of a spherical k-means of the (N, D) unit vectors (faiss:
    25 iterations from C random points; fitted on a sample of at most 2,000 points per
    centroid, since they only start the heads)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=25, seed=seed, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=2000)
    kmeans.train(x)
    return kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)


def _train_epoch(model: MultiHead, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 neighbors: torch.Tensor, anchors: int, batch_size: int, entropy_weight: float,
                 priors: list[torch.Tensor | None], generator: torch.Generator) -> list[float]:
    """One epoch over `anchors` scans drawn at random (all of them: a pass); heads are summed
    into one loss, as in SCAN. Full batches only (the entropy of a batch mean over a handful of
    samples is noise), unless the data is smaller than one. Returns each head's mean batch
    loss."""
    n, k = neighbors.shape
    partner = neighbors[torch.arange(n), torch.randint(k, (n,), generator=generator)]
    batches = _batches(torch.randperm(n, generator=generator)[:anchors], batch_size)
    totals = torch.zeros(len(model.heads))
    for batch in batches:
        anchor_logits, neighbor_logits = model(x[batch]), model(x[partner[batch]])
        losses = torch.stack([fusc_loss(a, b, entropy_weight, prior)[0]
                              for a, b, prior in zip(anchor_logits, neighbor_logits, priors)])
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        totals += losses.detach()
    return (totals / len(batches)).tolist()


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    full = max(1, len(order) // batch_size)
    return list(order[:full * batch_size].chunk(full)) if len(order) >= batch_size else [order]


def head_loss(probabilities: torch.Tensor, neighbors: torch.Tensor, entropy_weight: float,
              prior: torch.Tensor | list[float] | None = None) -> HeadLoss:
    """FUSC loss of a whole clustering: every anchor with all its k neighbours, spread of the
    data-set mean (what SCAN uses to pick the head; `prior`: see `losses.spread`), in chunks
    to bound memory."""
    agreement = torch.cat([
        (probabilities[start:start + EVAL_CHUNK, None, :]
         * probabilities[neighbors[start:start + EVAL_CHUNK]]).sum(dim=2).flatten()
        for start in range(0, len(probabilities), EVAL_CHUNK)])
    consistency = float(-agreement.clamp_min(1e-8).log().mean())
    balance = float(spread(probabilities.mean(dim=0),
                           None if prior is None else torch.as_tensor(prior)))
    return HeadLoss(consistency - entropy_weight * balance, consistency, balance)


def _eval(model: MultiHead, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model(x)


def _tensor(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(vectors, dtype=np.float32))


# ---------------------------------------------------------------- stage 3: self-labeling

@dataclass(frozen=True)
class ClusterHealth:
    """What self-labeling may judge itself by without labels."""

    loss: float  # FUSC total over all neighbours
    filled_clusters: int
    min_cluster_share: float  # over all C clusters, so an emptied one shows as 0
    confident_share: float  # share of samples with top probability ≥ threshold


@dataclass
class SelfLabelOutcome:
    """`result` is the self-labeled head when `accepted`, else the input result itself."""

    result: TrainedHead
    accepted: bool
    reasons: list[str]  # why it was rejected; empty when accepted
    before: ClusterHealth
    after: ClusterHealth
    label_stability: float  # share of the first confident set that kept its cluster


def self_label(vectors: np.ndarray, start: TrainedHead, neighbor_indices: np.ndarray, *,
               threshold: float = default_of(SelfLabelConfig, "threshold"),
               epochs: int = default_of(SelfLabelConfig, "epochs"),
               batch_size: int = default_of(SelfLabelConfig, "batch_size"),
               lr: float = default_of(SelfLabelConfig, "lr"), weight_decay: float = 1e-4,
               samples: int | None = default_of(NetworkOptions, "samples"),
               noise: float = 0.3, dropout: float = 0.1, min_per_cluster: int = 5,
               loss_tolerance: float = 0.05, min_stability: float = 0.9, seed: int = 0) -> SelfLabelOutcome:
    """Fine-tune the kept head with cross-entropy towards its own confident predictions.

    The confident set is recomputed every epoch, so it grows as the head sharpens; an epoch
    trains on all of it, or on a random sample within the budget (`anchors_per_epoch`). A
    cluster with samples but none confident lends its `min_per_cluster` most probable members as
    targets, so it is not emptied just for being unsure. The result is kept only if the
    FUSC loss, the smallest cluster, the confident set and the first confident labels did
    not get worse.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = _tensor(vectors)
    head = torch.nn.Linear(x.shape[1], start.n_clusters)
    head.load_state_dict({"weight": start.weight.clone(), "bias": start.bias.clone()})
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for _ in range(epochs):
        with torch.no_grad():
            labels, labelled = confident_targets(F.softmax(head(x), dim=1), threshold,
                                                 min_per_cluster)
        weights = class_balance_weights(labels[labelled], start.n_clusters)
        order = labelled.nonzero().flatten()
        drawn = anchors_per_epoch(len(order), epochs, samples, batch_size)
        batches = _batches(order[torch.randperm(len(order), generator=generator)[:drawn]],
                           batch_size)
        history.append(sum(_self_label_step(head, optimizer, _perturb(x[b], noise, dropout,
                                                                      generator),
                                            labels[b], weights) for b in batches) / len(batches))
    with torch.no_grad():
        probabilities = F.softmax(head(x), dim=1)
    settings = {"threshold": threshold, "epochs": epochs, "samples": samples, "lr": lr,
                "noise": noise, "dropout": dropout, "seed": seed}
    return judge_self_label(start, head.weight.detach().clone(), head.bias.detach().clone(),
                            probabilities, neighbor_indices, settings, threshold=threshold,
                            min_per_cluster=min_per_cluster, loss_tolerance=loss_tolerance,
                            min_stability=min_stability, history=history)


def _self_label_step(head: torch.nn.Linear, optimizer: torch.optim.Optimizer,
                     strong: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """One class-balanced cross-entropy step on perturbed features; returns the loss."""
    loss = F.cross_entropy(head(strong), labels, weight=weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def judge_self_label(start: TrainedHead, weight: torch.Tensor, bias: torch.Tensor,
                     probabilities: torch.Tensor, neighbor_indices: np.ndarray,
                     settings: dict, *, threshold: float, min_per_cluster: int = 5,
                     loss_tolerance: float = 0.05, min_stability: float = 0.9,
                     history: list[float] | None = None) -> SelfLabelOutcome:
    """The self-labeled head (`weight`, `bias`, its `probabilities` on the scans that
    `start.probabilities` covers, in the same order), kept only if the FUSC loss over the
    neighbours, the smallest cluster, the confident set and the first confident labels did not
    get worse; else the outcome holds `start` and the reasons. Shared by the frozen and the
    network self-labeling, so both are judged alike. `history`: the training loss of each
    epoch, kept with the result."""
    neighbors = torch.as_tensor(neighbor_indices, dtype=torch.long)
    result = TrainedHead(weight=weight, bias=bias, probabilities=probabilities,
                           head_index=start.head_index,
                           head_losses=[start.loss_of(probabilities, neighbors)],
                           config={**start.config, "self_label": settings},
                           history=history or [])
    before = health(start.probabilities, neighbors, start, threshold)
    after = health(probabilities, neighbors, start, threshold)
    first_labels, first = confident_targets(start.probabilities, threshold, min_per_cluster)
    kept = (probabilities[first].argmax(dim=1) == first_labels[first]).float().mean()
    stability = float(kept) if first.any() else 1.0
    reasons = _worse(before, after, stability, loss_tolerance, min_stability)
    return SelfLabelOutcome(result=start if reasons else result, accepted=not reasons,
                            reasons=reasons, before=before, after=after,
                            label_stability=stability)


def _perturb(x: torch.Tensor, noise: float, dropout: float,
             generator: torch.Generator) -> torch.Tensor:
    """Feature-space stand-in for strong augmentation: dropout, then Gaussian noise of norm
    ≈ `noise` (inputs are unit vectors), then back onto the unit sphere."""
    keep = (torch.rand(x.shape, generator=generator) >= dropout).float() / (1 - dropout)
    jitter = torch.randn(x.shape, generator=generator) * noise / x.shape[1] ** 0.5
    return F.normalize(x * keep + jitter, dim=1)


def health(probabilities: torch.Tensor, neighbors: torch.Tensor, head: TrainedHead,
           threshold: float) -> ClusterHealth:
    """The label-free checks of a clustering, its loss as `head` was trained."""
    counts = torch.bincount(probabilities.argmax(dim=1), minlength=probabilities.shape[1])
    return ClusterHealth(
        loss=head.loss_of(probabilities, neighbors).total,
        filled_clusters=int((counts > 0).sum()),
        min_cluster_share=float(counts.min() / counts.sum()),
        confident_share=float((probabilities.max(dim=1).values >= threshold).float().mean()))


def _worse(before: ClusterHealth, after: ClusterHealth, stability: float,
           loss_tolerance: float, min_stability: float) -> list[str]:
    """Reasons to keep the input: each one a label-free sign that self-labeling hurt."""
    reasons = []
    if after.loss > before.loss + loss_tolerance:
        reasons.append(f"FUSC loss rose from {before.loss:.3f} to {after.loss:.3f}")
    if after.filled_clusters < before.filled_clusters:
        reasons.append(f"clusters emptied: {before.filled_clusters} → {after.filled_clusters}")
    if after.min_cluster_share < before.min_cluster_share / 2:
        reasons.append(f"smallest cluster shrank from {before.min_cluster_share:.3f} "
                       f"to {after.min_cluster_share:.3f}")
    if after.confident_share < before.confident_share / 2:
        reasons.append(f"confident set shrank from {before.confident_share:.1%} "
                       f"to {after.confident_share:.1%}")
    if stability < min_stability:
        reasons.append(f"only {stability:.0%} of the first confident samples kept their cluster")
    return reasons
