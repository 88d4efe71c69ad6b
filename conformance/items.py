"""The pytest nodes of a conformance run: a scenario file, one collector per mode, one item per step.

Kept apart from the plugin's hooks (plugin.py) so that reporters (allure_report.py) can recognise the
items without importing the plugin that registers them. A `ModeRun` owns the mesh session its steps
share: pytest's SetupState calls its setup/teardown around the steps, also on failure and Ctrl-C.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

from conformance.errors import (
    ConformanceError,
    Location,
    NotModelled,
    Problem,
    ScenarioError,
    TargetError,
    TargetUnavailable,
)
from conformance.failures import Failure, InfrastructureFailure, InvalidScenarioFailure, step_failure
from conformance.model import Expectation, Mode, Scenario, Step
from conformance.positions import locate, placed
from conformance.repro import repro_command
from conformance.runner import StepResult, run_step
from conformance.scenario import load
from conformance.schedule import Outcome, RunSpec, ScheduledRun, Scheduler, wait
from conformance.target import MeshSession, Target
from conformance.truthtable import Row
from conformance.versions import IstioVersion

target_key = pytest.StashKey[Target]()
scheduler_key = pytest.StashKey[Scheduler]()
results_key = pytest.StashKey[list[tuple["StepItem", StepResult]]]()
skips_key = pytest.StashKey[dict[str, int]]()


def _version(config: pytest.Config) -> IstioVersion:
    return IstioVersion.parse(config.getoption("istio_version"))


def _target(config: pytest.Config) -> Target:
    if target_key not in config.stash:
        from conformance.mesh import make_target

        config.stash[target_key] = make_target(config.getoption("mesh"), config)
    return config.stash[target_key]


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        try:
            scenario = load(self.path, _version(self.config))
        except ConformanceError as exc:
            yield InvalidScenario.from_parent(self, name="invalid-scenario", error=exc)
            return
        only = self.config.getoption("mesh_mode")
        for mode in scenario.modes:
            if only and mode not in only:
                continue
            yield ModeRun.from_parent(self, name=mode, scenario=scenario, mode=mode)


class InvalidScenario(pytest.Item):
    """A scenario that cannot run fails as one item, its problems one per line, without a traceback."""

    def __init__(self, *, error: ConformanceError, **kwargs: Any):
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        problems = getattr(self.error, "problems", None) or [self.error]
        shown = self.config.invocation_params.dir
        path = os.path.relpath(self.path, shown) if self.path.is_relative_to(shown) else str(self.path)
        # each problem at the file:line:col of its field, in the text (console, JUnit, Allure) and as JUnit
        # properties `problem[i]` (issue 15)
        for i, p in enumerate(problems):
            pos = locate(p.location) if isinstance(p, Problem) else None
            if pos is not None:
                self.user_properties.append((f"problem[{i}]", str(pos)))
        text = "\n".join(placed(p) if isinstance(p, Problem) else str(p) for p in problems)
        raise InvalidScenarioFailure(f"{self.path.name}: {len(problems)} problem(s)\n{text}\n"
                                     f"reproduce: {shlex.join(['authz-conformance', 'validate', path])}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | FailureRepr:
        if isinstance(excinfo.value, Failure):
            text = str(excinfo.value).split("\n", 1)[1]
            return FailureRepr(self.path, str(excinfo.value), f"invalid scenario:\n{text}")
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int, str]:
        """The first problem's line (0-based, as pytest counts): JUnit's xunit1 `line` attribute."""
        first = next(iter(getattr(self.error, "problems", None) or []), None)
        pos = locate(first.location) if isinstance(first, Problem) else None
        line = pos.line - 1 if pos is not None and Path(pos.file).resolve() == self.path.resolve() else 0
        return self.path, line, f"{self.path.name}: invalid scenario"


class ModeRun(pytest.Collector):
    """One scenario in one mode: owns the mesh session its steps share."""

    def __init__(self, *, scenario: Scenario, mode: Mode, **kwargs: Any):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.mode = mode
        self.mesh: MeshSession | None = None
        self.skip_reason: str | None = None
        self.failure: TargetError | None = None

    def collect(self) -> Iterator[pytest.Item]:
        for step in self.scenario.steps:
            item = StepItem.from_parent(self, name=step.name, step=step)
            item.add_marker(getattr(pytest.mark, self.mode))
            item.add_marker(pytest.mark.scenario(self.scenario.name))
            item.extra_keyword_matches.update({self.scenario.name, self.mode})
            yield item

    @property
    def scheduled(self) -> ScheduledRun | None:
        """This run's futures when the scheduler runs it ahead in a worker thread (schedule.py), else None."""
        scheduler = self.config.stash.get(scheduler_key, None)
        return scheduler.run(self.nodeid) if scheduler is not None and self.nodeid in scheduler else None

    def setup(self) -> None:
        target = _target(self.config)
        reason = target.unavailable(self.mode)
        if reason:
            self._skip(target, reason)
        scheduled = self.scheduled
        try:
            if scheduled is not None:
                self.mesh = _outcome(wait(scheduled.started))
            else:
                self.mesh = target.start(self.scenario, self.mode)
        except TargetUnavailable as exc:  # e.g. a release whose behaviour this target cannot emulate
            self._skip(target, str(exc))
        except TargetError as exc:  # reported by each step as an infrastructure failure, not a traceback
            self.failure = exc

    def _skip(self, target: Target, reason: str) -> None:
        """Skip this scenario's steps in this mode, counted per reason for the run's summary."""
        self.skip_reason = f"{target.name} target, {self.mode} mode: {reason}"
        skips = self.config.stash[skips_key]
        skips[self.skip_reason] = skips.get(self.skip_reason, 0) + len(self.scenario.steps)
        pytest.skip(self.skip_reason)

    def teardown(self) -> None:
        scheduled = self.scheduled
        if scheduled is not None:  # the worker closes the session after its last step; report how it went
            self.mesh = None
            _outcome(wait(scheduled.closed))
        elif self.mesh is not None:
            mesh, self.mesh = self.mesh, None
            mesh.close()


