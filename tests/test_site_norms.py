"""Per-site BatchNorm statistics (AdaBN) on real scans of two hospitals: fitted per site,
applied per scan, the network's own statistics untouched, and the same scan embedded alone or in
a batch of other sites gets the same vector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fusc_lib.models.encoder import pretrained_encoder
from fusc_lib.models.site_norms import SiteNorms, batch_norm_layers, fit_site_norms

SITES = ("EGY", "MWI")  # Egypt and Malawi, as the file names of the set say


@pytest.fixture(scope="module")
def scans(data_dir) -> dict[str, list[tuple[str, np.ndarray]]]:
    """(image id, grey pixels) of 6 african-planes scans of each of two hospitals."""
    paths = sorted((data_dir / "african-planes" / "images").glob("*.png"))
    by_site = {site: [p for p in paths if f"_{site}_" in p.name][:6] for site in SITES}
    return {site: [(p.stem, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in found]
            for site, found in by_site.items()}


def _own_statistics(encoder) -> dict[str, torch.Tensor]:
    return {name: torch.cat([layer.running_mean, layer.running_var]).clone()
            for name, layer in batch_norm_layers(encoder.backbone).items()}


def test_statistics_differ_per_site_and_leave_the_network_as_it_was(scans):
    encoder = pretrained_encoder("efficientnet_lite0", "imagenet", 64)
    own = _own_statistics(encoder)
    norms = fit_site_norms(encoder.backbone, (
        (site, encoder.views_of([x for _, x in found], [i for i, _ in found], 3))
        for site, found in scans.items()))
    assert norms.sites == sorted(SITES)
    assert all(torch.equal(own[name], now) for name, now in _own_statistics(encoder).items())
    assert not encoder.backbone.training
    first = next(iter(own))
    egypt, malawi = (norms.stats[site][first] for site in SITES)
    assert (egypt[0] - malawi[0]).abs().max() > 1e-3  # the first layer's means differ by site
    assert (egypt[1] > 0).all() and (malawi[1] > 0).all()
    with pytest.raises(ValueError, match="no images of site"):
        fit_site_norms(encoder.backbone, [("empty", torch.zeros(0, 3, 64, 64))])


def test_each_scan_is_embedded_with_its_own_sites_statistics(scans, tmp_path):
    encoder = pretrained_encoder("efficientnet_lite0", "imagenet", 64)
    norms = fit_site_norms(encoder.backbone, (
        (site, encoder.views_of([x for _, x in found], [i for i, _ in found], 2))
        for site, found in scans.items()))
    norms.save(str(tmp_path / "norms.pt"))
    encoder.site_norms = SiteNorms.load(str(tmp_path / "norms.pt"))
    assert SiteNorms.load(str(tmp_path / "none.pt")) is None
    mixed = [scans[SITES[i % 2]][i // 2] for i in range(8)]  # egypt, malawi, egypt, ...
    ids, images = [i for i, _ in mixed], [x for _, x in mixed]
    sites = [SITES[i % 2] for i in range(8)]
    together = encoder.embed(images, ids, 2, sites=sites)
    alone = np.concatenate([encoder.embed([x], [i], 2, sites=[s])
                            for i, x, s in zip(ids, images, sites)])
    plain = encoder.embed(images, ids, 2)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # batch-free: served = offline
    assert np.abs(together - plain).max(axis=1).min() > 1e-3  # every scan moved by its site
    unknown = encoder.embed(images, ids, 2, sites=["a site not fitted"] * 8)
    np.testing.assert_allclose(unknown, plain, atol=1e-6)  # the network's own statistics
    np.testing.assert_allclose(encoder.embed(images, ids, 2), plain, atol=1e-6)  # restored
