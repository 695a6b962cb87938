"""The flows: every place where one job's result feeds another, so each job stays one stage.

`fusc run` (`run_all`): every stage in order into one workdir, skipping what is already done.
ingest → train-ssl → sites → embed → neighbors → cluster → self-label → assign → export.
Ingest, embed and assign are incremental by themselves (they do only the scans not done yet).
The other stages record their inputs in the ledger (`fusc_lib/ledger.py`) when they finish,
and are skipped while those are unchanged; so a killed run, run again, continues with the
stage it was in. The SSL model is trained once per workdir (resumed if it was
killed); scans ingested later are embedded with it.

The stages that chain jobs by themselves, which the CLI and `run_all` both call:
- `assign_flow` (`fusc assign`): embed the scans ingested since the cluster model was made,
  with its encoder and views, then assign them (`jobs.assign`).
- `cluster_flow` (`fusc cluster`): network mode trains backbone + heads on neighbour pairs
  (`jobs.train_ssl`), embeds with that backbone, mines its neighbours, then trains the frozen
  heads on that space (`jobs.cluster`).
- `self_label_flow` (`fusc self-label`): network mode trains the `selflabel-<input>` run,
  embeds with it, then `jobs.self_label` judges its head.
Both network modes go through `train_and_embed`: a finished run is reused, a killed one resumed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from time import monotonic

import pyarrow.compute as pc

from fusc_lib.artifacts import exists
from fusc_lib.assigned_model import AssignedModel
from fusc_lib.cluster_model import ClusterModel, current_version, set_current
from fusc_lib.clustering_space import clustering_space, latest_embedding
from fusc_lib.config import (
    ClusterConfig,
    EmbedConfig,
    EvaluateConfig,
    NeighborsConfig,
    ReportConfig,
    RunConfig,
    SelfLabelConfig,
    SSLConfig,
)
from fusc_lib.diagnostics import site_nmi
from fusc_lib.export import export_table, write_export
from fusc_lib.layout import RUN_EXPORT, SELF_LABEL_START, SSL_CONFIG
from fusc_lib.ledger import StageLedger
from fusc_lib.memory import release_freed_memory
from fusc_lib.metrics import chance_confidence_warning
from fusc_lib.models.encoder import backbone_of, embedding_key, is_trained, parse_embedding_key
from fusc_lib.models.self_label_network import write_start
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.reporting import describe_folded
from fusc_lib.sources import Source, gather_sources
from fusc_lib.ssl_training import training_extent
from fusc_lib.store import Workdir
from jobs.assign import AssignSummary, run_assign
from jobs.cluster import ClusterSummary, run_cluster
from jobs.embed import resolve_model, run_embed
from jobs.evaluate import read_evaluation, run_evaluate
from jobs.ingest import run_ingest
from jobs.neighbors import run_neighbors
from jobs.report import run_report
from jobs.review import carry_review
from jobs.self_label import SelfLabelSummary, run_self_label
from jobs.sites import run_sites
from jobs.train_ssl import run_train_ssl
from schemas.tables import SCANS, SITES

CLUSTER_OUTPUT = "cluster-output"  # stamp naming the model `fusc cluster` made, for self-label


@dataclass
class StageReport:
    stage: str
    skipped: bool
    seconds: float
    detail: str = ""


@dataclass
class RunSummary:
    stages: list[StageReport] = field(default_factory=list)
    version: str = ""
    sizes: list[int] = field(default_factory=list)
    site_nmi: float = 0.0  # clusters vs the sites table: how much they follow hospitals
    export: str = ""
    warnings: list[str] = field(default_factory=list)  # degenerate results, never hidden


def run_all(workdir: Workdir, config: RunConfig, ray_address: str | None = None,
            echo: Callable[[StageReport], None] = lambda report: None) -> RunSummary:
    """Run (or skip) every stage; `echo` hears about each stage as it ends."""
    summary = RunSummary()
    ledger = StageLedger(workdir)

    def stage(name: str, work: Callable[[], str], inputs: dict | None = None,
              done: str = "") -> None:
        """Run `work`, unless `done` says why not or its recorded `inputs` are unchanged."""
        started = monotonic()
        if done or (inputs is not None and ledger.is_current(name, inputs)):
            report = StageReport(name, True, 0.0, done or "inputs unchanged")
        else:
            report = StageReport(name, False, 0.0, work())
            release_freed_memory()  # the next stage starts from what is used, not this peak
            if inputs is not None:
                ledger.record(name, inputs)
        report.seconds = monotonic() - started
        summary.stages.append(report)
        echo(report)

    clusters, given_model = config.cluster.clusters, config.embed.embedding
    if config.ingest.paths or config.ingest.manifest:
        sources = gather_sources(config.ingest.paths, config.ingest.manifest)
        _check_clusters(clusters, _scans(workdir) + _most_new_scans(len(sources), config),
                        "can hold")
        stage("ingest", lambda: _ingest(workdir, config, sources, ray_address))
    _check_clusters(clusters, _scans(workdir), "holds")
    model = resolve_model(workdir, given_model, config.embed.input_size) if given_model \
        else config.ssl.run
    if not given_model:
        stage("train-ssl", lambda: _train_ssl(workdir, config.ssl, ray_address),
              done=f"model {config.ssl.run} trained" if is_trained(workdir, config.ssl.run) else "")
    embedding = embedding_key(model, config.embed.views)
    stage("sites", lambda: _sites(workdir, config, ray_address),
          {"scans": _version(workdir, SCANS), "seed": config.sites.seed})
    stage("embed", lambda: _embed(workdir, model, config, ray_address))
    neighbors = config.neighbors.model_copy(update={"embedding": embedding})
    stage("neighbors", lambda: _neighbors(workdir, neighbors),
          {"embeddings": _embedding_rows(workdir, embedding), "sites": _version(workdir, SITES),
           "embedding": embedding, "k": neighbors.k})
    cluster = config.cluster.model_copy(update={"embedding": embedding})
    stage("cluster", lambda: _cluster(workdir, cluster, ray_address),
          {"neighbors": ledger.stamp("neighbors"), **cluster.model_dump()})
    if config.self_label:  # None skips the stage
        stage("self-label", lambda: _self_label(workdir, config.self_label, ray_address),
              {"input": ledger.stamp(CLUSTER_OUTPUT), **config.self_label.model_dump()})
    stage("assign", lambda: _assign(workdir, summary, ray_address))
    summary.export = workdir.path(*RUN_EXPORT)
    stage("export", lambda: write_export(export_table(workdir), summary.export))
    return summary


def _check_clusters(clusters: int, scans: int, verb: str) -> None:
    """Raise ValueError unless there are more scans than clusters (checked before any work,
    against the most the inputs can give, and again after ingest, against what it gave)."""
    if clusters >= scans:
        raise ValueError(f"--clusters {clusters} needs more scans than clusters, and this run "
                         f"{verb} {scans}: choose fewer clusters or give more scans")


def _scans(workdir: Workdir) -> int:
    return workdir.table(SCANS).count_rows() if workdir.has_table(SCANS) else 0


def _most_new_scans(files: int, config: RunConfig) -> int:
    """The most scans `files` input files can add, each with its frame limit."""
    frames = config.ingest.frames
    return files * frames if frames else sys.maxsize


def _version(workdir: Workdir, table: str) -> int | None:
    """A table's version: it changes with every commit (use it for tables only one stage
    writes)."""
    return workdir.table(table).version if workdir.has_table(table) else None


def _embedding_rows(workdir: Workdir, embedding: str) -> dict:
    """What changes when the vectors of `embedding` do: their number and the newest. Not its
    table's version, which building the vector index moves too."""
    if not workdir.has_embeddings(embedding):
        return {}
    times = workdir.embeddings(embedding, ["embedded_at"]).column("embedded_at")
    newest = pc.max(times).as_py()
    return {"rows": len(times), "newest": newest.isoformat() if newest else None}


