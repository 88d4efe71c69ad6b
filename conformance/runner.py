"""Running one step of a scenario on a target: predict, apply, probe until converged, judge.

Written once for every target (the local mesh, kind, an existing cluster): it only talks to the
`MeshSession` interface (target.py). The pytest plugin and `authz-conformance repro` both call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conformance.converge import Convergence, ProbeRecord, converge
from conformance.model import Scenario, Step
from conformance.probe import Observation
from conformance.target import Applied, MeshSession
from conformance.truthtable import Row, TruthTable, predict
from conformance.verdicts import Judgement, judge
from conformance.versions import IstioVersion


@dataclass
class StepResult:
    table: TruthTable
    applied: Applied
    convergence: Convergence

    def record(self, row: Row) -> ProbeRecord:
        return self.convergence.records[self.table.rows.index(row)]

    def failing(self) -> list[tuple[Row, ProbeRecord]]:
        return [(row, rec) for row, rec in zip(self.table.rows, self.convergence.records, strict=True)
                if rec.last is None or not rec.last.passed]

    @property
    def passed(self) -> bool:
        return not self.failing()

    @property
    def stale(self) -> list[tuple[Row, ProbeRecord]]:
        """Probes whose first observation after the barrier was wrong: an enforcement gap on this target."""
        return [(row, rec) for row, rec in zip(self.table.rows, self.convergence.records, strict=True)
                if rec.judgements and not rec.judgements[0].passed and rec.converged_after is not None]


def run_step(
    session: MeshSession,
    scenario: Scenario,
    step: Step,
    version: IstioVersion,
    required: int = 3,
    deadline: float = 30.0,
    proofs_readable: bool = True,
) -> StepResult:
    table = predict(scenario, step, session.mode, version, session.addresses)
    applied = session.apply(step.policies)
    rows = table.rows

    def probe_round(indices: Sequence[int]) -> list[tuple[Observation, Judgement, bool]]:
        selected = [rows[i] for i in indices]
        observations = session.probe([r.probe for r in selected])
        out = []
        for row, obs in zip(selected, observations, strict=True):
            expected = table.expected(row)
            out.append((obs, judge(expected, row.predicted, obs, proofs_readable), expected == "deny"))
        return out

    convergence = converge(len(rows), probe_round, required=required, deadline=deadline)
    for row, rec in zip(rows, convergence.records, strict=True):
        row.observed = rec.observations
        row.converged_after = rec.converged_after
    return StepResult(table, applied, convergence)
