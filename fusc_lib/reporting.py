"""What `fusc` prints: summaries of the stages, label scores, warnings and errors.

Messages go to stderr; the tables a user may want to keep (cluster sizes, scores) to stdout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def say(message: str) -> None:
    console.print(message, soft_wrap=True)


def fail(message: str) -> None:
    say(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


def warn(message: str | None) -> None:
    if message:
        say(f"[yellow]warning:[/yellow] {message}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Invalid options, refused settings, missing inputs (ValueError): the message,
    exit code 2, no traceback."""
    try:
        yield
    except ValueError as error:
        fail(str(error))


def ingest_summary(summary, lancedb_uri: str) -> None:
    table = Table(title="fusc ingest", show_header=False)
    table.add_row("files found", str(summary.files_found))
    table.add_row("already in the workdir (skipped)", str(summary.files_already_done))
    table.add_row("ingested (rows in scans)", str(summary.rows_ingested))
    table.add_row("copies of an ingested scan (recorded in duplicates)", str(summary.duplicates))
    table.add_row("quarantined (reason in quarantine)", str(summary.quarantined))
    table.add_row("cine frames left out (--frames)", str(summary.frames_skipped))
    table.add_row("time", f"{summary.seconds:.1f} s")
    Console().print(table)
    say(f"tables in {lancedb_uri} (scans, duplicates, quarantine)")


def embedded(summary) -> None:
    say(f"model {summary.embedding_key}: {summary.embedded} scans embedded, "
        f"{summary.already_done} already had a vector ({summary.seconds:.1f} s)"
        + ("; vector index built" if summary.indexed else ""))
    if summary.embedded:
        say(site_norms_line(summary.site_norms, summary.site_norms_fitted))


def site_norms_line(sites: list[str], fitted: bool) -> str:
    """What the vectors were normalised with inside the network (AdaBN)."""
    if not sites:
        return ("BatchNorm statistics: the network's own (per-site ones need --site-norms and "
                "`fusc sites` run before the embedding's first vector)")
    how = "fitted now" if fitted else "stored with the embedding"
    shown = ", ".join(sites[:10]) + (", …" if len(sites) > 10 else "")
    return f"BatchNorm statistics per site ({how}): {len(sites)} site(s): {shown}"


def trained(summary: dict, store, labels: list[Path] | None) -> None:
    """An SSL run, and how its embedding scores against `labels` if given."""
    from fusc_lib.ssl_training import training_extent

    say(f"run {summary['run']}: {training_extent(summary)}, final loss "
        f"{summary['final_loss']}, {summary['images_per_s']} images/s; "
        f"saved in {summary['run_dir']}")
    if labels:
        representation_report(store, labels, summary["run_dir"])


def sites(summary) -> None:
    say(f"{summary.scans} scans: {summary.given} with a named site, "
        f"{summary.inferred_groups} style groups inferred; sizes {summary.sizes} "
        f"({summary.seconds:.1f} s)")
    if summary.styles_computed:
        say(f"style statistics computed from the images for {summary.styles_computed} scans "
            "ingested before ingest stored them")


def describe_folded(folded: Mapping[str, str]) -> str:
    """`fusc_lib.sites.SiteCentering.folded` for people: "" when no group was folded."""
    if not folded:
        return ""
    pairs = ", ".join(f"{site} -> {target}" for site, target in folded.items())
    return f"style groups holding one view, centred as their nearest group: {pairs}"


def neighbours(summary) -> None:
    say(f"{summary.embedding}: {summary.scans} scans × {summary.k} neighbours, "
        f"{summary.index}, mean similarity {summary.mean_similarity:.3f} "
        f"({summary.seconds:.1f} s)")
    if summary.folded:
        say(describe_folded(summary.folded))


def clustered(summary) -> None:
    say(f"model {summary.version}: head {summary.head_index} kept (loss {summary.loss:.3f}); "
        f"cluster sizes {summary.sizes} ({summary.seconds:.1f} s)")


def self_labeled(summary) -> None:
    verdict = "accepted" if summary.accepted else "rejected (" + "; ".join(summary.reasons) + ")"
    say(f"self-label {verdict}; current model {summary.version}; confident "
        f"{summary.confident_before:.1%} → {summary.confident_after:.1%}; sizes "
        f"{summary.sizes} ({summary.seconds:.1f} s)")


def assigned(summary) -> None:
    from fusc_lib.metrics import chance_confidence_warning

    embedded = f"{summary.embedded} new scans embedded first, " if summary.embedded else ""
    copies = f" (+ {summary.copies} file copies, exported with their twin's cluster)" \
        if summary.copies else ""
    say(f"model {summary.version}: {embedded}{summary.assigned} assigned, "
        f"{summary.already_done} already; cluster sizes {summary.sizes}{copies}")
    warn(chance_confidence_warning(summary.mean_confidence, len(summary.sizes)))
    if summary.review_carried:
        say(f"review: {summary.review_carried} decisions carried from the last reviewed model")
    for line in summary.review_not_carried:
        warn(f"review not carried: {line}")


