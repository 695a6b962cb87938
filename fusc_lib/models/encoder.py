"""The encoder later stages use: scans in, L2-normalised embeddings out.

A trained run folder (`models/ssl/<run>/`) holds the backbone's plain state dict
(`backbone.pt`) and `encoder.json`, the data needed to use it: architecture, input size and the
normalisation it was trained with. Embedding and serving prepare images with the same
EvalTransform, so an image served online meets the network exactly as offline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusc_lib.artifacts import (
    exists,
    file_names,
    load_torch,
    read_bytes,
    save_torch,
    write_bytes,
)
from fusc_lib.augment import EvalTransform, UltrasoundView
from fusc_lib.config import EmbedConfig, default_of
from fusc_lib.layout import BACKBONE_WEIGHTS, ENCODER_INFO
from fusc_lib.models.backbones import IMAGENET, IMAGENET_WEIGHTS, RANDOM, Backbone, create_backbone
from fusc_lib.models.site_norms import SiteNorms, rows_by_site
from fusc_lib.store import Workdir
from fusc_lib.ultrasound import fan_area

# Model names: an SSL run of the workdir, or pretrained:<timm name>[@<input size>] (ImageNet).
# Where a name is taken from the user, the folder of a run elsewhere is copied in (`adopt_run`).
PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_SIZE = default_of(EmbedConfig, "input_size")  # the size a name without @ means
# The embeddings of a model averaged over n views are stored under `<model>~views<n>`.
VIEWS_MARK = "~views"
FORWARD_CHUNK = 256  # images per forward pass of `embed`
# Test-time views: most of the fan, mild tilt and rendering changes.
TEST_VIEW = {"scale": (0.5, 1.0), "max_degrees": 10.0, "strength": 0.5}


class Encoder(nn.Module):
    """A backbone with its eval transform: `prepare` images, then `forward` to unit vectors."""

    def __init__(self, backbone: Backbone, input_size: int):
        super().__init__()
        self.backbone = backbone.eval()
        self.input_size = input_size
        self.transform = EvalTransform(input_size, backbone.mean, backbone.std)
        self.test_view = UltrasoundView(input_size, backbone.mean, backbone.std, **TEST_VIEW)
        self.site_norms: SiteNorms | None = None  # per-site BatchNorm statistics, when used

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxW grey scans (as stored by ingest) -> a normalised (N, 3, S, S) batch."""
        return torch.stack([self.transform(image) for image in images])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, dim) float32, unit length (cosine similarity is a dot product)."""
        return F.normalize(self.backbone(batch).float(), dim=1)

    def embed(self, images: list[np.ndarray], image_ids: list[str], n_views: int = 1,
              device: str | torch.device = "cpu", sites: Sequence[str | None] | None = None
              ) -> np.ndarray:
        """(N, dim) unit vectors: the eval view, or the mean over it and `n_views - 1` mild
        augmented views (fan crops, flips, small rotations, light machine style).

        Averaging over views keeps what every view of a scan shares -- the anatomy -- and
        averages away where the crop fell; it was the largest single lift in the measurements
        (../shared/reference/clustering-measurements.md). The views of a scan are drawn from a
        generator seeded by its id, so offline embedding and online serving agree exactly.
        With `site_norms` and the scans' `sites`, each site's scans go through the backbone
        with that site's BatchNorm statistics (AdaBN, `fusc_lib.models.site_norms`).
        """
        if self.site_norms is None or sites is None:
            return self._embed(images, image_ids, n_views, device)
        vectors = np.empty((len(images), self.dim), np.float32)
        for site, rows in rows_by_site(sites).items():
            with self.site_norms.applied(self.backbone, site):
                vectors[rows] = self._embed([images[r] for r in rows],
                                            [image_ids[r] for r in rows], n_views, device)
        return vectors

    def _embed(self, images: list[np.ndarray], image_ids: list[str], n_views: int,
               device: str | torch.device) -> np.ndarray:
        batch = self.views_of(images, image_ids, n_views)
        with torch.inference_mode():  # in chunks: 64 scans x 20 views would hold GBs at once
            vectors = torch.cat([self(chunk.to(device)).float().cpu()
                                 for chunk in batch.split(FORWARD_CHUNK)])
        mean = vectors.view(len(images), n_views, -1).mean(dim=1)
        return F.normalize(mean, dim=1).numpy()

    def views_of(self, images: list[np.ndarray], image_ids: list[str], n_views: int
                 ) -> torch.Tensor:
        """(N · n_views, 3, S, S): each scan's eval view, then its `n_views - 1` seeded views."""
        return torch.stack([view for image, image_id in zip(images, image_ids)
                            for view in self._views(image, image_id, n_views)])

    def _views(self, image: np.ndarray, image_id: str, n_views: int) -> list[torch.Tensor]:
        views = [self.transform(image)]
        if n_views > 1:
            rng = np.random.default_rng(int(hashlib.sha256(image_id.encode()).hexdigest()[:16], 16))
            fan = fan_area(image)
            views += [self.test_view(image, fan, rng) for _ in range(n_views - 1)]
        return views


def save_encoder(backbone: Backbone, input_size: int, run_dir: str) -> None:
    """Write backbone.pt (a plain state dict of the timm model) and encoder.json to `run_dir`."""
    save_torch(f"{run_dir}/{BACKBONE_WEIGHTS}", backbone.net.state_dict())
    info = {"backbone": backbone.name, "input_size": input_size,
            "mean": list(backbone.mean), "std": list(backbone.std)}
    write_bytes(f"{run_dir}/{ENCODER_INFO}", json.dumps(info, indent=2).encode())