def _outcome(outcome: Outcome) -> Any:
    """A worker's outcome on the reporting test's thread: its warnings and attachments, then its value or
    its exception (raised here, so pytest sorts it exactly as if the work had run on this thread)."""
    outcome.notices.replay()
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def start_scheduler(session: pytest.Session) -> None:
    """Run the selected scenarios side by side when the target can (`concurrency` > 1: the cluster targets,
    `--cluster-concurrency`); each mode's runs only if the target is available for it. Runs are given in
    the order pytest will report them, so the first ones to report are the first to start."""
    config = session.config
    steps: dict[str, list[StepItem]] = {}
    for item in session.items:
        if isinstance(item, StepItem):
            steps.setdefault(item.run.nodeid, []).append(item)
    if not steps or config.getoption("collectonly"):
        return
    target = _target(config)
    workers = int(getattr(target, "concurrency", 1))
    if workers <= 1:
        return
    alone = getattr(target, "runs_alone", lambda scenario, step: True)  # unknown: the safe answer
    specs = []
    for items in steps.values():
        run = items[0].run
        if target.unavailable(run.mode) is None:
            selected = tuple(i.step for i in items)
            first = next((n for n, step in enumerate(selected) if alone(run.scenario, step)), None)
            specs.append(RunSpec(run.nodeid, run.scenario, run.mode, selected, alone_from=first))
    if specs:
        config.stash[scheduler_key] = Scheduler.for_version(target, specs, workers, _version(config),
                                                            config.getoption("converge"), _deadline(config))


def stop_scheduler(config: pytest.Config) -> None:
    scheduler = config.stash.get(scheduler_key, None)
    if scheduler is not None:
        scheduler.shutdown()


def _deadline(config: pytest.Config) -> float:
    deadline = config.getoption("converge_deadline")
    if deadline is None:
        deadline = 10.0 if config.getoption("mesh") == "local" else 90.0
    return float(deadline)


