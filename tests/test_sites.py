"""Sites: style statistics of real scans, inferred style groups, per-site centering."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from fusc_lib.preprocess import PreprocessConfig, Preprocessor
from fusc_lib.sites import (
    CENTERING_ROWS,
    SiteCentering,
    SiteModel,
    named_style_group,
    resolve_sites,
)
from fusc_lib.style import style_features


def _scans(data_dir, dataset: str, n: int) -> list[tuple[np.ndarray, int, int]]:
    """(stored image, original width, height) of real scans, preprocessed as ingest does."""
    import cv2

    preprocessor = Preprocessor(PreprocessConfig(ocr_engine="none", image_size=64))
    out = []
    for path in sorted((data_dir / dataset / "images").glob("*.png"))[:n]:
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        out.append((preprocessor.prepare([frame])[0].pixels, frame.shape[1], frame.shape[0]))
    return out


@pytest.fixture(scope="module")
def two_machines(data_dir):
    scans = _scans(data_dir, "african-planes", 20) + _scans(data_dir, "hc18", 20)
    features = np.stack([style_features(*scan) for scan in scans])
    return features, ["african"] * 20 + ["hc18"] * 20


def test_style_features_are_finite_and_fixed_length(two_machines):
    features, _ = two_machines
    assert features.ndim == 2 and np.isfinite(features).all()


def test_style_groups_separate_two_machines(two_machines):
    features, machines = two_machines
    sites, inferred, model = resolve_sites([None] * len(machines), features)
    assert inferred.all() and model is not None and model.n_sites >= 2
    assert normalized_mutual_info_score(machines, sites) > 0.5
    # No group mixes the two machines.
    for group in set(sites):
        assert len({m for m, s in zip(machines, sites) if s == group}) == 1
    # The saved model puts the same scans in the same groups.
    again = SiteModel.from_dict(model.to_dict()).predict(features)
    assert [f"style-{g}" for g in again] == sites


def test_given_sites_are_kept_and_only_the_rest_inferred(two_machines):
    features, machines = two_machines
    given = ["hospital-a" if i < 20 else None for i in range(40)]
    sites, inferred, _ = resolve_sites(given, features)
    assert sites[:20] == ["hospital-a"] * 20 and not inferred[:20].any()
    assert inferred[20:].all() and all(s.startswith("style-") for s in sites[20:])
    all_given, none_inferred, model = resolve_sites(machines, features)
    assert all_given == machines and not none_inferred.any() and model is None


def test_a_named_site_and_machine_make_one_style_group():
    assert named_style_group("st-marys", "GE Voluson E8") == "st-marys / GE Voluson E8"
    assert named_style_group("st-marys", None) == "st-marys"
    assert named_style_group(" ", "Aloka") == "Aloka"
    assert named_style_group(None, "") is None


def test_centering_removes_each_site_mean_and_handles_unknown_sites():
    rng = np.random.default_rng(0)
    sites = ["a"] * 30 + ["b"] * 30
    offsets = np.where(np.asarray(sites)[:, None] == "a", 3.0, -3.0)
    vectors = rng.normal(size=(60, 8)) + offsets
    centering = SiteCentering.fit(vectors, sites)
    centred = centering.apply(vectors, sites)
    assert np.allclose(np.linalg.norm(centred, axis=1), 1, atol=1e-5)
    # Before, the site is the largest direction; after, the two sites' means nearly meet.
    means = [centred[np.asarray(sites) == s].mean(axis=0) for s in ("a", "b")]
    assert np.linalg.norm(means[0] - means[1]) < 0.5
    restored = SiteCentering.from_dict(centering.to_dict())
    assert np.allclose(restored.apply(vectors, sites), centred, atol=1e-6)
    unknown = centering.apply(vectors[:2], ["never-seen", "never-seen"])
    assert np.isfinite(unknown).all()


def _machine_scans(rng, style: np.ndarray, views: np.ndarray, counts: list[int]) -> np.ndarray:
    """Unit vectors: the machine's style + each view's direction (`counts[v]` scans of view v)
    + scan noise."""
    rows = np.concatenate([style + views[v] + rng.normal(scale=0.8, size=(n, len(style)))
                           for v, n in enumerate(counts)])
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_a_style_group_holding_one_view_is_centred_as_its_nearest_group():
    """A machine's cardiac preset exports another frame size: frame-size grouping makes it a
    group of its own that holds one view, and centred on its own mean it would lose that view.
    Its narrow spread gives it away; it is centred on the mean of its nearest group that surely
    holds several views (not a nearer two-view preset). Groups with several views are never
    folded, a small one (6 scans) included."""
    rng = np.random.default_rng(3)
    dim = 48
    views = rng.normal(scale=0.8, size=(4, dim))
    machine_a, machine_b = rng.normal(size=dim), rng.normal(size=dim)
    groups = {"style-0": _machine_scans(rng, machine_a, views, [15, 15, 15, 15]),
              "style-1": _machine_scans(rng, machine_b, views, [25, 10, 10, 15]),
              "style-2": _machine_scans(rng, machine_a, views, [0, 12, 0, 0]),  # a's preset
              "style-3": _machine_scans(rng, machine_b, views, [2, 1, 1, 2]),
              "style-4": _machine_scans(rng, machine_a, views, [0, 0, 16, 3])}  # two views
    vectors = np.concatenate(list(groups.values()))
    sites = [site for site, rows in groups.items() for _ in rows]
    view_of = np.concatenate([np.repeat(np.arange(4), counts) for counts in
                              ([15] * 4, [25, 10, 10, 15], [0, 12, 0, 0], [2, 1, 1, 2],
                                               [0, 0, 16, 3])])
    positions = {"style-0": np.array([0.0, 0.0]), "style-1": np.array([3.0, 3.0]),
                 "style-2": np.array([0.6, -0.9]), "style-3": np.array([-4.0, 2.0]),
                 "style-4": np.array([0.9, -1.2])}

    folded = SiteCentering.fit(vectors, sites, positions)
    assert folded.folded == {"style-2": "style-0"}
    assert np.array_equal(folded.means["style-2"], folded.means["style-0"])
    assert SiteCentering.from_dict(folded.to_dict()).folded == folded.folded
    old = {key: value for key, value in folded.to_dict().items() if key != "folded"}
    assert SiteCentering.from_dict(old).folded == {}  # a model saved before folding existed

    def preset_view_kept(centering: SiteCentering) -> float:
        """Share of the preset's scans whose nearest scan of another group has their view."""
        centred = centering.apply(vectors, sites)
        preset, others = np.asarray(sites) == "style-2", np.asarray(sites) != "style-2"
        nearest = (centred[preset] @ centred[others].T).argmax(axis=1)
        return float((view_of[others][nearest] == 1).mean())

    assert preset_view_kept(folded) >= 0.9
    unfolded = SiteCentering.fit(vectors, sites)  # no positions: every group on its own mean
    assert unfolded.folded == {} and preset_view_kept(unfolded) < 0.6