def is_trained(workdir: Workdir, run: str) -> bool:
    """Whether SSL run `run` has finished (it exports encoder.json last)."""
    return exists(f"{workdir.ssl_run_dir(run)}/{ENCODER_INFO}")


def adopt_run(workdir: Workdir, source: str) -> str:
    """Copy a finished SSL run trained elsewhere (its folder, path or URI: typically
    `<archive-workdir>/models/ssl/<run>`) into this workdir's models, under the folder's name;
    returns that run name. The workdir stays self-contained: serving and reports read the copy.

    Raises ValueError when `source` holds no finished run (no encoder.json), or when this
    workdir holds a different run of the same name.
    """
    source = source.rstrip("/")
    name = source.rsplit("/", 1)[-1]
    if not exists(f"{source}/{ENCODER_INFO}"):
        raise ValueError(f"{source} holds no finished SSL run (no {ENCODER_INFO}): give the "
                         "folder `fusc train-ssl` wrote, <workdir>/models/ssl/<run>")
    target = workdir.ssl_run_dir(name)
    if is_trained(workdir, name):
        if read_bytes(f"{target}/{BACKBONE_WEIGHTS}") == read_bytes(f"{source}/{BACKBONE_WEIGHTS}"):
            return name
        raise ValueError(f"this workdir already has a different SSL run named {name!r}: copy "
                         "the source folder under another name first")
    names = [n for n in file_names(source) if n != ENCODER_INFO] + [ENCODER_INFO]  # it marks done
    for file_name in names:
        write_bytes(f"{target}/{file_name}", read_bytes(f"{source}/{file_name}"))
    return name


def is_run_folder(model: str) -> bool:
    """Whether a model name is the folder of a run elsewhere (run names hold no '/')."""
    return "/" in model


def load_encoder(run_dir: str, device: str = "cpu") -> Encoder:
    """The encoder a `fusc train-ssl` run produced (local folder or URI), in eval mode."""
    info = json.loads(read_bytes(f"{run_dir}/{ENCODER_INFO}"))
    backbone = create_backbone(info["backbone"], RANDOM, info["input_size"])
    backbone.net.load_state_dict(load_torch(f"{run_dir}/{BACKBONE_WEIGHTS}"))
    trained = Backbone(info["backbone"], backbone.net, tuple(info["mean"]), tuple(info["std"]))
    return Encoder(trained, info["input_size"]).to(device)


def pretrained_encoder(backbone: str, init: str, input_size: int) -> Encoder:
    """An encoder without self-supervised training (ImageNet or random): the baselines."""
    return Encoder(create_backbone(backbone, init, input_size), input_size)


def pretrained_model(backbone: str, input_size: int = PRETRAINED_SIZE) -> str:
    """The model name of ImageNet `backbone` at `input_size` (the size is part of the name, so
    serving rebuilds exactly the encoder that embedded the archive)."""
    size = "" if input_size == PRETRAINED_SIZE else f"@{input_size}"
    return f"{PRETRAINED_PREFIX}{backbone}{size}"


def _pretrained_name(model: str) -> tuple[str, int]:
    """(timm architecture, input size) of a pretrained:<backbone>[@size] model name."""
    backbone, _, size = model.removeprefix(PRETRAINED_PREFIX).partition("@")
    return backbone, int(size or PRETRAINED_SIZE)


def model_encoder(workdir: Workdir, model: str, device: str = "cpu") -> Encoder:
    """The encoder a model name means: a workdir SSL run, or pretrained:<backbone>[@size]."""
    if model.startswith(PRETRAINED_PREFIX):
        backbone, size = _pretrained_name(model)
        return pretrained_encoder(backbone, IMAGENET, size).to(device)
    return load_encoder(workdir.ssl_run_dir(model), device=device)


def weight_files(workdir: Workdir, model: str) -> list[str]:
    """The weight files the encoder of a model name loads: an SSL run's backbone.pt, or the
    ImageNet file a pip package ships (none for random weights)."""
    if not model.startswith(PRETRAINED_PREFIX):
        return [f"{workdir.ssl_run_dir(model)}/{BACKBONE_WEIGHTS}"]
    weights = IMAGENET_WEIGHTS.get(_pretrained_name(model)[0])
    return [weights.path()] if weights else []


def backbone_of(workdir: Workdir, model: str) -> tuple[str, str, int]:
    """(timm architecture, init, input size) that continue training model `model` (network
    modes of `fusc cluster` and `fusc self-label`): an SSL run of the workdir, or
    pretrained:<name>[@size]."""
    if model.startswith(PRETRAINED_PREFIX):
        backbone, size = _pretrained_name(model)
        return backbone, IMAGENET, size
    info = json.loads(read_bytes(f"{workdir.ssl_run_dir(model)}/{ENCODER_INFO}"))
    return info["backbone"], f"{workdir.ssl_run_dir(model)}/{BACKBONE_WEIGHTS}", info["input_size"]


def embedding_key(model: str, views: int) -> str:
    """The embedding key of the embeddings of `model` averaged over `views` views."""
    return model if views == 1 else f"{model}{VIEWS_MARK}{views}"


def parse_embedding_key(key: str) -> tuple[str, int]:
    """(model name, number of views) of an embedding key."""
    model, _, views = key.partition(VIEWS_MARK)
    return model, int(views or 1)
