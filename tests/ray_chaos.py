"""Kills Ray worker processes of a running job, once per kind, and records where work ran.

Run beside a `fusc` job on a real cluster (`python -m tests.ray_chaos ...`, with the cluster's
RAY_AUTH_TOKEN in its environment): it polls the cluster's state API (the dashboard) and

- kills the worker process of the first live actor of each class named by `--kill` (Ray Data's
  `MapWorker(MapBatches(_IngestActor))`...) `--after` seconds after it is first seen running a task;
- with `--kill-training RUN_DIR`, kills a Ray Train worker once the run has logged an epoch
  (`loss.csv`) and Ray Train has registered that epoch's checkpoint (its checkpoint manager's
  snapshot is in storage): a restart must then resume from it, not from scratch;
- records the node of every actor it saw, by class.

It writes `{"killed": {class: node_id}, "nodes": {class: [node_id, ...]}, "loss_log_at_kill":
[rows of loss.csv when it killed the training worker]}` to `--out` when the job's process (`--pid`) ends. Killing the process (SIGKILL), not the actor through Ray, is what a
node's OOM killer or a crashed library does: Ray must notice and retry.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import time

import psutil
from ray.util.state import list_actors, list_tasks

from fusc_lib import artifacts

TRAIN_WORKER = "RayTrainWorker"
CHECKPOINTS_REGISTERED = "checkpoint_manager_snapshot.json"  # Ray Train v2 writes it on register


def _loss_rows(run_dir: str) -> list[dict]:
    if not artifacts.exists(f"{run_dir}/loss.csv"):
        return []
    return list(csv.DictReader(io.StringIO(artifacts.read_bytes(f"{run_dir}/loss.csv").decode())))


def _checkpoint_registered(run_dir: str) -> bool:
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    return artifacts.exists(f"{run_dir}/ray/{name}/{CHECKPOINTS_REGISTERED}")


def _running_actor_classes(address: str) -> set[str]:
    """Classes with an actor task running now ("MapWorker(...).submit" -> "MapWorker(...)")."""
    tasks = list_tasks(address=address, filters=[("state", "=", "RUNNING")], limit=1000,
                       raise_on_missing_output=False)
    return {task.name.rsplit(".", 1)[0] for task in tasks if task.type == "ACTOR_TASK"}


def watch(address: str, pid: int, kill: list[str], training_run: str | None,
          after_s: float) -> dict:
    killed: dict[str, str] = {}
    at_kill: list[dict] = []
    nodes: dict[str, set[str]] = {}
    busy_since: dict[str, float] = {}
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000,
                             raise_on_missing_output=False)
        running = _running_actor_classes(address) if set(kill) - set(killed) else set()
        for actor in actors:
            nodes.setdefault(actor.class_name, set()).add(actor.node_id)
            name = actor.class_name
            if name in killed or not actor.pid:
                continue
            if name in kill and name in running:
                busy_since.setdefault(name, time.monotonic())
                due = time.monotonic() - busy_since[name] >= after_s
            elif name == TRAIN_WORKER and training_run:
                at_kill = _loss_rows(training_run)
                due = bool(at_kill) and _checkpoint_registered(training_run)
            else:
                due = False
            if due:
                os.kill(actor.pid, signal.SIGKILL)  # same machine in the test: a real worker pid
                killed[name] = actor.node_id
        time.sleep(0.2)
    return {"killed": killed, "nodes": {name: sorted(ids) for name, ids in nodes.items()},
            "loss_log_at_kill": at_kill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="dashboard URL, http://host:port")
    parser.add_argument("--pid", type=int, required=True, help="the job's process")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill", nargs="*", default=[])
    parser.add_argument("--kill-training", metavar="RUN_DIR", help="an SSL run folder (URI)")
    parser.add_argument("--after", type=float, default=0.5)
    args = parser.parse_args()
    record = watch(args.address, args.pid, args.kill, args.kill_training, args.after)
    with open(args.out, "w") as out:
        json.dump(record, out)


if __name__ == "__main__":
    main()
