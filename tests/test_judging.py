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
from conformance.model import (
    ALLOWED,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    ERROR,
    TIMEOUT,
    Port,
    Probe,
    Request,
    Workload,
)
from conformance.probe import (
    DENY_POLICY,
    NO_ALLOW_MATCHED,
    PROXY_ALLOWED,
    STRICT_MTLS,
    Evidence,
    Observation,
    Proof,
    classify,
)
from conformance.verdicts import INCONCLUSIVE, INFRASTRUCTURE, MISMATCH, UNPROVEN, Judgement, judge

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
    # JWT and CUSTOM (issue 11): the JWT filter's status text, the sample ext_authz server's denial body
    (0, 401, "Jwt is expired", DENIED_AUTHN), (0, 401, "Jwt issuer is not configured", DENIED_AUTHN),
    (0, 401, "Jwks doesn't have key to match kid or alg from Jwt", DENIED_AUTHN),
    (0, 403, "Audiences in Jwt are not allowed", DENIED_AUTHN),
    (0, 401, "Unauthorized", ERROR),  # a 401 from something else than Envoy's JWT filter
    (0, 403, "denied by ext_authz for not found header `x-ext-authz: allow` in the request", DENIED_CUSTOM),
    (0, 403, "", ERROR),  # statusOnError has no body: only the access log can say it was ext_authz
])
def test_classify_from_curl_output(exit_code: int, status: int, body: str, outcome: str) -> None:
    assert classify(Evidence(exit_code, status, body), "accounts/accounts") == outcome


@given(st.integers(0, 100), st.integers(0, 599), st.text(max_size=40))
def test_classify_is_total_and_allowed_needs_the_destinations_answer(code: int, status: int, body: str) -> None:
    outcome = classify(Evidence(code, status, body), "accounts/accounts")
    assert outcome in (ALLOWED, DENIED_L4, DENIED_L7, DENIED_UPSTREAM, DENIED_AUTHN, DENIED_CUSTOM, TIMEOUT, ERROR)
    if outcome == ALLOWED:
        assert code == 0 and 200 <= status < 300 and body.split("\n", 1)[0].strip() == "accounts/accounts responding"


DENY_BY_POLICY = Decision("deny", DENIED_L7, "sidecar", "deny-matched", "ns/deny-all", 0)
DENY_NO_ALLOW = Decision("deny", DENIED_L4, "ztunnel", "allow-unmatched")
DENY_STRICT = Decision("deny", DENIED_L4, "sidecar", "strict-mtls", "ns/strict")
DENY_AT_WAYPOINT = Decision("deny", DENIED_L7, "waypoint", "deny-matched", "ns/deny-all", 0, waypoint="ns/wp")
ALLOW = Decision("allow", ALLOWED, "sidecar", "no-policy")
SRC = Workload("a", "ns", "a", {})
DST = Workload("b", "ns", "b", {}, (Port(80, "HTTP"),))
PROBE = Probe(SRC, DST, DST.ports[0], Request())


def obs(outcome: str, proof_policy: str | None = "ns/deny-all", kind: str = DENY_POLICY, proof: bool = True,
        layer: str = "sidecar", serves: str = "ns/b", **extra: str) -> Observation:
    p = Proof(f"{layer}:{serves}", kind, proof_policy, 0, "log line", layer, serves) if proof else None
    return Observation(outcome, Evidence(0, 0, ""), p, **extra)  # type: ignore[arg-type]


def test_allow_needs_allowed() -> None:
    assert judge("allow", ALLOW, obs(ALLOWED, proof=False), PROBE).passed
    j = judge("allow", ALLOW, obs(DENIED_L7), PROBE)
    assert (j.passed, j.category) == (False, MISMATCH)
    j = judge("deny", DENY_BY_POLICY, obs(ALLOWED, None, PROXY_ALLOWED), PROBE)
    assert j.category == MISMATCH and "allowed at sidecar:ns/b" in j.message  # the proxy's word is quoted


