"""The plain-PyTorch parts of `fusc train-ssl`: views of stored scans, one epoch, the saved state.

`jobs/train_ssl.py` wires these into Ray Data and Ray Train; nothing here knows about Ray, so the
same loop runs (and is tested) in one process.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
from lightly.utils.scheduler import cosine_warmup_schedule

from fusc_lib.artifacts import load_torch, save_torch
from fusc_lib.config import SSLConfig
from fusc_lib.layout import TRAINING_STATE
from fusc_lib.models import SSLMethod, ViewMaker
from fusc_lib.preprocess import decode_png

MIN_CHECKPOINTS = 10  # epochs (checkpoints) of a run whose budget the archive exceeds
LOSS_COLUMNS = ("epoch", "loss", "images", "images_per_s", "seconds")


def view_columns(batch: dict[str, np.ndarray], views: ViewMaker) -> dict[str, np.ndarray]:
    """A batch of stored scans (`image` PNG bytes, and `neighbor` for neighbour pairs) ->
    `view0`, `view1`, ... (N, 3, S, S) float32; a `site` column passes through unchanged.

    Each call draws fresh randomness from the OS, so every epoch and every data worker sees
    different views.
    """
    rng = np.random.default_rng()
    columns = [batch[name] for name in ("image", "neighbor") if name in batch]
    per_image = [views(*(decode_png(data) for data in row), rng) for row in zip(*columns)]
    made = {f"view{i}": torch.stack([v[i] for v in per_image]).numpy()
            for i in range(len(per_image[0]))}
    return {**made, "site": batch["site"]} if "site" in batch else made


def make_optimizer(method: SSLMethod, config: SSLConfig) -> torch.optim.Optimizer:
    groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]}
              for group in method.parameter_groups()]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class TrainingPlan:
    """How much a run trains: `epochs` epochs of `steps_per_epoch` steps of the global batch.

    An epoch is a pass over the archive, or over a fresh random sample of `sampled` of its scans
    where a tenth of the budget (`SSLConfig.images`) is smaller than the archive, so a run over a
    large archive still checkpoints MIN_CHECKPOINTS times; a checkpoint follows each epoch.
    """

    epochs: int
    steps_per_epoch: int
    sampled: float  # share of the archive drawn per epoch (1.0: all of it)

    @classmethod
    def of(cls, config: SSLConfig, scans: int) -> TrainingPlan:
        """The plan for `scans` stored scans: at most `config.epochs` passes and at most
        `config.images` images seen (one epoch at least). Raises ValueError when `scans` cannot
        fill one batch."""
        per_epoch = scans if not config.images else min(
            scans, max(config.images // MIN_CHECKPOINTS, config.batch_size))
        steps = per_epoch // config.batch_size
        if steps == 0:
            raise ValueError(f"{scans} scans cannot fill one batch of {config.batch_size} "
                             "(lower --batch-size or ingest more)")
        epochs = config.epochs
        if config.images:
            epochs = max(1, min(epochs, config.images // (steps * config.batch_size)))
        # A random sample's size varies (binomial): draw four standard deviations more than the
        # steps take, so an epoch is never short.
        draw = per_epoch + 4 * math.sqrt(per_epoch) + 8
        return cls(epochs=epochs, steps_per_epoch=steps, sampled=min(1.0, draw / scans))

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def within(self, minutes: float, seconds: list[float]) -> TrainingPlan:
        """This plan cut to the epochs that fit `minutes` of training (`seconds`: each epoch's
        wall time so far) at the mean speed of the epochs after the first, which carries the
        start-up (Ray Data's workers, the first kernels): never fewer than those done, never
        more than planned."""
        steady = seconds[1:] or seconds
        per_epoch = sum(steady) / len(steady)
        fit = len(seconds) + int((minutes * 60 - sum(seconds)) // per_epoch)
        return replace(self, epochs=min(self.epochs, max(len(seconds), fit)))


def all_workers(values: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
                ) -> torch.Tensor:
    """`values` reduced over the DDP workers (as given where there is one process). NCCL
    reduces only tensors on the GPU, gloo those on the CPU: the result is on the CPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    on = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = values.to(on)
    dist.all_reduce(reduced, op=op)
    return reduced.cpu()


@dataclass
class Schedule:
    """Cosine learning rate with linear warm-up, indexed by the global step."""

    config: SSLConfig
    plan: TrainingPlan

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def fitted_after(self) -> int:
        """The epoch after which the plan is fitted to `config.minutes`: the first after the
        warm-up (the second at least), so one epoch measures the speed without the start-up.
        There the cosine is still flat (one epoch into a decay over E epochs the rate is
        (1 + cos(pi / E)) / 2 of its peak: 0.9993 at E = 60, 0.991 at E = 17), so cutting its
        total moves the rate by a hair, not a step."""
        return max(2, self.config.warmup_epochs + 1)

    def fit_to_minutes(self, seconds: list[float]) -> None:
        """After `fitted_after` epochs (`seconds`: each one's wall time), cut the plan to the
        epochs that fit `config.minutes`; every worker keeps the fewest any of them planned
        (DDP workers must run the same steps). Else, or without a limit: nothing."""
        if self.config.minutes is None or len(seconds) != self.fitted_after:
            return
        epochs = self.plan.within(self.config.minutes, seconds).epochs
        fewest = all_workers(torch.tensor([epochs]), dist.ReduceOp.MIN)
        self.plan = replace(self.plan, epochs=int(fewest[0]))

    def lr(self, step: int) -> float:
        warmup = min(self.config.warmup_epochs * self.steps_per_epoch, self.total_steps - 1)
        return cosine_warmup_schedule(min(step, self.total_steps), self.total_steps,
                                      self.config.lr, 0.0, warmup, 0.0)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    images: int  # seen by all workers together
    images_per_s: float
    seconds: float

    def row(self) -> dict:
        return {"epoch": self.epoch, "loss": round(self.loss, 5), "images": self.images,
                "images_per_s": round(self.images_per_s, 2), "seconds": round(self.seconds, 2)}


def train_one_epoch(model: torch.nn.Module, method: SSLMethod, batches: Iterable[dict],
                    optimizer: torch.optim.Optimizer, schedule: Schedule,
                    epoch: int) -> EpochStats:
    """One epoch: the plan's steps over `batches` ({"view0": ..., ...} tensors already on the
    device; an iterator that runs short ends the epoch early).

    `model` is what runs the forward (the method itself, or its DistributedDataParallel wrapper);
    `method` is the plain module, for the hooks. Loss and speed are summed over all workers.
    Mixed precision (bfloat16, no loss scaling needed) on GPU only: on CPU it is slower.
    """
    model.train()
    started, step = time.monotonic(), epoch * schedule.steps_per_epoch
    loss_sum, images, steps = torch.zeros(()), 0, 0
    for batch in itertools.islice(batches, schedule.steps_per_epoch):
        extras = {name: value for name, value in batch.items() if not name.startswith("view")}
        views = [batch[f"view{i}"] for i in range(len(batch) - len(extras))]
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step) * group.get("lr_scale", 1.0)
        device = views[0].device
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else nullcontext())
        with autocast:
            loss = model(views, epoch, **extras)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        method.after_step(step / schedule.total_steps)
        loss_sum += loss.detach().float().cpu()
        images += views[0].shape[0]
        steps += 1
    totals = all_workers(torch.tensor([float(loss_sum), float(steps), float(images)]))
    seconds = time.monotonic() - started
    return EpochStats(epoch + 1, float(totals[0] / max(totals[1], 1)), int(totals[2]),
                      float(totals[2]) / seconds, seconds)


