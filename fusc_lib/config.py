"""Every option of every stage, its default and its help, written once.

One pydantic config per stage: the jobs take it, `fusc` makes its options from its fields
(`fusc_lib/options.py`: a field's default is the option's default, its description the
option's help), and `RunConfig` composes them. One module, because `fusc run` needs every
stage's config and some defaults follow another stage's (the SSL method `fusc` takes
`ClusterConfig`'s λ); pydantic only, because `fusc --help` imports it: no torch, Ray or LanceDB.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

DEFAULT_WORKDIR = "./fusc-work"

Mode = Literal["frozen", "network"]
OcrEngineName = Literal["easyocr", "tesseract", "none"]
HeadStart = Literal["random", "kmeans"]
ClusterSizes = Literal["uniform", "kmeans"]
MethodName = Literal["simclr", "barlowtwins", "vicreg", "dino", "fusc", "selflabel"]

ClusterModelVersion = Annotated[str | None, Field(
    description="Cluster model version under <workdir>/models/cluster/. Default: the current "
                "one.")]
EmbeddingKey = Annotated[str | None, Field(
    description="Embedding to use, as `fusc embed` printed it (its embedding key). "
                "Default: the one embedded last.")]


def default_of(config: type[BaseModel], name: str) -> Any:
    """The default of field `name` of `config` (for code that must agree with it)."""
    return config.model_fields[name].get_default(call_default_factory=True)


class CommonOptions(BaseModel):
    """Options of several commands beside their stage's config."""

    workdir: str = Field(DEFAULT_WORKDIR, description="Folder or URI holding the LanceDB "
                         "tables, models and reports of this archive.")
    ray_address: str | None = Field(None, description="Ray cluster to run on (e.g. "
                                    "ray://head:10001). Default: a local Ray for this job.")
    cluster_model: ClusterModelVersion = None


class ServeOptions(BaseModel):
    """Where `fusc serve` listens (the rest of its settings are the Ray Serve config file)."""

    host: str = Field("127.0.0.1", description="Address to listen on. Anything but loopback "
                      "needs $FUSC_API_TOKEN.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")


class ReviewOptions(BaseModel):
    """Where `fusc review` (the clinicians' review page) listens."""

    host: str = Field("127.0.0.1", description="Address to listen on. Anything but loopback "
                      "needs $FUSC_API_TOKEN (then open the page as URL/?token=<token>).")
    port: int = Field(8010, ge=1, le=65535, description="HTTP port of the review page.")


# ------------------------------------------------------------------ ingest

class PreprocessConfig(BaseModel):
    """How frames become model-ready images; fixed per workdir once the first ingest wrote it."""

    image_size: int = Field(256, ge=32, le=1024, description="Side in pixels of the stored "
                            "square image. Fixed per workdir by its first ingest.")
    ocr_engine: OcrEngineName = Field("easyocr", description="Engine reading burnt-in text: "
                                      "easyocr | tesseract | none. Fixed per workdir by its "
                                      "first ingest.")
    vocabulary: str | None = Field(None, description="View vocabulary YAML (OCR text -> view) "
                                   "instead of the built-in one.")
    max_megapixels: float = Field(100.0, gt=0, description="Refuse larger images as possible "
                                  "decompression bombs.")
    ocr_threads: int = Field(1, ge=1, description="Torch/OpenCV threads per OCR engine.")


