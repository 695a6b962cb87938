"""Stage 3 on the full network (the paper's mode): self-labeling with image augmentations.

The backbone and the cluster model's head train together. The weak view of a scan (the eval
view `fusc embed` uses, seen with frozen BatchNorm statistics) names its cluster where the head
is confident (≥ threshold); a strongly augmented view of the same scan must then predict that
cluster (class-balanced cross-entropy, SCAN's ConfidenceBasedCE). Targets come from the network
as it trains, so the confident set grows with it. Features are centred on their site's mean
embedding before the head, as in the frozen stages. It plugs into the SSL training loop like
`fusc`, so Ray Train workers, GPU, checkpoints and resume come with it; the run exports the
backbone and `head.pt`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusc_lib.artifacts import load_torch, save_torch
from fusc_lib.augment import EvalTransform, UltrasoundView
from fusc_lib.config import SSLConfig
from fusc_lib.layout import HEAD_WEIGHTS
from fusc_lib.losses import confidence_ce_loss
from fusc_lib.models.backbones import Backbone
from fusc_lib.models.ssl_method import SSLMethod, ViewMaker
from fusc_lib.sites import SiteCentering
from fusc_lib.ultrasound import fan_area

# A predicted cluster with no confident member in a batch lends its most probable one, so an
# unsure cluster is still taught and not emptied (the frozen stage lends 5 over all scans).
LENT_PER_BATCH = 1


def write_start(path: str, weight: torch.Tensor, bias: torch.Tensor,
                centering: SiteCentering) -> None:
    """The starting point of a run: the head, and the site means as rows of a matrix (sites
    sorted by name; the last row, the overall mean, serves sites it has not seen)."""
    sites = sorted(str(site) for site in centering.means)  # plain str: torch.load is safe
    means = np.stack([centering.means[site] for site in sites] + [centering.overall])
    save_torch(path, {"weight": weight, "bias": bias, "sites": sites,
                      "site_means": torch.as_tensor(means, dtype=torch.float32)})


def read_start(path: str) -> dict:
    return load_torch(path)


def site_indices(sites: list[str], known: list[str]) -> np.ndarray:
    """Row of each site in the start file's site means (unknown sites: the overall row)."""
    row = {site: i for i, site in enumerate(known)}
    return np.asarray([row.get(site, len(known)) for site in sites], dtype=np.int64)


def read_head(run_dir: str) -> dict[str, torch.Tensor]:
    """The trained head of a finished run: {"weight", "bias"}."""
    return load_torch(f"{run_dir}/{HEAD_WEIGHTS}")


class SelfLabelNetwork(SSLMethod):
    def __init__(self, backbone: Backbone, start: dict, threshold: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(start["weight"].shape[1], start["weight"].shape[0])
        self.head.load_state_dict({"weight": start["weight"], "bias": start["bias"]})
        self.register_buffer("site_means", start["site_means"])
        self.threshold = threshold

    @classmethod
    def from_config(cls, config: SSLConfig, backbone: Backbone) -> SelfLabelNetwork:
        if not config.selflabel_start:
            raise ValueError("method selflabel needs selflabel_start: the head to start from")
        return cls(backbone, read_start(config.selflabel_start), config.selflabel_threshold)

    @staticmethod
    def views(config: SSLConfig, backbone: Backbone) -> ViewMaker:
        return WeakStrongViews(config.image_size, backbone.mean, backbone.std, config.strength)

    def forward(self, views: list[torch.Tensor], epoch: int, site: torch.Tensor) -> torch.Tensor:
        """views = [weak, strong]; `site` is each scan's row in the site means."""
        weak, strong = views
        with torch.no_grad():
            self.backbone.eval()  # the statistics the head was fitted with
            weak_logits = self.logits(weak, site)
            self.backbone.train(self.training)
        return confidence_ce_loss(weak_logits, self.logits(strong, site), self.threshold,
                                  min_per_cluster=LENT_PER_BATCH)

    def logits(self, images: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.backbone(images).float(), dim=1)
        return self.head(F.normalize(features - self.site_means[site], dim=1))

    def export(self, folder: str, image_size: int) -> None:
        super().export(folder, image_size)
        save_torch(f"{folder}/{HEAD_WEIGHTS}", {"weight": self.head.weight.detach().cpu(),
                                             "bias": self.head.bias.detach().cpu()})


class WeakStrongViews:
    """The eval view (the input the head knows) and a strong view (SimCLR's: fan crops of
    30–100 %, flips, rotations, machine style)."""

    def __init__(self, size: int, mean, std, strength: float):
        self.weak = EvalTransform(size, mean, std)
        self.strong = UltrasoundView(size, mean, std, scale=(0.3, 1.0), strength=strength)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
        return [self.weak(image), self.strong(image, fan_area(image), rng)]