def representation_report(store, labels: list[Path], run_dir: str) -> None:
    from fusc_lib.diagnostics import representation_report as scores_of

    table = Table(title="embedding against the labels (used only to score)")
    for column in ("variant", "scans", "kNN acc. (view)", "k-means NMI (view)",
                   "k-means NMI (site), lower = less hospital style"):
        table.add_column(column)
    for variant, scores in scores_of(store, labels, run_dir).items():
        table.add_row(variant, str(scores["scans"]), f"{scores['knn_accuracy_view']:.3f}",
                      f"{scores['kmeans_nmi_view']:.3f}", f"{scores['kmeans_nmi_site']:.3f}")
    Console().print(table)


def stage(report) -> None:
    """One stage of `fusc run`, as it ends."""
    if report.skipped:
        say(f"[dim]{report.stage}: skipped ({report.detail})[/dim]")
    else:
        say(f"[green]{report.stage}[/green] ({report.seconds:.1f} s): {report.detail}")


def run_summary(summary, store, labels: list[Path] | None) -> None:
    """The clusters of `fusc run`, their scores against `labels` if given, where things are."""
    table = Table(title=f"clusters of model {summary.version}")
    table.add_column("cluster")
    table.add_column("scans")
    for cluster_id, size in enumerate(summary.sizes):
        table.add_row(str(cluster_id), str(size))
    Console().print(table)
    say(f"NMI of the clusters against site (given or inferred; lower = less hospital in the "
        f"clusters): {summary.site_nmi:.3f}")
    for warning in summary.warnings:
        warn(warning)
    if labels:
        cluster_scores(store, summary.version, labels)
    say(f"assignments: {summary.export}\ntables: {store.lancedb_uri}\nnext: fusc report "
        f"--workdir {store.root} (what each cluster holds, in a browser)")


def cluster_scores(store, version: str, labels: list[Path]) -> None:
    """The model's clusters against `labels`, beside k-means with the same K on the same
    embeddings (as stored and site-centred): the heads must not lose to it."""
    from fusc_lib.assigned_model import AssignedModel
    from fusc_lib.cluster_model import ClusterModel
    from fusc_lib.diagnostics import clustering_scores
    from fusc_lib.labels import labels_of, load_labels
    from fusc_lib.metrics import kmeans_clusters

    data = AssignedModel(store, ClusterModel.load(store, version))
    with user_errors():
        views, sites = labels_of(load_labels(store, labels), data.image_ids)
    k = data.model.n_clusters
    rows = {"FUSC heads (this model)": data.clusters,
            "k-means, embeddings as stored": kmeans_clusters(data.space.raw[data.rows], k),
            "k-means, site-centred": kmeans_clusters(data.space.vectors[data.rows], k)}
    table = Table(title=f"clusters against the labels (used only to score), K = {k}")
    for name in ("clustering", "purity", "NMI (view)", "Hungarian acc.", "smallest cluster",
                 "NMI (site), lower = better"):
        table.add_column(name)
    for name, clusters in rows.items():
        scores = clustering_scores(views, sites, clusters)
        table.add_row(name, *(f"{scores[key]:.3f}" for key in (
            "purity", "nmi", "accuracy", "smallest_cluster_share", "nmi_site")))
    Console().print(table)


def evaluation(result, path: str) -> None:
    """`fusc evaluate`'s tables (stdout): scores and baselines, the paper's Table 4, the seeds'
    spread, the K sweep; then the flags and where metrics.json is."""
    free = result.label_free
    say(f"model {result.version}: {free.scans} scans in {result.n_clusters} clusters, sizes "
        f"{free.sizes}; mean confidence {free.mean_confidence:.2f}; size entropy "
        f"{free.size_entropy:.2f}" + (f"; NMI against site {free.nmi_site:.3f} (lower = less "
                                      "hospital in the clusters)" if free.nmi_site is not None
                                      else ""))
    if result.views:
        _scores_table(result)
        if result.views.nmi_site is not None:
            say(f"NMI of the clusters against the label file's sites: "
                f"{result.views.nmi_site:.3f} (lower = less hospital in the clusters)")
        for name, labelled in (("views", result.views), ("super-classes", result.super_classes)):
            _cluster_table(name, labelled)
    else:
        say("no labels: no scan carries a typed view name and no --labels was given")
    if result.label_rows_unmatched:
        warn(f"{result.label_rows_unmatched} label rows name no scan of this workdir")
    if result.seeds:
        _spread_table(result.seeds.spread, len(result.seeds.runs))
    if result.sweep:
        _sweep_table(result.sweep)
    for flag in result.flags:
        warn(flag.message)
    say(f"metrics: {path}")


