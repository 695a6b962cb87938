"""Configuration of `fusc train-ssl`: one typed field per CLI option, and named profiles.

Profiles are starting points, not modes: `SSLConfig.from_profile("quick", epochs=5)` takes the
profile's values and overrides what is given. The run writes the config it used to
`models/ssl/<run>/config.json`, and a resumed run reads it back from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MethodName = Literal["simclr", "dino", "fusc", "selflabel"]


class SSLConfig(BaseModel):
    """Stage 1 of FUSC: self-supervised training of the backbone on the `scans` table."""

    profile: str = Field("quick", description="Profile the defaults came from (recorded only).")
    run_name: str | None = Field(None, description="Folder under models/ssl/; None: "
                                                   "<method>-<backbone>.")
    method: MethodName = Field("simclr", description="Self-supervised method; `fusc` and "
                               "`selflabel` are stages 2 and 3 on the full network.")
    backbone: str = Field("efficientnet_lite0", description="timm architecture name.")
    init: str = Field("imagenet", description="random | imagenet (local weights) | a state-dict "
                                              "file.")
    image_size: int = Field(128, ge=16, le=1024, description="Side of the (global) views.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2, description="Global batch, split evenly over workers.")
    lr: float = Field(3e-4, gt=0, description="AdamW peak learning rate (cosine schedule).")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0, description="Linear learning-rate warm-up.")
    temperature: float = Field(0.2, gt=0, description="SimCLR NT-Xent temperature.")
    strength: float = Field(1.0, ge=0, description="Scale of the machine-style augmentations.")
    dino_out_dim: int = Field(4096, ge=16, description="DINO prototypes (head output).")
    dino_local_crops: int = Field(4, ge=0, description="DINO local views per image.")
    dino_local_size: int = Field(48, ge=16, description="Side of DINO's local views.")
    dino_momentum: float = Field(0.996, ge=0, le=1, description="Teacher EMA momentum at "
                                                                "the start (cosine to 1).")
    teacher_temperature: float = Field(0.04, gt=0, description="DINO teacher temperature.")
    fusc_clusters: int = Field(10, ge=2, description="fusc (full-network clustering): clusters.")
    fusc_heads: int = Field(10, ge=1, description="fusc: heads trained together.")
    entropy_weight: float = Field(5.0, ge=0, description="fusc: λ of the entropy term.")
    neighbors_of: str | None = Field(None, description="fusc: embeddings.model_run whose mined "
                                                       "neighbours pair the scans.")
    selflabel_start: str | None = Field(None, description="selflabel: the file with the head "
                                        "and site means to start from (written by the job).")
    selflabel_threshold: float = Field(0.99, gt=0, le=1, description="selflabel: confidence "
                                       "that makes a target.")
    workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel replicas).")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs each worker reserves; "
                                          "None: 1, or less where the cluster would otherwise "
                                          "keep none for making the views.")
    use_gpu: bool = Field(False, description="One GPU per worker; mixed precision on.")
    seed: int = Field(0, description="Seed of the model initialisation (augmentations are not "
                                     "seeded).")

    @property
    def run(self) -> str:
        return self.run_name or f"{self.method}-{self.backbone}"

    def fitted_to(self, scans: int) -> SSLConfig:
        """This config, with the batch lowered to what `scans` scans can fill (a small archive
        trains on one batch of all of it)."""
        if scans >= self.batch_size:
            return self
        return self.model_copy(update={"batch_size": max(2, scans // 2 * 2)})

    @classmethod
    def from_profile(cls, name: str, **overrides) -> SSLConfig:
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls(**{**PROFILES[name], **given, "profile": name})


PROFILES: dict[str, dict] = {
    # A CPU laptop, minutes on a few hundred scans: fine-tune ImageNet EfficientNet-Lite0 at
    # 128 px (reference/clustering-measurements.md). On african-planes, batch 32 x 30 epochs with
    # style strength 0.5 gave neighbours of the same view 0.74 of the time, against 0.70 for
    # batch 64 x 20 epochs at strength 1 (README, clustering quality).
    "quick": {"method": "simclr", "backbone": "efficientnet_lite0", "init": "imagenet",
              "image_size": 128, "epochs": 30, "batch_size": 32, "lr": 3e-4, "strength": 0.5},
    # METHOD.md: SimCLR with ResNet18 from scratch, on GPUs.
    "paper": {"method": "simclr", "backbone": "resnet18", "init": "random", "image_size": 224,
              "epochs": 200, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4,
              "temperature": 0.1, "use_gpu": True},
    # METHOD.md: DINO with ViT-S/16 from scratch, on GPUs (DINO paper's ViT-S recipe).
    "paper-dino": {"method": "dino", "backbone": "vit_small_patch16_224", "init": "random",
                   "image_size": 224, "epochs": 200, "batch_size": 256, "lr": 5e-4,
                   "weight_decay": 0.04, "warmup_epochs": 10, "dino_out_dim": 65536,
                   "dino_local_crops": 8, "dino_local_size": 96, "use_gpu": True},
}