class IngestConfig(BaseModel):
    """Every option of `fusc ingest`; written to the workdir with each run."""

    paths: list[str] = Field(default_factory=list, description="Folders (searched "
                             "recursively), globs, files or URIs (s3://...) of scans.")
    manifest: str | None = Field(None, description="CSV or Parquet with a `path` column and "
                                 "optional site, device (the machine), patient, study.")
    keep_ocr_text: bool = Field(False, description="Store the raw OCR text. Off by default: "
                                "burnt-in text can hold patient names.")
    batch_size: int = Field(8, ge=1, description="Files per worker call (one OCR batch).")
    concurrency: int | None = Field(None, ge=1, description="Ingest workers. Default: one per "
                                    "CPU of the cluster.")
    commit_rows: int = Field(256, ge=1, description="Rows per LanceDB commit: at most this much "
                             "work is redone after a kill.")
    retry_quarantined: bool = Field(False, description="Try files of this input that an "
                                    "earlier run quarantined again.")
    frames: int | None = Field(
        16, ge=1,
        description="Frames kept per multi-frame file (cine loop): N evenly spaced, first and "
                    "last included, or 'all'. Adjacent frames of a loop are near copies: the "
                    "default catches each view a sweep passes (one every ~3 s of a 50-s loop) "
                    "while a 1,500-frame loop weighs like that many stills, not like an archive "
                    "of them. Frames left out are counted in the summary.")

    @field_validator("frames", mode="before")
    @classmethod
    def _all_frames(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.lower() == "all" else value


# ------------------------------------------------------------------ embed, sites, neighbours

class EmbedConfig(BaseModel):
    """Every option of `fusc embed`."""

    embedding: str | None = Field(None, description="Model to embed with: an SSL run under "
                                  "<workdir>/models/ssl/; the folder (path or URI) of a run "
                                  "trained elsewhere, e.g. once on the whole archive, copied "
                                  "in; or pretrained:<timm backbone> for ImageNet features. "
                                  "Default: the newest SSL run (`fusc run` trains one, and "
                                  "skips that when given one).")
    input_size: int = Field(128, ge=16, description="Input size for pretrained:<backbone> (SSL "
                            "runs use their own).")
    views: int = Field(1, ge=1, le=64, description="Views averaged per scan: 1 = the plain "
                       "image; more add seeded augmented views (what clustering uses).")
    site_norms: bool = Field(False, description="Per-site BatchNorm statistics (AdaBN): each "
                             "site's scans are normalised inside the network with statistics "
                             "of that site's own scans, fitted once per embedding from the "
                             "sites of `fusc sites` (run it first; without sites, or for an "
                             "embedding that has vectors without them, the network's own).")
    batch_size: int = Field(64, ge=1, description="Scans per forward pass.")
    concurrency: int | None = Field(None, ge=1, description="Model replicas. Default: one per "
                                    "CPU, or one per GPU with --use-gpu.")
    use_gpu: bool = Field(False, description="Run each replica on a GPU.")
    commit_rows: int = Field(4096, ge=1, description="Vectors per LanceDB commit.")
    index_min_rows: int = Field(100_000, ge=256, description="Build an ANN index from this "
                                "size.")


class SitesConfig(BaseModel):
    """Every option of `fusc sites`."""

    seed: int = Field(0, description="Seed of the style grouping.")


class NeighborsConfig(BaseModel):
    """Every option of `fusc neighbors`."""

    embedding: EmbeddingKey = None
    k: int = Field(20, ge=1, description="Neighbours per scan.")
    use_gpu: bool | None = Field(None, description="faiss on GPU. Default: when this faiss has "
                                 "one.")


# ------------------------------------------------------------------ cluster, self-label

# Training budgets in images seen, whatever the archive's size. SSL (`SSLConfig.images`): ~15
# minutes on 2 cores with the quick profile; on african-planes 12,000 against 6,000 raised
# `fusc run` from CP 0.803 / NMI 0.645 (3 seeds) to 0.819 / 0.683 (2 seeds; README, clustering
# quality). The network modes of cluster and self-label: ~10 minutes.
SSL_IMAGES = 12_000
# ... and in minutes (`SSLConfig.minutes`), for a slower machine: on one that trains ~7-9 images/s
# (against ~22), a 201-scan `fusc run` took 35 minutes, 31 of them SSL; the other stages took 4.5
# and would take ~8 at 600 scans (README), so 18 minutes of SSL keep such a run within 30.
SSL_MINUTES = 18.0
NETWORK_IMAGES = 6_000
# Degrees a probe tilts either way between two scans of one view: how far every augmented view
# turns (`SSLConfig.rotation` for the SSL views; any angle, 180, lost purity: README).
PROBE_TILT = 20.0


class NetworkOptions(BaseModel):
    """What the cluster and self-label stages share: their training budget, and their network
    mode's options."""

    samples: int | None = Field(
        2_000_000, ge=1,
        description="Frozen mode: training budget in scans seen, summed over the epochs; each "
                    "epoch draws a fresh random min(N, samples / epochs) of them, so the heads "
                    "cost the same on 20,000 or 10 million scans (all of them are still "
                    "assigned). None: every epoch is a full pass.")

    mode: Mode = Field("frozen", description="frozen: on the stored embeddings (fast, CPU); "
                       "network: the backbone trains too, on augmented images (Ray Train, the "
                       "paper's mode).")
    network_epochs: int = Field(10, ge=1, description="Network mode: most epochs.")
    network_images: int | None = Field(NETWORK_IMAGES, ge=1, description="Network mode: training "
                                       "budget in images seen (as `fusc train-ssl --images`).")
    network_lr: float = Field(1e-4, gt=0, description="Network mode: AdamW step (SCAN's).")
    network_batch_size: int = Field(64, ge=2, description="Network mode: global batch.")
    workers: int = Field(1, ge=1, description="Network mode: Ray Train workers.")
    use_gpu: bool = Field(False, description="Network mode: one GPU per worker.")


class ClusterConfig(NetworkOptions):
    """Every option of `fusc cluster`."""

    embedding: EmbeddingKey = None
    clusters: int = Field(10, ge=2, description="Number of clusters C (may far exceed the "
                          "views: over-clustering).")
    heads: int = Field(10, ge=1, description="Heads trained together; the lowest-loss is kept.")
    entropy_weight: float = Field(5.0, ge=0, description="λ: weight of the entropy of the mean "
                                  "prediction (spreads the clusters).")
    # A linear head on frozen features tolerates a far larger step than SCAN's 1e-4 for a whole
    # network: on 300–20,000 vectors lr 1e-2 reaches its final loss within ~50 epochs (seconds
    # on 300 vectors), where 1e-4 is still far from it after 200.
    epochs: int = Field(100, ge=1, description="Epochs of the heads.")
    lr: float = Field(1e-2, gt=0, description="Adam step of the heads.")
    batch_size: int = Field(128, ge=2, description="Scans per step of the heads.")
    start: HeadStart = Field("kmeans", description="How the heads start: kmeans (each head "
                             "at the centroids of its own k-means, so the heads refine what "
                             "k-means finds) or random (SCAN's).")
    sizes: ClusterSizes = Field("uniform", description="Cluster sizes the entropy term pulls "
                                "towards: uniform (SCAN's: all equal) or kmeans (those of each "
                                "head's k-means, for an archive whose views are not equally "
                                "common).")
    seed: int = Field(0, description="Seed of the heads and of their batches.")
    k: int = Field(default_of(NeighborsConfig, "k"), ge=1,
                   description="Network mode: neighbours mined again.")


class SelfLabelConfig(NetworkOptions):
    """Every option of `fusc self-label`."""

    cluster_model: ClusterModelVersion = None
    threshold: float = Field(0.99, gt=0, le=1, description="Confidence that makes a sample a "
                             "target.")
    epochs: int = Field(50, ge=1, description="Frozen mode: epochs of the head.")
    lr: float = Field(1e-3, gt=0, description="Frozen mode: Adam step of the head.")
    batch_size: int = Field(256, ge=2, description="Frozen mode: samples per step of the head.")
    seed: int = Field(0, description="Seed of the head's batches and feature noise.")


# ------------------------------------------------------------------ train-ssl

class SSLConfig(BaseModel):
    """Stage 1 of FUSC: self-supervised training of the backbone on the `scans` table.

    The defaults are the `quick` profile: a CPU laptop, minutes on a few hundred scans,
    fine-tuning ImageNet EfficientNet-Lite0 at 128 px (reference/clustering-measurements.md).
    On african-planes, batch 32 x 30 epochs with style strength 0.5 gave neighbours of the same
    view 0.74 of the time, against 0.70 for batch 64 x 20 epochs at strength 1; 60 epochs
    (12,000 images) rather than 30 raised that to 0.78 and `fusc run`'s NMI by 4 points
    (README, clustering quality). Other profiles (`PROFILES`) change some of them; the run
    writes the config it used to `models/ssl/<run>/config.json`, and a resumed run reads it
    back.
    """

    profile: str = Field("quick", description="SSL profile the SSL options start from: quick "
                         "(CPU laptop, minutes), paper (ResNet18 SimCLR, GPU), paper-dino "
                         "(ViT-S/16 DINO, GPU).")
    run_name: str | None = Field(None, description="SSL run: its folder under "
                                 "<workdir>/models/ssl/. Default: <method>-<backbone>.")
    method: MethodName = Field("simclr", description="simclr | barlowtwins | vicreg | dino "
                               "(`fusc` and `selflabel` are stages 2 and 3 on the full "
                               "network).")
    backbone: str = Field("efficientnet_lite0", description="Any timm architecture name.")
    init: str = Field("imagenet", description="random | imagenet (local weights, no download) "
                      "| PATH of a state dict.")
    image_size: int = Field(128, ge=16, le=1024, description="Side of the (global) training "
                            "views.")
    epochs: int = Field(60, ge=1, description="Most passes over the archive (what bounds a "
                        "small archive's training).")
    images: int | None = Field(
        SSL_IMAGES, ge=1,
        description="Training budget in images seen (each as its pair of views), drawn at "
                    "random from the whole archive: what bounds a large archive's training, "
                    "so 10,000 or 10 million scans cost the same (each is still embedded). "
                    "None: `epochs` full passes.")
    minutes: float | None = Field(
        SSL_MINUTES, gt=0,
        description="Training budget in minutes: after the first epoch past the warm-up the "
                    "run keeps the epochs that fit at that epoch's speed, so a slower machine "
                    "sees fewer images but finishes in time. None: no limit in time.")
    batch_size: int = Field(32, ge=2, description="Global batch, split evenly over workers.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (AdamW, cosine schedule).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: int = Field(1, ge=0, description="Linear learning-rate warm-up.")
    temperature: float = Field(0.2, gt=0, description="SimCLR NT-Xent temperature.")
    strength: float = Field(0.5, ge=0, description="Scale of the machine-style augmentations "
                            "(gain, gamma, speckle, blur, ...).")
    rotation: float = Field(PROBE_TILT, ge=0, le=180,
                            description="Most degrees a training view turns either way: a "
                                        "probe's tilt. Turning views freely (180) lost 4-6 CP "
                                        "on african-planes (README, Levers measured).")
    frozen_stages: int = Field(
        5, ge=0, description="Parameter groups of the backbone, counted from the input, kept at "
        "their initial weights (timm's coarse group_matcher: the stem, then each stage; 5 = "
        "EfficientNet-Lite0's stem and first 4 of 7 stages). No gradient and no backward pass "
        "through them: 1.5x the images/s on 2 CPU cores, clusters as good (README, Levers "
        "measured). Only from trained weights (init imagenet or a file): a random init trains "
        "every stage.")
    dino_out_dim: int = Field(4096, ge=16, description="DINO prototypes (head output).")
    dino_local_crops: int = Field(4, ge=0, description="DINO local views per image.")
    dino_local_size: int = Field(48, ge=16, description="Side of DINO's local views.")
    dino_momentum: float = Field(0.996, ge=0, le=1, description="Teacher EMA momentum at "
                                 "the start (cosine to 1).")
    teacher_temperature: float = Field(0.04, gt=0, description="DINO teacher temperature.")
    fusc_clusters: int = Field(default_of(ClusterConfig, "clusters"), ge=2,
                               description="fusc (full-network clustering): clusters.")
    fusc_heads: int = Field(default_of(ClusterConfig, "heads"), ge=1,
                            description="fusc: heads trained together.")
    entropy_weight: float = Field(default_of(ClusterConfig, "entropy_weight"), ge=0,
                                  description="fusc: λ of the entropy term.")
    neighbors_of: str | None = Field(None, description="fusc: the embedding key whose mined "
                                                       "neighbours pair the scans.")
    selflabel_start: str | None = Field(None, description="selflabel: the file with the head "
                                        "and site means to start from (written by the job).")
    selflabel_threshold: float = Field(default_of(SelfLabelConfig, "threshold"), gt=0, le=1,
                                       description="selflabel: confidence that makes a target.")
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
        """The profile's values, with the `overrides` that are not None."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls(**{**PROFILES[name], **given, "profile": name})


PROFILES: dict[str, dict] = {
    "quick": {},  # the field defaults
    # METHOD.md: SimCLR with ResNet18 from scratch, on GPUs; the budget is the paper's 200
    # epochs over its 88,000 scans.
    "paper": {"method": "simclr", "backbone": "resnet18", "init": "random", "image_size": 224,
              "epochs": 200, "images": 17_600_000, "minutes": None, "batch_size": 256, "lr": 1e-3,
              "temperature": 0.1, "strength": 1.0, "use_gpu": True},
    # METHOD.md: DINO with ViT-S/16 from scratch, on GPUs (DINO paper's ViT-S recipe).
    "paper-dino": {"method": "dino", "backbone": "vit_small_patch16_224", "init": "random",
                   "image_size": 224, "epochs": 200, "images": 17_600_000, "minutes": None,
                   "batch_size": 256, "lr": 5e-4,
                   "weight_decay": 0.04, "warmup_epochs": 10, "dino_out_dim": 65536,
                   "dino_local_crops": 8, "dino_local_size": 96, "strength": 1.0,
                   "use_gpu": True},
}


# ------------------------------------------------------------------ evaluate, report

LabelsFile = Annotated[str | None, Field(
    description="CSV or Parquet of view labels, used only to score: a `view` column, an "
                "optional `site`, and `image_id`, `path` or `file` naming the scan (matched by "
                "path, then file name, then content). Default: the view names typed on the "
                "scans, as ingest read them (the paper's own evaluation).")]


class EvaluateConfig(BaseModel):
    """Every option of `fusc evaluate`."""

    cluster_model: ClusterModelVersion = None
    labels: LabelsFile = None
    seeds: int = Field(0, ge=0, le=100, description="Also retrain the model's cluster heads "
                       "with seeds 0..N-1 on its embeddings and report mean and spread of "
                       "every metric. 0: score the stored model only.")
    sweep: list[int] | None = Field(None, description="Numbers of clusters to try, e.g. "
                                    "4,6,10,15,20: heads trained at each K on the stored "
                                    "embeddings (several seeds), scored without labels; names "
                                    "the K it would pick and why.")
    baseline_scans: int = Field(10_000, ge=10, description="Labelled scans (a seeded sample) "
                                "the k-means baselines cluster.")

    @field_validator("sweep", mode="before")
    @classmethod
    def _comma_separated(cls, sweep: Any) -> Any:
        if not isinstance(sweep, str):
            return sweep
        try:
            return [int(k) for k in sweep.split(",") if k.strip()]
        except ValueError:
            raise ValueError(f"--sweep {sweep!r}: give numbers of clusters, e.g. 4,6,10") from None

    @field_validator("sweep")
    @classmethod
    def _at_least_two_clusters(cls, sweep: list[int] | None) -> list[int] | None:
        if sweep is not None and (not sweep or min(sweep) < 2):
            raise ValueError("--sweep takes numbers of clusters of 2 or more, e.g. 4,6,10")
        return sorted(set(sweep)) if sweep else sweep


class ReportConfig(BaseModel):
    """Every option of `fusc report`."""

    cluster_model: ClusterModelVersion = None
    labels: LabelsFile = None
    montage: int = Field(8, ge=1, le=64, description="Scans shown per cluster in each "
                         "montage: its most and its least confident.")
    map_points: int = Field(2000, ge=10, le=5000, description="Scans drawn on the 2-D map "
                            "(a seeded sample; UMAP of the clustering space). Each carries its "
                            "thumbnail: 2,000 make a 6 MB page.")
    output: str | None = Field(None, description="HTML file to write. Default: "
                               "<workdir>/reports/<version>/report.html.")


# ------------------------------------------------------------------ run

# Views averaged per scan for clustering: mild augmentations average the machine style out
# (README, clustering quality).
CLUSTERING_VIEWS = 20


class RunConfig(BaseModel):
    """Every stage of `fusc run`, each its own config. A stage given as a dict changes only the
    fields it names (`embed={"embedding": ...}` keeps the run's views)."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    ssl: SSLConfig = Field(default_factory=SSLConfig, description="Trained unless "
                           "`embed.embedding` names a model.")
    embed: EmbedConfig = Field(default_factory=lambda: EmbedConfig(views=CLUSTERING_VIEWS))
    sites: SitesConfig = Field(default_factory=SitesConfig)
    neighbors: NeighborsConfig = Field(default_factory=NeighborsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    self_label: SelfLabelConfig | None = Field(default_factory=SelfLabelConfig,
                                               description="None skips the stage.")

    @model_validator(mode="before")
    @classmethod
    def _stage_dicts_update_the_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {name: {**default_of(cls, name).model_dump(), **value}
                if isinstance(value, dict) and name in cls.model_fields else value
                for name, value in data.items()}
