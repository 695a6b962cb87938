"""`<workdir>/reports/<version>/metrics.json`: what `fusc evaluate` measured, one schema.

Every figure is a share in [0, 1] unless its name says otherwise (`*_nats`, counts, `k`).
`Evaluation.model_json_schema()` gives the JSON Schema; `schema_version` changes when a field
changes meaning. Metric definitions: cluster purity, NMI (arithmetic normalisation) and
Hungarian-matched accuracy as in the FUSC paper (../shared/METHOD.md), ARI (Hubert & Arabie
1985); the per-cluster table is the paper's Table 4.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Scores(BaseModel):
    """A clustering against labels (views or super-classes)."""

    purity: float = Field(description="(1/N) Σ over clusters of its largest class.")
    nmi: float = Field(description="Normalised mutual information, arithmetic mean.")
    accuracy: float = Field(description="Hungarian-matched accuracy (one class per cluster).")
    ari: float = Field(description="Adjusted Rand index.")
    smallest_cluster_share: float = Field(description="Share of the smallest non-empty "
                                          "cluster among the scored scans.")


class LabelFree(BaseModel):
    """What a clustering shows without any label."""

    scans: int
    sizes: list[int] = Field(description="Scans per cluster, cluster id order; 0 = empty.")
    smallest_cluster_share: float = Field(description="Over all clusters: 0 when one is "
                                          "empty.")
    largest_cluster_share: float
    size_entropy: float = Field(description="Entropy of the cluster sizes over log K: 1 is "
                                "even, 0 is one cluster.")
    mean_confidence: float | None = Field(None, description="Mean top cluster probability.")
    fusc_loss: float | None = Field(None, description="FUSC loss of the head (consistency − "
                                    "λ·entropy) over all scans and neighbours; not comparable "
                                    "across K.")
    nmi_site: float | None = Field(None, description="NMI of the clusters against site (given "
                                   "or inferred): how much they follow hospitals. Lower is "
                                   "better.")


class ViewShare(BaseModel):
    view: str
    share: float = Field(description="Share of the cluster's labelled scans.")


class ClusterRow(BaseModel):
    """One row of the paper's Table 4."""

    cluster_id: int
    name: str | None = Field(None, description="The clinician's name, null until named.")
    size: int = Field(description="Scans assigned.")
    labelled: int = Field(description="Of which carry a label.")
    top_views: list[ViewShare] = Field(description="Three most frequent labels, largest "
                                       "first.")
    mean_confidence: float


class Confusion(BaseModel):
    """Scans per (label, cluster)."""

    labels: list[str]
    clusters: list[int]
    counts: list[list[int]] = Field(description="counts[i][j]: scans of labels[i] in "
                                    "clusters[j].")


class LabelledScores(BaseModel):
    """The clustering against one labelling (views, or their super-classes)."""

    scans: int = Field(description="Labelled scans scored.")
    classes: int
    scores: Scores
    per_cluster: list[ClusterRow]
    confusion: Confusion
    nmi_site: float | None = Field(None, description="NMI of the clusters against the sites "
                                   "the label file gives (null without): lower is better.")


class Baseline(BaseModel):
    """k-means (K = the model's clusters) on the same sample of labelled scans."""

    name: str
    input: str = Field(description="What was clustered.")
    scans: int
    scores: Scores
    model_scores: Scores = Field(description="The model's clusters on the same sample.")


class SeedRun(BaseModel):
    """One retraining of the cluster heads."""

    seed: int
    config: dict = Field(description="Every setting of the heads' training.")
    weights: dict[str, str] = Field(description="sha256 of every weight file loaded, by path.")
    label_free: LabelFree
    scores: Scores | None = None


class Spread(BaseModel):
    mean: float
    std: float
    min: float
    max: float


class SeedsSummary(BaseModel):
    runs: list[SeedRun]
    spread: dict[str, Spread] = Field(description="Of every figure, over the runs: label-free "
                                      "names as in LabelFree, label scores as `view_<metric>`.")


class SweepPoint(BaseModel):
    """One K of the sweep: means over its seeds."""

    k: int
    seeds: int
    fusc_loss: float
    size_entropy: float
    stability: float = Field(description="Mean ARI between the seeds' clusterings: 1 when "
                             "every seed finds the same clusters.")
    smallest_cluster_share: float
    empty_clusters: float = Field(description="Mean number of empty clusters.")
    scores: Scores | None = Field(None, description="With labels: the mean scores.")


class Sweep(BaseModel):
    points: list[SweepPoint]
    chosen_k: int
    reason: str


class Flag(BaseModel):
    """A degenerate result, shown wherever the figures are."""

    kind: str = Field(description="giant_cluster | empty_cluster | tiny_cluster | "
                      "chance_confidence | self_label_shrank | self_label_rejected")
    message: str


class Evaluation(BaseModel):
    """The whole of metrics.json."""

    schema_version: int = SCHEMA_VERSION
    version: str = Field(description="Cluster model version evaluated.")
    created_at: str
    embedding: str
    n_clusters: int
    labels_source: str | None = Field(description="`pseudo-views` (typed view names), the "
                                      "label file's path, or null when no scan is labelled.")
    label_rows_unmatched: int = Field(0, description="Rows of the label file naming no scan.")
    label_free: LabelFree
    views: LabelledScores | None = None
    super_classes: LabelledScores | None = Field(None, description="Labels merged into the "
                                                 "super-classes of the view vocabulary.")
    baselines: list[Baseline] = Field(default_factory=list)
    seeds: SeedsSummary | None = None
    sweep: Sweep | None = None
    flags: list[Flag] = Field(default_factory=list)
    weights: dict[str, str] = Field(description="sha256 of every weight file the model "
                                    "loads, by path.")
    config: dict = Field(description="The model's training record (heads, self-label).")
