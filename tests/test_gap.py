"""The enforcement gap (conformance/gap.py, runner.run_step): a probe loop beside apply() that catches a
newly denied probe still allowed after the target reported the change in force.

Why these tests: a gap detector that never fires looks exactly like a target without a gap. So a fake
session with a scripted lag (enforcement trailing its own "in force" signal by N probe rounds) must be
caught, counted and timed; one without lag must be reported closed; failures must never read as zero;
and the real local mesh, where Envoy acknowledges a change only once it holds it, must show no gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conformance.gap import GapRecord, measure_gap
from conformance.mesh.local.mesh import LocalTarget
from conformance.model import ALLOWED, DENIED_L7, Manifest, Probe
from conformance.probe import NO_ALLOW_MATCHED, Evidence, Observation, Proof
from conformance.runner import run_step
from conformance.scenario import load
from conformance.target import Applied
from conformance.versions import IstioVersion

DATA = Path(__file__).parent / "data"
VERSION = IstioVersion.parse(None)


def _allowed(p: Probe) -> Observation:
    body = f"{p.destination.ref} responding\n{{}}"
    return Observation(ALLOWED, Evidence(0, 200, body, "", 0.002, "curl ..."))


def _denied(p: Probe) -> Observation:
    proof = Proof(f"sidecar:{p.destination.ref}", NO_ALLOW_MATCHED, None, None,
                  '{"details":"rbac_access_denied_matched_policy[none]"}', "sidecar", p.destination.ref)
    return Observation(DENIED_L7, Evidence(0, 403, "RBAC: access denied", "", 0.002, "curl ..."), proof)


class LaggingSession:
    """A session whose enforcement trails its own acknowledgement by `lag` probe rounds.

    Before apply() is called every probe is allowed (no policy); apply() returns at once ("in force"),
    but the next `lag` probe() calls still answer allowed, then everything is denied. That is exactly the
    fail-open window the loop must catch.
    """

    mode = "sidecar"
    probes_during_apply = True

    def __init__(self, addresses: dict[str, str], lag: int, fail_apply: bool = False, fail_probe: bool = False):
        self.addresses = addresses
        self.lag = lag
        self.fail_apply = fail_apply
        self.fail_probe = fail_probe
        self.applied = False
        self.calls = 0
        self.lock = threading.Lock()

    def apply(self, policies: Sequence[Manifest]) -> Applied:
        if self.fail_apply:
            raise RuntimeError("apply failed")
        with self.lock:
            self.applied = True
            at = time.monotonic()  # the target's own "in force" instant, as the local mesh reports it
        return Applied(0.0, acknowledged_at=at)

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        with self.lock:
            self.calls += 1
            if self.fail_probe and self.calls > 1:
                raise RuntimeError("curl vanished")
            if not self.applied:
                return [_allowed(p) for p in probes]
            if self.lag > 0:
                self.lag -= 1
                return [_allowed(p) for p in probes]
            return [_denied(p) for p in probes]

    def close(self) -> None:
        pass

    def __enter__(self) -> LaggingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture()
def scenario() -> Any:
    return load(DATA / "good.yaml", VERSION)


def _addresses(scenario: Any) -> dict[str, str]:
    return {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)}


def test_a_lagging_target_is_caught_counted_and_timed(scenario: Any) -> None:
    session = LaggingSession(_addresses(scenario), lag=3)
    step = scenario.step("deny-all")
    result = run_step(session, scenario, step, VERSION, required=3, deadline=5.0, gap_rounds=5)  # type: ignore[arg-type]
    gap = result.gap
    assert gap.rows == (0,), "the one probe that goes from allow to deny is watched"
    assert gap.measured and not gap.closed
    # The lag is 3 rounds after apply() returned; at most one of them can start before the runner saw
    # apply() return, so 2 or 3 are counted after the barrier.
    assert 2 <= gap.stale_allowed <= 3, gap.rounds
    assert gap.stale_rows == (0,)
    assert gap.max_stale_seconds > 0
    assert gap.rounds_after >= 5
    assert gap.allowed_during >= 1, "the first round runs before the change: allowed, as it must be"
    assert gap.enforced_seconds is not None and gap.enforced_seconds > gap.barrier_seconds
    assert "ENFORCEMENT GAP" in gap.describe() and "rows 0" in gap.describe()
    assert result.passed, "convergence still succeeds once enforcement catches up"


def test_a_target_without_lag_has_a_closed_gap(scenario: Any) -> None:
    session = LaggingSession(_addresses(scenario), lag=0)
    result = run_step(session, scenario, scenario.step("deny-all"), VERSION, deadline=5.0)  # type: ignore[arg-type]
    assert result.gap.closed and result.gap.stale_allowed == 0 and result.gap.rounds_after >= 3
    assert result.gap.describe().startswith("enforcement gap: none")


def test_only_probes_that_flip_from_allow_to_deny_are_watched(scenario: Any) -> None:
    """After deny-all, the allow-finance step allows finance and keeps rogue denied: nothing flips to deny,
    so nothing is watched; the runner remembers what it last put in force on the session."""
    session = LaggingSession(_addresses(scenario), lag=0)
    run_step(session, scenario, scenario.step("deny-all"), VERSION, deadline=5.0)  # type: ignore[arg-type]
    # (the fake denies everything now, so this step does not converge: only its gap record matters)
    result = run_step(session, scenario, scenario.step("allow-finance"), VERSION, deadline=0.1)  # type: ignore[arg-type]
    assert result.gap.skipped is not None and "no probe goes from allow to deny" in result.gap.skipped
    assert not result.gap.closed, "not measured is never reported as closed"


def test_a_failing_probe_round_makes_the_gap_unknown_not_zero(scenario: Any) -> None:
    session = LaggingSession(_addresses(scenario), lag=0, fail_probe=True)
    probes = [e.probe for e in scenario.step("deny-all").expectations]
    _, gap = measure_gap(session, lambda: session.apply(()), list(enumerate(probes)))  # type: ignore[arg-type]
    assert gap.error is not None and "curl vanished" in gap.error
    assert not gap.measured and not gap.closed and "unknown" in gap.describe()


def test_apply_errors_propagate_and_stop_the_loop(scenario: Any) -> None:
    session = LaggingSession(_addresses(scenario), lag=0, fail_apply=True)
    probes = [e.probe for e in scenario.step("deny-all").expectations]
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="apply failed"):
        measure_gap(session, lambda: session.apply(()), list(enumerate(probes)))  # type: ignore[arg-type]
    assert threading.active_count() == before


def test_targets_that_cannot_probe_during_apply_are_skipped_with_a_reason(scenario: Any) -> None:
    class Plain(LaggingSession):
        probes_during_apply = False

    session = Plain(_addresses(scenario), lag=5)
    result = run_step(session, scenario, scenario.step("deny-all"), VERSION, deadline=5.0)  # type: ignore[arg-type]
    assert result.gap.skipped and not result.gap.measured
    assert session.calls == len(result.convergence.records[0].observations), "no extra probes"
    assert isinstance(result.gap, GapRecord)


# ---------------------------------------------------------------------------------------------------
# The real local mesh: zero is the goal, and the measurement must show it.


@pytest.fixture(params=["sidecar", "ambient", "waypoint"])
def mesh_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    reason = LocalTarget().unavailable(request.param)
    if reason:
        pytest.skip(reason)
    yield request.param


def test_the_local_mesh_has_no_enforcement_gap(mesh_mode: str) -> None:
    """Deny, allow, deny again, on every mode: no newly denied probe is ever allowed after apply()
    returned (Envoy acknowledged the listeners). Steps alternate so each deny is a real flip."""
    scenario = load(DATA / "gap.yaml", VERSION)
    target = LocalTarget()
    session = target.start(scenario, mesh_mode)  # type: ignore[arg-type]
    try:
        gaps: list[GapRecord] = []
        for step in scenario.steps:
            result = run_step(session, scenario, step, VERSION, required=1, deadline=10.0, gap_rounds=4)
            assert result.passed, [r.last for r in result.table.rows]
            gaps.append(result.gap)
        deny_steps = [g for g, s in zip(gaps, scenario.steps, strict=True) if s.name.startswith("deny") and g.rows]
        assert deny_steps, [g.describe() for g in gaps]
        for g in deny_steps:
            assert g.closed, g.describe()
            assert g.rounds_after >= 4 and g.inconclusive_after == 0, (g.describe(), g.rounds)
            assert g.enforced_seconds is not None, g.describe()
    finally:
        session.close()



class ExactLaggingSession(LaggingSession):
    """The same lag behind a target that claims an exact barrier (as the local mesh does)."""

    exact_barrier = True


def test_behind_an_exact_barrier_a_stale_allow_in_the_gap_loop_fails_the_step(scenario: Any) -> None:
    """Every observation after an exact barrier counts, the gap loop's too (runner._count_gap_rounds): a target
    whose enforcement trails its acknowledgement fails the step even when the convergence round, later, sees the
    denial; the stale observation is the probe's first, judged wrong, with its evidence."""
    # lag 2: the loop's first round may start before the change and still consume one lagging answer (it is then
    # counted as during), so the second lagging answer always falls after the barrier
    session = ExactLaggingSession(_addresses(scenario), lag=2)
    result = run_step(session, scenario, scenario.step("deny-all"), VERSION)  # type: ignore[arg-type]
    assert result.gap.rounds_after == 1, "one round after an exact barrier (issue 14)"
    assert not result.passed
    (row, record), *_ = result.failing()
    assert row.expectation.index == 0
    assert record.observations[0].outcome == ALLOWED and not record.judgements[0].passed
    assert record.stale_allowed >= 1 and "wrong after the barrier" in record.verdict_line()