def _scores_table(result) -> None:
    from fusc_lib.evaluation import score_rows

    table = Table(title=f"clusters against {result.labels_source} (labels used only to score)")
    for column in ("", "scans", "purity", "NMI", "Hungarian acc.", "ARI", "smallest cluster"):
        table.add_column(column)
    for row in score_rows(result):
        table.add_row(row["name"], str(row["scans"]), *(f"{v:.3f}" for v in row["figures"]))
    Console().print(table)


def _cluster_table(name: str, labelled) -> None:
    table = Table(title=f"per cluster ({name}; the paper's Table 4)")
    for column in ("cluster", "name", "scans", "labelled", "top 3", "mean conf."):
        table.add_column(column)
    for row in labelled.per_cluster:
        top = ", ".join(f"{v.view} {v.share:.0%}" for v in row.top_views) or "-"
        table.add_row(str(row.cluster_id), row.name or "", str(row.size), str(row.labelled), top,
                      f"{row.mean_confidence:.2f}")
    Console().print(table)


def _spread_table(spread: dict, runs: int) -> None:
    table = Table(title=f"over {runs} seeds")
    for column in ("figure", "mean", "std", "min", "max"):
        table.add_column(column)
    for name, value in spread.items():
        table.add_row(name, *(f"{v:.3f}" for v in (value.mean, value.std, value.min, value.max)))
    Console().print(table)


def _sweep_table(sweep) -> None:
    table = Table(title="choosing K (label-free; scores only where labelled)")
    for column in ("K", "seeds", "stability (ARI)", "FUSC loss", "size entropy",
                   "smallest cluster", "empty", "purity", "NMI", "Hungarian acc."):
        table.add_column(column)
    for p in sweep.points:
        labelled = ([f"{p.scores.purity:.3f}", f"{p.scores.nmi:.3f}", f"{p.scores.accuracy:.3f}"]
                    if p.scores else ["", "", ""])
        table.add_row(str(p.k), str(p.seeds), f"{p.stability:.3f}", f"{p.fusc_loss:.3f}",
                      f"{p.size_entropy:.3f}", f"{p.smallest_cluster_share:.3f}",
                      f"{p.empty_clusters:g}", *labelled)
    Console().print(table)
    say(f"[bold]pick {sweep.reason}[/bold]")


def cluster_overview(version: str, clusters) -> None:
    """`fusc clusters list`."""
    table = Table(title=f"clusters of model {version}")
    for column in ("cluster", "scans", "name", "suggested (share of typed names)", "mixed",
                   "moved out", "excluded", "mean conf."):
        table.add_column(column)
    for c in clusters:
        suggested = f"{c.suggested} ({c.suggested_share:.0%})" if c.suggested else ""
        table.add_row(str(c.cluster_id), str(c.size), c.name or "", suggested,
                      "mixed" if c.mixed else "", str(c.moved_out or ""), str(c.excluded or ""),
                      f"{c.mean_confidence:.2f}")
    Console().print(table)


def strays(version: str, cluster: int, scans) -> None:
    """`fusc clusters review`."""
    table = Table(title=f"cluster {cluster} of model {version}, most likely misplaced first")
    table.add_column("image id (prefix)", no_wrap=True)
    for column in ("file", "confidence", "stray score", "neighbours elsewhere", "label",
                   "label source"):
        table.add_column(column)
    for s in scans:
        table.add_row(s.image_id[:12], s.file, f"{s.confidence:.2f}", f"{s.stray_score:.2f}",
                      f"{s.neighbors_elsewhere:.0%}", s.label or "", s.label_source or "")
    Console().print(table)


def review_history(decisions) -> None:
    """`fusc clusters history`."""
    table = Table(title="review decisions, oldest first")
    for column in ("when (UTC)", "who", "action", "cluster", "scan", "name", "carried from"):
        table.add_column(column)
    for d in decisions.to_pylist():
        table.add_row(f"{d['made_at']:%Y-%m-%d %H:%M:%S}", d["reviewer"] or "", d["action"],
                      "" if d["cluster_id"] is None else str(d["cluster_id"]),
                      d["image_id"] or "", d["name"] or "", d["carried_from"] or "")
    Console().print(table)


def imagefolder(summary) -> None:
    """`fusc export --format imagefolder`."""
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.written.items()))
    say(f"wrote {sum(summary.written.values())} scans into {summary.folder} ({counts or 'none'}); "
        f"left out: {summary.excluded} excluded, {summary.unlabelled} without a reviewer's label")
