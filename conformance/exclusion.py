"""Who may touch the mesh while a scenario runs: the claims of the scheduler (schedule.py), kept apart so that
targets can take one without importing the runner (the engine stays out of conformance.mesh: import
contract in pyproject.toml).

A step of a shared scenario holds a shared claim; a scenario with a mesh-wide policy holds the exclusive
claim from its first such step through its close. `quiet_mesh()` lets a target take a shared claim for
work outside a step (a canary), when it runs under the scheduler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


class Exclusivity:
    """A readers-writer lock with writer preference: steps of shared scenarios read, a mesh-wide scenario
    writes (from its first step through its close)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        # What held the lock, in order (for tests and for the report: proof that a mesh-wide scenario
        # never overlapped another one's step).
        self.history: list[tuple[str, str, str]] = []  # (event, kind, who)

    @contextmanager
    def shared(self, who: str) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
            self.history.append(("enter", "shared", who))
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self.history.append(("leave", "shared", who))
                self._cond.notify_all()

    def acquire_exclusive(self, who: str) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writer = True
            self.history.append(("enter", "exclusive", who))

    def release_exclusive(self, who: str) -> None:
        with self._cond:
            self._writer = False
            self.history.append(("leave", "exclusive", who))
            self._cond.notify_all()


_claims = threading.local()


@contextmanager
def holding_claim(claim: Callable[[], AbstractContextManager[None]]) -> Iterator[None]:
    """Make `claim` what `quiet_mesh()` takes on this thread for the block (the scheduler's worker)."""
    outer = getattr(_claims, "claim", None)
    _claims.claim = claim
    try:
        yield
    finally:
        _claims.claim = outer


@contextmanager
def quiet_mesh() -> Iterator[None]:
    """While the block runs, no other scenario's mesh-wide policy is in force (a shared claim) when the
    caller runs under the scheduler; a no-op otherwise. For targets' probes outside a step (canaries)."""
    claim: Callable[[], AbstractContextManager[None]] | None = getattr(_claims, "claim", None)
    if claim is None:
        yield
        return
    with claim():
        yield