def test_deny_needs_the_predicted_form_and_proof_naming_the_same_policy() -> None:
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7), PROBE).passed
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L4), PROBE).category == MISMATCH  # wrong form
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof=False), PROBE).category == UNPROVEN
    assert judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof_policy="ns/other"), PROBE).category == MISMATCH
    assert judge("deny", DENY_NO_ALLOW, obs(DENIED_L4, None, NO_ALLOW_MATCHED, layer="ztunnel"), PROBE).passed


def test_the_kind_of_proof_must_be_the_engines_reason() -> None:
    """issue 9: "no ALLOW matched" and a STRICT rejection are different facts; neither proves the other."""
    strict_record = obs(DENIED_L4, None, STRICT_MTLS, layer="ztunnel")
    j = judge("deny", DENY_NO_ALLOW, strict_record, PROBE)
    assert (j.passed, j.category) == (False, MISMATCH)
    assert "STRICT mTLS rejected plaintext" in j.message and "no ALLOW policy matched" in j.message
    assert judge("deny", DENY_STRICT, obs(DENIED_L4, None, STRICT_MTLS), PROBE).passed
    j = judge("deny", DENY_STRICT, obs(DENIED_L4, None, NO_ALLOW_MATCHED), PROBE)
    assert j.category == MISMATCH and "STRICT" in j.message
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, None, NO_ALLOW_MATCHED), PROBE)
    assert j.category == MISMATCH and "a DENY policy matched" in j.message


def test_jwt_and_custom_denials_are_judged_by_kind_message_and_custom_policy() -> None:
    """issue 11: a JWT rejection is proved by the JWT filter's record with the engine's message; a CUSTOM
    denial by the ext_authz record naming the CUSTOM policy the engine says matched."""
    from dataclasses import replace as swap

    from conformance.engine.decide import EXT_AUTHZ_DENIED as ENGINE_EXT
    from conformance.engine.decide import JWT_REJECTED as ENGINE_JWT
    from conformance.probe import EXT_AUTHZ_DENIED, JWT_REJECTED

    jwt = Decision("deny", DENIED_AUTHN, "sidecar", ENGINE_JWT, detail="Jwt is expired")
    record = obs(DENIED_AUTHN, None, JWT_REJECTED)
    assert swap(record.proof, detail="Jwt is expired").describe().endswith("Jwt is expired at sidecar:ns/b")
    assert judge("deny", jwt, swap(record, proof=swap(record.proof, detail="Jwt is expired")), PROBE).passed
    j = judge("deny", jwt, swap(record, proof=swap(record.proof, detail="Jwt verification fails")), PROBE)
    assert j.category == MISMATCH and "Jwt verification fails" in j.message and "Jwt is expired" in j.message
    j = judge("deny", jwt, obs(DENIED_AUTHN, None, NO_ALLOW_MATCHED), PROBE)
    assert j.category == MISMATCH and "the JWT filter rejected the token" in j.message
    custom = Decision("deny", DENIED_CUSTOM, "sidecar", ENGINE_EXT, policy="ns/ext")
    assert judge("deny", custom, obs(DENIED_CUSTOM, "ns/ext", EXT_AUTHZ_DENIED), PROBE).passed
    j = judge("deny", custom, obs(DENIED_CUSTOM, "ns/other", EXT_AUTHZ_DENIED), PROBE)
    assert j.category == MISMATCH and "CUSTOM ns/other" in j.message


def test_the_proof_must_come_from_the_proxy_the_engine_names() -> None:
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, layer="waypoint", serves="ns/wp"), PROBE)
    assert j.category == MISMATCH and "waypoint:ns/wp" in j.message and "sidecar:ns/b" in j.message
    assert judge("deny", DENY_AT_WAYPOINT, obs(DENIED_L7, layer="waypoint", serves="ns/wp"), PROBE).passed
    j = judge("deny", DENY_AT_WAYPOINT, obs(DENIED_L7, layer="waypoint", serves="other/wp"), PROBE)
    assert j.category == MISMATCH
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, serves="ns/c"), PROBE)  # another workload's sidecar
    assert j.category == MISMATCH


