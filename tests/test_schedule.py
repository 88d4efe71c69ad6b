"""The scheduler (conformance/schedule.py): scenarios side by side, a mesh-wide one alone, results and
notices delivered to the step they belong to, and a clean stop.

The target and the step runner here are stand-ins that record what happened and when (threading
events, never sleeps): what is under test is the scheduling, not a mesh.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conformance import notices
from conformance.errors import TargetError
from conformance.model import Scenario, Step
from conformance.scenario import load
from conformance.schedule import Cancelled, Exclusivity, RunSpec, Scheduler, wait
from conformance.versions import IstioVersion

ROOT = Path(__file__).resolve().parents[1]
WAIT = 10.0  # seconds an event may take before the test fails (never reached when the code is right)


def scenario(name: str) -> Scenario:
    from dataclasses import replace

    base = load(ROOT / "tests" / "data" / "good.yaml", IstioVersion.parse("1.30"))
    return replace(base, name=name)


@dataclass
class Session:
    name: str
    log: list[str]
    mode: str = "sidecar"
    addresses: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def close(self) -> None:
        self.log.append(f"close {self.name}")
        notices.warn(f"closing {self.name}", RuntimeWarning)
        self.closed = True


class FakeTarget:
    name = "fake"

    def __init__(self, fail: set[str] | None = None):
        self.log: list[str] = []
        self.sessions: dict[str, Session] = {}
        self.fail = fail or set()
        self._lock = threading.Lock()

    def start(self, scenario: Scenario, mode: str) -> Session:
        if scenario.name in self.fail:
            notices.warn(f"cannot start {scenario.name}", RuntimeWarning)
            raise TargetError(f"{scenario.name}: no cluster")
        session = Session(scenario.name, self.log)
        with self._lock:
            self.sessions[scenario.name] = session
            self.log.append(f"start {scenario.name}")
        return session


def spec(name: str, steps: tuple[str, ...] = ("one", "two"), alone_from: int | None = None) -> RunSpec:
    return RunSpec(name, scenario(name), "sidecar", tuple(Step(s, (), ()) for s in steps), alone_from)


def runner(body: Callable[[Session, Step], Any]) -> Callable[[Any, Scenario, Step], Any]:
    def run(session: Any, scenario: Scenario, step: Step) -> Any:
        return body(session, step)
    return run


def test_shared_scenarios_run_side_by_side():
    """a's first step waits until b's first step has started: it can only finish if they overlap."""
    b_in_step = threading.Event()

    def body(session: Session, step: Step) -> str:
        if session.name == "b":
            b_in_step.set()
        elif step.name == "one":
            assert b_in_step.wait(WAIT), "b never ran while a was inside a step"
        return f"{session.name}/{step.name}"

    target = FakeTarget()
    sched = Scheduler(target, [spec("a"), spec("b")], workers=2, run=runner(body))
    try:
        assert wait(sched.run("a").steps["one"]).value == "a/one"
        assert wait(sched.run("b").steps["two"]).value == "b/two"
    finally:
        sched.shutdown()
    assert target.sessions["a"].closed and target.sessions["b"].closed


def test_a_mesh_wide_scenario_never_overlaps_another_ones_step_and_holds_through_its_close():
    holder: list[Scheduler] = []
    broken: list[str] = []

    def body(session: Session, step: Step) -> None:
        lock = holder[0].lock
        target.log.append(f"step {session.name}/{step.name}")
        # the invariant, checked inside every step rather than hoped for by timing
        if session.name == "alone" and step.name != "0" and (lock._readers or not lock._writer):
            broken.append(f"alone/{step.name} ran while {lock._readers} shared step(s) were inside")
        if session.name != "alone" and lock._writer:
            broken.append(f"{session.name}/{step.name} ran while the mesh-wide scenario held the cluster")

    specs = [spec("a", ("1", "2", "3")), spec("alone", ("0", "1", "2"), alone_from=1), spec("b", ("1", "2", "3")),
             spec("c", ("1", "2", "3"))]
    target = FakeTarget()
    sched = Scheduler(target, specs, workers=4, run=runner(body))
    holder.append(sched)
    try:
        for s in specs:
            assert wait(sched.run(s.key).closed).error is None
    finally:
        sched.shutdown()
    assert broken == []
    history = sched.lock.history
    start = history.index(("enter", "exclusive", "alone"))
    end = history.index(("leave", "exclusive", "alone"))
    assert all(kind == "exclusive" for _, kind, _ in history[start:end + 1])
    # from its first step through its close (its root-namespace objects withdrawn), nobody else stepped
    log = target.log
    window = log[log.index("step alone/1"):log.index("close alone") + 1]  # its step 0 shared the cluster
    assert [e for e in window if e.startswith("step ") and not e.startswith("step alone/")] == []
    assert {who for _, kind, who in history if kind == "shared"} == {"a", "b", "c", "alone"}  # alone/0 shared


def test_a_waiting_mesh_wide_scenario_is_not_starved_by_a_stream_of_shared_steps():
    lock = Exclusivity()
    in_shared = threading.Event()
    release = threading.Event()
    acquired = threading.Event()

    def reader() -> None:
        with lock.shared("r1"):
            in_shared.set()
            release.wait(WAIT)

    def writer() -> None:
        lock.acquire_exclusive("w")
        acquired.set()
        lock.release_exclusive("w")

    t1 = threading.Thread(target=reader)
    t1.start()
    assert in_shared.wait(WAIT)
    t2 = threading.Thread(target=writer)
    t2.start()
    while not lock._writers_waiting:  # the writer is queued
        threading.Event().wait(0.001)
    # a new reader now waits behind the writer instead of jumping ahead of it
    late = threading.Thread(target=lambda: lock.shared("r2").__enter__())
    late.start()
    release.set()
    t1.join(WAIT)
    assert acquired.wait(WAIT)
    late.join(WAIT)
    t2.join(WAIT)
    order = [(e, who) for e, _, who in lock.history]
    assert order.index(("enter", "w")) < order.index(("enter", "r2"))


def test_each_steps_result_error_and_warnings_reach_that_step_only():
    def body(session: Session, step: Step) -> str:
        notices.warn(f"{session.name} {step.name} says so", UserWarning)
        notices.attach(f"{step.name}.txt", f"evidence of {step.name}")
        if step.name == "two":
            raise TargetError("the barrier timed out")
        return step.name

    target = FakeTarget()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = Scheduler(target, [spec("a", ("one", "two", "three"))], workers=2, run=runner(body))
        try:
            run = sched.run("a")
            outcomes = [wait(run.steps[name]) for name in ("one", "two", "three")]
            closed = wait(run.closed)
        finally:
            sched.shutdown()
    assert caught == []  # nothing emitted on the worker's thread: every notice was captured
    assert [o.value for o in outcomes] == ["one", None, "three"]
    assert isinstance(outcomes[1].error, TargetError)
    assert [m for m, _ in outcomes[1].notices.warnings] == ["a two says so"]
    assert outcomes[2].notices.attachments == [("three.txt", "evidence of three")]
    assert [m for m, _ in closed.notices.warnings] == ["closing a"]
    with pytest.warns(UserWarning, match="a one says so"):
        outcomes[0].notices.replay()


def test_a_scenario_that_cannot_start_reports_why_and_its_steps_never_run():
    ran: list[str] = []
    target = FakeTarget(fail={"broken"})
    sched = Scheduler(target, [spec("broken"), spec("fine")], workers=2,
                      run=runner(lambda s, step: ran.append(f"{s.name}/{step.name}")))
    try:
        started = wait(sched.run("broken").started)
        steps = [wait(f) for f in sched.run("broken").steps.values()]
        wait(sched.run("fine").closed)
    finally:
        sched.shutdown()
    assert isinstance(started.error, TargetError) and "no cluster" in str(started.error)
    assert [m for m, _ in started.notices.warnings] == ["cannot start broken"]
    assert all(isinstance(o.error, Cancelled) for o in steps)
    assert ran == ["fine/one", "fine/two"]


def test_only_the_selected_steps_run_in_their_order():
    ran: list[str] = []
    target = FakeTarget()
    sched = Scheduler(target, [spec("a", ("three", "one"))], workers=1,
                      run=runner(lambda s, step: ran.append(step.name)))
    try:
        wait(sched.run("a").closed)
    finally:
        sched.shutdown()
    assert ran == ["three", "one"]


def test_a_stop_lets_the_running_step_finish_skips_the_rest_closes_and_never_starts_the_queue():
    inside = threading.Event()
    go_on = threading.Event()

    def body(session: Session, step: Step) -> str:
        inside.set()
        go_on.wait(WAIT)
        return step.name

    target = FakeTarget()
    sched = Scheduler(target, [spec("a", ("one", "two")), spec("queued")], workers=1, run=runner(body))
    run = sched.run("a")
    assert inside.wait(WAIT)
    stopper = threading.Thread(target=sched.shutdown)
    stopper.start()
    go_on.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert wait(run.steps["one"]).value == "one"
    assert isinstance(wait(run.steps["two"]).error, Cancelled)
    assert target.sessions["a"].closed
    assert "queued" not in target.sessions
    assert isinstance(wait(sched.run("queued").started).error, Cancelled)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(FakeTarget(), [], workers=0, run=runner(lambda s, step: None))


def test_a_start_probes_only_while_no_mesh_wide_policy_of_another_scenario_is_in_force():
    """Found by review: an allow-nothing root policy of one scenario failed another's canary. A target
    probes outside a step inside `quiet_mesh()`, which waits for a mesh-wide scenario to close."""
    from conformance.exclusion import quiet_mesh

    m_inside, about_to_probe = threading.Event(), threading.Event()

    class CanaryTarget(FakeTarget):
        def start(self, scenario: Scenario, mode: str) -> Session:
            session = super().start(scenario, mode)
            if scenario.name == "s":
                assert m_inside.wait(WAIT)
                about_to_probe.set()
                with quiet_mesh():
                    self.log.append("canary s")
            return session

    def body(session: Session, step: Step) -> None:
        if session.name == "m":
            m_inside.set()
            assert about_to_probe.wait(WAIT)

    target = CanaryTarget()
    sched = Scheduler(target, [spec("m", ("1",), alone_from=0), spec("s", ("1",))], workers=2, run=runner(body))
    try:
        assert wait(sched.run("s").closed).error is None and wait(sched.run("m").closed).error is None
    finally:
        sched.shutdown()
    assert target.log.index("close m") < target.log.index("canary s")
    with quiet_mesh():  # outside the scheduler: nothing to wait for
        pass


def test_a_run_stopped_while_it_waited_for_its_claim_runs_no_further_step():
    entered = threading.Event()
    go_on = threading.Event()
    ran: list[str] = []

    def body(session: Session, step: Step) -> None:
        ran.append(f"{session.name}/{step.name}")
        if session.name == "m":
            entered.set()
            go_on.wait(WAIT)

    class LateTarget(FakeTarget):
        def start(self, scenario: Scenario, mode: str) -> Session:
            if scenario.name == "s":
                assert entered.wait(WAIT)  # s is up only once m holds the cluster
            return super().start(scenario, mode)

    target = LateTarget()
    sched = Scheduler(target, [spec("m", ("1",), alone_from=0), spec("s", ("1", "2"))], workers=2,
                      run=runner(body))
    sched.run("m")
    assert entered.wait(WAIT)  # m holds the cluster; s waits for its claim (or has not got there yet)
    stopper = threading.Thread(target=sched.shutdown)
    stopper.start()
    go_on.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert ran == ["m/1"]
    assert all(isinstance(wait(f).error, Cancelled) for f in sched.run("s").steps.values())