class FailureRepr(TerminalRepr):
    """A failure report with a short message and a full body.

    pytest reads `reprcrash.message` for the one-line summary (`FAILED id - message`) and the JUnit
    `message` attribute, and `toterminal` / `str()` for the body (console, JUnit element text, Allure
    trace), so each reader gets the part it can show. (`TerminalRepr` and `ReprFileLocation` are what
    `repr_failure` is typed to return; pytest does not re-export them.)
    """

    def __init__(self, path: Path, message: str, text: str):
        self.reprcrash = ReprFileLocation(str(path), 0, message)
        self.text = text

    def toterminal(self, tw: Any) -> None:
        for line in self.text.rstrip("\n").split("\n"):
            tw.line(line)


class StepItem(pytest.Item):
    def __init__(self, *, step: Step, **kwargs: Any):
        super().__init__(**kwargs)
        self.step = step
        self.result: StepResult | None = None  # set by runtest, read by reports (allure_report)

    @property
    def run(self) -> ModeRun:
        assert isinstance(self.parent, ModeRun)
        return self.parent

    def runtest(self) -> None:
        run = self.run
        config = self.config
        for name, value in (("scenario", run.scenario.name), ("mode", run.mode),
                            ("istio_version", str(_version(config))), ("target", config.getoption("mesh"))):
            self.user_properties.append((name, value))
        where = f"{run.scenario.name} [{run.mode}] step {self.step.name}"
        again = (f"\nreproduce: {self.repro_command(self.step.expectations[0])}" if self.step.expectations else "")
        if run.failure is not None:
            raise InfrastructureFailure(f"{where}: {run.failure}{again}") from run.failure
        assert run.mesh is not None
        scheduled = run.scheduled
        try:
            if scheduled is not None:  # run ahead by a worker (schedule.py): the same run_step, earlier
                result = _outcome(wait(scheduled.steps[self.step.name]))
            else:
                result = run_step(run.mesh, run.scenario, self.step, _version(config),
                                  required=config.getoption("converge"), deadline=_deadline(config))
        except NotModelled as exc:  # valid, but the engine cannot predict it yet (issue 11): never ran
            text = "\n".join(placed(p) for p in exc.problems)
            raise InvalidScenarioFailure(f"{where}: {len(exc.problems)} problem(s)\n{text}") from exc
        except (TargetError, ScenarioError) as exc:
            raise InfrastructureFailure(f"{where}: {exc}{again}") from exc
        self.result = result
        config.stash[results_key].append((self, result))
        self.user_properties.append(("barrier_seconds", f"{result.applied.seconds:.4f}"))
        for row in result.table.contradictions():  # JUnit <property>, whatever the outcome, with the verdict's place
            at = locate(Location(str(run.scenario.path), f"step '{self.step.name}': probe "
                                 f"expect[{row.expectation.index}]", "verdict"))
            self.user_properties.append((f"scenario_engine_disagreement[{row.expectation.index}]",
                                         (result.table.disagreement(row) or "") + (f" at {at}" if at else "")))
        self.user_properties.append(("converge_seconds", f"{result.convergence.seconds:.4f}"))
        if not result.passed:
            raise step_failure(result, self.repro_command)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | FailureRepr:
        from conformance.report import render_failure

        exc = excinfo.value
        if isinstance(exc, Failure) and exc.result is not None:
            return FailureRepr(self.path, str(exc), render_failure(exc.result, self.repro_command))
        if isinstance(exc, Failure):
            return FailureRepr(self.path, str(exc), str(exc))
        return str(super().repr_failure(excinfo, style=style))

    def repro_command(self, probe: Row | Expectation) -> str:
        """The copy-paste command that runs this probe alone on the same target (`authz-conformance repro`)."""
        index = probe.expectation.index if isinstance(probe, Row) else probe.index
        return repro_command(self.run.scenario.path, self.step.name, index, self.run.mode,
                             _version(self.config), self.config.getoption("mesh"),
                             cwd=self.config.invocation_params.dir)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.run.scenario.name} [{self.run.mode}] step {self.step.name}"


