"""The `fusc` command line: one command per stage, all sharing --workdir and --ray-address.

Each option is a field of a stage config (`fusc_lib/config.py`: its default and its help there),
made an option by `fusc_lib/options.py`; what the commands print is `fusc_lib/reporting.py`.
Commands import their job lazily, so `fusc --help` answers at once without loading Ray, torch
or LanceDB.
"""

from pathlib import Path
from typing import Annotated

import typer

from fusc_lib import reporting
from fusc_lib.config import (
    ClusterConfig,
    CommonOptions,
    EmbedConfig,
    EvaluateConfig,
    IngestConfig,
    NeighborsConfig,
    PreprocessConfig,
    ReportConfig,
    ReviewOptions,
    RunConfig,
    SelfLabelConfig,
    ServeOptions,
    SitesConfig,
    SSLConfig,
)
from fusc_lib.options import command_of, command_option, deprecated, given, option, settings
from fusc_lib.reporting import fail, say, user_errors

app = typer.Typer(
    name="fusc",
    help="Sort archives of fetal ultrasound scans into anatomical views without labels (FUSC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _add_groups() -> None:
    from fusc_lib.review_cli import clusters

    app.add_typer(clusters)


def command(name: str | None = None):
    """`fusc`'s command `name` (`fusc_lib.options.command_of`)."""
    return command_of(app, name)


WorkdirOption = option(CommonOptions, "workdir", envvar="FUSC_WORKDIR")
RayAddressOption = option(CommonOptions, "ray_address", envvar="RAY_ADDRESS")
ClusterModelOption = option(CommonOptions, "cluster_model")
ModelAsClusterModel = deprecated("--model", "--cluster-model")
ModelAsEmbedding = deprecated("--model", "--embedding")


@app.callback()
def main() -> None:
    """Sort archives of fetal ultrasound scans into anatomical views without labels (FUSC).

    Stages write LanceDB tables under --workdir (env FUSC_WORKDIR, default ./fusc-work).
    """


@command()
def ingest(
    paths: option(IngestConfig, "paths", argument=True),
    manifest: option(IngestConfig, "manifest"),
    ocr_engine: option(PreprocessConfig, "ocr_engine", default=None),
    image_size: option(PreprocessConfig, "image_size", default=None),
    vocabulary: option(PreprocessConfig, "vocabulary", as_type=Path | None, exists=True,
                       dir_okay=False),
    max_megapixels: option(PreprocessConfig, "max_megapixels", default=None),
    keep_ocr_text: option(IngestConfig, "keep_ocr_text"),
    retry_quarantined: option(IngestConfig, "retry_quarantined"),
    frames: option(IngestConfig, "frames", as_type=str),
    batch_size: option(IngestConfig, "batch_size"),
    concurrency: option(IngestConfig, "concurrency"),
    commit_rows: option(IngestConfig, "commit_rows"),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
) -> None:
    """Read scans into the `scans` table: OCR'd view name, text inpainted, fan cropped, resized.

    Every file under a folder is read, whatever its name (UID names, no or wrong extension): the
    format comes from its bytes. A PATH that exists is taken literally (brackets, spaces, #);
    it is a glob only when nothing by that name exists; a PATH holding no file at all is an
    error. Files that cannot be used (corrupt, truncated, not an image such as PDF, DICOMDIR or
    a structured report, DICOM without pixels, too small, too large, broken links) go to the
    `quarantine` table with the reason; the job goes on. A file whose bytes equal an ingested
    one is recorded in `duplicates` and exported with its twin's cluster. Running again adds
    only new files, so an interrupted ingest is resumed by running the same command.
    """
    from fusc_lib.preprocess import workdir_preprocess
    from fusc_lib.store import Workdir
    from jobs.ingest import run_ingest

    if not paths and not manifest:
        fail("give at least one PATH or --manifest FILE (see fusc ingest --help)")
    vocabulary = str(vocabulary) if vocabulary else None
    store = Workdir(workdir)
    with user_errors():  # invalid options, settings the workdir refuses, no input (SourceError)
        config = settings(IngestConfig, locals())
        preprocess = workdir_preprocess(store, given(PreprocessConfig, locals()))
        summary = run_ingest(store, config, preprocess, ray_address)
    reporting.ingest_summary(summary, store.lancedb_uri)


@command()
def embed(
    embedding: option(EmbedConfig, "embedding"),
    input_size: option(EmbedConfig, "input_size"),
    views: option(EmbedConfig, "views"),
    site_norms: option(EmbedConfig, "site_norms"),
    batch_size: option(EmbedConfig, "batch_size"),
    concurrency: option(EmbedConfig, "concurrency"),
    use_gpu: option(EmbedConfig, "use_gpu"),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    model: ModelAsEmbedding,
) -> None:
    """Write one unit-length vector per scan into the table of its embedding key.

    Only scans without a vector for this model are embedded: rerunning adds nothing, and an
    interrupted run resumes. The LanceDB vector index is built once the table is large.
    """
    from fusc_lib.store import Workdir
    from jobs.embed import run_embed

    with user_errors():
        config = settings(EmbedConfig, locals(), embedding=embedding or model)
        summary = run_embed(Workdir(workdir), config, ray_address)
    reporting.embedded(summary)


@command("train-ssl")
def train_ssl(
    paths: option(IngestConfig, "paths", argument=True,
                  help="Folders, globs, files or URIs of scans to ingest into the workdir "
                       "first: the archive to train on (already ingested scans are kept)."),
    profile: option(SSLConfig, "profile"),
    method: option(SSLConfig, "method", default=None),
    backbone: option(SSLConfig, "backbone", default=None),
    init: option(SSLConfig, "init", default=None),
    image_size: option(SSLConfig, "image_size", default=None),
    epochs: option(SSLConfig, "epochs", default=None),
    images: option(SSLConfig, "images", default=None),
    minutes: option(SSLConfig, "minutes", default=None),
    batch_size: option(SSLConfig, "batch_size", default=None),
    lr: option(SSLConfig, "lr", default=None),
    weight_decay: option(SSLConfig, "weight_decay", default=None),
    temperature: option(SSLConfig, "temperature", default=None),
    strength: option(SSLConfig, "strength", default=None),
    rotation: option(SSLConfig, "rotation", default=None),
    frozen_stages: option(SSLConfig, "frozen_stages", default=None),
    dino_local_crops: option(SSLConfig, "dino_local_crops", default=None),
    dino_local_size: option(SSLConfig, "dino_local_size", default=None),
    workers: option(SSLConfig, "workers", default=None),
    use_gpu: option(SSLConfig, "use_gpu", default=None),
    seed: option(SSLConfig, "seed", default=None),
    ssl_run: option(SSLConfig, "run_name", "--ssl-run", default=None),
    resume: command_option(bool, False, "Continue a killed run from its last epoch."),
    labels: command_option(
        list[Path] | None, None, "CSV (file|path, view, site), repeatable, used only to print "
        "how well the embedding separates views and how much hospital style it keeps.",
        exists=True, dir_okay=False),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    old_run_name: deprecated("--run-name", "--ssl-run"),
) -> None:
    """Self-supervised training of the backbone on the `scans` table (SimCLR or DINO).

    Options not given take the --profile's value; the defaults shown are the quick profile's.
    Writes <workdir>/models/ssl/<run>/: backbone.pt + encoder.json, config.json, loss.csv.
    Train once on the whole archive (PATHS are ingested first), then cluster any folder with
    it: fusc run FOLDER --workdir W --ssl-run <archive-workdir>/models/ssl/<run>.
    """
    from fusc_lib.preprocess import workdir_preprocess
    from fusc_lib.store import Workdir
    from jobs.ingest import run_ingest
    from jobs.train_ssl import run_train_ssl

    store = Workdir(workdir)
    with user_errors():
        config = SSLConfig.from_profile(profile, **given(SSLConfig, locals()),
                                        run_name=ssl_run or old_run_name)
        if paths:
            ingested = run_ingest(store, IngestConfig(paths=paths), workdir_preprocess(store),
                                  ray_address)
            reporting.ingest_summary(ingested, store.lancedb_uri)
        summary = run_train_ssl(store, config, ray_address, resume=resume)
    reporting.trained(summary, store, labels)


@command()
def sites(
    seed: option(SitesConfig, "seed"),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
) -> None:
    """Give every scan a site, named or inferred, so clustering can take hospital style out.

    The site and machine the manifest (columns site, device) or DICOM (InstitutionName,
    Manufacturer + ManufacturerModelName) names, as "site / device"; otherwise a style group
    inferred from frame size, fan geometry, grey levels and speckle texture.
    """
    from fusc_lib.store import Workdir
    from jobs.sites import run_sites

    summary = run_sites(Workdir(workdir), ray_address, seed)
    reporting.sites(summary)


@command()
def neighbors(
    k: option(NeighborsConfig, "k"),
    embedding: option(NeighborsConfig, "embedding"),
    use_gpu: option(NeighborsConfig, "use_gpu"),
    workdir: WorkdirOption,
) -> None:
    """Mine the k nearest neighbours of every scan (faiss) in the site-centred embedding.

    A style group that holds one view (a machine's preset: its embeddings spread less than
    0.8 × the median group's) is centred on its nearest several-view group's mean; the
    groups so centred are printed."""
    from fusc_lib.store import Workdir
    from jobs.neighbors import run_neighbors

    with user_errors():
        summary = run_neighbors(Workdir(workdir), settings(NeighborsConfig, locals()))
    reporting.neighbours(summary)


@command()
def cluster(
    clusters: option(ClusterConfig, "clusters", required=True),
    embedding: option(ClusterConfig, "embedding"),
    heads: option(ClusterConfig, "heads"),
    entropy_weight: option(ClusterConfig, "entropy_weight"),
    start: option(ClusterConfig, "start"),
    sizes: option(ClusterConfig, "sizes"),
    epochs: option(ClusterConfig, "epochs"),
    samples: option(ClusterConfig, "samples"),
    mode: option(ClusterConfig, "mode"),
    network_epochs: option(ClusterConfig, "network_epochs"),
    network_images: option(ClusterConfig, "network_images"),
    workers: option(ClusterConfig, "workers"),
    use_gpu: option(ClusterConfig, "use_gpu"),
    seed: option(ClusterConfig, "seed"),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
) -> None:
    """Train the FUSC cluster heads on the site-centred embeddings.

    Several heads train together; the lowest-loss one becomes the current cluster model. With
    --mode network the backbone is fine-tuned with the heads first and the scans re-embedded.
    """
    from fusc_lib.store import Workdir
    from jobs.run import cluster_flow

    with user_errors():
        summary = cluster_flow(Workdir(workdir), settings(ClusterConfig, locals()), ray_address)
    reporting.clustered(summary)


@command("self-label")
def self_label(
    threshold: option(SelfLabelConfig, "threshold"),
    epochs: option(SelfLabelConfig, "epochs"),
    samples: option(SelfLabelConfig, "samples"),
    mode: option(SelfLabelConfig, "mode"),
    network_epochs: option(SelfLabelConfig, "network_epochs"),
    network_images: option(SelfLabelConfig, "network_images"),
    workers: option(SelfLabelConfig, "workers"),
    use_gpu: option(SelfLabelConfig, "use_gpu"),
    cluster_model: option(SelfLabelConfig, "cluster_model"),
    seed: option(SelfLabelConfig, "seed"),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    model: ModelAsClusterModel,
) -> None:
    """Fine-tune the cluster model on its own confident predictions (class-balanced).

    The input model stays current when the result's own checks (loss, smallest cluster,
    confident set, label stability) say it got worse; the reasons are printed. With --mode
    network the backbone learns too, and the scans are re-embedded with it.
    """
    from fusc_lib.store import Workdir
    from jobs.run import self_label_flow

    with user_errors():
        config = settings(SelfLabelConfig, locals(), cluster_model=cluster_model or model)
        summary = self_label_flow(Workdir(workdir), config, ray_address)
    reporting.self_labeled(summary)


@command()
def assign(
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    model: ModelAsClusterModel,
) -> None:
    """Write the cluster of every scan into the `assignments` table.

    Only scans not yet assigned by this model version are done: reruns add nothing. Scans
    ingested since the model was made are embedded first (its encoder and views) and, without
    a named site, put in the style group the model's saved site model gives them.
    """
    from fusc_lib.store import Workdir
    from jobs.run import assign_flow

    with user_errors():
        summary = assign_flow(Workdir(workdir), cluster_model or model, ray_address)
    reporting.assigned(summary)


@command()
def export(
    output: Annotated[str, typer.Option(help="File (imagefolder: folder) to write: a local "
                                        "path or an object-store URI (s3://...).")],
    file_format: command_option(str | None, None, "csv | parquet | imagefolder. Default: from "
                                "the output's suffix.", "--format"),
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
    model: ModelAsClusterModel,
) -> None:
    """Write the assignments with the review's labels, one row per ingested file frame.

    Columns: source_uri, frame, image_id, cluster_id, cluster_name, label, label_source
    (cluster | moved | excluded | suggested), confidence, site, pseudo_view, duplicate_of.
    --format imagefolder writes the reviewed scans as OUTPUT/<label>/<file>.png for
    torchvision's ImageFolder (excluded and unnamed scans left out, counted).
    """
    from fusc_lib.export import export_table, write_export, write_imagefolder
    from fusc_lib.store import Workdir

    store = Workdir(workdir)
    with user_errors():
        table = export_table(store, cluster_model or model)
        if file_format == "imagefolder":
            reporting.imagefolder(write_imagefolder(store, table, output))
        else:
            say(f"wrote {write_export(table, output, file_format)}")


@command()
def run(
    paths: option(IngestConfig, "paths", argument=True),
    clusters: option(RunConfig, "cluster.clusters"),
    profile: option(RunConfig, "ssl.profile"),
    manifest: option(RunConfig, "ingest.manifest"),
    embedding: option(RunConfig, "embed.embedding", "--embedding", "--ssl-run"),
    ssl_epochs: option(RunConfig, "ssl.epochs", default=None),
    ssl_images: option(RunConfig, "ssl.images", default=None),
    ssl_minutes: option(RunConfig, "ssl.minutes", default=None),
    image_size: option(RunConfig, "ssl.image_size", default=None),
    views: option(RunConfig, "embed.views"),
    site_norms: option(RunConfig, "embed.site_norms"),
    k: option(RunConfig, "neighbors.k"),
    cluster_epochs: option(RunConfig, "cluster.epochs"),
    cluster_mode: option(RunConfig, "cluster.mode"),
    workers: option(RunConfig, "ssl.workers", default=None, shown="the profile's"),
    self_label: command_option(bool, True, "Run the self-labeling stage."),
    self_label_mode: option(RunConfig, "self_label.mode", default=None,
                            shown="the cluster mode"),
    labels: command_option(
        list[Path] | None, None, "CSV (file|path, view, site), repeatable, used only to print "
        "how the clusters score against view and site.", exists=True, dir_okay=False),
    seed: option(RunConfig, "cluster.seed", help="Seed of every stage."),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    model: ModelAsEmbedding,
) -> None:
    """Run every stage on a folder of scans, from ingest to the exported clusters.

    ingest → train-ssl → sites → embed → neighbors → cluster → self-label → assign → export,
    all into one workdir. A stage whose inputs did not change is skipped, so running the same
    command again after an interruption continues where it stopped. Prints where the results
    are. The network modes of cluster and self-label train on the SSL profile's workers and
    GPUs (--workers).
    """
    from fusc_lib.store import Workdir
    from jobs.run import run_all

    store = Workdir(workdir)
    with user_errors():
        ssl = SSLConfig.from_profile(profile, epochs=ssl_epochs, images=ssl_images,
                                     minutes=ssl_minutes, image_size=image_size,
                                     workers=workers, seed=seed)
        network = {"workers": ssl.workers, "use_gpu": ssl.use_gpu, "seed": seed}
        config = RunConfig(
            ingest={"paths": paths, "manifest": manifest}, ssl=ssl, sites={"seed": seed},
            embed={"embedding": embedding or model, "views": views, "site_norms": site_norms},
            neighbors={"k": k},
            cluster={"clusters": clusters, "epochs": cluster_epochs, "mode": cluster_mode,
                     "k": k, **network},
            self_label={"mode": self_label_mode or cluster_mode, **network} if self_label
            else None)
        summary = run_all(store, config, ray_address, echo=reporting.stage)
    reporting.run_summary(summary, store, labels)


@command()
def evaluate(
    labels: option(EvaluateConfig, "labels", as_type=Path | None, exists=True, dir_okay=False),
    seeds: option(EvaluateConfig, "seeds"),
    sweep: option(EvaluateConfig, "sweep", as_type=str | None),
    baseline_scans: option(EvaluateConfig, "baseline_scans"),
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Score a cluster model: with labels, and without (sizes, confidence, site, stability).

    With labels (a file, or by default the view names typed on the scans): cluster purity,
    NMI, Hungarian accuracy and ARI on views and on their super-classes, the paper's Table 4,
    and k-means baselines on the same scans. --seeds N retrains the heads N times for the
    spread of every figure; --sweep 4,6,10 says which number of clusters to pick. Degenerate
    results are flagged. Writes <workdir>/reports/<version>/metrics.json.
    """
    from fusc_lib.store import Workdir
    from jobs.evaluate import run_evaluate

    store = Workdir(workdir)
    with user_errors():
        config = settings(EvaluateConfig, locals(), labels=str(labels) if labels else None)
        result = run_evaluate(store, config, progress=say)
    reporting.evaluation(result, store.report_dir(result.version))


@command()
def report(
    labels: option(ReportConfig, "labels", as_type=Path | None, exists=True, dir_okay=False),
    montage: option(ReportConfig, "montage"),
    map_points: option(ReportConfig, "map_points"),
    output: option(ReportConfig, "output"),
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Write one HTML page to open in a browser, offline: what each cluster holds.

    Per cluster: its most and least confident scans (the strays to check first), its mix of
    pseudo-views and sites. Cluster sizes, a map of the embeddings (hover a point to see its
    scan), loss curves, the configurations, and the flags and scores of `fusc evaluate` (run
    first when it has not been, or when --labels is given; its K sweep shows when it ran
    with --sweep). Prints the page's path.
    """
    from fusc_lib.store import Workdir
    from jobs.run import report_flow

    with user_errors():
        config = settings(ReportConfig, locals(), labels=str(labels) if labels else None,
                          output=str(output) if output else None)
        path = report_flow(Workdir(workdir), config, progress=say)
    say(f"report: {path}")


@command()
def serve(
    host: option(ServeOptions, "host"),
    port: option(ServeOptions, "port"),
    cluster_model: ClusterModelOption,
    config: command_option(
        Path | None, None, "Ray Serve config file: replicas, autoscaling, batching, body limit, "
        "timeouts. Default: deploy/serve.yaml of this checkout.", exists=True, dir_okay=False),
    workdir: WorkdirOption,
    ray_address: RayAddressOption,
    model: ModelAsClusterModel,
) -> None:
    """Serve the cluster model over HTTP (Ray Serve) until Ctrl-C or SIGTERM.

    POST /v1/cluster (a scan as the raw body or multipart field `file`) returns its cluster;
    POST /v1/similar?k=10 the most similar archived scans; GET /v1/model, GET /healthz;
    OpenAPI at /docs. Without --cluster-model the workdir's current model is served, and a new
    current model is picked up without a restart. Set $FUSC_API_TOKEN to require
    `Authorization: Bearer <token>` on every route but /healthz.
    """
    import os

    from services.serve import TOKEN_ENV, check_exposure, serve_until_stopped, start

    token = os.environ.get(TOKEN_ENV) or None
    with user_errors():
        check_exposure(host, token)
    from jobs.ray_runtime import connect

    connect(ray_address)
    with user_errors():  # no model, unknown version, invalid config file
        try:
            url = start(workdir, host=host, port=port, model=cluster_model or model,
                        config_path=config, token=token)
        except RuntimeError as error:  # a replica failed to start: Serve's reason
            fail(f"the service did not start: {error}")
    say(f"serving {workdir} on {url} (OpenAPI: {url}/docs); token "
        f"{'required' if token else 'not set'}. Ctrl-C to stop.")
    serve_until_stopped(shared_cluster=bool(ray_address), on_stop=lambda: say("stopping..."))
    import ray

    ray.shutdown()


@command()
def review(
    host: option(ReviewOptions, "host"),
    port: option(ReviewOptions, "port"),
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Review the clusters in a browser: a web page on this machine, until Ctrl-C.

    The clusters as montages with their sizes, names and suggested names; a cluster's scans,
    the most likely misplaced first. Name a cluster or accept its suggestion, merge clusters
    (one name for several), mark one mixed, move a scan to a name, exclude a scan (and undo):
    each click is saved at once in the workdir, as `fusc clusters ...` saves it, and several
    reviewers may work at once. Needs no Ray. Prints the page's URL. Set $FUSC_API_TOKEN to
    require the token (open URL/?token=<token>); a --host other than loopback needs one.
    """
    import os

    from services.auth import TOKEN_ENV
    from services.review_app import serve_review

    with user_errors():
        serve_review(workdir, cluster_model, host=host, port=port,
                     token=os.environ.get(TOKEN_ENV) or None, echo=say)
    say("stopped")


_add_groups()
