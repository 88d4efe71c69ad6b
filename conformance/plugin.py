"""pytest plugin: scenario files become test items, one per scenario × mode × step.

Thin glue, following pytest's "Working with non-python tests" pattern: a `pytest_collect_file` hook
recognises scenario files by content, a `ScenarioFile` yields one `ModeRun` collector per mode, which
yields one `StepItem` per step (the node classes live in items.py, which reports import without
importing this plugin). The mesh for a scenario and mode lives exactly as long as its `ModeRun`
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
from pathlib import Path
from typing import Any

import pytest

from conformance.argtypes import positive_int
from conformance.errors import UsageError
from conformance.items import (
    ScenarioFile,
    StepItem,
    results_key,
    skips_key,
    start_scheduler,
    stop_scheduler,
    target_key,
)
from conformance.model import MODES
from conformance.scenario import sniff
from conformance.versions import DEFAULT_VERSION, IstioVersion

TARGETS = ("local", "kind", "cluster")


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
    group.addoption("--converge", type=positive_int("observations"), default=None, metavar="N",
                    help="observations per probe. Where the target's barrier is exact (the local mesh: Envoy's "
                         "acknowledgement) each probe is observed N times (default 1) and every observation must be "
                         "right; on clusters a probe must be right N times in a row (default 3), and any wrong "
                         "observation after its first right one fails the step as flaky")
    group.addoption("--local-concurrency", type=positive_int("scenarios"), default=None, metavar="N",
                    help="local mesh: scenario runs side by side, each its own mesh (default: two per core, 2-8; "
                         "1 runs them one after another). Reports, JUnit and Allure are the same either way")
    group.addoption("--converge-deadline", type=float, default=None, metavar="SECONDS",
                    help="clusters: give up converging after this long (default 90 s); unused where the barrier "
                         "is exact (the local mesh), where nothing waits past the acknowledgement")
    group.addoption("--require-target", action="store_true",
                    help="fail the run when nothing could run on the requested target (instead of skipping)")
    group.addoption("--kube-context", default=None, help="kubeconfig context for --mesh cluster")
    group.addoption("--truth-tables", choices=("all", "failed", "none"), default="all",
                    help="which scenarios' compact truth tables to print after the run (default all)")
    group.addoption("--summary-markdown", default=None, metavar="FILE",
                    help="append the run's truth tables as GitHub Markdown to FILE (a CI job summary: "
                         "--summary-markdown \"$GITHUB_STEP_SUMMARY\")")
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
    config.stash[results_key] = []
    config.stash[skips_key] = {}
    from conformance import allure_report

    if allure_report.active(config):
        config.pluginmanager.register(allure_report.AllureReporter(config), "authz-conformance-allure")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and sniff(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Cluster targets print their plan before anything starts (clusters, Istio, batches, estimated time),
    the same plan `authz-conformance plan` prints without Docker, so a reader can check the job first;
    then the scenarios start, side by side where the target allows it (items.start_scheduler)."""
    _print_plan(session)
    start_scheduler(session)


def _print_plan(session: pytest.Session) -> None:
    config = session.config
    mesh = config.getoption("mesh")
    if mesh == "local" or config.getoption("collectonly"):
        return
    files = sorted({str(item.path) for item in session.items if isinstance(item, StepItem)})
    if not files:
        return
    from conformance.mesh.cluster.options import PYTEST_KIND_DEFAULT_NAME
    from conformance.mesh.cluster.plan import session_plan_text

    base = config.getoption("cluster_name", default=None)  # registered by pytest-kind or our options
    text = session_plan_text(files, mesh, config.getoption("mesh_mode"), config.getoption("istio_version"),
                             config.getoption("kube_context"),
                             None if base in (None, PYTEST_KIND_DEFAULT_NAME) else str(base),
                             config.getoption("cluster_concurrency"))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section(f"authz-conformance plan ({mesh})")
        for line in text.rstrip("\n").split("\n"):
            reporter.write_line(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from conformance.report import render_summary, unconfirmed_denials

    results = config.stash.get(results_key, [])
    which = config.getoption("truth_tables")
    if results and which != "none" and (which == "all" or any(not r.passed for _, r in results)):
        terminalreporter.section("authz-conformance truth tables")
        render_summary([r for _, r in results], terminalreporter._tw, only_failed=which == "failed")
    unconfirmed = unconfirmed_denials([r for _, r in results])
    markdown = config.getoption("summary_markdown")
    if markdown:
        from conformance.report import summary_markdown

        with open(markdown, "a", encoding="utf-8") as fh:  # appended: a job summary may already hold others'
            fh.write(summary_markdown([r for _, r in results], config.stash.get(skips_key, {}), unconfirmed))
    if unconfirmed:  # the user opted in to this (--accept-unconfirmed-denials): never a silent pass
        terminalreporter.section("authz-conformance: denials passed WITHOUT the enforcing proxy's record")
        terminalreporter.write_line(f"{len(unconfirmed)} probe(s) passed as unconfirmed because the run accepted "
                                    "unconfirmed denials; they prove nothing about the policies:")
        for line in unconfirmed:
            terminalreporter.write_line(f"  ~ {line}")
    skips = config.stash.get(skips_key, {})
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
    stop_scheduler(config)  # scenarios still running (Ctrl-C, -x) close before the target does (unconfigure)
    skips = config.stash.get(skips_key, {})
    if config.getoption("require_target") and skips and not config.stash.get(results_key, []):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    target = config.stash.get(target_key, None)
    if target is not None and hasattr(target, "close"):
        with contextlib.suppress(Exception):
            target.close()
