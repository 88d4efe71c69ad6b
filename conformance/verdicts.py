"""Judging one observation against what was expected: the rule every target is held to.

`allow` passes only with `allowed`. `deny` passes only with the denial form the engine predicts for
that mode (403 at a sidecar or waypoint, a reset at ztunnel, a 503 behind a waypoint) AND the enforcing
proxy's own record of the denial, naming the same deciding policy as the engine (DESIGN.md §2, "proof of
denial"). A timeout or an error never passes: it is inconclusive, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.engine import Decision
from conformance.engine.decide import ALLOW_UNMATCHED, DENY_MATCHED
from conformance.model import ALLOWED, DENIAL_FORMS, ERROR, TIMEOUT
from conformance.probe import Observation

MISMATCH = "policy verdict mismatch"
INCONCLUSIVE = "inconclusive probe"
UNPROVEN = "denial without proof"


@dataclass(frozen=True)
class Judgement:
    passed: bool
    category: str | None = None  # MISMATCH | INCONCLUSIVE | UNPROVEN, when it did not pass
    message: str = ""
    unconfirmed: bool = False  # passed, but the target could not read the enforcing proxy's record


def judge(expected_verdict: str, predicted: Decision, observation: Observation, proofs_readable: bool) -> Judgement:
    outcome = observation.outcome
    if outcome in (TIMEOUT, ERROR):
        return Judgement(False, INCONCLUSIVE, f"{outcome}: nothing can be concluded (a timeout or an error is "
                                              "never a denial)")
    if expected_verdict == "allow":
        if outcome == ALLOWED:
            return Judgement(True)
        return Judgement(False, MISMATCH, f"expected allowed, observed {outcome}")
    if outcome == ALLOWED:
        return Judgement(False, MISMATCH, "expected a denial, observed allowed")
    if outcome not in DENIAL_FORMS:
        return Judgement(False, INCONCLUSIVE, f"unclassifiable outcome {outcome}")
    if predicted.verdict == "deny" and outcome != predicted.outcome:
        return Judgement(False, MISMATCH, f"expected the denial form {predicted.outcome} "
                                          f"({predicted.layer} denies), observed {outcome}")
    proof = observation.proof
    if proof is None or not proof.denied:
        if not proofs_readable:
            return Judgement(True, unconfirmed=True, message="denial unconfirmed: the target cannot read the "
                                                             "enforcing proxy's log")
        return Judgement(False, UNPROVEN, f"{outcome}, but the enforcing proxy logged no policy denial: a reset "
                                          "or 503 without that record is not a denial (broken cert, dead proxy?)")
    decided_by_policy = predicted.reason in (DENY_MATCHED, ALLOW_UNMATCHED)
    named_ok = proof.policy == predicted.policy or proof.policy in predicted.candidates
    if predicted.verdict == "deny" and decided_by_policy and not named_ok:
        said = proof.policy or "no ALLOW policy matched"
        want = predicted.policy or "no ALLOW policy matched"
        return Judgement(False, MISMATCH, f"denied, but the proxy says the decision came from {said}; "
                                          f"the engine says {want}")
    return Judgement(True)
