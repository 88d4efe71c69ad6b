"""Convergence: how many observations of each probe a step needs, and which of them count.

Two regimes, chosen by the target (`MeshSession.exact_barrier`):
- **exact** (the local mesh: Envoy's acknowledgement of the new listeners is the barrier): every
  observation after the barrier counts. Each probe is observed N times; one wrong judgement fails the
  step, with the count of wrong ones. Nothing is retried away, and a wrong expectation fails in the
  time of N probe rounds, not a deadline.
- **eventual** (clusters: the barrier is istiod's push as seen in the proxies' config, which can still
  lag in a proxy): a probe converges after N right judgements in a row, within a deadline; wrong
  observations before its first right one are the enforcement gap (recorded, shown), and every wrong
  observation after its first right one is flakiness, which fails the step (research/anchors.md:
  retry-on-mismatch hides fail-open windows, so they are measured and never forgiven).

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
    required: int = 1
    exact: bool = False

    @property
    def last(self) -> Judgement | None:
        return self.judgements[-1] if self.judgements else None

    def add(self, observation: Observation, judgement: Judgement) -> None:
        """One more observation and its judgement; the streak of right ones in a row follows."""
        self.observations.append(observation)
        self.judgements.append(judgement)
        self.streak = self.streak + 1 if judgement.passed else 0

    @property
    def wrong(self) -> int:
        """Wrong judgements in all."""
        return sum(not j.passed for j in self.judgements)

    @property
    def flaky(self) -> int:
        """Wrong judgements after the first right one: never forgiven, on any target."""
        first_right = next((i for i, j in enumerate(self.judgements) if j.passed), None)
        if first_right is None:
            return 0
        return sum(not j.passed for j in self.judgements[first_right:])

    @property
    def passed(self) -> bool:
        """Exact: N observations, all right. Eventual: N right in a row, and no wrong one after the first right."""
        if self.exact:
            return len(self.judgements) >= self.required and self.wrong == 0
        return self.streak >= self.required and self.flaky == 0

    @property
    def failing_judgement(self) -> Judgement | None:
        """The judgement a report shows for a failing probe: the last wrong one."""
        return next((j for j in reversed(self.judgements) if not j.passed), None)

    def verdict_line(self) -> str:
        """`3 of 3 right`, `2 of 3 wrong`, `1 wrong after the first right (flaky)`."""
        n = len(self.judgements)
        if self.passed:
            return f"{n} of {n} right" if self.exact else f"{self.required} right in a row after {n}"
        if self.exact:
            return f"{self.wrong} of {n} wrong after the barrier"
        if self.flaky:
            return f"{self.flaky} wrong after the first right one (flaky), {n} observed"
        return f"never {self.required} right in a row ({self.wrong} of {n} wrong)"


@dataclass
class Convergence:
    records: list[ProbeRecord]
    rounds: int
    seconds: float
    converged: bool


# Observations per probe when the user asks for no other number (`--converge`): behind an exact barrier every
# observation counts and one wrong one fails the step, so one round after the acknowledgement is the proof (more
# rounds only repeat it); behind an eventual barrier a probe must be right this many times in a row.
EXACT_OBSERVATIONS = 1
EVENTUAL_OBSERVATIONS = 3


def required_observations(requested: int | None, exact: bool) -> int:
    """`requested` (`--converge N`), or the default of the barrier's regime."""
    if requested is not None:
        return requested
    return EXACT_OBSERVATIONS if exact else EVENTUAL_OBSERVATIONS


def converge(
    count: int,
    probe_round: Callable[[Sequence[int]], Sequence[tuple[Observation, Judgement, bool]]],
    required: int = 3,
    deadline: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    exact: bool = False,
) -> Convergence:
    """Probe `count` rows in rounds and keep every observation and judgement (see the module docstring).

    `probe_round(indices)` probes those rows and returns (observation, judgement, must_deny) for each.
    Exact: exactly `required` rounds of every row, no waiting, no deadline. Eventual: rows that have
    converged are not probed again; a row with a wrong observation after its first right one has failed
    and is not probed again either; the others are probed until the deadline.
    """
    records = [ProbeRecord(required=required, exact=exact) for _ in range(count)]
    start = clock()
    rounds = 0
    if exact:
        for _ in range(required):
            rounds += 1
            indices = list(range(count))
            # After an exact barrier an allowed observation of a denied probe is a failure, not a gap.
            for i, (obs, judgement, _must_deny) in zip(indices, probe_round(indices), strict=True):
                records[i].add(obs, judgement)
        for r in records:
            if r.passed:
                r.converged_after = len(r.observations)
        return Convergence(records, rounds, clock() - start, all(r.passed for r in records))

    def attempt() -> bool:
        nonlocal rounds
        pending = [i for i, r in enumerate(records) if r.streak < required and not r.flaky]
        if not pending:
            return True
        rounds += 1
        for i, (obs, judgement, must_deny) in zip(pending, probe_round(pending), strict=True):
            r = records[i]
            r.add(obs, judgement)
            if must_deny and obs.outcome == "allowed":
                r.stale_allowed += 1
                r.gap_seconds = clock() - start
            if r.streak >= required and r.converged_after is None:
                r.converged_after = len(r.observations)
        return all(r.streak >= required or r.flaky for r in records)

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
    return Convergence(records, rounds, clock() - start, converged and all(r.passed for r in records))