def _ingest(workdir: Workdir, config: RunConfig, sources: list[Source],
            ray_address: str | None) -> str:
    result = run_ingest(workdir, config.ingest, workdir_preprocess(workdir), ray_address,
                        sources)
    return (f"{result.rows_ingested} new scans, {result.files_already_done} files already in, "
            f"{result.duplicates} copies of a scan, {result.quarantined} quarantined")


def _train_ssl(workdir: Workdir, ssl: SSLConfig, ray_address: str | None) -> str:
    result, resumed = _train(workdir, ssl.fitted_to(workdir.table(SCANS).count_rows()),
                             ray_address)
    resumed_note = " (resumed)" if resumed else ""
    return f"{training_extent(result)}, final loss {result['final_loss']}{resumed_note}"


def _train(workdir: Workdir, ssl: SSLConfig, ray_address: str | None) -> tuple[dict, bool]:
    """Train run `ssl`, resuming it if a killed try left its config; (result, resumed)."""
    resume = exists(f"{workdir.ssl_run_dir(ssl.run)}/{SSL_CONFIG}")
    return run_train_ssl(workdir, ssl, ray_address, resume=resume), resume


def _embed(workdir: Workdir, model: str, config: RunConfig, ray_address: str | None) -> str:
    embed = config.embed.model_copy(update={"embedding": model})
    result = run_embed(workdir, embed, ray_address)
    return (f"{result.embedded} embedded, {result.already_done} already done; "
            f"{len(result.site_norms)} sites with their own BatchNorm statistics")


