"""The `fusc` command line a new user meets: help, clear errors, the ingest summary."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from fusc_lib.cli import app
from fusc_lib.config import (
    ClusterConfig,
    IngestConfig,
    RunConfig,
    SelfLabelConfig,
    SSLConfig,
    default_of,
)

runner = CliRunner()


def test_help_lists_the_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "train-ssl", "embed", "sites", "neighbors", "cluster",
                    "self-label", "assign", "export", "run"):
        assert f" {command} " in result.output


def test_clustering_commands_without_their_inputs_say_what_to_run(tmp_path):
    workdir = str(tmp_path / "empty")
    cluster = runner.invoke(app, ["cluster", "--clusters", "4", "--embedding", "x",
                                  "--workdir", workdir])
    assert cluster.exit_code == 2 and "fusc embed" in cluster.output
    assign = runner.invoke(app, ["assign", "--workdir", workdir])
    assert assign.exit_code == 2 and "fusc cluster" in assign.output
    export = runner.invoke(app, ["export", "--output", str(tmp_path / "a.csv"),
                                 "--workdir", workdir])
    assert export.exit_code == 2 and "fusc cluster" in export.output


def test_ingest_help_explains_the_shared_options():
    result = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--workdir", "--ray-address", "--manifest", "--ocr-engine", "--keep-ocr-text"):
        assert option in result.output


def test_ingest_without_input_or_with_a_missing_path_fails_clearly(tmp_path):
    result = runner.invoke(app, ["ingest", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "PATH" in result.output
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "path not found" in result.output


def test_ingest_refuses_an_unknown_ocr_engine(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path), "--ocr-engine", "magic",
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "ocr_engine" in result.output


def test_workdir_comes_from_the_environment(ray_session, data_dir, tmp_path):
    image = next((data_dir / "hc18" / "images").glob("*.png"))
    workdir = tmp_path / "from-env"
    result = runner.invoke(app, ["ingest", str(image), "--ocr-engine", "none"],
                           env={"FUSC_WORKDIR": str(workdir)})
    assert result.exit_code == 0, result.output
    assert "ingested (rows in scans)" in result.output
    assert (workdir / "lancedb" / "scans.lance").is_dir()


def _commands():
    import typer

    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


def _shown_defaults(command: str) -> dict[str, str]:
    """{--flag: the default `fusc COMMAND --help` prints for it}."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    found = (re.search(r"(--[\w-]+).*\[default: (.*?)\]", line)
             for line in result.output.splitlines())
    return {match[1]: match[2] for match in found if match}


def test_every_option_of_every_command_has_help():
    commands = _commands()
    assert {"ingest", "train-ssl", "embed", "sites", "neighbors", "cluster", "self-label",
            "assign", "export", "run", "serve"} <= set(commands)
    for name, command in commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"fusc {name} {param.opts}: no help"


def test_help_shows_the_config_defaults():
    cluster = _shown_defaults("cluster")
    for field in ("heads", "entropy_weight", "epochs", "mode", "network_epochs", "workers",
                  "seed"):
        assert cluster["--" + field.replace("_", "-")] == str(default_of(ClusterConfig, field))
    assert cluster["--use-gpu"] == "no-use-gpu"
    assert cluster["--entropy-weight"] == "5.0"  # λ of METHOD.md
    assert _shown_defaults("self-label")["--threshold"] == str(
        default_of(SelfLabelConfig, "threshold"))
    run = _shown_defaults("run")
    for flag, field in {"--clusters": "cluster.clusters", "--views": "embed.views",
                        "--k": "neighbors.k", "--cluster-epochs": "cluster.epochs",
                        "--cluster-mode": "cluster.mode", "--profile": "ssl.profile",
                        "--seed": "cluster.seed"}.items():
        stage, name = field.split(".")
        assert run[flag] == str(getattr(default_of(RunConfig, stage), name)), flag
    assert run["--ssl-epochs"] == f"({default_of(SSLConfig, 'epochs')})"  # the profile's
    assert run["--views"] == "20" and run["--k"] == "20"


def test_model_is_a_hidden_deprecated_alias(tmp_path):
    for command in ("embed", "run", "self-label", "assign", "export", "serve"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--model" not in result.output, command
    workdir = str(tmp_path / "empty")
    result = runner.invoke(app, ["assign", "--model", "nope", "--workdir", workdir])
    assert result.exit_code == 2 and "--model is deprecated: use --cluster-model" in result.output
    assert "nope" in result.output  # the version went where --cluster-model's would


def test_frames_all_keeps_every_frame():
    assert IngestConfig(frames="all").frames is None
    assert IngestConfig(frames="16").frames == 16


def test_help_wraps_each_paragraph_to_the_terminal():
    """A command's description is wrapped by the terminal, not broken where its source line
    ended: at 80 columns `neighbors --help` keeps "spread less than 0.8 × the median" on one
    line (the docstring breaks the line after "less than")."""
    for command in (["neighbors"], ["clusters", "review"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        description = result.output.split("╭")[0]
        lines = [line.strip() for line in description.splitlines()]
        for line, following in zip(lines, lines[1:]):
            assert not (line and following and len(line) < 50), (command, line)
    assert "spread less than 0.8 × the median" in " ".join(
        runner.invoke(app, ["neighbors", "--help"], env={"COLUMNS": "80"}).output.split())
