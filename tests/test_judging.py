"""The classifier, the judgement of one observation, and convergence, without any mesh.

Every target is held to these: `allowed` needs the destination app's own answer; a denial needs the
predicted form and the enforcing proxy's record naming the engine's deciding policy; timeouts and
errors never pass. Convergence runs on a fake clock: nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.converge import converge
from conformance.engine import Decision
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, DENIED_UPSTREAM, ERROR, TIMEOUT
from conformance.probe import Evidence, Observation, Proof, classify
from conformance.verdicts import INCONCLUSIVE, MISMATCH, UNPROVEN, Judgement, judge

OK_BODY = 'accounts/accounts responding\n{"method": "GET"}'


@pytest.mark.parametrize(("exit_code", "status", "body", "outcome"), [
    (0, 200, OK_BODY, ALLOWED),
    (0, 200, 'finance/curl responding\n{}', ERROR),  # the wrong workload answered: never a pass
    (0, 200, "hello", ERROR),
    (0, 403, "RBAC: access denied", DENIED_L7),
    (0, 403, "Forbidden", ERROR),  # a 403 that is not Envoy's RBAC reply
    (0, 503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
     DENIED_UPSTREAM),
    (0, 503, "no healthy upstream", ERROR),
    (56, 0, "", DENIED_L4), (52, 0, "", DENIED_L4),
    (28, 0, "", TIMEOUT), (7, 0, "", ERROR), (6, 0, "", ERROR),
    (0, 404, "not found", ERROR),
])
def test_classify_from_curl_output(exit_code: int, status: int, body: str, outcome: str) -> None:
    assert classify(Evidence(exit_code, status, body), "accounts/accounts") == outcome


@given(st.integers(0, 100), st.integers(0, 599), st.text(max_size=40))
def test_classify_is_total_and_allowed_needs_the_destinations_answer(code: int, status: int, body: str) -> None:
    outcome = classify(Evidence(code, status, body), "accounts/accounts")
    assert outcome in (ALLOWED, DENIED_L4, DENIED_L7, DENIED_UPSTREAM, TIMEOUT, ERROR)
    if outcome == ALLOWED:
        assert code == 0 and 200 <= status < 300 and body.split("\n", 1)[0].strip() == "accounts/accounts responding"


DENY_BY_POLICY = Decision("deny", DENIED_L7, "sidecar", "deny-matched", "ns/deny-all", 0)
DENY_NO_ALLOW = Decision("deny", DENIED_L4, "ztunnel", "allow-unmatched")
ALLOW = Decision("allow", ALLOWED, "sidecar", "no-policy")


def obs(outcome: str, proof_policy: str | None = "ns/deny-all", denied: bool = True, proof: bool = True) -> Observation:
    p = Proof("sidecar:ns/b", denied, proof_policy, 0, "log line") if proof else None
    return Observation(outcome, Evidence(0, 0, ""), p)


def test_allow_needs_allowed() -> None:
    assert judge("allow", ALLOW, obs(ALLOWED, proof=False), True).passed
    j = judge("allow", ALLOW, obs(DENIED_L7), True)
    assert (j.passed, j.category) == (False, MISMATCH)


def test_deny_needs_the_predicted_form_and_proof_naming_the_same_policy() -> None:
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7), True).passed
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L4), True).category == MISMATCH  # wrong form
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof=False), True).category == UNPROVEN
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof_policy="ns/other"), True).category == MISMATCH
    assert judge("deny", DENY_NO_ALLOW, obs(DENIED_L4, proof_policy=None), True).passed


def test_unreadable_proof_passes_but_is_marked_unconfirmed() -> None:
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof=False), False)
    assert j.passed and j.unconfirmed


@pytest.mark.parametrize("outcome", [TIMEOUT, ERROR])
@pytest.mark.parametrize("expected", ["allow", "deny"])
def test_timeout_and_error_never_pass(outcome: str, expected: str) -> None:
    j = judge(expected, DENY_BY_POLICY, obs(outcome), True)
    assert (j.passed, j.category) == (False, INCONCLUSIVE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _round(script: list[list[bool]], allowed_when_wrong: bool = False):  # type: ignore[no-untyped-def]
    """probe_round that answers from a script: script[row][n] is whether the n-th observation passes."""
    seen = [0] * len(script)

    def probe_round(indices: Sequence[int]) -> list[tuple[Observation, Judgement, bool]]:
        out = []
        for i in indices:
            ok = script[i][min(seen[i], len(script[i]) - 1)]
            seen[i] += 1
            outcome = DENIED_L7 if ok else (ALLOWED if allowed_when_wrong else ERROR)
            out.append((Observation(outcome, Evidence(0, 0, "")), Judgement(ok), True))
        return out

    return probe_round


def test_converges_after_n_in_a_row_and_counts_observations() -> None:
    clock = FakeClock()
    result = converge(2, _round([[True], [False, True]]), required=3, deadline=10, clock=clock, sleep=clock.sleep)
    assert result.converged
    assert [r.converged_after for r in result.records] == [3, 4]
    assert result.rounds == 4


def test_a_failure_resets_the_streak() -> None:
    clock = FakeClock()
    result = converge(1, _round([[True, True, False, True, True, True]]), required=3, deadline=10, clock=clock,
                      sleep=clock.sleep)
    assert result.converged and result.records[0].converged_after == 6


def test_deadline_ends_a_real_mismatch_with_every_observation_kept() -> None:
    clock = FakeClock()
    result = converge(1, _round([[False]]), required=3, deadline=5, clock=clock, sleep=clock.sleep)
    assert not result.converged
    assert result.records[0].converged_after is None and len(result.records[0].observations) == result.rounds > 1
    assert clock.now >= 5


def test_enforcement_gap_counts_allowed_observations_of_a_must_deny_probe() -> None:
    clock = FakeClock()
    result = converge(1, _round([[False, False, True]], allowed_when_wrong=True), required=2, deadline=10,
                      clock=clock, sleep=clock.sleep)
    assert result.converged and result.records[0].stale_allowed == 2 and result.records[0].gap_seconds > 0
