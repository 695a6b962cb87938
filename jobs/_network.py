"""What the stages that can also train the full network (`fusc cluster`, `fusc self-label`)
share beside their network-mode options (`fusc_lib.config.NetworkOptions`): the backbone a
network run continues from, and training then embedding with that run."""

from __future__ import annotations

import json

from fusc_lib.artifacts import exists, read_bytes
from fusc_lib.config import EmbedConfig, SSLConfig
from fusc_lib.layout import BACKBONE_WEIGHTS, ENCODER_INFO, SSL_CONFIG
from fusc_lib.models.encoder import (
    PRETRAINED_PREFIX,
    PRETRAINED_SIZE,
    embedding_key,
    is_trained,
)
from fusc_lib.store import Workdir
from jobs.embed import run_embed
from jobs.train_ssl import run_train_ssl


def backbone_of(workdir: Workdir, model: str) -> tuple[str, str, int]:
    """(timm architecture, init, input size) that continue training model `model`: an SSL run
    of the workdir, or pretrained:<name>[@size]."""
    if model.startswith(PRETRAINED_PREFIX):
        backbone, _, size = model.removeprefix(PRETRAINED_PREFIX).partition("@")
        return backbone, "imagenet", int(size or PRETRAINED_SIZE)
    info = json.loads(read_bytes(f"{workdir.ssl_run_dir(model)}/{ENCODER_INFO}"))
    return info["backbone"], f"{workdir.ssl_run_dir(model)}/{BACKBONE_WEIGHTS}", info["input_size"]


def train_and_embed(workdir: Workdir, ssl: SSLConfig, views: int,
                    ray_address: str | None) -> str:
    """Train network run `ssl` (a finished one is reused, a killed one resumed), then embed
    every scan with it over `views` views; returns that embedding's key."""
    if not is_trained(workdir, ssl.run):
        resume = exists(f"{workdir.ssl_run_dir(ssl.run)}/{SSL_CONFIG}")
        run_train_ssl(workdir, ssl, ray_address, resume=resume)
    run_embed(workdir, EmbedConfig(embedding=ssl.run, views=views, use_gpu=ssl.use_gpu),
              ray_address)
    return embedding_key(ssl.run, views)
