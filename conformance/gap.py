"""The enforcement gap: probing in a tight loop while a policy change lands, to see whether the target's
"in force" signal can be trusted.

Why: a target reports a change in force when its propagation barrier passes (Envoy's acknowledgement
counters locally, the policy in the proxies' config on clusters). If a request that the new policies deny
is still allowed *after* that, the barrier lied, or the data plane lags behind its own config: a window
in which traffic passes that the policy forbids. Convergence (converge.py) retries until observations
match and would hide such a window (research/anchors.md), so it is measured separately, here, and put
in the step's result: how many newly denied probes were still allowed after the barrier, and for how
long. On the local mesh the goal is zero; on clusters it is the figure users need.

Only the probes whose verdict flips from allow (under the policies in force before the step) to deny
are watched: those are the ones a lagging change would let through. The loop runs in a thread beside
`session.apply()` (rounds that start before it returns are "during"), then keeps going for a fixed
number of rounds after it returned ("after": each allowed observation there is stale), so a step costs
a few extra probe rounds, never an open-ended wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conformance.model import ALLOWED, DENIAL_FORMS, Probe
from conformance.probe import Observation
from conformance.target import Applied, MeshSession

DEFAULT_ROUNDS_AFTER = 3  # rounds after the barrier; each one is a chance to see a stale allow


@dataclass(frozen=True)
class GapRound:
    """One round of the loop: when it ran (seconds relative to the barrier: negative = before apply()
    returned), and the outcome of each watched probe, in the order of `GapRecord.rows`."""

    started: float
    ended: float
    after_barrier: bool
    outcomes: tuple[str, ...]
    # the observations themselves: behind an exact barrier each one after it counts (runner.py judges them)
    observations: tuple[Observation, ...] = field(default=(), compare=False, repr=False)


@dataclass
class GapRecord:
    """The enforcement gap of one step, for reports (one per step and mode).

    `rows` are the indices (into the step's truth table) of the probes whose verdict flips from allow to
    deny. `stale_allowed` counts their `allowed` observations in rounds that started after the barrier:
    zero means the target's "in force" signal held. `max_stale_seconds` is the latest end, relative to
    the barrier, of a round that still saw one allowed (0 when none), an upper bound on how long the gap
    lasted. `enforced_seconds` is, from the call of apply(), when every watched probe was first seen
    denied (the end of that round; None if some never was within the loop): an upper bound on the time
    from the change to its enforcement.
    """

    rows: tuple[int, ...] = ()
    rounds: list[GapRound] = field(default_factory=list)
    barrier_seconds: float = 0.0  # from calling apply() to the barrier (the target's acknowledgement)
    skipped: str | None = None  # why nothing was measured (no probe flips to deny, or the target cannot)
    error: str | None = None  # a probe round that raised: the gap is unknown, never reported as zero

    @property
    def measured(self) -> bool:
        return self.skipped is None and self.error is None and bool(self.rounds)

    @property
    def rounds_during(self) -> int:
        return sum(1 for r in self.rounds if not r.after_barrier)

    @property
    def rounds_after(self) -> int:
        return sum(1 for r in self.rounds if r.after_barrier)

    @property
    def stale_allowed(self) -> int:
        return sum(r.outcomes.count(ALLOWED) for r in self.rounds if r.after_barrier)

    @property
    def stale_rows(self) -> tuple[int, ...]:
        """Rows (truth-table indices) seen allowed after the barrier."""
        out = {self.rows[i] for r in self.rounds if r.after_barrier for i, o in enumerate(r.outcomes) if o == ALLOWED}
        return tuple(sorted(out))

    @property
    def max_stale_seconds(self) -> float:
        return max((r.ended for r in self.rounds if r.after_barrier and ALLOWED in r.outcomes), default=0.0)

    @property
    def allowed_during(self) -> int:
        """Allowed observations while apply() ran: expected (the change was not in force yet)."""
        return sum(r.outcomes.count(ALLOWED) for r in self.rounds if not r.after_barrier)

    @property
    def inconclusive(self) -> int:
        """Observations that were neither allowed nor a denial (timeouts, errors): they prove nothing. While
        the change lands a proxy may cut a connection in flight; after the barrier there should be none."""
        return sum(1 for r in self.rounds for o in r.outcomes if o != ALLOWED and o not in DENIAL_FORMS)

    @property
    def inconclusive_after(self) -> int:
        return sum(1 for r in self.rounds if r.after_barrier for o in r.outcomes
                   if o != ALLOWED and o not in DENIAL_FORMS)

    @property
    def enforced_window(self) -> tuple[float, float] | None:
        """(start, end), from the call of apply(), of the round in which the last watched probe was first
        seen denied: the change took effect for new requests before its end, and (if that probe was
        allowed in an earlier round) after the start of that earlier round. None if some never was."""
        first: dict[int, tuple[float, float]] = {}
        for r in self.rounds:
            for i, o in enumerate(r.outcomes):
                if o in DENIAL_FORMS and i not in first:
                    first[i] = (r.started + self.barrier_seconds, r.ended + self.barrier_seconds)
        if not self.rows or len(first) != len(self.rows):
            return None
        return max(first.values(), key=lambda w: w[1])

    @property
    def enforced_seconds(self) -> float | None:
        window = self.enforced_window
        return window[1] if window is not None else None

    @property
    def closed(self) -> bool:
        """No newly denied probe was allowed after the target reported the change in force, and every
        observation after it was conclusive (errors after the barrier could hide an allow)."""
        return self.measured and self.stale_allowed == 0 and self.inconclusive_after == 0

    def describe(self) -> str:
        """One line for reports."""
        if self.skipped:
            return f"enforcement gap: not measured ({self.skipped})"
        if self.error:
            return f"enforcement gap: unknown ({self.error})"
        head = (f"{len(self.rows)} newly denied probe(s) watched in {self.rounds_during} round(s) during the "
                f"change ({self.barrier_seconds * 1000:.1f} ms) and {self.rounds_after} after it")
        enforced = self.enforced_seconds
        when = f"; all denied {enforced * 1000:.1f} ms after the change started" if enforced is not None else ""
        if self.inconclusive:
            when += (f"; {self.inconclusive} inconclusive observation(s) ({self.inconclusive_after} after the "
                     "barrier)")
        if self.stale_allowed:
            return (f"ENFORCEMENT GAP: {head}: {self.stale_allowed} allowed observation(s) after the barrier "
                    f"(rows {', '.join(map(str, self.stale_rows))}), up to {self.max_stale_seconds * 1000:.1f} ms "
                    f"after it{when}")
        return f"enforcement gap: none: {head}{when}"


def measure_gap(
    session: MeshSession,
    apply: Callable[[], Applied],
    watched: Sequence[tuple[int, Probe]],
    rounds_after: int = DEFAULT_ROUNDS_AFTER,
) -> tuple[Applied, GapRecord]:
    """Call `apply()` while probing `watched` (row index, probe) in a loop; return apply()'s result and the
    record. With nothing to watch, apply() runs alone. apply()'s own exceptions propagate (after the
    loop stopped); a probe round that raises ends the loop and is recorded as `error`.

    A round counts as after the barrier when it started at or after `Applied.acknowledged_at` (the
    target's own time of the acknowledgement), else after apply() returned: a round in flight across the
    barrier counts as during, so a stale allow is only ever reported when it certainly was one.
    """
    rows = tuple(i for i, _ in watched)
    probes = [p for _, p in watched]
    if not probes:
        return apply(), GapRecord(rows, skipped="no probe goes from allow to deny in this step")
    clock = time.monotonic
    record = GapRecord(rows)
    rounds: list[tuple[float, float, tuple[Observation, ...]]] = []
    returned = threading.Event()  # apply() returned: from now on, count rounds after the barrier
    sending = threading.Event()
    stop = threading.Event()

    def loop() -> None:
        after = 0
        try:
            while not stop.is_set() and after < rounds_after:  # rounds during apply(): bounded by apply()
                is_after = returned.is_set()
                t0 = clock()
                sending.set()
                observations: list[Observation] = session.probe(probes)
                rounds.append((t0, clock(), tuple(observations)))
                after += is_after
        except Exception as exc:  # the gap is then unknown: say so, never report it as closed
            record.error = f"a probe round failed: {type(exc).__name__}: {exc}"
        finally:
            sending.set()

    thread = threading.Thread(target=loop, name="authz-gap-probe", daemon=True)
    thread.start()
    # The first round is under way before the change starts, so the loop really overlaps it (a thread
    # that has not been scheduled yet would otherwise only start after a fast apply() returned).
    sending.wait(timeout=30.0)
    start = clock()
    try:
        result = apply()
    except BaseException:
        stop.set()
        thread.join()
        raise
    returned_at = clock()
    returned.set()
    thread.join()
    barrier = result.acknowledged_at if result.acknowledged_at is not None else returned_at
    record.barrier_seconds = barrier - start
    # Rounds the loop started after apply() returned are after the barrier; so are those that started
    # after the acknowledgement the target reported (even if the loop saw apply() return later).
    record.rounds = [GapRound(t0 - barrier, t1 - barrier, t0 >= barrier, tuple(o.outcome for o in seen), seen)
                     for t0, t1, seen in rounds]
    return result, record
