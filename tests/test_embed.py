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
