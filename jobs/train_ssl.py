"""`fusc train-ssl`: stage 1, self-supervised training of the backbone on the `scans` table.

Ray Data streams the stored scans and makes the augmented views on CPU workers (the table is
never loaded whole); Ray Train runs the plain PyTorch loop of `fusc_lib.ssl_training` as DDP over
`config.workers` replicas. Each epoch rank 0 reports a checkpoint; a killed run continues from the
last one with `resume=True` (Ray Train resumes a run that has the same storage path and name).

Outputs in `<workdir>/models/ssl/<run>/`: backbone.pt + encoder.json (what `load_encoder` reads;
the `selflabel` method adds head.pt), config.json (the SSLConfig used), loss.csv (rewritten every
epoch) and ray/ (checkpoints). The same job trains stages 2 and 3 on the full network (methods
`fusc` and `selflabel`): only the rows it streams differ.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch

from fusc_lib.artifacts import exists, read_bytes, write_bytes
from fusc_lib.clustering import neighbours_used
from fusc_lib.config import SSLConfig
from fusc_lib.layout import ENCODER_INFO, LOSS_LOG, SSL_CONFIG, TRAINING_STATE
from fusc_lib.models import create_backbone, create_method, create_views
from fusc_lib.models.self_label_network import read_start, site_indices
from fusc_lib.ssl_training import (
    Schedule,
    TrainingPlan,
    TrainingState,
    loss_csv,
    make_optimizer,
    parse_loss_csv,
    train_one_epoch,
    view_columns,
)
from fusc_lib.store import Workdir, by_embedding, rows_by_id
from jobs.ray_runtime import IMAGE_READ_ROWS, cluster_cpus, ray_for_job
from schemas.tables import NEIGHBORS, SCANS, SITES

_SHUFFLE_BATCHES = 4  # local shuffle buffer, in batches (rows hold augmented views: keep small)
# A worker lost this many times (node preempted, process killed) restarts the workers from the
# last checkpoint (Ray Train's FailureConfig); one more fails the run, which `--resume` continues.
WORKER_FAILURES = 3


def run_train_ssl(workdir: Workdir, config: SSLConfig, ray_address: str | None = None,
                  resume: bool = False) -> dict:
    """Train `config.method` on every scan of the workdir; returns a summary of the run.

    A new run refuses an existing run folder; `resume=True` continues that run with the config
    it was started with (only `workers`, `cpus_per_worker` and `use_gpu` may change: the
    machines may differ).
    """
    folder = workdir.ssl_run_dir(config.run)
    config = _run_config(workdir, config, resume)
    plan = TrainingPlan.of(config, workdir.table(SCANS).count_rows())
    started = time.monotonic()
    with ray_for_job(ray_address):
        result = _fit(workdir, config, plan, folder)
    _export_run(result.checkpoint, folder)
    history = parse_loss_csv(read_bytes(f"{folder}/{LOSS_LOG}"))
    return {"run": config.run, "run_dir": folder, "epochs": len(history),
            "epochs_planned": plan.epochs, "minutes_budget": config.minutes,
            "images_seen": sum(row["images"] for row in history),
            "final_loss": history[-1]["loss"] if history else None,
            "images_per_s": history[-1]["images_per_s"] if history else None,
            "seconds": round(time.monotonic() - started, 1)}


def _fit(workdir: Workdir, config: SSLConfig, plan: TrainingPlan, folder: str) -> ray.train.Result:
    """Ray Data streams the stored PNGs (or neighbour pairs) and makes the views on CPU
    workers; Ray Train runs `_train_worker` on each training worker, DDP between them."""
    per_worker_batch = config.batch_size // config.workers
    backbone = create_backbone(config.backbone, config.init, config.image_size)
    rows = _scan_rows(workdir, config)
    if plan.sampled < 1.0:  # the budget: a fresh random sample of the archive every epoch
        rows = rows.random_sample(plan.sampled)
    dataset = (rows.randomize_block_order()
               .map_batches(view_columns, fn_kwargs={"views": create_views(config, backbone)},
                            batch_size=per_worker_batch, batch_format="numpy"))
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config={"config": config.model_dump(), "run_dir": folder,
                           "plan": asdict(plan),
                           "per_worker_batch": per_worker_batch},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": _cpus_per_worker(config)}),
        run_config=ray.train.RunConfig(
            name=config.run, storage_path=f"{folder}/ray",
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=WORKER_FAILURES)),
        datasets={"train": dataset})
    with _ProgressPrinter(f"{folder}/{LOSS_LOG}"):
        return trainer.fit()


def _scan_rows(workdir: Workdir, config: SSLConfig) -> ray.data.Dataset:
    """`image` per scan; for `fusc`, also the `neighbor` image of one of its mined neighbours,
    drawn anew on every pass; for `selflabel`, also the scan's `site` (its row in the site
    means the run starts from)."""
    if config.method == "fusc":
        return _neighbour_rows(workdir, config)
    if config.method == "selflabel":
        return _site_rows(workdir, config)
    return ray.data.read_lance(workdir.table_uri(SCANS), columns=["image"],
                               scanner_options={"batch_size": IMAGE_READ_ROWS})


def _neighbour_rows(workdir: Workdir, config: SSLConfig) -> ray.data.Dataset:
    if not config.neighbors_of:
        raise ValueError("method fusc needs neighbors_of: the embedding whose neighbours to use")
    return (ray.data.read_lance(workdir.table_uri(NEIGHBORS),
                                columns=["image_id", "neighbor_ids"],
                                filter=by_embedding(config.neighbors_of))
            .map_batches(neighbour_pairs, fn_kwargs={
                "scans_uri": workdir.indexed_uri(SCANS), "n_clusters": config.fusc_clusters,
                "n_scans": workdir.neighbors(config.neighbors_of, ["image_id"]).num_rows},
                batch_format="pyarrow"))


def _site_rows(workdir: Workdir, config: SSLConfig) -> ray.data.Dataset:
    if not config.selflabel_start:
        raise ValueError("method selflabel needs selflabel_start: the head to start from")
    known = read_start(config.selflabel_start)["sites"]
    return (ray.data.read_lance(workdir.table_uri(SITES), columns=["image_id", "site"])
            .map_batches(scans_with_site, fn_kwargs={"scans_uri": workdir.indexed_uri(SCANS),
                                                     "known": known},
                         batch_format="pyarrow"))


def _images_by_id(scans_uri: str, image_ids: list[str]) -> dict[str, bytes]:
    found = rows_by_id(scans_uri, image_ids, ["image_id", "image"])
    return dict(zip(found.column("image_id").to_pylist(), found.column("image").to_pylist()))


def neighbour_pairs(batch: pa.Table, scans_uri: str, n_scans: int, n_clusters: int) -> pa.Table:
    """Rows of `neighbors` -> the stored image of each scan and of one random neighbour among
    its nearest `neighbours_used(k, n_scans, n_clusters)` (as the frozen heads pair them)."""
    rng = np.random.default_rng()
    anchors = batch.column("image_id").to_pylist()
    partners = [ids[rng.integers(neighbours_used(len(ids), n_scans, n_clusters))]
                for ids in batch.column("neighbor_ids").to_pylist()]
    image = _images_by_id(scans_uri, anchors + partners)
    return pa.table({"image": pa.array([image[i] for i in anchors], pa.binary()),
                     "neighbor": pa.array([image[i] for i in partners], pa.binary())})


def scans_with_site(batch: pa.Table, scans_uri: str, known: list[str]) -> pa.Table:
    """Rows of `sites` -> the stored image of each scan and its row in the site means."""
    image = _images_by_id(scans_uri, batch.column("image_id").to_pylist())
    present = [i for i, image_id in enumerate(batch.column("image_id").to_pylist())
               if image_id in image]  # a scan deleted since `fusc sites` is skipped
    rows = batch.take(present)
    return pa.table({"image": pa.array([image[i] for i in rows.column("image_id").to_pylist()],
                                       pa.binary()),
                     "site": site_indices(rows.column("site").to_pylist(), known)})


def _run_config(workdir: Workdir, config: SSLConfig, resume: bool) -> SSLConfig:
    """The config of this run: the given one for a new run, the stored one when resuming."""
    folder = workdir.ssl_run_dir(config.run)
    started = exists(f"{folder}/{SSL_CONFIG}")
    if resume and not started:
        raise ValueError(f"nothing to resume: no run {config.run!r} in {folder}")
    if started and not resume:
        raise ValueError(f"run {config.run!r} exists in {folder}; pass --resume to continue it "
                         "or --run-name to start another")
    if resume:
        # a run stored before `frozen_stages` existed trained every stage
        stored = SSLConfig(**{"frozen_stages": 0,
                              **json.loads(read_bytes(f"{folder}/{SSL_CONFIG}"))})
        hardware = {"workers", "cpus_per_worker", "use_gpu"}
        return stored.model_copy(update=config.model_dump(include=hardware))
    write_bytes(f"{folder}/{SSL_CONFIG}", config.model_dump_json(indent=2).encode())
    return config


def _cpus_per_worker(config: SSLConfig) -> float:
    """CPUs a training worker reserves: by default 1, but always leave one for Ray Data.

    Ray Data makes the views in tasks that need a free CPU; workers holding every CPU of the
    cluster (2 workers on a 2-core laptop) would wait forever for their first batch.
    """
    if config.cpus_per_worker:
        return config.cpus_per_worker
    return min(1.0, max(0.1, (cluster_cpus() - 1) / config.workers))


def _train_worker(loop: dict) -> None:
    """Runs on every Ray Train worker. Ray-specific lines are marked `# ray`."""
    config = SSLConfig(**loop["config"])
    rank = ray.train.get_context().get_world_rank()  # ray
    _use_the_node(ray.train.get_context().get_local_world_size())  # ray
    method = create_method(config)
    model = ray.train.torch.prepare_model(method)  # ray: to the device, DDP when >1 worker
    optimizer = make_optimizer(method, config)
    state = TrainingState()
    checkpoint = ray.train.get_checkpoint()  # ray: the last one reported, when resuming
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = TrainingState.load(method, optimizer, folder)
    plan = TrainingPlan(**loop["plan"])
    schedule = Schedule(config, replace(plan, epochs=state.epochs or plan.epochs))
    shard = ray.train.get_dataset_shard("train")  # ray
    while state.epoch < schedule.plan.epochs:  # the plan may shrink: fit_to_minutes
        batches = shard.iter_torch_batches(
            batch_size=loop["per_worker_batch"], drop_last=True,
            local_shuffle_buffer_size=_SHUFFLE_BATCHES * loop["per_worker_batch"])
        stats = train_one_epoch(model, method, batches, optimizer, schedule, state.epoch)
        state.epoch, state.history = state.epoch + 1, [*state.history, stats.row()]
        schedule.fit_to_minutes([row["seconds"] for row in state.history])
        state.epochs = schedule.plan.epochs
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                state.save(method, optimizer, folder)
                method.export(folder, config.image_size)
            saved = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None  # ray
            ray.train.report(stats.row(), checkpoint=saved)  # ray
        if rank == 0:  # after the checkpoint: a row in loss.csv means its epoch was saved
            write_bytes(f"{loop['run_dir']}/{LOSS_LOG}", loss_csv(state.history))


def _use_the_node(local_workers: int) -> None:
    """Give the workers on this node its cores as torch threads.

    Ray starts a worker reserving one CPU with one torch thread (OMP_NUM_THREADS=1): on a 2-core
    laptop the training step then uses one core while Ray Data's view making needs a fraction
    of the other. The step is the bottleneck, so its threads take the node's cores.
    """
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_workers))


def _export_run(checkpoint: ray.train.Checkpoint | None, folder: str) -> None:
    """Copy what the method exported (backbone.pt, encoder.json, ...) from the last checkpoint
    to the run folder; encoder.json last, since its presence marks a finished run."""
    if checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with checkpoint.as_directory() as saved:
        names = sorted(set(os.listdir(saved)) - {TRAINING_STATE, ENCODER_INFO}) + [ENCODER_INFO]
        for name in names:
            write_bytes(f"{folder}/{name}", read_bytes(f"{saved}/{name}"))


class _ProgressPrinter:
    """Prints each new row of loss.csv while training runs (worker output does not reach us)."""

    def __init__(self, path: str):
        self.path = path
        self.printed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._print_new_rows()

    def _follow(self) -> None:
        while not self.stop.wait(1.0):
            self._print_new_rows()

    def _print_new_rows(self) -> None:
        if not exists(self.path):
            return
        data = read_bytes(self.path)
        if not data.endswith(b"\n"):  # caught mid-write
            return
        rows = parse_loss_csv(data)
        for row in rows[self.printed:]:
            print(f"epoch {row['epoch']}: loss {row['loss']}, {row['images_per_s']} images/s, "
                  f"{row['seconds']} s", flush=True)
        self.printed = max(self.printed, len(rows))
