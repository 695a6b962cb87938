"""The self-labeling network of `fusc self-label --mode network`, on tiny tensors and real
scans (its whole run through Ray Train is in tests/test_run.py)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fusc_lib.augment import EvalTransform
from fusc_lib.losses import confidence_ce_loss, confident_targets
from fusc_lib.models import create_backbone
from fusc_lib.models.self_label_network import (
    SelfLabelNetwork,
    WeakStrongViews,
    read_start,
    site_indices,
    write_start,
)
from fusc_lib.preprocess import clean_pixels, encode_png
from fusc_lib.sites import SiteCentering
from fusc_lib.ssl_training import view_columns

DIM, CLUSTERS = 1280, 3


def _network(tmp_path, threshold: float = 0.0) -> SelfLabelNetwork:
    """A random Lite0 with a head over 3 clusters and two sites far apart."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centering = SiteCentering({"b": rng.normal(size=DIM), "a": -rng.normal(size=DIM)},
                              np.zeros(DIM))
    path = str(tmp_path / "start.pt")
    write_start(path, torch.randn(CLUSTERS, DIM), torch.zeros(CLUSTERS), centering)
    start = read_start(path)
    return SelfLabelNetwork(create_backbone("efficientnet_lite0", "random", 32), start,
                            threshold)


def test_start_file_orders_sites_by_name_with_the_overall_mean_last(tmp_path):
    network = _network(tmp_path)
    assert read_start(str(tmp_path / "start.pt"))["sites"] == ["a", "b"]
    assert network.site_means.shape == (3, DIM) and network.site_means[2].abs().sum() == 0
    assert site_indices(["b", "unseen", "a"], ["a", "b"]).tolist() == [1, 2, 0]


def test_strong_view_learns_the_weak_views_cluster_through_backbone_and_head(tmp_path):
    network = _network(tmp_path).train()
    weak, strong = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    site = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = network([weak, strong], 0, site=site)
    loss.backward()
    assert loss.item() > 0
    assert network.head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in network.backbone.parameters())
    assert network.backbone.training  # the weak pass's eval mode was undone


def test_site_means_are_subtracted_before_the_head(tmp_path):
    network = _network(tmp_path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = network.logits(images, torch.tensor([0, 0]))
        second = network.logits(images, torch.tensor([1, 1]))
    assert not torch.allclose(first, second)


def test_an_unsure_cluster_lends_its_most_probable_member():
    probabilities = torch.tensor([[0.995, 0.005], [0.99, 0.01], [0.4, 0.6], [0.45, 0.55]])
    labels, labelled = confident_targets(probabilities, 0.99)
    assert labelled.tolist() == [True, True, False, False]
    labels, labelled = confident_targets(probabilities, 0.99, min_per_cluster=1)
    assert labelled.tolist() == [True, True, True, False] and labels[2] == 1
    strong = torch.zeros(4, 2, requires_grad=True)
    lent = confidence_ce_loss(probabilities.log(), strong, 0.99, balance=False,
                              min_per_cluster=1)
    assert lent.item() == F.cross_entropy(torch.zeros(3, 2), torch.tensor([0, 0, 1])).item()


def test_weak_view_is_the_eval_view_and_site_passes_through(data_dir):
    path = min((data_dir / "african-planes" / "images").glob("*.png"))
    image = clean_pixels(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), [], 128)
    mean, std = (0.5,) * 3, (0.25,) * 3
    views = WeakStrongViews(64, mean, std, strength=1.0)
    weak, strong = views(image, np.random.default_rng(0))
    assert torch.equal(weak, EvalTransform(64, mean, std)(image))
    assert not torch.equal(weak, strong)
    batch = {"image": np.array([encode_png(image)] * 2, dtype=object),
             "site": np.array([1, 0])}
    columns = view_columns(batch, views)
    assert sorted(columns) == ["site", "view0", "view1"]
    assert columns["view0"].shape == (2, 3, 64, 64) and columns["site"].tolist() == [1, 0]