def _sites(workdir: Workdir, config: RunConfig, ray_address: str | None) -> str:
    result = run_sites(workdir, ray_address, seed=config.sites.seed)
    inferred = f"{result.inferred_groups} style groups inferred" if result.inferred_groups \
        else "all sites given"
    return f"{inferred}; {result.given} scans with a named site"


def _neighbors(workdir: Workdir, config: NeighborsConfig) -> str:
    result = run_neighbors(workdir, config)
    return "; ".join(filter(None, [f"k = {result.k}, {result.index}",
                                   describe_folded(result.folded)]))


def _cluster(workdir: Workdir, config: ClusterConfig, ray_address: str | None) -> str:
    result = cluster_flow(workdir, config, ray_address)
    StageLedger(workdir).record(CLUSTER_OUTPUT, {"version": result.version})
    return f"model {result.version}, head {result.head_index}, sizes {result.sizes}"


def _self_label(workdir: Workdir, config: SelfLabelConfig, ray_address: str | None) -> str:
    """Self-label the model the cluster stage made (not the current one, which a finished
    self-label of an earlier try may be)."""
    made = StageLedger(workdir).stamp(CLUSTER_OUTPUT)["version"]
    result = self_label_flow(workdir, config.model_copy(update={"cluster_model": made}),
                             ray_address)
    if result.accepted:
        return f"accepted: model {result.version}, sizes {result.sizes}"
    set_current(workdir, made)
    return "kept the input model: " + "; ".join(result.reasons)


def _assign(workdir: Workdir, summary: RunSummary, ray_address: str | None) -> str:
    result = assign_flow(workdir, ray_address=ray_address)
    summary.version, summary.sizes = result.version, result.sizes
    summary.site_nmi = site_nmi(workdir, result.version)
    warning = chance_confidence_warning(result.mean_confidence, len(result.sizes))
    summary.warnings += [warning] if warning else []
    copies = f" (+ {result.copies} file copies share their twin's)" if result.copies else ""
    return f"model {result.version}: {result.assigned} assigned{copies}"


def train_and_embed(workdir: Workdir, ssl: SSLConfig, views: int,
                    ray_address: str | None) -> str:
    """Train network run `ssl` (a finished one is reused, a killed one resumed), then embed
    every scan with it over `views` views; returns that embedding's key."""
    if not is_trained(workdir, ssl.run):
        _train(workdir, ssl, ray_address)
    run_embed(workdir, EmbedConfig(embedding=ssl.run, views=views, use_gpu=ssl.use_gpu),
              ray_address)
    return embedding_key(ssl.run, views)


def assign_flow(workdir: Workdir, version: str | None = None,
                ray_address: str | None = None) -> AssignSummary:
    """`fusc assign`: embed, with the model's encoder and views, the scans that have no such
    vector yet (ingested after the model was made), then assign every scan; a version not yet
    reviewed inherits the review of the last reviewed one (`jobs.review.carry_review`)."""
    started = monotonic()
    version = version or current_version(workdir)
    encoder, views = parse_embedding_key(ClusterModel.load(workdir, version).embedding)
    embedded = run_embed(workdir, EmbedConfig(embedding=encoder, views=views), ray_address)
    summary = run_assign(workdir, version, ray_address)
    carried = carry_review(workdir, version)
    return replace(summary, embedded=embedded.embedded, seconds=monotonic() - started,
                   review_carried=len(carried.carried) if carried else 0,
                   review_not_carried=carried.not_carried if carried else [])


