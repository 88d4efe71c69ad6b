"""Convergence: probe a step until every probe matched its expectation N times in a row, or a deadline.

Policies take effect eventually on clusters, and instantly (after Envoy's acknowledgement) on the local
mesh. Either way the suite records, per probe, how many observations it needed, and when a probe that
must be denied was first observed allowed after the target reported the policy in force: that window
is the enforcement gap, a finding in itself (research/anchors.md: retry-on-mismatch can hide fail-open
windows, so they are measured, not hidden).

The loop is written once, over a `probe_round` callable, with tenacity for the deadline and backoff;
the clock is injectable so the logic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import RetryError, Retrying, retry_if_result, wait_exponential

from conformance.probe import Observation
from conformance.verdicts import Judgement


@dataclass
class ProbeRecord:
    """Everything observed for one probe during one step."""

    observations: list[Observation] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    streak: int = 0
    converged_after: int | None = None  # observations needed to reach the streak
    stale_allowed: int = 0  # allowed observations of a probe that must be denied: the enforcement gap
    gap_seconds: float = 0.0  # from the policy being reported in force to the last stale observation

    @property
    def last(self) -> Judgement | None:
        return self.judgements[-1] if self.judgements else None


@dataclass
class Convergence:
    records: list[ProbeRecord]
    rounds: int
    seconds: float
    converged: bool


def converge(
    count: int,
    probe_round: Callable[[Sequence[int]], Sequence[tuple[Observation, Judgement, bool]]],
    required: int = 3,
    deadline: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Convergence:
    """Run rounds of probes until each of `count` probes has `required` passing judgements in a row.

    `probe_round(indices)` probes those rows and returns (observation, judgement, must_deny) for each.
    Rows that have converged are not probed again. A row that fails keeps being probed until the
    deadline: a real mismatch then fails the step with every observation kept as evidence.
    """
    records = [ProbeRecord() for _ in range(count)]
    start = clock()
    rounds = 0

    def attempt() -> bool:
        nonlocal rounds
        pending = [i for i, r in enumerate(records) if r.streak < required]
        if not pending:
            return True
        rounds += 1
        for i, (obs, judgement, must_deny) in zip(pending, probe_round(pending), strict=True):
            r = records[i]
            r.observations.append(obs)
            r.judgements.append(judgement)
            if must_deny and obs.outcome == "allowed":
                r.stale_allowed += 1
                r.gap_seconds = clock() - start
            r.streak = r.streak + 1 if judgement.passed else 0
            if r.streak >= required and r.converged_after is None:
                r.converged_after = len(r.observations)
        return all(r.streak >= required for r in records)

    retrying = Retrying(
        retry=retry_if_result(lambda done: not done),
        stop=lambda _state: clock() - start >= deadline,
        wait=wait_exponential(multiplier=0.02, max=1.0),
        sleep=sleep,
        reraise=False,
    )
    try:
        converged = bool(retrying(attempt))
    except RetryError:
        converged = False
    return Convergence(records, rounds, clock() - start, converged)
