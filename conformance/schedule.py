"""Running several scenarios at once on one cluster, reported by pytest one step at a time.

Why: a cluster step costs seconds of waiting (istiod's push, the proxies' acknowledgement, execs, log
flushes), a scenario's start tens of seconds of rollouts, and almost none of it is CPU. Run one after
another, `policies/` takes far longer than a CI job may (issue 10); run side by side in their own
prefixed namespaces, most of that waiting overlaps.

How it stays honest:
- pytest still has one item per scenario × mode × step (items.py) and reports each in order; the items
  only *wait* for what a worker thread did ahead of them. The steps a worker runs are exactly the
  selected items' steps (after `-k`, `--deselect`), in their order, on the same session, with the same
  `run_step` the sequential path calls, so a result is the same result, only earlier.
- Isolation: a policy in the mesh root namespace reaches every workload of the cluster
  (`naming.mesh_wide_policies`), so from the first step that puts one in force a scenario runs
  exclusively: it waits until no other scenario is inside a step, and no other step starts until its
  session is closed (its root-namespace objects deleted and gone from the proxies, session.py `close`).
  Its earlier steps, and every scenario's start (namespaces, workloads, rollouts: its own namespaces
  only), overlap with anything, except what a start probes: a target's canary ("with no policy in
  force, does every port answer?") runs inside `quiet_mesh()`, a shared claim, so no other scenario's
  mesh-wide policy is in force while it looks (found by review: an allow-nothing root policy made other
  scenarios' canaries fail). Other scenarios hold a shared claim only while inside a step: between
  two of their steps an exclusive scenario may come and go, and the next step sees none of it (the
  close barrier). Writers are preferred, so an exclusive scenario cannot be starved.
- Warnings and report attachments produced in a worker are captured (notices.py) and replayed by the
  item that reports the step, so each lands on its own test.
- Interrupts and early stops (Ctrl-C, `-x`): `shutdown()` cancels runs not yet started, lets each
  running scenario finish the step it is in (every step has its own deadline), skips its remaining
  steps and closes its session; the target is closed only after that (plugin.py's hook order).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from conformance import notices
from conformance.exclusion import Exclusivity, holding_claim
from conformance.model import Mode, Scenario, Step
from conformance.runner import StepResult, run_step
from conformance.target import MeshSession, Target
from conformance.versions import IstioVersion


class Cancelled(Exception):
    """A step that never ran because the run was stopped (Ctrl-C, `-x`) before its turn."""


@dataclass
class Outcome:
    """What one unit of a scenario's work (its start, one step, its close) produced."""

    value: Any = None  # the MeshSession after a start, the StepResult after a step
    error: BaseException | None = None
    notices: notices.Notices = field(default_factory=notices.Notices)


@dataclass(frozen=True)
class RunSpec:
    """One scenario in one mode, as pytest selected it: which steps run, and whether it runs alone."""

    key: str  # unique per scenario × mode (the ModeRun's node id)
    scenario: Scenario
    mode: Mode
    steps: tuple[Step, ...]
    # index in `steps` of the first step that must not overlap any other scenario's (a mesh-wide policy in
    # force): from it through the close the run holds the cluster alone. None: it always shares.
    alone_from: int | None = None

    @property
    def exclusive(self) -> bool:
        return self.alone_from is not None


@dataclass
class ScheduledRun:
    spec: RunSpec
    started: Future[Outcome] = field(default_factory=Future)
    steps: dict[str, Future[Outcome]] = field(default_factory=dict)
    closed: Future[Outcome] = field(default_factory=Future)
    claimed: bool = False  # a worker took it (under Scheduler._guard): shutdown() leaves it to that worker


StepRunner = Callable[[MeshSession, Scenario, Step], StepResult]


