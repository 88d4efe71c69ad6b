"""Running one step of a scenario on a target: predict, apply, probe until converged, judge.

Written once for every target (the local mesh, kind, an existing cluster): it only talks to the
`MeshSession` interface (target.py). The pytest plugin and `authz-conformance repro` both call it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from conformance.converge import Convergence, ProbeRecord, converge, required_observations
from conformance.gap import DEFAULT_ROUNDS_AFTER, GapRecord, measure_gap
from conformance.model import ALLOWED, Manifest, Probe, Scenario, Step
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
    # The enforcement gap measured while the change landed (gap.py): which newly denied probes were
    # still allowed after the target reported the change in force, how often and for how long.
    gap: GapRecord = field(default_factory=lambda: GapRecord(skipped="not measured"))

    def record(self, row: Row) -> ProbeRecord:
        return self.convergence.records[self.table.rows.index(row)]

    def failing(self) -> list[tuple[Row, ProbeRecord]]:
        return [(row, rec) for row, rec in zip(self.table.rows, self.convergence.records, strict=True)
                if not rec.passed]

    @property
    def passed(self) -> bool:
        return not self.failing()

    @property
    def stale(self) -> list[tuple[Row, ProbeRecord]]:
        """Probes whose first observation after the barrier was wrong but that then converged: an
        enforcement gap on this target. Only where the barrier is not exact (after an exact one a wrong
        observation is a failure) and only where the scenario and the engine agree (otherwise the
        "stale" observation may be the right one and the expectation wrong)."""
        return [(row, rec) for row, rec in zip(self.table.rows, self.convergence.records, strict=True)
                if not rec.exact and rec.judgements and not rec.judgements[0].passed and rec.passed
                and not self.table.disagrees(row)]


# What run_step last put in force on each session, to know which probes a step newly denies. Keyed
# weakly: a closed session must not be kept alive by this.
_IN_FORCE: weakref.WeakKeyDictionary[object, tuple[Manifest, ...]] = weakref.WeakKeyDictionary()


def _in_force(session: MeshSession) -> tuple[Manifest, ...]:
    try:
        return _IN_FORCE.get(session, ())
    except TypeError:  # a session type that cannot be weakly referenced: assume a fresh mesh
        return ()


def _remember(session: MeshSession, policies: tuple[Manifest, ...]) -> None:
    with contextlib.suppress(TypeError):  # not weakly referenceable: the next step assumes a fresh mesh
        _IN_FORCE[session] = policies


def newly_denied(scenario: Scenario, step: Step, table: TruthTable, before: tuple[Manifest, ...],
                 version: IstioVersion, addresses: dict[str, str]) -> list[tuple[int, Probe]]:
    """The rows this step expects denied that the policies in force before it allowed (engine's view):
    the probes a change that has not landed yet would still let through. A row whose expectation the
    engine contradicts is left out: its "stale" allow may be the right answer, never a gap."""
    previous = predict(scenario, Step(f"{step.name} (before)", before, step.expectations), table.mode, version,
                       addresses)
    return [(i, row.probe) for i, (row, prev) in enumerate(zip(table.rows, previous.rows, strict=True))
            if _must_deny(table, row) and prev.predicted.verdict == "allow"]


def _must_deny(table: TruthTable, row: Row) -> bool:
    """The row is expected denied and the engine agrees: only then is an allowed observation of it a stale one (the
    gap); where the two disagree the allow may be the right answer and the expectation wrong."""
    return table.expected(row) == "deny" and not table.disagrees(row)


def _judged(table: TruthTable, row: Row, obs: Observation) -> tuple[Observation, Judgement, bool]:
    """One observation of a row, judged against the row's expectation, with whether the row must be denied."""
    return obs, judge(table.expected(row), row.predicted, obs, row.probe), _must_deny(table, row)


def _count_gap_rounds(table: TruthTable, convergence: Convergence, gap_record: GapRecord) -> None:
    """Behind an exact barrier every observation after it counts, the gap loop's too: each round the loop started
    after the acknowledgement is judged like a convergence round and goes first into its probes' records, so a
    stale allow there fails the step (with its evidence) instead of being only reported as a gap."""
    earlier: dict[int, list[tuple[Observation, Judgement]]] = {}
    for gap_round in gap_record.rounds:  # in the order they ran
        if not gap_round.after_barrier:
            continue
        # strict: a round after the barrier is judged whole (measure_gap records only complete rounds)
        for index, obs in zip(gap_record.rows, gap_round.observations, strict=True):
            _, judgement, must_deny = _judged(table, table.rows[index], obs)
            earlier.setdefault(index, []).append((obs, judgement))
            if must_deny and obs.outcome == ALLOWED:
                convergence.records[index].stale_allowed += 1
    for index, seen in earlier.items():
        record = convergence.records[index]
        record.observations[:0] = [obs for obs, _ in seen]
        record.judgements[:0] = [judgement for _, judgement in seen]
        record.converged_after = len(record.observations) if record.passed else None
    convergence.converged = all(r.passed for r in convergence.records)


def run_step(
    session: MeshSession,
    scenario: Scenario,
    step: Step,
    version: IstioVersion,
    required: int | None = None,
    deadline: float = 30.0,
    gap: bool | None = None,
    gap_rounds: int | None = None,
) -> StepResult:
    """Predict, apply (measuring the enforcement gap), then probe until converged, and judge.

    `gap`: probe the newly denied rows in a tight loop while the change lands (gap.py). None (default)
    measures it where the session says probes may run while apply() does (`probes_during_apply`, the
    local mesh); a target without that flag gets `gap.skipped`.
    """
    table = predict(scenario, step, session.mode, version, session.addresses)
    rows = table.rows
    measure = getattr(session, "probes_during_apply", False) if gap is None else gap
    exact = bool(getattr(session, "exact_barrier", False))
    if gap_rounds is None:
        # behind an exact barrier one round after it is the proof (and it is judged: below); elsewhere the loop looks
        # a few rounds longer for a stale allow, which is then the enforcement gap
        gap_rounds = 1 if exact else DEFAULT_ROUNDS_AFTER
    if measure:
        watched = newly_denied(scenario, step, table, _in_force(session), version, dict(session.addresses))
        applied, gap_record = measure_gap(session, lambda: session.apply(step.policies), watched, gap_rounds)
    else:
        applied = session.apply(step.policies)
        gap_record = GapRecord(skipped="the target does not probe while a change lands")
    _remember(session, step.policies)

    def probe_round(indices: Sequence[int]) -> list[tuple[Observation, Judgement, bool]]:
        selected = [rows[i] for i in indices]
        observations = session.probe([r.probe for r in selected])
        return [_judged(table, row, obs) for row, obs in zip(selected, observations, strict=True)]

    # On an exact barrier the deadline is the barrier's business (apply() above): every probe is observed
    # `required` times and each observation counts (converge.py).
    convergence = converge(len(rows), probe_round, required=required_observations(required, exact),
                           deadline=deadline, exact=exact)
    if exact:
        _count_gap_rounds(table, convergence, gap_record)
    for row, rec in zip(rows, convergence.records, strict=True):
        row.observed = rec.observations
        row.converged_after = rec.converged_after
    return StepResult(table, applied, convergence, gap_record)
