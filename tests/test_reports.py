"""Reports as their readers see them: Allure results, JUnit XML, the console, `authz-conformance repro`.

The end-to-end tests run pytest in a subprocess (pytester) on the real local mesh with the seed's false
claim (tests/data/wrong-claim.yaml: an ALLOW cannot override a DENY `rules: [{}]`), then read what a CI
system would read: the Allure result files, `categories.json` and `environment.properties`, the JUnit
XML, the console, and the output and status of the printed repro command. The failure kinds a healthy
local mesh cannot produce (a broken mesh, a timeout, a reset without the proxy's record) come from a
fake target installed by a conftest in the pytester directory (a 403 nobody logged stands for
the reset of a dead proxy), so that each category is still checked
through pytest, allure-pytest and the category rules.

Only the tests that read Allure results need allure-pytest (the README's `pip install -e '.[test]'`
installs it); the JUnit, console, repro and rendering tests run without it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import traceback
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance import failures
from conformance.allure_report import read_properties, write_environment
from conformance.failures import (
    CATEGORIES,
    INCONCLUSIVE,
    INFRASTRUCTURE,
    INVALID,
    MISMATCH,
    UNPROVEN,
    allure_categories,
    category_of,
)
from conformance.probe import DENY_POLICY, NO_ALLOW_MATCHED, Evidence, Observation, Proof
from conformance.report import html_truth_table, summary_tables
from conformance.runner import run_step
from conformance.scenario import load
from conformance.versions import IstioVersion

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
WRONG_PROBE = "default/frontend → default/backend:80 GET /api/v1/data"
FAST = ("--converge", "1", "--converge-deadline", "1")

HAS_ALLURE = importlib.util.find_spec("allure_pytest") is not None
needs_allure = pytest.mark.skipif(not HAS_ALLURE, reason="the Python package allure-pytest is not installed: "
                                  "pip install -e '.[test]' (or '.[test,report,cluster]') brings it")


def _results(alluredir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(alluredir.glob("*-result.json"))]


def _attachment(alluredir: Path, node: dict[str, Any], name: str) -> str:
    found = [a for a in node.get("attachments", []) if a["name"] == name or a["name"].startswith(name)]
    assert len(found) == 1, f"attachment {name!r} in {[a['name'] for a in node.get('attachments', [])]}"
    return (alluredir / found[0]["source"]).read_text(encoding="utf-8")


def _labels(result: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in result["labels"]:
        out.setdefault(label["name"], []).append(label["value"])
    return out


class _Cells(HTMLParser):
    """The cells of an HTML truth table: (class attribute, text) per <td>."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._open = dict(attrs).get("class") or ""
            self.cells.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            cls, text = self.cells[-1]
            self.cells[-1] = (cls, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._open = None


def _cells(page: str) -> list[tuple[str, str]]:
    parser = _Cells()
    parser.feed(page)
    return parser.cells


# --- the seed's false claim, end to end on the real local mesh ---------------------------------------


@pytest.fixture(scope="module")
def wrong_claim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One pytest run of wrong-claim.yaml with --junitxml (and --alluredir when allure-pytest is installed),
    shared by the checks below."""
    work = tmp_path_factory.mktemp("wrong-claim")
    shutil.copy(DATA / "wrong-claim.yaml", work / "wrong-claim.yaml")
    allure = ["--alluredir", "allure-results"] if HAS_ALLURE else []
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "wrong-claim.yaml", "-p", "no:cacheprovider", *FAST, *allure,
         "--junitxml", "junit.xml"],
        cwd=work, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return {"dir": work, "alluredir": work / "allure-results", "stdout": proc.stdout}


@needs_allure
def test_wrong_claim_allure_result_is_a_policy_verdict_mismatch(wrong_claim_run: dict[str, Any]) -> None:
    (result,) = _results(wrong_claim_run["alluredir"])
    assert result["status"] == "failed"
    message = result["statusDetails"]["message"]
    assert category_of(result["status"], message) is MISMATCH
    assert message.startswith("conformance.failures.PolicyVerdictMismatch: policy verdict mismatch: wrong-claim "
                              "[sidecar] step deny-plus-allow: 1 of 1 probe(s) did not conform\n")
    assert (f"✗ expect[0] {WRONG_PROBE} [sidecar]: expected allowed, observed denied-l7 "
            "(proxy: default/deny-all-backend rule 0; engine: default/deny-all-backend rule 0)") in message
    assert "reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow --probe 0" in \
        result["statusDetails"]["trace"]


@needs_allure
def test_wrong_claim_labels_and_parameters_group_by_scenario_mode_and_version(wrong_claim_run: dict[str, Any]) -> None:
    (result,) = _results(wrong_claim_run["alluredir"])
    labels = _labels(result)
    assert labels["parentSuite"] == ["wrong-claim"]
    assert labels["suite"] == ["sidecar"]
    assert labels["subSuite"] == ["Istio 1.30.5 · local"]
    assert (labels["scenario"], labels["mode"], labels["target"], labels["istio_version"]) == (
        ["wrong-claim"], ["sidecar"], ["local"], ["1.30.5"])
    assert {p["name"]: p["value"] for p in result["parameters"]} == {
        "mode": "'sidecar'", "Istio version": "'1.30.5'", "target": "'local'"}
    assert result["name"] == "wrong-claim · deny-plus-allow [sidecar]"


@needs_allure
def test_wrong_claim_has_one_failed_step_per_probe_with_its_evidence(wrong_claim_run: dict[str, Any]) -> None:
    alluredir = wrong_claim_run["alluredir"]
    (result,) = _results(alluredir)
    (step,) = result["steps"]
    assert step["name"] == f"{WRONG_PROBE} ⇒ denied-l7 (expected allow) ≠ engine"
    assert step["status"] == "failed"
    assert step["statusDetails"]["message"].startswith(
        "conformance.failures.PolicyVerdictMismatch: policy verdict mismatch: expected allowed, observed denied-l7")
    evidence = _attachment(alluredir, step, "evidence")
    for text in ("command:   curl ", "exit code: 0", "status:    403", "body:      RBAC: access denied",
                 "proxy (sidecar:default/backend): default/deny-all-backend rule 0",
                 "engine (sidecar): default/deny-all-backend rule 0 (deny-matched)",
                 "rbac_access_denied_matched_policy[ns[default]-policy[deny-all-backend]-rule[0]]",
                 "reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow --probe 0 "
                 "--mode sidecar --istio-version 1.30.5"):
        assert text in evidence, text


@needs_allure
def test_wrong_claim_attachments_policies_tables_explanation_convergence(wrong_claim_run: dict[str, Any]) -> None:
    alluredir = wrong_claim_run["alluredir"]
    (result,) = _results(alluredir)
    names = [a["name"] for a in result["attachments"]]
    assert names == ["policies in force", "truth table: expected vs observed",
                     f"engine explanation: expect[0] {WRONG_PROBE}", "convergence record", "scenario ≠ engine"]
    assert "the scenario expects allow, the engine predicts deny" in _attachment(alluredir, result, "scenario ≠")
    policies = [d for d in yaml.safe_load_all(_attachment(alluredir, result, "policies in force")) if d]
    assert [(d["metadata"]["name"], d["spec"]["action"]) for d in policies] == [
        ("deny-all-backend", "DENY"), ("allow-frontend-get-data", "ALLOW")]
    cells = _cells(_attachment(alluredir, result, "truth table"))
    observed = [(cls, text) for cls, text in cells if "observed" in cls]
    assert observed == [("observed diff", "denied-l7")]
    assert ("expected", "allow · allowed ≠ engine") in cells
    explanation = _attachment(alluredir, result, "engine explanation")
    assert "DENY is evaluated before ALLOW" in explanation and "the scenario expects allow" in explanation
    assert "path (sidecar->sidecar): sidecar default/frontend → sidecar default/backend (decides); decided at " \
           "sidecar:default/backend" in explanation
    convergence = _attachment(alluredir, result, "convergence record")
    assert re.search(r"propagation barrier: \d+\.\d ms \(created: AuthorizationPolicy default/deny-all-backend",
                     convergence)
    assert "NOT converged" in convergence
    assert "while converging: no probe that must be denied was observed allowed" in convergence
    assert re.search(r"\s0\s+default/frontend → default/backend:80 GET /api/v1/data\s+\d+\s+-\s+denied-l7",
                     convergence)


@needs_allure
def test_wrong_claim_session_files_categories_and_environment(wrong_claim_run: dict[str, Any]) -> None:
    alluredir = wrong_claim_run["alluredir"]
    assert json.loads((alluredir / "categories.json").read_text()) == allure_categories()
    env = read_properties(alluredir / "environment.properties")
    assert (env["target"], env["modes"], env["istio.version"]) == ("local", "sidecar", "1.30.5")
    assert env["envoy.version"].startswith("1.40.0 (")


def test_wrong_claim_junit_failure_message_lists_the_failing_cells(wrong_claim_run: dict[str, Any]) -> None:
    tree = ET.parse(wrong_claim_run["dir"] / "junit.xml")
    (case,) = tree.iter("testcase")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == (
        "policy verdict mismatch: wrong-claim [sidecar] step deny-plus-allow: 1 of 1 probe(s) did not conform\n"
        "reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow --probe 0 --mode sidecar "
        "--istio-version 1.30.5\n"
        f"✗ expect[0] {WRONG_PROBE} [sidecar]: expected allowed, observed denied-l7 "
        "(proxy: default/deny-all-backend rule 0; engine: default/deny-all-backend rule 0) [1/1 wrong] "
        "[≠ engine: deny]")
    body = failure.text or ""
    assert "scenario ≠ engine: the scenario expects allow, the engine predicts deny (deny-matched" in body
    assert f"  ✗ {WRONG_PROBE}  allowed" in body  # the side-by-side table, differing cell marked
    assert "deciding policy: proxy says default/deny-all-backend rule 0; engine says default/deny-all-backend" in body
    assert ("reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow --probe 0 --mode sidecar "
            "--istio-version 1.30.5") in body
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert (props["scenario"], props["mode"], props["istio_version"], props["target"]) == (
        "wrong-claim", "sidecar", "1.30.5", "local")
    assert props["scenario_engine_disagreement[0]"].startswith("the scenario expects allow, the engine predicts deny")


def test_wrong_claim_console_prints_the_compact_table_and_legend(wrong_claim_run: dict[str, Any]) -> None:
    out = wrong_claim_run["stdout"]
    assert "FAILED wrong-claim.yaml::sidecar::deny-plus-allow - policy verdict mismatch: " in out
    assert re.search(r"FAIL wrong-claim · Istio 1\.30\.5\n.*step\s+#\s+probe\s+sidecar", out)
    assert re.search(rf"deny-plus-allow\s+0\s+{re.escape(WRONG_PROBE)}\s+✗ L7≠A", out)
    assert "legend: ✓ observed as expected · ✗ observed≠expected · A allowed" in out


def test_the_printed_repro_command_reproduces_the_failure(wrong_claim_run: dict[str, Any]) -> None:
    m = re.search(r"reproduce: (authz-conformance repro .*)", wrong_claim_run["stdout"])
    assert m, wrong_claim_run["stdout"]
    args = shlex.split(m.group(1))[1:]
    proc = subprocess.run([sys.executable, "-m", "conformance.cli", *args], cwd=wrong_claim_run["dir"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the observation does not conform
    out = proc.stdout
    for text in (f"probe: {WRONG_PROBE}", "observed: denied-l7",
                 "result: ✗ policy verdict mismatch: expected allowed, observed denied-l7",
                 "  exit code: 0", "  status:    403", "  body:      RBAC: access denied",
                 "  proxy (sidecar:default/backend): default/deny-all-backend rule 0",
                 "  engine (sidecar): default/deny-all-backend rule 0 (deny-matched)",
                 "proxy log line (sidecar:default/backend)", "rbac_access_denied_matched_policy[ns[default]",
                 "DENY is evaluated before ALLOW", "mesh torn down."):
        assert text in out, text


def test_repro_of_a_conforming_probe_exits_0_and_errors_are_one_line(tmp_path: Path) -> None:
    shutil.copy(DATA / "good.yaml", tmp_path / "good.yaml")
    shutil.copytree(DATA / "manifests", tmp_path / "manifests")

    def repro(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conformance.cli", "repro", "good.yaml", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)

    ok = repro("--step", "deny-all", "--probe", "0", "--mode", "ambient")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "result: ✓ conforms" in ok.stdout
    assert "proxy (ztunnel:accounts/accounts): no ALLOW policy matched" in ok.stdout
    for args, said in ((("--step", "nope", "--probe", "0", "--mode", "sidecar"), "no step 'nope'"),
                       (("--step", "baseline", "--probe", "7", "--mode", "sidecar"), "no probe expect[7]"),
                       (("--step", "baseline", "--probe", "0", "--mode", "waypoint"), "not waypoint")):
        bad = repro(*args)
        assert bad.returncode == 1 and said in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


# --- every category, through pytest and allure-pytest ----------------------------------------------

_FAKE_TARGET = '''
"""A fake target for report tests: a broken mesh, a timeout, a 403 without the proxy's record."""
import conformance.mesh
from conformance.errors import TargetError
from conformance.probe import Evidence, Observation
from conformance.target import Applied


class Session:
    def __init__(self, scenario, mode):
        self.scenario, self.mode = scenario, mode
        self.addresses = {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)}

    def apply(self, policies):
        return Applied(0.001)

    def probe(self, probes):
        if self.scenario.name == "slow":
            ev = Evidence(28, 0, "", "curl: (28) Operation timed out after 6001 milliseconds", 6.0, "curl ...")
            return [Observation("timeout", ev) for _ in probes]
        ev = Evidence(0, 403, "RBAC: access denied", "", 0.01, "curl ...")
        return [Observation("denied-l7", ev, None, ("no access-log record of this request",)) for _ in probes]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Target:
    name = "local"

    def unavailable(self, mode):
        return None

    def start(self, scenario, mode):
        if scenario.name == "broken":
            raise TargetError("envoy sidecar default/backend exited with status 1 during start-up")
        return Session(scenario, mode)


