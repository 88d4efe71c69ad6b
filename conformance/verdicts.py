"""Judging one observation against what was expected: the rule every target is held to.

`allow` passes only with `allowed`. `deny` passes only with the denial form the engine predicts for
that mode (403 at a sidecar or waypoint, a reset at ztunnel, a 503 behind a waypoint) AND exactly one
record of the enforcing proxy proving it (DESIGN.md §2, "proof of denial"), whose
- kind is the engine's reason (a named DENY, no ALLOW matched, a STRICT mTLS rejection),
- proxy is the one the engine says decides (the destination's sidecar or ztunnel, or the waypoint),
- policy is the engine's deciding policy (or one of the policies that equally match, where the proxy
  walks them in no defined order).
Any difference is a mismatch naming what differs. Before any of that, a fault of the target itself
(a dead or missing proxy, an unreadable log) is an infrastructure failure, and a timeout or an error
is inconclusive: neither is ever a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.engine import Decision
from conformance.engine.decide import ALLOW_UNMATCHED, DENY_MATCHED
from conformance.engine.decide import EXT_AUTHZ_DENIED as ENGINE_EXT_DENIED
from conformance.engine.decide import EXT_AUTHZ_ERROR as ENGINE_EXT_ERROR
from conformance.engine.decide import JWT_REJECTED as ENGINE_JWT
from conformance.engine.decide import STRICT_MTLS as ENGINE_STRICT
from conformance.model import ALLOWED, DENIAL_FORMS, ERROR, TIMEOUT, Probe
from conformance.probe import (
    DENY_POLICY,
    EXT_AUTHZ_DENIED,
    EXT_AUTHZ_ERROR,
    JWT_REJECTED,
    KIND_WORDS,
    NO_ALLOW_MATCHED,
    STRICT_MTLS,
    Observation,
)

MISMATCH = "policy verdict mismatch"
INCONCLUSIVE = "inconclusive probe"
UNPROVEN = "denial without proof"
INFRASTRUCTURE = "infrastructure failure"

# The engine's reason for a denial -> the kind of record that proves it (probe.py's proof kinds).
EXPECTED_KIND = {DENY_MATCHED: DENY_POLICY, ALLOW_UNMATCHED: NO_ALLOW_MATCHED, ENGINE_STRICT: STRICT_MTLS,
                 ENGINE_JWT: JWT_REJECTED, ENGINE_EXT_DENIED: EXT_AUTHZ_DENIED, ENGINE_EXT_ERROR: EXT_AUTHZ_ERROR}
# Kinds whose record names the deciding policy, compared with the engine's: a DENY by its policy id, a CUSTOM
# denial by the shadow RBAC's effective policy id the access log carries (istiod builder.go, the
# `istio_ext_authz_shadow_effective_policy_id` dynamic metadata).
NAMES_POLICY = {DENY_POLICY, EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR}


@dataclass(frozen=True)
class Judgement:
    passed: bool
    category: str | None = None  # MISMATCH | INCONCLUSIVE | UNPROVEN | INFRASTRUCTURE, when it did not pass
    message: str = ""
    unconfirmed: bool = False  # passed without proof, only because the user opted in to that


def judge(expected_verdict: str, predicted: Decision, observation: Observation, probe: Probe) -> Judgement:
    """Judge one observation of `probe` against the expected verdict and the engine's decision."""
    outcome = observation.outcome
    if observation.problem:
        return Judgement(False, INFRASTRUCTURE, observation.problem)
    if outcome in (TIMEOUT, ERROR):
        return Judgement(False, INCONCLUSIVE, f"{outcome}: nothing can be concluded (a timeout or an error is "
                                              "never a denial)")
    proof = observation.proof
    if expected_verdict == "allow":
        if outcome == ALLOWED:
            return Judgement(True)
        return Judgement(False, MISMATCH, f"expected allowed, observed {outcome}")
    if outcome == ALLOWED:
        said = f" ({proof.describe()})" if proof is not None else ""
        return Judgement(False, MISMATCH, f"expected a denial, observed allowed{said}")
    if outcome not in DENIAL_FORMS:
        return Judgement(False, INCONCLUSIVE, f"unclassifiable outcome {outcome}")
    if predicted.verdict == "deny" and outcome != predicted.outcome:
        return Judgement(False, MISMATCH, f"expected the denial form {predicted.outcome} "
                                          f"({predicted.layer} denies), observed {outcome}")
    if proof is None or not proof.denied:
        if observation.unconfirmed:
            return Judgement(True, unconfirmed=True, message=f"denial unconfirmed: {observation.unconfirmed}")
        why = "; ".join(observation.notes) or "the enforcing proxy logged no denial of this probe"
        return Judgement(False, UNPROVEN, f"{outcome}, but {why}: a reset or 503 without the enforcing proxy's "
                                          "record is not a denial (broken certificate, dead proxy, wrong address?)")
    if predicted.verdict != "deny":
        return Judgement(True)  # the scenario contradicts the engine: reports say so (TruthTable.disagrees)
    return _compare_proof(predicted, observation, probe)


def _compare_proof(predicted: Decision, observation: Observation, probe: Probe) -> Judgement:
    """The proof of a denial against the engine's decision: kind, then proxy, then policy."""
    proof = observation.proof
    assert proof is not None
    want_kind = EXPECTED_KIND.get(predicted.reason)
    if want_kind is not None and proof.kind != want_kind:
        return Judgement(False, MISMATCH, f"denied, but the record says {KIND_WORDS[proof.kind]} "
                                          f"({proof.describe()}); the engine says {KIND_WORDS[want_kind]}")
    enforcer = predicted.enforcer(probe)
    if enforcer is not None:
        layer, _, serves = enforcer.partition(":")
        if (proof.layer, proof.serves) != (layer, serves):  # a record that names no proxy proves nothing
            return Judgement(False, MISMATCH, f"denied by {proof.proxy}, but the engine says {enforcer} decides")
    if want_kind in NAMES_POLICY and proof.policy != predicted.policy and proof.policy not in predicted.candidates:
        action = "DENY" if want_kind == DENY_POLICY else "CUSTOM"
        want = f"{predicted.policy}" + (f" (or {', '.join(c for c in predicted.candidates if c != predicted.policy)})"
                                        if len(predicted.candidates) > 1 else "")
        return Judgement(False, MISMATCH, f"denied, but the proxy says the decision came from {action} "
                                          f"{proof.policy}; the engine says {action} {want}")
    if want_kind == JWT_REJECTED and predicted.detail and proof.detail != predicted.detail:
        return Judgement(False, MISMATCH, f"the JWT filter rejected the token with {proof.detail!r}; the engine "
                                          f"says {predicted.detail!r}")
    return Judgement(True)