class Scheduler:
    """Runs the given scenario runs on `workers` threads, in order, under `Exclusivity` (module docstring)."""

    def __init__(self, target: Target, runs: Sequence[RunSpec], workers: int, run: StepRunner):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.target = target
        self.lock = Exclusivity()
        self._run_step = run
        self._stop = threading.Event()
        self._runs = {spec.key: ScheduledRun(spec, steps={s.name: Future() for s in spec.steps}) for spec in runs}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="authz-scenario")
        self._submitted = False
        self._guard = threading.Lock()

    @classmethod
    def for_version(cls, target: Target, runs: Sequence[RunSpec], workers: int, version: IstioVersion,
                    required: int, deadline: float) -> Scheduler:
        def run(session: MeshSession, scenario: Scenario, step: Step) -> StepResult:
            return run_step(session, scenario, step, version, required=required, deadline=deadline)

        return cls(target, runs, workers, run)

    def __contains__(self, key: str) -> bool:
        return key in self._runs

    def run(self, key: str) -> ScheduledRun:
        """The run's futures; the first call submits every run (they start in the order given)."""
        with self._guard:
            if not self._submitted and not self._stop.is_set():
                self._submitted = True
                for scheduled in self._runs.values():
                    self._pool.submit(self._work, scheduled)
        return self._runs[key]

    def shutdown(self) -> None:
        """Stop: runs not started never start; running ones skip their remaining steps and close.

        Waits for the running ones (each is inside one step at most, and every step has its own deadline);
        a second Ctrl-C abandons the wait, and the target's own close (its namespaces, its clusters) follows.
        """
        with self._guard:
            self._stop.set()
            unclaimed = [r for r in self._runs.values() if not r.claimed]
        self._pool.shutdown(wait=False, cancel_futures=True)
        for scheduled in unclaimed:  # never started: nothing was made, nothing to clean up
            stopped = Outcome(error=Cancelled("the run was stopped before this scenario started"))
            for future in (scheduled.started, *scheduled.steps.values(), scheduled.closed):
                _settle(future, stopped)
        self._pool.shutdown(wait=True)

    # -- the worker -----------------------------------------------------------------------------
    def _work(self, scheduled: ScheduledRun) -> None:
        spec = scheduled.spec
        with self._guard:
            if self._stop.is_set():
                return
            scheduled.claimed = True
        with holding_claim(lambda: self.lock.shared(f"{spec.key} (start)")), notices.capture() as sink:
            try:
                session: MeshSession | None = self.target.start(spec.scenario, spec.mode)
                started = Outcome(session, None, sink)
            except BaseException as exc:  # reported by the items (skip, infrastructure failure, or a bug)
                session, started = None, Outcome(None, exc, sink)
        _settle(scheduled.started, started)
        if session is None:
            for future in scheduled.steps.values():
                _settle(future, Outcome(error=Cancelled("the scenario did not start")))
            _settle(scheduled.closed, Outcome())
            return
        holding = False
        try:
            for index, step in enumerate(spec.steps):
                future = scheduled.steps[step.name]
                if self._stop.is_set():
                    _settle(future, Outcome(error=Cancelled("the run was stopped before this step")))
                    continue
                if spec.alone_from is not None and index >= spec.alone_from and not holding:
                    self.lock.acquire_exclusive(spec.key)
                    holding = True
                claim = nullcontext() if holding else self.lock.shared(spec.key)
                with claim, notices.capture() as sink:
                    if self._stop.is_set():  # stopped while this run waited for its claim
                        outcome = Outcome(error=Cancelled("the run was stopped before this step"))
                    else:
                        try:
                            outcome = Outcome(self._run_step(session, spec.scenario, step), None, sink)
                        except BaseException as exc:
                            outcome = Outcome(None, exc, sink)
                _settle(future, outcome)
        finally:
            with notices.capture() as sink:
                try:
                    session.close()
                    closed = Outcome(None, None, sink)
                except BaseException as exc:
                    closed = Outcome(None, exc, sink)
            if holding:
                self.lock.release_exclusive(spec.key)
            _settle(scheduled.closed, closed)


def _settle(future: Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def wait(future: Future[Outcome], poll: float = 0.5) -> Outcome:
    """The outcome, waited for in short slices so that Ctrl-C on the main thread is seen at once."""
    while True:
        try:
            return future.result(timeout=poll)
        except TimeoutError:
            continue