def test_behind_an_exact_barrier_one_round_after_it_is_enough(scenario: Any) -> None:
    session = ExactLaggingSession(_addresses(scenario), lag=0)
    result = run_step(session, scenario, scenario.step("deny-all"), VERSION)  # type: ignore[arg-type]
    assert result.passed and result.convergence.rounds == 1 and result.gap.rounds_after == 1
    watched = result.convergence.records[0]
    assert [o.outcome for o in watched.observations] == [DENIED_L7, DENIED_L7]  # the gap round's, then the step's


def test_gap_rounds_after_an_exact_barrier_are_judged_before_the_steps_own(scenario: Any) -> None:
    """runner._count_gap_rounds on fixed records (no thread timing): a round after the barrier that saw the watched
    probe allowed becomes its first, wrong observation; a round during the change is not judged."""
    from conformance.converge import converge
    from conformance.gap import GapRound
    from conformance.runner import _count_gap_rounds
    from conformance.truthtable import predict
    from conformance.verdicts import judge

    step = scenario.step("deny-all")
    table = predict(scenario, step, "sidecar", VERSION, _addresses(scenario))
    probes = [row.probe for row in table.rows]

    def denied_round(indices: Sequence[int]) -> list[tuple[Observation, Any, bool]]:
        return [(_denied(probes[i]), judge(table.expected(table.rows[i]), table.rows[i].predicted,
                                           _denied(probes[i]), probes[i]), True) for i in indices]

    convergence = converge(len(table.rows), denied_round, required=1, exact=True)
    assert convergence.converged
    stale = _allowed(probes[0])
    gap = GapRecord((0,), [GapRound(-0.01, 0.0, False, (ALLOWED,), (stale,)),
                           GapRound(0.001, 0.01, True, (ALLOWED,), (stale,))])
    _count_gap_rounds(table, convergence, gap)
    record = convergence.records[0]
    assert [o.outcome for o in record.observations] == [ALLOWED, DENIED_L7]  # the during round is not counted
    assert not record.passed and record.stale_allowed == 1 and not convergence.converged
    assert all(r.passed for r in convergence.records[1:])
