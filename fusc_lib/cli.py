"""The `fusc` command line: one command per stage, all sharing --workdir and --ray-address.

Commands import their job lazily, so `fusc --help` answers at once without loading Ray or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fusc_lib.store import DEFAULT_WORKDIR

app = typer.Typer(
    name="fusc",
    help="Sort archives of fetal ultrasound scans into anatomical views without labels (FUSC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

WorkdirOption = Annotated[str, typer.Option(
    "--workdir", envvar="FUSC_WORKDIR",
    help="Folder or URI holding the LanceDB tables, models and reports of this archive.")]
RayAddressOption = Annotated[str | None, typer.Option(
    "--ray-address", envvar="RAY_ADDRESS",
    help="Ray cluster to run on (e.g. ray://head:10001); default: a local Ray for this job.")]


@app.callback()
def main() -> None:
    """Sort archives of fetal ultrasound scans into anatomical views without labels (FUSC).

    Stages write LanceDB tables under --workdir (env FUSC_WORKDIR, default ./fusc-work).
    """


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def _warn(message: str | None) -> None:
    if message:
        console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


@app.command()
def ingest(
    paths: Annotated[list[str] | None, typer.Argument(
        help="Folders (searched recursively), globs, files or URIs (s3://...) of scans.")] = None,
    manifest: Annotated[str | None, typer.Option(
        help="CSV or Parquet with a `path` column and optional site, patient, study.")] = None,
    ocr_engine: Annotated[str | None, typer.Option(
        help="easyocr | tesseract | none. Fixed per workdir by its first ingest "
             "[default: easyocr].")] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Side in pixels of the stored square image. Fixed per workdir [default: 256].")] = None,
    vocabulary: Annotated[Path | None, typer.Option(
        help="View vocabulary YAML (OCR text -> view) instead of the built-in one.",
        exists=True, dir_okay=False)] = None,
    max_megapixels: Annotated[float | None, typer.Option(
        help="Refuse larger images as possible decompression bombs [default: 100].")] = None,
    keep_ocr_text: Annotated[bool, typer.Option(
        help="Store the raw OCR text. Off by default: burnt-in text can hold patient names.")
    ] = False,
    retry_quarantined: Annotated[bool, typer.Option(
        help="Try files of this input that an earlier run quarantined again.")] = False,
    frames: Annotated[str, typer.Option(
        help="Frames kept per multi-frame file (cine loop): N evenly spaced, first and last "
             "included, or 'all'. Adjacent frames of a loop are near copies: 16 catch each view "
             "a sweep passes (one every ~3 s of a 50-s loop) while a 1,500-frame loop weighs "
             "like 16 stills, not like an archive of them. Frames left out are counted in the "
             "summary.")] = "16",
    batch_size: Annotated[int, typer.Option(help="Files per worker call.")] = 8,
    concurrency: Annotated[int | None, typer.Option(
        help="Ingest workers [default: one per CPU of the cluster].")] = None,
    commit_rows: Annotated[int, typer.Option(
        help="Rows per LanceDB commit: at most this much work is redone after a kill.")] = 256,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
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
    from fusc_lib.ingest import IngestConfig
    from fusc_lib.preprocess import workdir_preprocess
    from fusc_lib.sources import SourceError
    from fusc_lib.store import Workdir
    from jobs.ingest import run_ingest

    if not paths and not manifest:
        _fail("give at least one PATH or --manifest FILE (see fusc ingest --help)")
    store = Workdir(workdir)
    try:
        config = IngestConfig(paths=paths or [], manifest=manifest, keep_ocr_text=keep_ocr_text,
                              batch_size=batch_size, concurrency=concurrency,
                              commit_rows=commit_rows, retry_quarantined=retry_quarantined,
                              frames=None if frames.lower() == "all" else frames)
        preprocess = workdir_preprocess(store, {
            "ocr_engine": ocr_engine, "image_size": image_size,
            "vocabulary": str(vocabulary) if vocabulary else None,
            "max_megapixels": max_megapixels})
    except ValueError as error:  # invalid option values, or settings the workdir refuses
        _fail(str(error))
    try:
        summary = run_ingest(store, config, preprocess, ray_address)
    except SourceError as error:
        _fail(str(error))
    _print_ingest_summary(summary, store)


def _print_ingest_summary(summary, store) -> None:
    table = Table(title="fusc ingest", show_header=False)
    table.add_row("files found", str(summary.files_found))
    table.add_row("already in the workdir (skipped)", str(summary.files_already_done))
    table.add_row("ingested (rows in scans)", str(summary.rows_ingested))
    table.add_row("copies of an ingested scan (recorded in duplicates)", str(summary.duplicates))
    table.add_row("quarantined (reason in quarantine)", str(summary.quarantined))
    table.add_row("cine frames left out (--frames)", str(summary.frames_skipped))
    table.add_row("time", f"{summary.seconds:.1f} s")
    Console().print(table)
    console.print(f"tables in {store.lancedb_uri} (scans, duplicates, quarantine)")


@app.command()
def embed(
    model: Annotated[str | None, typer.Option(
        help="SSL run name under <workdir>/models/ssl/, or pretrained:<timm backbone> for "
             "ImageNet features [default: the newest SSL run].")] = None,
    input_size: Annotated[int, typer.Option(
        help="Input size for pretrained:<backbone> (SSL runs use their own).")] = 128,
    views: Annotated[int, typer.Option(
        help="Views averaged per scan: 1 = the plain image; more add seeded augmented views "
             "(what clustering uses: 20).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Scans per forward pass.")] = 64,
    concurrency: Annotated[int | None, typer.Option(
        help="Model replicas [default: one per CPU, or one per GPU with --use-gpu].")] = None,
    use_gpu: Annotated[bool, typer.Option(help="Run each replica on a GPU.")] = False,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Write one unit-length vector per scan into the `embeddings` table.

    Only scans without a vector for this model are embedded: rerunning adds nothing, and an
    interrupted run resumes. The LanceDB vector index is built once the table is large.
    """
    from fusc_lib.store import Workdir
    from jobs.embed import EmbedConfig, run_embed

    store = Workdir(workdir)
    try:
        config = EmbedConfig(model=model, input_size=input_size, views=views,
                             batch_size=batch_size, concurrency=concurrency, use_gpu=use_gpu)
        summary = run_embed(store, config, ray_address)
    except ValueError as error:
        _fail(str(error))
    console.print(f"model {summary.model_run}: {summary.embedded} scans embedded, "
                  f"{summary.already_done} already had a vector ({summary.seconds:.1f} s)"
                  + ("; vector index built" if summary.indexed else ""))


