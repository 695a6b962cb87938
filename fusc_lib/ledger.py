"""`fusc run`'s ledger: what each finished stage was made from, so an unchanged stage is skipped.

A stage records its inputs (table versions, row counts, the options it ran with: any JSON) in
`<workdir>/stages/<stage>.json` when it finishes; while a new run would give it the same
inputs, it is skipped. A killed run, run again, therefore continues with the stage it was in,
and changing an option reruns that stage and — through the stamps the later stages record —
everything after it. A stamp may also hand a stage's result to a later one (`fusc run` records
the model `fusc cluster` made under `cluster-output`, which self-label's inputs name).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fusc_lib.layout import STAGES

if TYPE_CHECKING:
    from fusc_lib.store import Workdir

class StageLedger:
    """The stamps of one workdir's stages (JSON files, local or on object storage)."""

    def __init__(self, workdir: Workdir):
        self.workdir = workdir

    def stamp(self, stage: str) -> dict:
        """The inputs `stage` last finished with; {} if it never did."""
        return self.workdir.read_json(STAGES, f"{stage}.json") or {}

    def is_current(self, stage: str, inputs: dict) -> bool:
        """True when `stage` finished before with exactly these inputs (compared as JSON)."""
        stamp = self.stamp(stage)
        return bool(stamp) and stamp == _as_json(inputs)

    def record(self, stage: str, inputs: dict) -> None:
        """Write `stage`'s stamp: call only once the stage's outputs are committed."""
        self.workdir.write_json(inputs, STAGES, f"{stage}.json")



def _as_json(inputs: dict) -> dict:
    """`inputs` as a stamp reads back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(inputs, sort_keys=True))
