"""A pass is earned (issue 9), on the real local mesh: each probe is proven by its own record, proofs say
what decided and where, a wrong observation after Envoy's acknowledgement fails at once and is never
retried away, a wrong expectation is not passed off as an enforcement gap, and a dead proxy is an
infrastructure failure, not a verdict.

Each test here failed (or would have passed wrongly) before the fix it guards: records were found by
a scenario-settable x-request-id, judgements were forgiven by N-in-a-row, and proofs had no kind.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.failures import INFRASTRUCTURE as INFRASTRUCTURE_CATEGORY
from conformance.failures import InfrastructureFailure, step_failure
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import ALLOWED, Expectation, Scenario, Step
from conformance.probe import DENY_POLICY, NO_ALLOW_MATCHED, PROXY_ALLOWED, Evidence, Observation, Proof
from conformance.report import cell_line, unconfirmed_denials
from conformance.runner import run_step
from conformance.scenario import load
from conformance.target import Applied
from conformance.truthtable import predict
from conformance.verdicts import INFRASTRUCTURE, judge
from conformance.versions import IstioVersion

DATA = Path(__file__).parent / "data"
SHARED_ID = DATA / "trust" / "shared-request-id.yaml"
VERSION = IstioVersion.parse(None)


@pytest.fixture(scope="module")
def shared_id() -> Scenario:
    return load(SHARED_ID, VERSION)


def _session(scenario: Scenario, mode: str) -> Iterator[LocalMeshSession]:
    target = LocalTarget()
    reason = target.unavailable(mode)  # type: ignore[arg-type]
    if reason:
        pytest.skip(reason)
    with target.start(scenario, mode) as session:  # type: ignore[arg-type]
        yield session


@pytest.fixture(scope="module")
def sidecar(shared_id: Scenario) -> Iterator[LocalMeshSession]:
    yield from _session(shared_id, "sidecar")


@pytest.mark.parametrize("mode", ["sidecar", "ambient", "waypoint"])
def test_probes_sharing_an_x_request_id_each_get_their_own_record(shared_id: Scenario, mode: str) -> None:
    """Three probes with `x-request-id: fixed`, decided by different policies (and an allowed one): each
    proof is the record of that probe, naming what the engine says decided it, in every mode; with ten
    observations each, every one of them right (strict judging)."""
    step = shared_id.steps[0]
    for session in _session(shared_id, mode):
        result = run_step(session, shared_id, step, VERSION, required=10)
        assert result.passed, [(r.probe.describe(), rec.verdict_line(), rec.failing_judgement)
                               for r, rec in result.failing()]
        for index, (row, rec) in enumerate(zip(result.table.rows, result.convergence.records, strict=True)):
            # ten rounds, plus the gap loop's rounds after the barrier for a probe the step newly denies (they count)
            gap_rounds = result.gap.rounds_after if index in result.gap.rows else 0
            assert len(rec.judgements) == 10 + gap_rounds and rec.wrong == 0
            d = row.predicted
            for obs in rec.observations:
                assert obs.proof is not None, (row.probe.describe(), obs.notes)
                if d.verdict == "allow":
                    assert obs.proof.kind == PROXY_ALLOWED, (row.probe.describe(), obs.proof)
                else:
                    assert obs.proof.kind == (DENY_POLICY if d.reason == "deny-matched" else NO_ALLOW_MATCHED)
                    assert obs.proof.policy == d.policy
                    assert f"{obs.proof.layer}:{obs.proof.serves}" == d.enforcer(row.probe)
                    assert "fixed" in obs.proof.line or mode != "sidecar"  # the scenario's header was sent


def test_a_wrong_expectation_fails_in_n_rounds_and_claims_no_gap(sidecar: LocalMeshSession,
                                                                 shared_id: Scenario) -> None:
    """The scenario says allow where the policies deny: after the exact barrier every observation counts,
    so the step fails after N rounds (not a convergence deadline), with the count of wrong ones, and
    the allowed-vs-denied difference is never called an enforcement gap."""
    step = shared_id.steps[0]
    wrong = step.expectations[0]  # /secret from web: denied by shop/deny-secret
    claimed = Expectation(wrong.index, wrong.probe, {"sidecar": "allow"})  # the scenario now claims allow
    bad_step = Step(step.name, step.policies, (claimed, *step.expectations[1:]))
    result = run_step(sidecar, shared_id, bad_step, VERSION, required=3, deadline=3600)
    assert not result.passed
    assert result.convergence.rounds == 3  # no waiting for the 3600 s deadline
    row, rec = result.failing()[0]
    assert row.expectation is claimed and rec.wrong == 3 and rec.verdict_line() == "3 of 3 wrong after the barrier"
    assert result.table.disagreement(row) is not None
    assert result.stale == [] and all(r.stale_allowed == 0 for r in result.convergence.records)
    assert result.gap.stale_allowed == 0


def test_the_inverse_wrong_expectation_is_no_gap_either(sidecar: LocalMeshSession, shared_id: Scenario) -> None:
    """The scenario says deny where the policies allow: the allowed observations are the right answer the
    expectation got wrong, not a stale allow after the barrier."""
    step = shared_id.steps[0]
    ok = step.expectations[1]  # /ok from web: allowed
    claimed = Expectation(ok.index, ok.probe, {"sidecar": "deny"})
    bad_step = Step(step.name, step.policies, (step.expectations[0], claimed))
    sidecar.apply([])  # so the step newly "denies" it in the scenario's eyes
    result = run_step(sidecar, shared_id, bad_step, VERSION, required=3, deadline=3600)
    assert not result.passed and result.convergence.rounds == 3
    assert all(r.stale_allowed == 0 for r in result.convergence.records)
    assert result.gap.stale_allowed == 0 and result.stale == []


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_a_dead_destination_proxy_is_infrastructure_not_a_verdict(shared_id: Scenario, mode: str) -> None:
    # ambient: the one ztunnel Envoy of the run serves every ambient workload, so its death is every probe's problem
    step = shared_id.steps[0]
    for session in _session(shared_id, mode):
        session.apply(step.policies)
        table = predict(shared_id, step, mode, VERSION, session.addresses)  # type: ignore[arg-type]
        env = session._envoys["shop/api"]
        assert env.proc is not None
        env.proc.kill()
        env.proc.wait()
        observations = session.probe([r.probe for r in table.rows])
        for row, obs in zip(table.rows, observations, strict=True):
            j = judge(table.expected(row), row.predicted, obs, row.probe)
            assert (j.passed, j.category) == (False, INFRASTRUCTURE), (row.probe.describe(), obs)
            assert f"the {'sidecar' if mode == 'sidecar' else 'ztunnel'} of shop/api is not running" in j.message
            assert obs.outcome != ALLOWED


def test_a_scenario_cannot_set_the_suites_probe_header(tmp_path: Path) -> None:
    text = SHARED_ID.read_text().replace("x-request-id: fixed}}}", "x-authz-conformance-probe: forged}}}", 1)
    bad = tmp_path / "forged.yaml"
    bad.write_text(text)
    from conformance.errors import ScenarioError

    with pytest.raises(ScenarioError) as info:
        load(bad, VERSION)
    assert "x-authz-conformance-probe" in str(info.value)


def test_the_shared_id_scenario_passes_with_converge_10_through_pytest(pytester: pytest.Pytester) -> None:
    """The issue's bar, as a user runs it: `pytest <scenario> --converge 10` on the local mesh."""
    shutil.copy(SHARED_ID, pytester.path / "shared.yaml")
    result = pytester.runpytest_subprocess("shared.yaml", "--converge", "10", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


class _Scripted:
    """A cluster-like session (no exact barrier) answering from a script, one list of observations per round."""

    mode = "sidecar"

    def __init__(self, scenario: Scenario, rounds: list[list[Observation]]):
        self.addresses = {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)}
        self.rounds = rounds

    def apply(self, policies: Any) -> Applied:
        return Applied(0.0)

    def probe(self, probes: Any) -> list[Observation]:
        return self.rounds.pop(0)[: len(probes)] if len(self.rounds) > 1 else self.rounds[0][: len(probes)]