@app.command("train-ssl")
def train_ssl(
    profile: Annotated[str, typer.Option(
        help="Defaults to start from: quick (CPU laptop, minutes), paper (ResNet18 SimCLR, GPU), "
             "paper-dino (ViT-S/16 DINO, GPU).")] = "quick",
    method: Annotated[str | None, typer.Option(help="simclr | dino.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Any timm architecture name.")] = None,
    init: Annotated[str | None, typer.Option(
        help="random | imagenet (local weights, no download) | PATH of a state dict.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side of the training views.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    temperature: Annotated[float | None, typer.Option(help="SimCLR temperature.")] = None,
    strength: Annotated[float | None, typer.Option(
        help="Scale of the machine-style augmentations (gain, gamma, speckle, blur, ...).")] = None,
    dino_local_crops: Annotated[int | None, typer.Option(help="DINO local views.")] = None,
    dino_local_size: Annotated[int | None, typer.Option(help="DINO local view side.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
    use_gpu: Annotated[bool | None, typer.Option(help="One GPU per worker.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    run_name: Annotated[str | None, typer.Option(
        help="Folder under <workdir>/models/ssl/ [default: <method>-<backbone>].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run from its last epoch.")] = False,
    labels: Annotated[list[Path] | None, typer.Option(
        help="CSV (file|path, view, site), repeatable, used only to print how well the embedding "
             "separates views and how much hospital style it keeps.",
        exists=True, dir_okay=False)] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Self-supervised training of the backbone on the `scans` table (SimCLR or DINO).

    Writes <workdir>/models/ssl/<run>/: backbone.pt + encoder.json, config.json, loss.csv.
    """
    from fusc_lib.ssl_config import SSLConfig
    from fusc_lib.store import Workdir
    from jobs.train_ssl import run_train_ssl

    options = {"method": method, "backbone": backbone, "init": init, "image_size": image_size,
               "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
               "temperature": temperature, "strength": strength,
               "dino_local_crops": dino_local_crops, "dino_local_size": dino_local_size,
               "workers": workers, "use_gpu": use_gpu, "seed": seed, "run_name": run_name}
    store = Workdir(workdir)
    try:
        config = SSLConfig.from_profile(profile, **options)
        summary = run_train_ssl(store, config, ray_address, resume=resume)
    except ValueError as error:
        _fail(str(error))
    console.print(f"run {summary['run']}: {summary['epochs']} epochs, final loss "
                  f"{summary['final_loss']}, {summary['images_per_s']} images/s; "
                  f"saved in {summary['run_dir']}")
    if labels:
        _print_representation_report(store, labels, summary["run_dir"])


def _print_representation_report(store, labels: list[Path], run_dir: str) -> None:
    from fusc_lib.diagnostics import representation_report

    table = Table(title="embedding against the labels (used only to score)")
    for column in ("variant", "scans", "kNN acc. (view)", "k-means NMI (view)",
                   "k-means NMI (site), lower = less hospital style"):
        table.add_column(column)
    for variant, scores in representation_report(store, labels, run_dir).items():
        table.add_row(variant, str(scores["scans"]), f"{scores['knn_accuracy_view']:.3f}",
                      f"{scores['kmeans_nmi_view']:.3f}", f"{scores['kmeans_nmi_site']:.3f}")
    Console().print(table)


EmbeddingOption = Annotated[str | None, typer.Option(
    "--embedding", help="embeddings.model_run to use, as `fusc embed` printed it "
                        "[default: the one embedded last].")]
ModelVersionOption = Annotated[str | None, typer.Option(
    "--model", help="Cluster model version under <workdir>/models/cluster/ "
                    "[default: the current one].")]


def _embedding(store, embedding: str | None) -> str:
    from jobs._vectors import latest_embedding

    return embedding or latest_embedding(store)


@app.command()
def sites(
    seed: Annotated[int, typer.Option(help="Seed of the style grouping.")] = 0,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Give every scan a site, named or inferred, so clustering can take hospital style out.

    The manifest's or DICOM's site where named; otherwise a style group inferred from frame
    size, fan geometry, grey levels and speckle texture.
    """
    from fusc_lib.store import Workdir
    from jobs.sites import run_sites

    summary = run_sites(Workdir(workdir), ray_address, seed)
    console.print(f"{summary.scans} scans: {summary.given} with a named site, "
                  f"{summary.inferred_groups} style groups inferred; sizes {summary.sizes} "
                  f"({summary.seconds:.1f} s)")


@app.command()
def neighbors(
    k: Annotated[int, typer.Option(help="Neighbours per scan.")] = 20,
    embedding: EmbeddingOption = None,
    use_gpu: Annotated[bool | None, typer.Option(
        help="faiss on GPU [default: when this faiss has one].")] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """Mine the k nearest neighbours of every scan (faiss) in the site-centred embedding."""
    from fusc_lib.store import Workdir
    from jobs.neighbors import run_neighbors

    store = Workdir(workdir)
    try:
        summary = run_neighbors(store, _embedding(store, embedding), k, use_gpu)
    except ValueError as error:
        _fail(str(error))
    console.print(f"{summary.embedding}: {summary.scans} scans × {summary.k} neighbours, "
                  f"{summary.index}, mean similarity {summary.mean_similarity:.3f} "
                  f"({summary.seconds:.1f} s)")


@app.command()
def cluster(
    clusters: Annotated[int, typer.Option(help="Number of clusters (may far exceed the views).")],
    embedding: EmbeddingOption = None,
    heads: Annotated[int, typer.Option(help="Heads trained together.")] = 10,
    entropy_weight: Annotated[float, typer.Option(help="λ of the entropy term.")] = 5.0,
    epochs: Annotated[int, typer.Option(help="Epochs of the heads.")] = 100,
    mode: Annotated[str, typer.Option(
        help="frozen: heads on the stored embeddings (fast, CPU); network: first fine-tune the "
             "backbone with the heads on neighbour pairs (Ray Train, the paper's mode).")
    ] = "frozen",
    network_epochs: Annotated[int, typer.Option(help="Network mode: fine-tuning epochs.")] = 10,
    workers: Annotated[int, typer.Option(help="Network mode: Ray Train workers.")] = 1,
    use_gpu: Annotated[bool, typer.Option(help="Network mode: one GPU per worker.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Train the FUSC cluster heads on the site-centred embeddings.

    Several heads train together; the lowest-loss one becomes the current cluster model. With
    --mode network the backbone is fine-tuned with the heads first and the scans re-embedded.
    """
    from fusc_lib.store import Workdir
    from jobs.cluster import ClusterConfig, run_cluster

    store = Workdir(workdir)
    try:
        config = ClusterConfig(embedding=_embedding(store, embedding), clusters=clusters,
                               heads=heads, entropy_weight=entropy_weight, epochs=epochs,
                               seed=seed, mode=mode, network_epochs=network_epochs,
                               workers=workers, use_gpu=use_gpu)
        summary = run_cluster(store, config, ray_address)
    except ValueError as error:
        _fail(str(error))
    console.print(f"model {summary.version}: head {summary.head_index} kept (loss "
                  f"{summary.loss:.3f}); cluster sizes {summary.sizes} ({summary.seconds:.1f} s)")


@app.command("self-label")
def self_label(
    threshold: Annotated[float, typer.Option(help="Confidence that makes a sample a target.")
                         ] = 0.99,
    epochs: Annotated[int, typer.Option(help="Frozen mode: epochs of the head.")] = 50,
    mode: Annotated[str, typer.Option(
        help="frozen: the head on the stored embeddings, feature noise as the strong "
             "augmentation (fast, CPU); network: backbone and head on augmented images "
             "(Ray Train, the paper's mode).")] = "frozen",
    network_epochs: Annotated[int, typer.Option(help="Network mode: epochs.")] = 10,
    workers: Annotated[int, typer.Option(help="Network mode: Ray Train workers.")] = 1,
    use_gpu: Annotated[bool, typer.Option(help="Network mode: one GPU per worker.")] = False,
    model: ModelVersionOption = None,
    seed: Annotated[int, typer.Option()] = 0,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Fine-tune the cluster model on its own confident predictions (class-balanced).

    The input model stays current when the result's own checks (loss, smallest cluster,
    confident set, label stability) say it got worse; the reasons are printed. With --mode
    network the backbone learns too, and the scans are re-embedded with it.
    """
    from fusc_lib.store import Workdir
    from jobs.self_label import SelfLabelConfig, run_self_label

    try:
        summary = run_self_label(Workdir(workdir), SelfLabelConfig(
            model=model, threshold=threshold, epochs=epochs, seed=seed, mode=mode,
            network_epochs=network_epochs, workers=workers, use_gpu=use_gpu), ray_address)
    except ValueError as error:
        _fail(str(error))
    verdict = "accepted" if summary.accepted else "rejected (" + "; ".join(summary.reasons) + ")"
    console.print(f"self-label {verdict}; current model {summary.version}; confident "
                  f"{summary.confident_before:.1%} → {summary.confident_after:.1%}; sizes "
                  f"{summary.sizes} ({summary.seconds:.1f} s)")


@app.command()
def assign(
    model: ModelVersionOption = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Write the cluster of every scan into the `assignments` table.

    Only scans not yet assigned by this model version are done: reruns add nothing. Scans
    ingested since the model was made are embedded first (its encoder and views) and, without
    a named site, put in the style group the model's saved site model gives them.
    """
    from fusc_lib.metrics import chance_confidence_warning
    from fusc_lib.store import Workdir
    from jobs.assign import run_assign

    try:
        summary = run_assign(Workdir(workdir), model, ray_address)
    except ValueError as error:
        _fail(str(error))
    embedded = f"{summary.embedded} new scans embedded first, " if summary.embedded else ""
    copies = f" (+ {summary.copies} file copies, exported with their twin's cluster)" \
        if summary.copies else ""
    console.print(f"model {summary.version}: {embedded}{summary.assigned} assigned, "
                  f"{summary.already_done} already; cluster sizes {summary.sizes}{copies}")
    _warn(chance_confidence_warning(summary.mean_confidence, len(summary.sizes)))


@app.command()
def export(
    output: Annotated[Path, typer.Option(help="File to write.")],
    file_format: Annotated[str | None, typer.Option(
        "--format", help="csv | parquet [default: from the output's suffix].")] = None,
    model: ModelVersionOption = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """Write the assignments as CSV or Parquet, one row per scan.

    Columns: source_uri, frame, image_id, cluster_id, cluster_name, confidence, site,
    pseudo_view.
    """
    from fusc_lib.store import Workdir
    from jobs.export import export_table, write_export

    try:
        path = write_export(export_table(Workdir(workdir), model), output, file_format)
    except ValueError as error:
        _fail(str(error))
    console.print(f"wrote {path}")


@app.command()
def run(
    paths: Annotated[list[str] | None, typer.Argument(
        help="Folders, globs, files or URIs of scans (as for `fusc ingest`).")] = None,
    clusters: Annotated[int, typer.Option(help="Number of clusters.")] = 10,
    profile: Annotated[str, typer.Option(
        help="SSL profile: quick (CPU, minutes) | paper | paper-dino (GPU).")] = "quick",
    manifest: Annotated[str | None, typer.Option(
        help="CSV or Parquet with a `path` column and optional site, patient, study.")] = None,
    model: Annotated[str | None, typer.Option(
        help="Skip SSL and embed with this model: pretrained:<backbone> or an SSL run.")] = None,
    ssl_epochs: Annotated[int | None, typer.Option(help="Override the profile's epochs.")] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Override the profile's SSL image size.")] = None,
    views: Annotated[int, typer.Option(help="Augmented views averaged per scan.")] = 20,
    k: Annotated[int, typer.Option(help="Neighbours per scan.")] = 20,
    cluster_epochs: Annotated[int, typer.Option(help="Epochs of the cluster heads.")] = 100,
    cluster_mode: Annotated[str, typer.Option(
        help="frozen (CPU default) | network (the paper's: the backbone trains with the heads "
             "on neighbour pairs; GPU).")
    ] = "frozen",
    workers: Annotated[int | None, typer.Option(
        help="Ray Train workers for SSL and network clustering [default: the profile's].")
    ] = None,
    self_label: Annotated[bool, typer.Option(help="Run the self-labeling stage.")] = True,
    self_label_mode: Annotated[str | None, typer.Option(
        help="frozen | network (backbone and head self-labeled on images: on african-planes "
             "+3 NMI points for ~4 minutes on 2 CPUs) [default: the cluster mode].")] = None,
    labels: Annotated[list[Path] | None, typer.Option(
        help="CSV (file|path, view, site), repeatable, used only to print how the clusters "
             "score against view and site.", exists=True, dir_okay=False)] = None,
    seed: Annotated[int, typer.Option()] = 0,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Run every stage on a folder of scans, from ingest to the exported clusters.

    ingest → train-ssl → embed → sites → neighbors → cluster → self-label → assign → export,
    all into one workdir. A stage whose inputs did not change is skipped, so running the same
    command again after an interruption continues where it stopped. Prints where the results
    are.
    """
    from fusc_lib.ssl_config import SSLConfig
    from fusc_lib.store import Workdir
    from jobs.run import RunConfig, run_all

    store = Workdir(workdir)
    try:
        ssl = SSLConfig.from_profile(profile, epochs=ssl_epochs, image_size=image_size,
                                     workers=workers, seed=seed)
        config = RunConfig(paths=paths or [], manifest=manifest, clusters=clusters, ssl=ssl,
                           model=model, views=views, k=k, cluster_epochs=cluster_epochs,
                           cluster_mode=cluster_mode, self_label=self_label,
                           self_label_mode=self_label_mode, seed=seed)
        summary = run_all(store, config, ray_address, echo=_print_stage)
    except ValueError as error:
        _fail(str(error))
    table = Table(title=f"clusters of model {summary.version}")
    table.add_column("cluster")
    table.add_column("scans")
    for cluster_id, size in enumerate(summary.sizes):
        table.add_row(str(cluster_id), str(size))
    Console().print(table)
    console.print(f"NMI of the clusters against site (given or inferred; lower = less "
                  f"hospital in the clusters): {summary.site_nmi:.3f}")
    for warning in summary.warnings:
        _warn(warning)
    if labels:
        _print_cluster_scores(store, summary.version, labels)
    console.print(f"assignments: {summary.export}\ntables: {store.lancedb_uri}")


def _print_cluster_scores(store, version: str, labels: list[Path]) -> None:
    from fusc_lib.diagnostics import assigned_clusters, clustering_scores, labels_of, read_labels

    ids, clusters = assigned_clusters(store, version)
    try:
        views, sites = labels_of(store, read_labels(labels), ids)
    except ValueError as error:
        _fail(str(error))
    scores = clustering_scores(views, sites, clusters)
    table = Table(title="clusters against the labels (used only to score)")
    for name in ("purity", "NMI (view)", "Hungarian acc.", "smallest cluster",
                 "NMI (site), lower = better"):
        table.add_column(name)
    table.add_row(*(f"{scores[key]:.3f}" for key in (
        "purity", "nmi", "accuracy", "smallest_cluster_share", "nmi_site")))
    Console().print(table)


def _print_stage(report) -> None:
    if report.skipped:
        console.print(f"[dim]{report.stage}: skipped ({report.detail})[/dim]")
    else:
        console.print(f"[green]{report.stage}[/green] ({report.seconds:.1f} s): {report.detail}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but loopback needs $FUSC_API_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    model: ModelVersionOption = None,
    config: Annotated[Path | None, typer.Option(
        help="Ray Serve config file: replicas, autoscaling, batching, body limit, timeouts "
             "[default: deploy/serve.yaml of this checkout].", exists=True, dir_okay=False)
    ] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    ray_address: RayAddressOption = None,
) -> None:
    """Serve the cluster model over HTTP (Ray Serve) until Ctrl-C or SIGTERM.

    POST /v1/cluster (a scan as the raw body or multipart field `file`) returns its cluster;
    POST /v1/similar?k=10 the most similar archived scans; GET /v1/model, GET /healthz;
    OpenAPI at /docs. Without --model the workdir's current model is served, and a new current
    model is picked up without a restart. Set $FUSC_API_TOKEN to require
    `Authorization: Bearer <token>` on every route but /healthz.
    """
    import os
    import signal
    import threading

    from services.serve import TOKEN_ENV, check_exposure, start, stop

    token = os.environ.get(TOKEN_ENV) or None
    try:
        check_exposure(host, token)
    except ValueError as error:
        _fail(str(error))
    from jobs._ray import connect

    connect(ray_address)
    try:
        url = start(workdir, host=host, port=port, model=model, config_path=config, token=token)
    except ValueError as error:  # no model, unknown version, invalid config file
        _fail(str(error))
    except RuntimeError as error:  # a replica failed to start: Serve's reason
        _fail(f"the service did not start: {error}")
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    console.print(f"serving {workdir} on {url} (OpenAPI: {url}/docs); token "
                  f"{'required' if token else 'not set'}. Ctrl-C to stop.")
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        console.print("stopping...")
        stop(shared_cluster=bool(ray_address))
        import ray

        ray.shutdown()
