"""`fusc embed`: one finite unit vector per scan, incremental, on real images and a real Ray."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pytest

from fusc_lib.artifacts import exists
from fusc_lib.clustering_space import (
    EMBEDDING_BATCH_ROWS,
    clustering_space,
    latest_embedding,
    load_embeddings,
)
from fusc_lib.config import EmbedConfig
from fusc_lib.id_sets import contains, sorted_ids
from fusc_lib.ingest import IngestConfig
from fusc_lib.models.encoder import model_encoder
from fusc_lib.models.site_norms import SiteNorms, site_norms_uri
from fusc_lib.preprocess import decode_png, workdir_preprocess
from fusc_lib.sites import SCAN_SITE_COLUMNS, load_site_model, sites_of_scan_rows
from fusc_lib.store import Workdir, rows_by_id
from jobs.embed import embedding_rows, ensure_vector_index, resolve_model, run_embed
from jobs.ingest import run_ingest
from jobs.sites import run_sites
from schemas.tables import LEGACY_EMBEDDINGS, SCANS, embeddings_table_name

MODEL = "pretrained:efficientnet_lite0"


@pytest.fixture()
def scans_workdir(ray_session, data_dir, tmp_path) -> tuple[Workdir, object]:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((data_dir / "fetal-planes-db" / "images").glob("*.png"))[:12]:
        shutil.copy(path, folder / path.name)
    store = Workdir(str(tmp_path / "w"))
    preprocess = workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64})
    run_ingest(store, IngestConfig(paths=[str(folder)]), preprocess)
    return store, folder


def _vectors(store: Workdir, key: str) -> tuple[list[str], np.ndarray]:
    table = store.embeddings(key, ["image_id", "vector"])
    return table.column("image_id").to_pylist(), np.stack(table.column("vector").to_numpy(zero_copy_only=False))


def test_one_unit_vector_per_scan_and_rerun_adds_nothing(scans_workdir, data_dir):
    store, folder = scans_workdir
    config = EmbedConfig(embedding=MODEL, input_size=64, batch_size=5, commit_rows=4)
    summary = run_embed(store, config)
    ids, vectors = _vectors(store, summary.embedding_key)
    assert summary.embedded == len(ids) == len(set(ids)) == 12
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert run_embed(store, config).embedded == 0

    extra = sorted((data_dir / "hc18" / "images").glob("*.png"))[:3]
    for path in extra:
        shutil.copy(path, folder / path.name)
    run_ingest(store, IngestConfig(paths=[str(folder)]), workdir_preprocess(store))
    again = run_embed(store, config)
    assert (again.embedded, again.already_done) == (3, 12)
    assert len(set(_vectors(store, summary.embedding_key)[0])) == 15


def test_pending_lookup_matches_whole_ids_of_any_length():
    pending = sorted_ids(pa.array(["b2c4", "a1f0-f0003", "ffee"]))
    batch = pa.chunked_array([["a1f0", "a1f0-f0003", "b2c4", "b2c4-f0001", "0000", "ffef"],
                              ["ffee"]])
    assert contains(pending, batch).tolist() == [False, True, True, False, False, False, True]
    assert not contains(sorted_ids(pa.array([], pa.string())), batch).any()


def test_vector_index_is_built_only_when_the_table_is_large(tmp_path):
    store, key = Workdir(str(tmp_path / "w")), MODEL
    vectors = np.random.default_rng(0).standard_normal((276, 1280)).astype(np.float32)
    ids = pa.chunked_array([[f"scan{i:03d}" for i in range(276)]])
    store.append_embeddings(key, embedding_rows(ids[:12], key, vectors[:12]))
    assert not ensure_vector_index(store, key, min_rows=100_000)
    # Over the threshold the IVF-PQ index is built (tiny sizes: one partition); 276 rows are
    # enough for PQ training.
    store.append_embeddings(key, embedding_rows(ids[12:], key, vectors[12:]))
    assert ensure_vector_index(store, key, min_rows=256)
    assert any(index.columns == ["vector"] for index in store.embeddings_table(key).list_indices())


def test_workdir_without_a_model_says_what_to_do(scans_workdir):
    store, _ = scans_workdir
    with pytest.raises(ValueError, match="train-ssl"):
        run_embed(store, EmbedConfig())


def test_view_averaged_embeddings_are_keyed_by_views_and_reproducible(scans_workdir):
    """Averaged views are drawn from a generator seeded by the scan id: a second run (as the
    serving path does) gives the same vectors; the key names the views and the input size."""
    from fusc_lib.models.encoder import model_encoder, parse_embedding_key
    from fusc_lib.preprocess import decode_png

    store, _ = scans_workdir
    summary = run_embed(store, EmbedConfig(embedding=MODEL, input_size=48, views=3))
    assert summary.embedding_key == f"{MODEL}@48~views3" and summary.embedded == 12
    model, views = parse_embedding_key(summary.embedding_key)
    encoder = model_encoder(store, model)
    assert (encoder.input_size, views) == (48, 3)
    ids, vectors = _vectors(store, summary.embedding_key)
    scans = store.scans(["image_id", "image"])
    image = dict(zip(scans.column("image_id").to_pylist(), scans.column("image").to_pylist()))
    again = encoder.embed([decode_png(image[i]) for i in ids[:4]], ids[:4], views)
    assert np.allclose(again, vectors[:4], atol=1e-5)
    single = encoder.embed([decode_png(image[i]) for i in ids[:4]], ids[:4], 1)
    assert not np.allclose(single, vectors[:4], atol=1e-3)  # the extra views do count


def test_models_of_different_widths_share_one_workdir(scans_workdir):
    """A 1280-d ImageNet EfficientNet-Lite0 and a 512-d random ResNet18 (an SSL run folder
    written by hand) embedded into one workdir: each key gets its own table at its own width,
    and each loads as a clustering space."""
    from fusc_lib.models.backbones import RANDOM, create_backbone
    from fusc_lib.models.encoder import save_encoder
    from jobs.sites import run_sites

    store, _ = scans_workdir
    save_encoder(create_backbone("resnet18", RANDOM), 64, store.ssl_run_dir("resnet18-random"))
    keys = [run_embed(store, EmbedConfig(embedding=model, input_size=64)).embedding_key
            for model in (MODEL, "resnet18-random")]
    assert store.embedding_keys() == sorted(keys) and latest_embedding(store) == keys[-1]
    run_sites(store)
    for key, dim in zip(keys, (1280, 512)):
        ids, vectors = _vectors(store, key)
        assert vectors.shape == (12, dim) and len(set(ids)) == 12
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        space = clustering_space(store, key)
        assert space.image_ids == sorted(ids) and space.vectors.shape == (12, dim)


def test_each_embedding_key_has_its_own_valid_table_name():
    """LanceDB names allow only [A-Za-z0-9_.-]; keys that slug alike still get their own table."""
    keys = ["pretrained:efficientnet_lite0@64~views20", "pretrained_efficientnet_lite0_64_views20",
            "a:b", "a/b"]
    names = [embeddings_table_name(key) for key in keys]
    assert len(set(names)) == len(keys) and names == [embeddings_table_name(k) for k in keys]
    assert all(re.fullmatch(r"embeddings-[A-Za-z0-9_.-]+-[0-9a-f]{8}", name) for name in names)
    assert names[0].startswith("embeddings-pretrained_efficientnet_lite0_64_views20-")


def test_an_old_single_embeddings_table_is_split_per_key(tmp_path):
    """A workdir made before per-key tables holds every key in one `embeddings` table: on first
    use it is split by its model_run column into the per-key tables, and dropped."""
    rng = np.random.default_rng(0)
    vectors = {"run-a": rng.normal(size=(5, 8)), "run-a~views20": rng.normal(size=(3, 8))}
    old = pa.concat_tables(
        embedding_rows(pa.array([f"{key}-{i}" for i in range(len(v))]), key, v)
        .replace_schema_metadata() for key, v in vectors.items())
    old = old.rename_columns(["image_id", "model_run", "vector", "embedded_at"])  # as then
    Workdir(str(tmp_path)).db.create_table(LEGACY_EMBEDDINGS, old)
    store = Workdir(str(tmp_path))
    assert store.embedding_keys() == sorted(vectors)
    assert not store.has_table(LEGACY_EMBEDDINGS)
    for key, expected in vectors.items():
        ids, got = load_embeddings(store, key)
        assert ids == [f"{key}-{i}" for i in range(len(expected))]
        assert np.allclose(got, expected.astype(np.float32))
    assert latest_embedding(store) in vectors


def test_embeddings_load_in_id_order_from_many_fragments_and_batches(tmp_path):
    """The clustering space's loader writes each scanned batch into its sorted rows of one
    array: ids appended out of order, in several fragments, over more rows than one batch."""
    rng = np.random.default_rng(1)
    store, key = Workdir(str(tmp_path)), "run-a"
    ids = [f"scan-{i:05d}" for i in rng.permutation(EMBEDDING_BATCH_ROWS + 3_000)]
    vectors = rng.normal(size=(len(ids), 4)).astype(np.float32)
    for part in np.array_split(np.arange(len(ids)), 3):  # one fragment per append
        store.append_embeddings(key, embedding_rows(pa.array([ids[i] for i in part]), key,
                                                    vectors[part]))
    got_ids, got = load_embeddings(store, key)
    assert got_ids == sorted(ids)
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    assert np.array_equal(got, vectors[[row_of[i] for i in got_ids]])


def test_site_statistics_are_fitted_once_per_embedding_and_used_for_later_scans(
        scans_workdir, data_dir):
    store, folder = scans_workdir
    run_sites(store)
    sites = sorted(set(store.site_of().values()))
    config = EmbedConfig(embedding=MODEL, input_size=64, views=2, batch_size=5, site_norms=True)
    first = run_embed(store, config)
    assert first.site_norms == sites and first.site_norms_fitted
    plain = run_embed(store, config.model_copy(update={"views": 1, "site_norms": False}))
    assert plain.site_norms == [] and not exists(site_norms_uri(store, plain.embedding_key))

    for path in sorted((data_dir / "hc18" / "images").glob("*.png"))[:3]:  # since `fusc sites`
        shutil.copy(path, folder / path.name)
    run_ingest(store, IngestConfig(paths=[str(folder)]), workdir_preprocess(store))
    later = run_embed(store, config)
    assert later.embedded == 3 and later.site_norms == sites and not later.site_norms_fitted

    new_ids = sorted(set(store.column(SCANS, "image_id").to_pylist()) - set(store.site_of()))
    rows = rows_by_id(store.table_uri(SCANS), new_ids, ["image_id", *SCAN_SITE_COLUMNS])
    encoder = model_encoder(store, resolve_model(store, MODEL, 64))
    images = [decode_png(data) for data in rows.column("image").to_pylist()]
    ids = rows.column("image_id").to_pylist()
    plain_vectors = encoder.embed(images, ids, 2)
    encoder.site_norms = SiteNorms.load(site_norms_uri(store, later.embedding_key))
    expected = encoder.embed(images, ids, 2, sites=sites_of_scan_rows(rows, load_site_model(store)))
    stored = dict(zip(*_vectors(store, later.embedding_key)))
    np.testing.assert_allclose(np.stack([stored[i] for i in ids]), expected, atol=1e-5)
    assert np.abs(expected - plain_vectors).max() > 1e-3
