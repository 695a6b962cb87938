"""The `fusc` command line a new user meets: help, clear errors, the ingest summary."""

from __future__ import annotations

from typer.testing import CliRunner

from fusc_lib.cli import app

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
