"""Embedding and SSL-training benchmark: the `fusc embed` pipeline against the bare model.

Prints, in one run on this machine: the bare backbone's training step and forward images/s with
NCHW (contiguous) against channels-last (NHWC) memory, bare batched forward images/s of the
backbone on prepared tensors (all cores, in this process), the `fusc embed` pipeline's images/s
over a `scans` table of the shared real images copied a few times (start-up included), their
ratio, and SSL training images/s (quick profile) with 1 and 2 Ray Train workers.

    .venv/bin/python -m bench.embed [--backbone efficientnet_lite0] [--size 128] [--copies 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))

import timm
import torch

from bench.ingest import make_archive
from fusc_lib.config import EmbedConfig, SSLConfig
from fusc_lib.diagnostics import embed_images
from fusc_lib.ingest import IngestConfig
from fusc_lib.models.encoder import PRETRAINED_PREFIX, pretrained_encoder
from fusc_lib.preprocess import decode_png, workdir_preprocess
from fusc_lib.store import Workdir
from jobs.embed import run_embed
from jobs.ingest import run_ingest
from jobs.ray_runtime import connect
from jobs.train_ssl import run_train_ssl
from schemas.tables import SCANS


def bare_forward_rate(backbone: str, size: int, images: list, batch_size: int) -> float:
    """Images/s of prepare + forward in this process, every core, steady state (one warm-up)."""
    torch.set_num_threads(os.cpu_count())
    encoder = pretrained_encoder(backbone, "imagenet", size)
    embed_images(encoder, images[:batch_size], batch_size)
    started = time.monotonic()
    embed_images(encoder, images, batch_size)
    return len(images) / (time.monotonic() - started)


def layout_rates(backbone: str, size: int, batch_size: int, steps: int = 6
                 ) -> dict[tuple[str, str], float]:
    """Images/s of timm's `backbone` (random weights, random inputs) in this process, every core:
    (layout, "train step" | "forward") -> rate, for NCHW and channels-last (NHWC) memory. The
    train step is forward + backward + AdamW on a (batch_size, 3, size, size) batch."""
    torch.set_num_threads(os.cpu_count())
    layouts = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
    return {(name, kind): _step_rate(backbone, size, batch_size, layout, kind == "train step",
                                     steps)
            for name, layout in layouts.items() for kind in ("train step", "forward")}


def _step_rate(backbone: str, size: int, batch_size: int, layout: torch.memory_format,
               train: bool, steps: int) -> float:
    net = timm.create_model(backbone, num_classes=0).to(memory_format=layout).train(train)
    optimizer = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=layout)

    def step() -> None:
        if not train:
            with torch.inference_mode():
                net(x)
            return
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        optimizer.step()

    step()  # warm-up
    started = time.monotonic()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ssl-epochs", type=int, default=2)
    parser.add_argument("--copies", type=int, default=6, help="Copies of the shared images.")
    args = parser.parse_args()
    connect(None)
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as archive:
        make_archive(Path(archive), args.copies)
        store = Workdir(root)
        run_ingest(store, IngestConfig(paths=[archive]),
                   workdir_preprocess(store, {"ocr_engine": "none"}))
        images = [decode_png(b) for b in store.column(SCANS, "image").to_pylist()]
        print(f"{len(images)} scans ({args.copies} copies of the shared images), "
              f"{args.backbone} at {args.size} px, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs")
        for (layout, kind), rate in layout_rates(args.backbone, args.size,
                                                 args.batch_size).items():
            print(f"{kind:>10}, {layout:<13}: {rate:7.1f} images/s (random inputs)")
        bare = bare_forward_rate(args.backbone, args.size, images, args.batch_size)
        print(f"bare batched forward      : {bare:7.1f} images/s")
        config = EmbedConfig(embedding=PRETRAINED_PREFIX + args.backbone, input_size=args.size,
                             batch_size=args.batch_size)
        summary = run_embed(store, config)
        overall = summary.embedded / summary.seconds
        steady = summary.embedded / (summary.seconds - summary.startup_seconds)
        print(f"fusc embed pipeline       : {overall:7.1f} images/s over {summary.embedded} scans "
              f"(start-up {summary.startup_seconds:.0f} s included); "
              f"ratio to bare forward {overall / bare:.2f}")
        print(f"  after start-up          : {steady:7.1f} images/s; ratio {steady / bare:.2f} "
              "(what a large archive sees: start-up is paid once per job)")
        for workers in (1, 2):
            ssl = SSLConfig.from_profile("quick", epochs=args.ssl_epochs, workers=workers,
                                         run_name=f"bench-{workers}")
            result = run_train_ssl(store, ssl)
            print(f"SSL training, {workers} worker(s): {result['images_per_s']} images/s "
                  f"(epoch {result['epochs']}, quick profile)")


if __name__ == "__main__":
    main()