conformance.mesh.make_target = lambda name, config=None: Target()
'''


def _scenario(name: str, verdict: str) -> str:
    return f"""apiVersion: authz-conformance/v1
kind: Scenario
metadata: {{name: {name}}}
spec:
  modes: [sidecar]
  workloads:
    - {{name: backend, namespace: default, ports: [80]}}
    - {{name: frontend, namespace: default}}
  steps:
    - name: only
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {{name: deny-all, namespace: default}}
          spec: {{}}
      expect:
        - {{from: default/frontend, to: default/backend, verdict: {verdict}}}
"""


def _run_failure_kinds(pytester: pytest.Pytester, *args: str) -> None:
    """A broken mesh, a timeout, a denial without proof and an invalid scenario, through the fake target."""
    pytester.makeconftest(_FAKE_TARGET)
    for name, verdict in (("broken", "deny"), ("slow", "deny"), ("unproven", "deny")):
        (pytester.path / f"{name}.yaml").write_text(_scenario(name, verdict))
    (pytester.path / "invalid.yaml").write_text(_scenario("invalid", "deny").replace("default/frontend", "nowhere/x"))
    result = pytester.runpytest_subprocess(".", *FAST, *args)
    result.assert_outcomes(failed=4)


@needs_allure
def test_each_failure_kind_lands_in_its_allure_category(pytester: pytest.Pytester) -> None:
    _run_failure_kinds(pytester, "--alluredir", "allure-results")
    by_name = {r["name"]: r for r in _results(pytester.path / "allure-results")}
    want = {"broken · only [sidecar]": INFRASTRUCTURE, "slow · only [sidecar]": INCONCLUSIVE,
            "unproven · only [sidecar]": UNPROVEN, "invalid.yaml: invalid scenario": INVALID}
    assert set(by_name) == set(want)
    for name, category in want.items():
        r = by_name[name]
        assert r["status"] == category.status == "broken", name
        assert category_of(r["status"], r["statusDetails"]["message"]) is category, r["statusDetails"]["message"]
    assert "envoy sidecar default/backend exited with status 1" in by_name["broken · only [sidecar]"][
        "statusDetails"]["message"]
    (step,) = by_name["slow · only [sidecar]"]["steps"]
    assert step["name"] == "default/frontend → default/backend:80 GET / ⇒ timeout (expected deny)"
    assert step["status"] == "broken"


def test_each_failure_kind_has_its_category_in_junit(pytester: pytest.Pytester) -> None:
    _run_failure_kinds(pytester, "--junitxml", "junit.xml")
    junit = {f"{c.get('classname')}::{c.get('name')}": c.find("failure") for c in
             ET.parse(pytester.path / "junit.xml").iter("testcase")}
    messages = {k: (v.get("message") or "") if v is not None else "" for k, v in junit.items()}
    assert messages["slow.yaml.sidecar::only"].startswith("inconclusive probe: slow [sidecar] step only")
    assert "expected denied-l7; timeout: nothing can be concluded" in messages["slow.yaml.sidecar::only"]
    assert messages["unproven.yaml.sidecar::only"].startswith("denial without proof: unproven [sidecar]")
    assert messages["broken.yaml.sidecar::only"].startswith("infrastructure failure: broken [sidecar] step only")
    assert messages["invalid.yaml::invalid-scenario"] == (
        "invalid scenario: invalid.yaml: 1 problem(s)\n"
        "invalid.yaml:17:12: step 'only': probe expect[0]: field from: unknown workload 'nowhere/x'\n"  # file:line:col
        "reproduce: authz-conformance validate invalid.yaml")
    assert messages["broken.yaml.sidecar::only"].endswith(
        "reproduce: authz-conformance repro broken.yaml --step only --probe 0 --mode sidecar --istio-version 1.30.5")


def _exconly(exc: BaseException) -> str:
    """The message allure-pytest records (ExceptionInfo.exconly: `module.Type: message`)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")


@pytest.mark.parametrize("kind", [failures.PolicyVerdictMismatch, failures.DenialWithoutProof,
                                  failures.InconclusiveProbe, failures.InfrastructureFailure,
                                  failures.InvalidScenarioFailure])
def test_category_rules_match_exactly_their_own_failures(kind: type[failures.Failure]) -> None:
    exc = kind("a headline\n✗ a cell that mentions policy verdict mismatch: and infrastructure failure: too")
    status = "failed" if isinstance(exc, AssertionError) else "broken"
    message = _exconly(exc)
    matching = [c for c in CATEGORIES if c.matches(status, message)]
    assert matching == [kind.category]
    # Allure 3 searches with JavaScript's RegExp (no anchoring): the same rules must still hold.
    assert [c for c in CATEGORIES if c.status == status and re.search(c.message_regex, message)] == [kind.category]


def test_category_rules_behave_the_same_in_javascript() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript regex check needs it")
    messages = [(("failed" if issubclass(k, AssertionError) else "broken"), _exconly(k("x\ny")))
                for k in (failures.PolicyVerdictMismatch, failures.DenialWithoutProof, failures.InconclusiveProbe,
                          failures.InfrastructureFailure, failures.InvalidScenarioFailure)]
    script = """
const [cats, msgs] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const pick = (flags) => msgs.map(([st, m]) => (cats.find((c) => c.matchedStatuses.includes(st)
  && new RegExp(c.messageRegex, flags).test(m)) || {}).name);
console.log(JSON.stringify([pick(""), pick("s")]));
"""
    proc = subprocess.run([node, "-e", script], input=json.dumps([allure_categories(), messages]),
                          capture_output=True, text=True, timeout=60, check=True)
    names = [c.name for c in CATEGORIES]
    assert json.loads(proc.stdout) == [names, names]


def test_the_report_config_uses_the_plugins_categories() -> None:
    """tools/report/categories.json feeds Awesome (allurerc.mjs); it must equal what the plugin writes."""
    assert json.loads((ROOT / "tools" / "report" / "categories.json").read_text()) == allure_categories()


# --- matrix runs, and the suite without Allure -----------------------------------------------------


@needs_allure
def test_matrix_runs_into_one_directory_stay_apart(tmp_path: Path) -> None:
    shutil.copy(DATA / "wrong-claim.yaml", tmp_path / "wrong-claim.yaml")
    for version in ("1.29", "1.30"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "wrong-claim.yaml", "-p", "no:cacheprovider", *FAST,
                               "--alluredir", "results", "--istio-version", version],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
    results = _results(tmp_path / "results")
    assert len({r["historyId"] for r in results}) == 2  # two results, not one retried
    assert len({r["testCaseId"] for r in results}) == 1  # of the same test case
    old, new = str(IstioVersion.parse("1.29")), str(IstioVersion.parse("1.30"))
    assert sorted(_labels(r)["subSuite"][0] for r in results) == [f"Istio {old} · local", f"Istio {new} · local"]
    env = read_properties(tmp_path / "results" / "environment.properties")
    assert env["istio.version"] == f"{old}, {new}" and env["modes"] == "sidecar"


def test_environment_properties_merge_values_of_several_runs(tmp_path: Path) -> None:
    write_environment(tmp_path, {"target": "local", "modes": "none ran", "istio.version": "1.30.3"})
    write_environment(tmp_path, {"target": "local", "modes": "ambient, sidecar", "istio.version": "1.29.2"})
    write_environment(tmp_path, {"target": "local", "modes": "waypoint", "istio.version": "1.30.3"})
    assert read_properties(tmp_path / "environment.properties") == {
        "target": "local", "modes": "ambient, sidecar, waypoint", "istio.version": "1.30.3, 1.29.2"}


def test_without_allure_the_suite_runs_and_reports_the_same_failure(pytester: pytest.Pytester) -> None:
    shutil.copy(DATA / "wrong-claim.yaml", pytester.path / "wrong-claim.yaml")
    result = pytester.runpytest_subprocess("wrong-claim.yaml", "-p", "no:allure_pytest", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*policy verdict mismatch: expected allowed, observed denied-l7*",
                                 "*reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow*"])
    assert not list(pytester.path.glob("**/*-result.json"))


# --- rendering, without a mesh ---------------------------------------------------------------------


class _ScriptedSession:
    """A session whose probes answer from a script: one list of outcomes per call."""

    def __init__(self, script: list[list[Observation]], addresses: dict[str, str]):
        self.mode = "sidecar"
        self.addresses = addresses
        self.script = script

    def apply(self, policies: Any) -> Any:
        from conformance.target import Applied

        return Applied(0.002, created=("AuthorizationPolicy accounts/deny-all",))

    def probe(self, probes: Any) -> list[Observation]:
        return self.script.pop(0)[: len(probes)]


def _denied(policy: str | None) -> Observation:
    proof = Proof("sidecar:accounts/accounts", DENY_POLICY if policy else NO_ALLOW_MATCHED, policy,
                  0 if policy else None, '{"details":"rbac_access_denied_matched_policy[none]"}', "sidecar",
                  "accounts/accounts")
    return Observation("denied-l7", Evidence(0, 403, "RBAC: access denied", "", 0.004, "curl ..."), proof)


def test_html_table_highlights_differing_cells_and_convergence_records_the_gap() -> None:
    from conformance.report import convergence_text

    scenario = load(DATA / "good.yaml", IstioVersion.parse(None))
    step = scenario.step("deny-all")
    assert step is not None
    allowed = Observation("allowed", Evidence(0, 200, "accounts/accounts responding\n{}", "", 0.003, "curl ..."))
    # allowed twice after the barrier (an enforcement gap), then denied as predicted three times
    session = _ScriptedSession([[allowed], [allowed], [_denied(None)], [_denied(None)], [_denied(None)]],
                               {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)})
    result = run_step(session, scenario, step, IstioVersion.parse(None), required=3, deadline=30)  # type: ignore[arg-type]
    assert result.passed
    record = convergence_text(result)
    assert "3 matching observations in a row required" in record
    assert "ENFORCEMENT GAP while converging: expect[0] allowed 2× after the barrier" in record
    assert "allowed ×2, denied-l7 ×3" in record
    cells = _cells(html_truth_table(result))
    assert [c for c in cells if "observed" in c[0]] == [("observed ok", "denied-l7")]
    text = summary_tables([result], width=160)
    assert "ENFORCEMENT GAP: 2 stale allowed observation(s)" in text and "✓ L7 gap×2" in text

    session = _ScriptedSession([[allowed]] * 5, session.addresses)
    failed = run_step(session, scenario, step, IstioVersion.parse(None), required=3, deadline=0.0)  # type: ignore[arg-type]
    assert not failed.passed
    assert [c for c in _cells(html_truth_table(failed)) if "observed" in c[0]] == [("observed diff", "allowed")]
    assert "✗ A≠L7" in summary_tables([failed], width=160)
    assert failures.step_failure(failed).category is MISMATCH


def test_compact_table_has_a_column_per_mode_and_filters_failed_scenarios() -> None:
    scenario = load(DATA / "good.yaml", IstioVersion.parse(None))
    step = scenario.step("baseline")
    assert step is not None
    ok = Observation("allowed", Evidence(0, 200, "accounts/accounts responding\n{}", "", 0.003, "curl ..."))
    results = []
    for mode in ("sidecar", "ambient"):
        session = _ScriptedSession([[ok]] * 3, {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)})
        session.mode = mode
        results.append(run_step(session, scenario, step, IstioVersion.parse(None), deadline=30))  # type: ignore[arg-type]
    text = summary_tables(results, width=160)
    assert re.search(r"PASS good · Istio 1\.30\.5\n.*step\s+#\s+probe\s+sidecar\s+ambient", text)
    assert re.search(r"baseline\s+0\s+finance/curl → accounts/accounts:8080 GET /\s+✓ A\s+✓ A", text)
    assert summary_tables(results, width=160, only_failed=True) == ""


@needs_allure
def test_skipped_modes_are_labelled_and_the_kind_environment_names_its_node_image(pytester: pytest.Pytester) -> None:
    """A target that cannot run here still yields grouped, labelled results and says which image it meant."""
    shutil.copy(DATA / "wrong-claim.yaml", pytester.path / "wrong-claim.yaml")
    image = "kindest/node:v1.35.1@sha256:" + "0" * 64
    result = pytester.runpytest_subprocess("wrong-claim.yaml", "--mesh", "kind", "--kind-image", image,
                                           "--alluredir", "results")
    result.assert_outcomes(skipped=1)
    (skipped,) = _results(pytester.path / "results")
    assert skipped["status"] == "skipped"
    labels = _labels(skipped)
    assert (labels["parentSuite"], labels["suite"], labels["subSuite"]) == (
        ["wrong-claim"], ["sidecar"], ["Istio 1.30.5 · kind"])
    env = read_properties(pytester.path / "results" / "environment.properties")
    assert (env["target"], env["modes"], env["kind.node.image"]) == ("kind", "none ran", image)


def test_probe_headers_print_in_the_compact_table_not_as_markup() -> None:
    """`[x-team:a]` is how a probe's headers print; rich must not swallow it as a style tag."""
    scenario = load(DATA / "good.yaml", IstioVersion.parse(None))
    step = scenario.step("allow-finance")
    assert step is not None
    ok = Observation("allowed", Evidence(0, 200, "accounts/accounts responding\n{}", "", 0.003, "curl ..."))
    session = _ScriptedSession([[ok, ok, ok]], {w.ref: f"127.0.0.{i + 2}" for i, w in enumerate(scenario.workloads)})
    result = run_step(session, scenario, step, IstioVersion.parse(None), required=1, deadline=0.0)  # type: ignore[arg-type]
    assert "finance/curl → accounts/accounts:8080 GET / [x-team:a]" in summary_tables([result], width=160)


def test_step_titles_survive_allures_url_linkify():
    """Allure 3.18's report drops the character that ends a URL in a step title (web-commons linkify.js
    `splitTextWithUrls`, ported below), so `[origin:https://istio.io] ⇒` showed without its bracket (found by the
    HTML report check on jwt-authn-authz). `shown_intact` gives each URL a space to lose: what the report then
    shows is the title as written, whatever follows the URL."""
    import re

    from conformance.allure_report import shown_intact

    url_in_text = re.compile(r"((?:(?:https?://|ftp://|mailto:)|www\.)\S+?)(\s|\"|'|\)|]|}|&#62|$)")

    def shown(text: str) -> str:  # splitTextWithUrls, joined: the terminator of each URL is lost
        out, last = [], 0
        for m in url_in_text.finditer(text):
            out += [text[last:m.start()], m.group(1)]
            last = m.start() + len(m.group(1)) + len(m.group(2))
        return "".join(out) + text[last:]

    titles = ["ns1/a → ns1/b:8080 OPTIONS /x [access-control-request-method:POST origin:https://istio.io] ⇒ allowed",
              "a [referer:http://x/y?q=1 origin:https://istio.io] ⇒ denied-l7", "at the end: https://istio.io",
              "quoted 'https://a.b' (www.c.d) {ftp://e}", "no link here [x-team:a]"]
    assert shown(titles[0]) != titles[0]  # the bug this works around
    for title in titles:
        assert shown(shown_intact(title)) == title


def test_the_explanation_shows_the_path_and_the_hop_that_decided_through_a_gateway() -> None:
    """Issue 12: the report shows each probe's path and which hop decided: through the ingress gateway to an
    ambient backend, a gateway DENY is decided at the gateway, a backend refusal at the backend's ztunnel."""
    from conformance.report import explanation_text
    from conformance.truthtable import predict

    version = IstioVersion.parse("1.30")
    scenario = load(Path(__file__).resolve().parent.parent / "policies" / "ingress-backends.yaml", version)
    step = next(s for s in scenario.steps if s.name == "gateway-principal")
    table = predict(scenario, step, "ambient", version)
    allowed, refused = (explanation_text(table, row) for row in table)
    assert "path (outside->gateway->ambient): gateway istio-ingress/istio-ingressgateway (decides) → ztunnel apps/b " \
           "(decides)" in refused
    assert "decided at ztunnel:apps/b" in refused and "decided at ztunnel:apps/b" in allowed