@dataclass
class TrainingState:
    """Everything a resumed run needs: weights, optimizer, epochs done, the loss so far and
    the epochs planned (fewer than at the start once fitted to the minutes)."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    epochs: int | None = None

    def save(self, method: SSLMethod, optimizer: torch.optim.Optimizer, folder: str) -> None:
        save_torch(f"{folder}/{TRAINING_STATE}", {"method": method.state_dict(),
                                              "optimizer": optimizer.state_dict(),
                                              "epoch": self.epoch, "history": self.history,
                                              "epochs": self.epochs})

    @classmethod
    def load(cls, method: SSLMethod, optimizer: torch.optim.Optimizer,
             folder: str) -> TrainingState:
        saved = load_torch(f"{folder}/{TRAINING_STATE}")
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        return cls(saved["epoch"], saved["history"], saved.get("epochs"))


def training_extent(summary: dict) -> str:
    """How far a finished run trained, from `jobs.train_ssl.run_train_ssl`'s summary: epochs
    and images seen, and whether the minutes budget cut it short."""
    cut = summary["epochs"] < summary["epochs_planned"]
    budget = (f"; {summary['epochs_planned']} planned, cut to what fits its "
              f"{summary['minutes_budget']:g}-minute budget") if cut else ""
    return f"{summary['epochs']} epochs ({summary['images_seen']:,} images seen{budget})"


def loss_csv(history: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue().encode()


def parse_loss_csv(data: bytes) -> list[dict]:
    return [{"epoch": int(row["epoch"]), "loss": float(row["loss"]),
             "images": int(row.get("images") or 0),  # absent from runs before the budget
             "images_per_s": float(row["images_per_s"]), "seconds": float(row["seconds"])}
            for row in csv.DictReader(io.StringIO(data.decode()))]