def _one_probe_step(scenario: Scenario) -> Step:
    step = scenario.steps[0]
    return Step(step.name, step.policies, step.expectations[:1])  # web → /secret, denied by shop/deny-secret


def _denial(unconfirmed: str | None = None, proof: bool = True) -> Observation:
    p = Proof("sidecar:shop/api", DENY_POLICY, "shop/deny-secret", 0, "line", "sidecar", "shop/api") if proof else None
    return Observation("denied-l7", Evidence(0, 403, "RBAC: access denied"), p, unconfirmed=unconfirmed)


def test_on_clusters_a_wrong_observation_after_a_right_one_fails_the_step(shared_id: Scenario) -> None:
    """issue 9, "retries forgive": right, wrong, then right N times in a row is flaky, not converged."""
    allowed = Observation(ALLOWED, Evidence(0, 200, "shop/api responding\n{}"))
    session = _Scripted(shared_id, [[_denial()], [allowed], [_denial()], [_denial()], [_denial()]])
    result = run_step(session, shared_id, _one_probe_step(shared_id), VERSION, required=3, deadline=60)  # type: ignore[arg-type]
    assert not result.passed
    (row, rec), = result.failing()
    assert rec.flaky == 1 and "flaky" in rec.verdict_line()
    assert "[1 wrong after a right one]" in cell_line(result.table, row, rec)
    assert result.stale == []  # flakiness is not the enforcement gap