def test_centering_over_many_blocks_matches_the_plain_means_and_works_in_place():
    """Fit and centring go through the rows a block at a time (CENTERING_ROWS): over several
    blocks the means are those of the whole site, and `centre_in_place` writes into the array
    it is given, with the result `apply` returns."""
    rng = np.random.default_rng(2)
    n = CENTERING_ROWS * 2 + 100
    sites = rng.choice(["a", "b", "c"], size=n)
    vectors = (rng.normal(size=(n, 6)) + (sites == "a")[:, None] * 2).astype(np.float32)
    centering = SiteCentering.fit(vectors, sites)
    for site in ("a", "b", "c"):
        assert np.allclose(centering.means[site], vectors[sites == site].mean(axis=0), atol=1e-5)
    assert np.allclose(centering.overall, vectors.mean(axis=0), atol=1e-5)
    expected = centering.apply(vectors, sites)
    same = centering.centre_in_place(vectors, sites)
    assert same is vectors and np.allclose(vectors, expected, atol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        centering.centre_in_place(vectors.astype(np.float64), sites)


def test_ingest_stores_style_and_sites_computes_only_what_an_older_workdir_lacks(
        ray_session, data_dir, tmp_path):
    """Ingest stores each scan's style statistics, so `fusc sites` reads no image; a workdir
    ingested before the column existed gets it (all null) on first open, and `fusc sites`
    computes those scans' statistics from their images, to the same sites."""
    import shutil

    from fusc_lib.config import IngestConfig
    from fusc_lib.preprocess import decode_png, workdir_preprocess
    from fusc_lib.store import Workdir
    from fusc_lib.style import STYLE_WIDTH
    from jobs.ingest import run_ingest
    from jobs.sites import run_sites
    from schemas.tables import SCANS, SITES

    folder = tmp_path / "in"
    folder.mkdir()
    for dataset in ("african-planes", "hc18"):
        for path in sorted((data_dir / dataset / "images").glob("*.png"))[:10]:
            shutil.copy(path, folder / f"{dataset}-{path.name}")
    new = Workdir(str(tmp_path / "new"))
    run_ingest(new, IngestConfig(paths=[str(folder)]),
               workdir_preprocess(new, {"ocr_engine": "none", "image_size": 64}))
    rows = new.scans(["image", "width", "height", "style"]).to_pylist()
    assert len(rows) == 20
    for row in rows:
        assert len(row["style"]) == STYLE_WIDTH
        assert np.allclose(row["style"], style_features(decode_png(row["image"]), row["width"],
                                                        row["height"]), atol=1e-6)
    fresh = run_sites(new)
    assert fresh.styles_computed == 0 and fresh.inferred_groups >= 2

    shutil.copytree(tmp_path / "new", tmp_path / "old")
    Workdir(str(tmp_path / "old")).db.open_table(SCANS).drop_columns(["style"])
    old = Workdir(str(tmp_path / "old"))
    assert old.scans(["style"]).column("style").null_count == 20  # added on open, all null
    again = run_sites(old)
    assert again.styles_computed == 20 and again.sizes == fresh.sizes
    assert old.read(SITES).sort_by("image_id").equals(new.read(SITES).sort_by("image_id"))
