"""`fusc run`'s ledger on a real workdir folder: a stage is skipped only for the same inputs."""

from __future__ import annotations

from fusc_lib.ledger import StageLedger
from fusc_lib.store import Workdir


def test_a_stage_is_current_only_for_the_inputs_it_finished_with(tmp_path):
    ledger = StageLedger(Workdir(str(tmp_path / "w")))
    inputs = {"scans": 3, "seed": 0, "sizes": (1, 2)}
    assert not ledger.is_current("sites", inputs)  # never ran
    ledger.record("sites", inputs)
    assert ledger.is_current("sites", inputs)  # tuples compare as the lists JSON gives back
    assert not ledger.is_current("sites", {**inputs, "seed": 1})
    assert not ledger.is_current("neighbors", inputs)  # stamps are per stage


def test_stamps_outlive_the_process_and_hand_results_on(tmp_path):
    StageLedger(Workdir(str(tmp_path / "w"))).record("cluster-output", {"version": "v7"})
    again = StageLedger(Workdir(str(tmp_path / "w")))  # a later `fusc run`
    assert again.stamp("cluster-output") == {"version": "v7"}
    assert again.stamp("self-label") == {}
    assert (tmp_path / "w" / "stages" / "cluster-output.json").is_file()


def test_an_empty_stamp_is_never_current(tmp_path):
    ledger = StageLedger(Workdir(str(tmp_path / "w")))
    assert not ledger.is_current("embed", {})