def cluster_flow(workdir: Workdir, config: ClusterConfig,
                 ray_address: str | None = None) -> ClusterSummary:
    """`fusc cluster`. Network mode: FUSC-train backbone + heads on neighbour pairs, embed with
    the result and mine its neighbours, then train the frozen heads on that embedding. A
    finished fine-tune is reused and a killed one resumed."""
    if config.mode != "network":
        return run_cluster(workdir, config)
    started = monotonic()
    if not config.embedding:
        config = config.model_copy(update={"embedding": latest_embedding(workdir)})
    views = parse_embedding_key(config.embedding)[1]
    embedding = train_and_embed(workdir, _cluster_network(workdir, config), views, ray_address)
    run_neighbors(workdir, NeighborsConfig(embedding=embedding, k=config.k))
    summary = run_cluster(workdir, config.model_copy(update={"embedding": embedding,
                                                              "mode": "frozen"}))
    return replace(summary, seconds=monotonic() - started)


def _cluster_network(workdir: Workdir, config: ClusterConfig) -> SSLConfig:
    """The training config of cluster network mode, starting from the embedding's backbone."""
    model, _ = parse_embedding_key(config.embedding)
    backbone, init, size = backbone_of(workdir, model)
    run = f"{model.replace(':', '-').replace('@', '-')}-fusc{config.clusters}"
    return SSLConfig(profile="fusc-network", run_name=run, method="fusc", backbone=backbone, init=init,
                     image_size=size, epochs=config.network_epochs,
                     images=config.network_images, lr=config.network_lr,
                     batch_size=config.network_batch_size, strength=0.5,
                     fusc_clusters=config.clusters, fusc_heads=config.heads,
                     entropy_weight=config.entropy_weight, neighbors_of=config.embedding,
                     workers=config.workers, use_gpu=config.use_gpu, seed=config.seed
                     ).fitted_to(workdir.table(SCANS).count_rows())


def self_label_flow(workdir: Workdir, config: SelfLabelConfig,
                    ray_address: str | None = None) -> SelfLabelSummary:
    """`fusc self-label`. Network mode: train (or resume, or reuse) the network run of the input
    model, embed the scans with it, then judge its head (`jobs.self_label`)."""
    if config.mode != "network":
        return run_self_label(workdir, config)
    started = monotonic()
    start = ClusterModel.load(workdir, config.cluster_model)
    config = config.model_copy(update={"cluster_model": start.version})
    ssl = _self_label_network(workdir, config, start)
    if not exists(ssl.selflabel_start):  # the same for every try of this input
        centering = clustering_space(workdir, start.embedding).centering
        write_start(ssl.selflabel_start, start.head.weight, start.head.bias, centering)
    train_and_embed(workdir, ssl, parse_embedding_key(start.embedding)[1], ray_address)
    summary = run_self_label(workdir, config, trained=ssl)
    return replace(summary, seconds=monotonic() - started)


def _self_label_network(workdir: Workdir, config: SelfLabelConfig,
                        start: ClusterModel) -> SSLConfig:
    """The training config of self-label network mode: the input model's backbone and head,
    SimCLR-strength augmentations for the strong view."""
    backbone, init, size = backbone_of(workdir, parse_embedding_key(start.embedding)[0])
    run = f"selflabel-{start.version}"
    return SSLConfig(profile="selflabel-network", run_name=run, method="selflabel",
                     backbone=backbone, init=init, image_size=size, epochs=config.network_epochs,
                     images=config.network_images,
                     lr=config.network_lr, batch_size=config.network_batch_size, strength=1.0,
                     selflabel_start=f"{workdir.ssl_run_dir(run)}/{SELF_LABEL_START}",
                     selflabel_threshold=config.threshold, workers=config.workers,
                     use_gpu=config.use_gpu, seed=config.seed
                     ).fitted_to(workdir.table(SCANS).count_rows())


def report_flow(workdir: Workdir, config: ReportConfig,
                progress: Callable[[str], None] = lambda _: None) -> str:
    """`fusc report`: the model's evaluation (`fusc evaluate` first when it has none, or when
    `config.labels` is given), then the page; returns its path."""
    data = AssignedModel(workdir, ClusterModel.load(workdir, config.cluster_model))
    version = data.model.version
    evaluation = None if config.labels else read_evaluation(workdir, version)
    if evaluation is None:
        progress("evaluating the model first (fusc evaluate)")
        evaluation = run_evaluate(workdir, EvaluateConfig(cluster_model=version,
                                                          labels=config.labels), progress, data)
    return run_report(workdir, config, data, evaluation, progress)