def test_a_fault_of_the_target_is_infrastructure_before_any_verdict() -> None:
    dead = "the sidecar of ns/b is not running (Envoy exited with -9)"
    for expected, outcome in (("allow", DENIED_UPSTREAM), ("deny", DENIED_L7), ("allow", ALLOWED)):
        j = judge(expected, DENY_BY_POLICY, obs(outcome, problem=dead), PROBE)
        assert (j.passed, j.category, j.message) == (False, INFRASTRUCTURE, dead)


def test_unproven_denials_pass_only_when_the_user_opted_in() -> None:
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof=False), PROBE)
    assert (j.passed, j.category) == (False, UNPROVEN)
    j = judge("deny", DENY_BY_POLICY, obs(DENIED_L7, proof=False, unconfirmed="log of x unreadable"), PROBE)
    assert j.passed and j.unconfirmed and "log of x unreadable" in j.message


def test_a_contradicted_engine_still_needs_a_proven_denial() -> None:
    """The scenario says deny where the engine says allow: a denial passes only with a record of one."""
    assert judge("deny", ALLOW, obs(DENIED_L7, None, NO_ALLOW_MATCHED), PROBE).passed
    assert judge("deny", ALLOW, obs(DENIED_L7, proof=False), PROBE).category == UNPROVEN


@pytest.mark.parametrize("outcome", [TIMEOUT, ERROR])
@pytest.mark.parametrize("expected", ["allow", "deny"])
def test_timeout_and_error_never_pass(outcome: str, expected: str) -> None:
    j = judge(expected, DENY_BY_POLICY, obs(outcome), PROBE)
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


def test_a_wrong_observation_after_a_right_one_is_never_forgiven() -> None:
    """issue 9 "retries forgive": on a cluster, N right in a row after a wrong one after a right one is
    flakiness, and fails the step."""
    clock = FakeClock()
    result = converge(1, _round([[True, True, False, True, True, True]]), required=3, deadline=10, clock=clock,
                      sleep=clock.sleep)
    rec = result.records[0]
    assert not result.converged and not rec.passed and rec.flaky == 1
    assert len(rec.observations) == 3  # a flaky probe is not probed further
    assert "flaky" in rec.verdict_line()
    # wrong ones before the first right one are convergence (the gap), not flakiness
    result = converge(1, _round([[False, False, True, True, True]]), required=3, deadline=10, clock=clock,
                      sleep=clock.sleep)
    assert result.converged and result.records[0].passed and result.records[0].flaky == 0


def test_exact_barrier_counts_every_observation() -> None:
    """On an exact barrier (the local mesh) each probe is observed N times and one wrong one fails the
    step at once, with the count of wrong ones; nothing waits for a deadline."""
    clock = FakeClock()
    result = converge(2, _round([[True, False, True], [True]]), required=3, deadline=10, clock=clock,
                      sleep=clock.sleep, exact=True)
    assert result.rounds == 3 and clock.now == 0  # no waiting, no retries
    bad, good = result.records
    assert (bad.passed, bad.wrong, good.passed) == (False, 1, True)
    assert bad.verdict_line() == "1 of 3 wrong after the barrier"
    assert not result.converged
    result = converge(1, _round([[False]]), required=3, deadline=10, clock=clock, sleep=clock.sleep, exact=True)
    assert result.rounds == 3 and result.records[0].wrong == 3 and result.records[0].stale_allowed == 0


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


def test_the_default_number_of_observations_follows_the_barrier() -> None:
    """Issue 14: behind an exact barrier one round after the acknowledgement is the proof (every observation
    counts); behind an eventual one a probe must be right 3 times in a row; `--converge N` overrides both."""
    from conformance.converge import required_observations

    assert required_observations(None, exact=True) == 1
    assert required_observations(None, exact=False) == 3
    assert required_observations(5, exact=True) == 5 and required_observations(2, exact=False) == 2
    clock = FakeClock()
    result = converge(1, _round([[True, True, True]]), required=required_observations(None, True), clock=clock,
                      sleep=clock.sleep, exact=True)
    assert result.rounds == 1 and result.records[0].passed
