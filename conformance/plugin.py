"""pytest plugin: scenario files become test items, one per scenario × mode × step.

Thin glue, following pytest's "Working with non-python tests" pattern: a `pytest_collect_file` hook
recognises scenario files by content, a `ScenarioFile` yields one `ModeRun` collector per mode, which
yields one `StepItem` per step. The mesh for a scenario and mode lives exactly as long as its `ModeRun`
node (pytest's SetupState calls its setup/teardown around the steps, also on failure and Ctrl-C); the
target itself lives for the session. The work is done by runner.py; failures are rendered by report.py
and sorted into categories by failures.py; Allure detail is added by allure_report.py, registered only
when allure-pytest is installed and `--alluredir` is given.

A failure's report carries a short message (the failing cells, one per line: pytest's one-line summary,
the JUnit `message` attribute and the Allure message all show it) and the full text (tables, evidence,
explanations, repro commands) as its body.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

from conformance.errors import ConformanceError, ScenarioError, TargetError, UsageError
from conformance.failures import Failure, InfrastructureFailure, InvalidScenarioFailure, step_failure
from conformance.model import MODES, Expectation, Mode, Scenario, Step
from conformance.repro import repro_command
from conformance.runner import StepResult, run_step
from conformance.scenario import load, sniff
from conformance.target import MeshSession, Target
from conformance.truthtable import Row
from conformance.versions import DEFAULT_VERSION, IstioVersion

TARGETS = ("local", "kind", "cluster")
_target_key = pytest.StashKey[Target]()
_results_key = pytest.StashKey[list[tuple["StepItem", StepResult]]]()
_skips_key = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("authz-conformance", "Istio AuthorizationPolicy conformance")
    group.addoption("--mesh", choices=TARGETS, default="local",
                    help="where scenarios run: local (real Envoy processes on loopback, default), kind (kind "
                         "clusters the suite creates, with Istio), cluster (an existing cluster with Istio)")
    group.addoption("--mesh-mode", action="append", choices=MODES, default=None,
                    help="run only this mode (repeatable; default: the modes each scenario lists)")
    group.addoption("--istio-version", default=DEFAULT_VERSION, type=_istio_version_option,
                    help=f"Istio version whose semantics predict verdicts and that cluster targets install "
                         f"(default {DEFAULT_VERSION}; 1.29 or 1.29.2)")
    group.addoption("--converge", type=int, default=3, metavar="N",
                    help="observations per probe (default 3). Where the target's barrier is exact (the local mesh: "
                         "Envoy's acknowledgement) each probe is observed N times and every observation must be "
                         "right; on clusters a probe must be right N times in a row, and any wrong observation "
                         "after its first right one fails the step as flaky")
    group.addoption("--converge-deadline", type=float, default=None, metavar="SECONDS",
                    help="clusters: give up converging after this long (default 90 s); unused where the barrier "
                         "is exact (the local mesh), where nothing waits past the acknowledgement")
    group.addoption("--require-target", action="store_true",
                    help="fail the run when nothing could run on the requested target (instead of skipping)")
    group.addoption("--kube-context", default=None, help="kubeconfig context for --mesh cluster")
    group.addoption("--truth-tables", choices=("all", "failed", "none"), default="all",
                    help="which scenarios' compact truth tables to print after the run (default all)")
    from conformance.mesh.cluster.options import add_cluster_options

    add_cluster_options(group, parser)


def _istio_version_option(text: str) -> str:
    """Type of `--istio-version`: refuse an unmodelled release while parsing the command line.

    argparse turns ArgumentTypeError into a parser error, which pytest reports as a usage error (exit 4,
    no traceback), before any scenario is collected. The text is returned unchanged (options hold strings;
    `_version` resolves it).
    """
    try:
        IstioVersion.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def pytest_configure(config: pytest.Config) -> None:
    for mode in MODES:
        config.addinivalue_line("markers", f"{mode}: scenario steps run in Istio {mode} mode")
    config.addinivalue_line("markers", "scenario(name): the scenario a step belongs to")
    config.stash[_results_key] = []
    config.stash[_skips_key] = {}
    from conformance import allure_report

    if allure_report.active(config):
        config.pluginmanager.register(allure_report.AllureReporter(config), "authz-conformance-allure")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and sniff(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _version(config: pytest.Config) -> IstioVersion:
    return IstioVersion.parse(config.getoption("istio_version"))


def _target(config: pytest.Config) -> Target:
    if _target_key not in config.stash:
        from conformance.mesh import make_target

        config.stash[_target_key] = make_target(config.getoption("mesh"), config)
    return config.stash[_target_key]


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
        raise InvalidScenarioFailure(f"{self.path.name}: {len(problems)} problem(s)\n{self.error}\n"
                                     f"reproduce: {shlex.join(['authz-conformance', 'validate', path])}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | FailureRepr:
        if isinstance(excinfo.value, Failure):
            text = str(excinfo.value).split("\n", 1)[1]
            return FailureRepr(self.path, str(excinfo.value), f"invalid scenario:\n{text}")
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: invalid scenario"


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

    def setup(self) -> None:
        target = _target(self.config)
        reason = target.unavailable(self.mode)
        if reason:
            self.skip_reason = f"{target.name} target, {self.mode} mode: {reason}"
            skips = self.config.stash[_skips_key]
            skips[self.skip_reason] = skips.get(self.skip_reason, 0) + len(self.scenario.steps)
            pytest.skip(self.skip_reason)
        try:
            self.mesh = target.start(self.scenario, self.mode)
        except TargetError as exc:  # reported by each step as an infrastructure failure, not a traceback
            self.failure = exc

    def teardown(self) -> None:
        if self.mesh is not None:
            mesh, self.mesh = self.mesh, None
            mesh.close()


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
        deadline = config.getoption("converge_deadline")
        if deadline is None:
            deadline = 10.0 if config.getoption("mesh") == "local" else 90.0
        try:
            result = run_step(run.mesh, run.scenario, self.step, _version(config),
                              required=config.getoption("converge"), deadline=deadline)
        except (TargetError, ScenarioError) as exc:
            raise InfrastructureFailure(f"{where}: {exc}{again}") from exc
        self.result = result
        config.stash[_results_key].append((self, result))
        self.user_properties.append(("barrier_seconds", f"{result.applied.seconds:.4f}"))
        for row in result.table.contradictions():  # JUnit <property>, whatever the outcome
            self.user_properties.append((f"scenario_engine_disagreement[{row.expectation.index}]",
                                         result.table.disagreement(row) or ""))
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


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from conformance.report import render_summary, unconfirmed_denials

    results = config.stash.get(_results_key, [])
    which = config.getoption("truth_tables")
    if results and which != "none" and (which == "all" or any(not r.passed for _, r in results)):
        terminalreporter.section("authz-conformance truth tables")
        render_summary([r for _, r in results], terminalreporter._tw, only_failed=which == "failed")
    unconfirmed = unconfirmed_denials([r for _, r in results])
    if unconfirmed:  # the user opted in to this (--accept-unconfirmed-denials): never a silent pass
        terminalreporter.section("authz-conformance: denials passed WITHOUT the enforcing proxy's record")
        terminalreporter.write_line(f"{len(unconfirmed)} probe(s) passed as unconfirmed because the run accepted "
                                    "unconfirmed denials; they prove nothing about the policies:")
        for line in unconfirmed:
            terminalreporter.write_line(f"  ~ {line}")
    skips = config.stash.get(_skips_key, {})
    if skips:
        terminalreporter.section("authz-conformance: not run on this target")
        for reason, count in skips.items():
            terminalreporter.write_line(f"{count} step(s) skipped: {reason}")
        if not results:
            terminalreporter.write_line(
                f"Nothing ran on the {config.getoption('mesh')} target: no conformance result was produced."
                + ("" if config.getoption("require_target") else " (--require-target makes this a failure)"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    skips = config.stash.get(_skips_key, {})
    if config.getoption("require_target") and skips and not config.stash.get(_results_key, []):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    target = config.stash.get(_target_key, None)
    if target is not None and hasattr(target, "close"):
        with contextlib.suppress(Exception):
            target.close()