def test_unconfirmed_denials_pass_only_by_opt_in_and_are_listed(shared_id: Scenario) -> None:
    session = _Scripted(shared_id, [[_denial("log of istio-proxy unreadable", proof=False)]])
    result = run_step(session, shared_id, _one_probe_step(shared_id), VERSION, required=2, deadline=60)  # type: ignore[arg-type]
    assert result.passed
    (line,) = unconfirmed_denials([result])
    assert "expect[0]" in line and "log of istio-proxy unreadable" in line
    session = _Scripted(shared_id, [[_denial(proof=False)]])
    result = run_step(session, shared_id, _one_probe_step(shared_id), VERSION, required=2, deadline=0)  # type: ignore[arg-type]
    assert not result.passed and unconfirmed_denials([result]) == []


def test_a_target_fault_fails_the_step_as_infrastructure(shared_id: Scenario) -> None:
    dead = "the sidecar of shop/api is not running (Envoy exited with -9)"
    broken = Observation("denied-upstream", Evidence(0, 503, "upstream connect error or disconnect/reset before "
                                                            "headers. reset reason: connection failure"),
                         problem=dead)
    session = _Scripted(shared_id, [[broken]])
    result = run_step(session, shared_id, _one_probe_step(shared_id), VERSION, required=2, deadline=0)  # type: ignore[arg-type]
    failure = step_failure(result)
    assert isinstance(failure, InfrastructureFailure) and failure.category is INFRASTRUCTURE_CATEGORY
    assert dead in str(failure)


def test_each_probe_failure_keeps_its_own_category() -> None:
    """An Allure step's status and category come from that probe's judgement: an infrastructure fault or
    a denial without proof is never filed as an inconclusive probe or a mismatch."""
    from conformance.failures import INCONCLUSIVE, MISMATCH, UNPROVEN, probe_failure
    from conformance.verdicts import Judgement

    for category in (MISMATCH, UNPROVEN, INCONCLUSIVE, INFRASTRUCTURE_CATEGORY):
        failure = probe_failure(Judgement(False, category.tag, "what happened"))
        assert failure.category is category and str(failure) == f"{category.tag}: what happened"


def test_a_scenario_cannot_set_the_local_meshs_client_header(tmp_path: Path) -> None:
    """x-conformance-client carries curl's address to the proof lookup: a scenario setting it could plant a
    record keyed to another probe, so validation refuses it and curl never sends a scenario's value."""
    from conformance.errors import ScenarioError
    from conformance.mesh.local.curl import CurlRequest

    bad = tmp_path / "planted.yaml"
    planted = "X-Conformance-Client: '127.1.0.1:61000'}}}"
    bad.write_text(SHARED_ID.read_text().replace("x-request-id: fixed}}}", planted, 1))
    with pytest.raises(ScenarioError) as info:
        load(bad, VERSION)
    assert "X-Conformance-Client" in str(info.value) and "reserved" in str(info.value)
    argv = CurlRequest("a.b", 80, "/", "GET", (("x-conformance-client", "127.1.0.1:61000"),), "127.0.0.1", 1,
                       probe_id="p").argv("curl", 1, 1)
    assert not any("127.1.0.1:61000" in a for a in argv)
