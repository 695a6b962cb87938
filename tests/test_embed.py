"""`fusc embed`: one finite unit vector per scan, incremental, on real images and a real Ray."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fusc_lib.ingest import IngestConfig
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.embed import EmbedConfig, ensure_vector_index, run_embed
from jobs.ingest import run_ingest
from schemas.tables import EMBEDDINGS

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


def _vectors(store: Workdir) -> tuple[list[str], np.ndarray]:
    table = store.table(EMBEDDINGS).to_arrow()
    return table.column("image_id").to_pylist(), np.stack(table.column("vector").to_numpy(zero_copy_only=False))


def test_one_unit_vector_per_scan_and_rerun_adds_nothing(scans_workdir, data_dir):
    store, folder = scans_workdir
    config = EmbedConfig(model=MODEL, input_size=64, batch_size=5, commit_rows=4)
    summary = run_embed(store, config)
    ids, vectors = _vectors(store)
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
    assert len(set(_vectors(store)[0])) == 15


def test_vector_index_is_built_only_when_the_table_is_large(scans_workdir):
    store, _ = scans_workdir
    run_embed(store, EmbedConfig(model=MODEL, input_size=64))
    assert not ensure_vector_index(store, min_rows=100_000)
    # Over the threshold the IVF-PQ index is built (tiny sizes: one partition).
    table = store.table(EMBEDDINGS)
    rows = table.to_arrow()
    for _ in range(22):  # 12 x 23 = 276 rows: enough for PQ training
        table.add(rows)
    assert ensure_vector_index(store, min_rows=256)
    assert any(index.columns == ["vector"] for index in store.table(EMBEDDINGS).list_indices())


def test_workdir_without_a_model_says_what_to_do(scans_workdir):
    store, _ = scans_workdir
    with pytest.raises(ValueError, match="train-ssl"):
        run_embed(store, EmbedConfig())


def test_view_averaged_embeddings_are_keyed_by_views_and_reproducible(scans_workdir):
    """Averaged views are drawn from a generator seeded by the scan id: a second run (as the
    serving path does) gives the same vectors; the key names the views and the input size."""
    from fusc_lib.models.encoder import model_encoder, parse_embedding_key
    from fusc_lib.preprocess import decode_png
    from schemas.tables import SCANS

    store, _ = scans_workdir
    summary = run_embed(store, EmbedConfig(model=MODEL, input_size=48, views=3))
    assert summary.model_run == f"{MODEL}@48~views3" and summary.embedded == 12
    model, views = parse_embedding_key(summary.model_run)
    encoder = model_encoder(store, model)
    assert (encoder.input_size, views) == (48, 3)
    ids, vectors = _vectors(store)
    scans = store.table(SCANS).to_lance().to_table(columns=["image_id", "image"])
    image = dict(zip(scans.column("image_id").to_pylist(), scans.column("image").to_pylist()))
    again = encoder.embed([decode_png(image[i]) for i in ids[:4]], ids[:4], views)
    assert np.allclose(again, vectors[:4], atol=1e-5)
    single = encoder.embed([decode_png(image[i]) for i in ids[:4]], ids[:4], 1)
    assert not np.allclose(single, vectors[:4], atol=1e-3)  # the extra views do count
