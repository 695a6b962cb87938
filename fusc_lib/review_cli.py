"""`fusc clusters ...`: the review on the command line (the page, `fusc review`, does the same
with clicks). Every command records decisions on one model version (the current one unless
--cluster-model names another); `fusc export` then carries the names as labels."""

import csv
from pathlib import Path
from typing import Annotated

import typer

from fusc_lib import reporting
from fusc_lib.config import CommonOptions
from fusc_lib.options import command_of, command_option, option
from fusc_lib.reporting import say, user_errors

clusters = typer.Typer(name="clusters", no_args_is_help=True, help=(
    "Name, merge and correct the clusters of a model: the clinicians' review. Decisions are "
    "kept in the workdir (table `review`, with their history) and carried to new model "
    "versions."))

WorkdirOption = option(CommonOptions, "workdir", envvar="FUSC_WORKDIR")
ClusterModelOption = option(CommonOptions, "cluster_model")
ReviewerOption = command_option(str | None, None, "Who decides (kept with the decision). "
                                "Default: $FUSC_REVIEWER, else the login name.")
ClusterIds = Annotated[list[int], typer.Argument(help="Cluster ids (see fusc clusters list).")]
ScanIds = Annotated[list[str], typer.Argument(help="Image ids (or a unique prefix of 8+ "
                                              "characters, or a file name), as `fusc clusters "
                                              "review` lists them.")]


def command(name: str):
    """`fusc clusters`' command `name` (`fusc_lib.options.command_of`)."""
    return command_of(clusters, name)


def _review(workdir: str, cluster_model: str | None):
    from fusc_lib.store import Workdir
    from jobs.review import Review

    return Review(Workdir(workdir), cluster_model)


def _decide(review, reviewer: str | None, decisions: list[dict]) -> None:
    """Record decisions (each: action and its fields) on the review's version."""
    from fusc_lib.review import Decision
    from jobs.review import reviewer as default_reviewer

    review.decide([Decision(model_version=review.version,
                            reviewer=reviewer or default_reviewer(), **fields)
                   for fields in decisions])


@command("list")
def list_clusters(cluster_model: ClusterModelOption, workdir: WorkdirOption) -> None:
    """Every cluster: size, name, suggested name (majority typed view name and its share),
    mixed mark, scans moved out or excluded."""
    with user_errors():
        review = _review(workdir, cluster_model)
        reporting.cluster_overview(review.version, review.overview())


@command("name")
def name(
    cluster_id: Annotated[int | None, typer.Argument(help="Cluster to name.")] = None,
    new_name: Annotated[str | None, typer.Argument(metavar="NAME", help="Its name (e.g. 4CH); "
                                                   "'' clears it.")] = None,
    from_file: command_option(Path | None, None, "CSV with columns cluster_id,name: many at "
                              "once.", "--from", exists=True, dir_okay=False) = None,
    suggested: command_option(bool, False, "Accept the suggested name of every cluster not "
                              "named yet.") = False,
    reviewer: ReviewerOption = None,
    cluster_model: ClusterModelOption = None,
    workdir: WorkdirOption = None,
) -> None:
    """Name (or rename) a cluster; names shared by several clusters merge them."""
    with user_errors():
        review = _review(workdir, cluster_model)
        pairs = _names_wanted(review, cluster_id, new_name, from_file, suggested)
        _decide(review, reviewer, [{"action": "name", "cluster_id": cluster, "name": value}
                                   for cluster, value in pairs])
    say(f"named {len(pairs)} clusters of model {review.version}")


def _names_wanted(review, cluster_id: int | None, new_name: str | None, from_file: Path | None,
                  suggested: bool) -> list[tuple[int, str | None]]:
    if suggested:
        named = review.state.names
        return [(c, name) for c, (name, _) in review.suggested.items() if c not in named]
    if from_file:
        with open(from_file, newline="") as handle:
            return [(int(row["cluster_id"]), row["name"]) for row in csv.DictReader(handle)]
    if cluster_id is None or new_name is None:
        raise ValueError("give CLUSTER_ID NAME, or --from FILE, or --suggested")
    return [(cluster_id, new_name)]


@command("merge")
def merge(
    cluster_ids: ClusterIds,
    new_name: command_option(str, ..., "The name the merged clusters share.", "--name"),
    reviewer: ReviewerOption,
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Merge clusters under one name (over-cluster, then merge: the normal way to work)."""
    with user_errors():
        review = _review(workdir, cluster_model)
        _decide(review, reviewer, [{"action": "name", "cluster_id": c, "name": new_name}
                                   for c in cluster_ids])
    say(f"clusters {', '.join(map(str, cluster_ids))} are now {new_name!r}")


@command("mixed")
def mixed(
    cluster_ids: ClusterIds,
    undo: command_option(bool, False, "Remove the mark."),
    reviewer: ReviewerOption,
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Mark clusters as mixed: they hold several views and need splitting (more clusters)."""
    with user_errors():
        review = _review(workdir, cluster_model)
        _decide(review, reviewer, [{"action": "unmixed" if undo else "mixed", "cluster_id": c}
                                   for c in cluster_ids])
    say(f"{'unmarked' if undo else 'marked mixed'}: {', '.join(map(str, cluster_ids))}")


@command("review")
def review_cluster(
    cluster_id: Annotated[int, typer.Argument(help="Cluster to review.")],
    limit: command_option(int, 20, "Scans to list."),
    offset: command_option(int, 0, "Scans to skip (the next page)."),
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """A cluster's scans, most likely misplaced first: low confidence, far from the cluster's
    centre, neighbours mostly in other clusters."""
    with user_errors():
        review = _review(workdir, cluster_model)
        reporting.strays(review.version, cluster_id, review.strays(cluster_id, offset, limit))


@command("move")
def move(
    scans: ScanIds,
    to: command_option(str, ..., "The name the scans belong to."),
    reviewer: ReviewerOption,
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Move scans to a name (a stray placed in the wrong cluster)."""
    with user_errors():
        review = _review(workdir, cluster_model)
        _decide(review, reviewer, [{"action": "move", "image_id": review.scan_id(s), "name": to}
                                   for s in scans])
    say(f"moved {len(scans)} scans to {to!r}")


@command("exclude")
def exclude(
    scans: ScanIds,
    undo: command_option(bool, False, "Restore the scans to their cluster (also undoes a "
                         "move)."),
    reviewer: ReviewerOption,
    cluster_model: ClusterModelOption,
    workdir: WorkdirOption,
) -> None:
    """Exclude scans that are not scans of interest (blank frame, report page): no label."""
    with user_errors():
        review = _review(workdir, cluster_model)
        _decide(review, reviewer, [{"action": "restore" if undo else "exclude",
                                    "image_id": review.scan_id(s)} for s in scans])
    say(f"{'restored' if undo else 'excluded'} {len(scans)} scans")


@command("history")
def show_history(cluster_model: ClusterModelOption, workdir: WorkdirOption) -> None:
    """Every decision on the model version, oldest first: what, when, by whom."""
    from fusc_lib.review import history
    from fusc_lib.store import Workdir

    with user_errors():
        review = _review(workdir, cluster_model)
        reporting.review_history(history(Workdir(workdir), review.version))
