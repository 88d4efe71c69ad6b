"""The GitHub Action (action.yml), its run step (tools/action/run), the job summary it writes, and the pre-commit
hooks: valid metadata, and the run step really run here, on the local mesh, against a scenario directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
RUN = ROOT / "tools" / "action" / "run"
INSTALL = ROOT / "tools" / "action" / "install"


def test_action_metadata_passes_githubs_action_schema():
    """GitHub's action metadata schema (SchemaStore github-action, vendored by check-jsonschema: no network)."""
    pytest.importorskip("check_jsonschema")
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-actions",
                           str(ACTION)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_input_the_steps_read_is_declared_and_every_declared_one_is_used():
    action = yaml.safe_load(ACTION.read_text())
    declared = set(action["inputs"])
    used: set[str] = set()
    text = ACTION.read_text()
    for name in declared:
        if f"inputs.{name}" in text:
            used.add(name)
    assert used == declared
    scripts = RUN.read_text() + INSTALL.read_text()
    env_names = {k for step in action["runs"]["steps"] for k in (step.get("env") or {})}
    for var in env_names:
        assert var in scripts, f"{var} is set for the scripts but never read"
    assert action["runs"]["using"] == "composite"
    assert all(os.access(p, os.X_OK) for p in (RUN, INSTALL))


SCENARIO = """apiVersion: authz-conformance/v1
kind: Scenario
metadata: {name: action-smoke}
spec:
  modes: [sidecar]
  workloads:
    - {name: web, namespace: shop, ports: [8080]}
    - {name: curl, namespace: shop}
    - {name: curl, namespace: other}
  steps:
    - name: only-shop
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: only-shop, namespace: shop}
          spec:
            selector: {matchLabels: {app: web}}
            rules: [{from: [{source: {namespaces: [shop]}}]}]
      expect:
        - {from: shop/curl, to: shop/web:8080, verdict: allow}
        - {from: other/curl, to: shop/web:8080, verdict: VERDICT}
"""


def _run(tmp_path: Path, paths: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    summary.write_text("# an earlier step's summary\n")
    environ = {**os.environ, "AUTHZ_PYTHON": sys.executable, "INPUT_PATHS": paths, "INPUT_TARGET": "local",
               "INPUT_RESULTS_DIR": str(tmp_path / "results"), "GITHUB_STEP_SUMMARY": str(summary),
               "GITHUB_OUTPUT": str(output), **env}
    proc = subprocess.run([str(RUN)], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600,
                          check=False)
    return proc, summary, output


@pytest.mark.skipif(shutil.which("bash") is None, reason="the run step is a bash script")
def test_the_run_step_gates_on_a_scenario_directory_and_writes_junit_allure_and_the_job_summary(tmp_path):
    """Issue 13 bar: the action's run step works here against a scenario directory (recursively, found by content,
    other YAML ignored), on the local mesh: exit 0 and a PASS summary when every probe conforms, exit 1 and the
    failing cell marked when one does not; the summary is appended, never overwriting the job's earlier ones."""
    good = tmp_path / "repo" / "authz" / "nested"
    good.mkdir(parents=True)
    (good / "only-shop.yaml").write_text(SCENARIO.replace("VERDICT", "deny"))
    (tmp_path / "repo" / "authz" / "deployment.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\n")
    proc, summary, output = _run(tmp_path, "repo/authz")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    text = summary.read_text()
    assert text.startswith("# an earlier step's summary\n") and "## authz-conformance: PASS" in text
    assert "| step | # | probe | sidecar |" in text and "✅ action-smoke" in text
    junit = ET.parse(tmp_path / "results" / "junit.xml").getroot()
    suite = junit if junit.tag == "testsuite" else junit.find("testsuite")
    assert suite is not None and int(suite.get("tests", "0")) == 1 and int(suite.get("failures", "0")) == 0
    assert any((tmp_path / "results" / "allure-results").glob("*-result.json"))
    assert f"results-dir={tmp_path / 'results'}" in output.read_text() and "exit-code=0" in output.read_text()

    (good / "only-shop.yaml").write_text(SCENARIO.replace("VERDICT", "allow"))  # wrong: other/ is denied
    proc, summary, output = _run(tmp_path, "repo/authz")
    assert proc.returncode == 1
    text = summary.read_text()
    assert "## authz-conformance: FAIL" in text and "❌ action-smoke" in text
    # one observation behind the local mesh's exact barrier (no k/n count for a single one); `!`: the engine disagrees
    assert "| **✗ L7≠A!** |" in text
    assert "exit-code=1" in output.read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="the run step is a bash script")
def test_no_scenario_under_the_paths_fails_the_step_never_passes(tmp_path):
    """pytest exits 5 when nothing ran: for a gate that is a failure, said in the log and the summary."""
    (tmp_path / "empty").mkdir()
    proc, summary, output = _run(tmp_path, "empty")
    assert proc.returncode == 1
    assert "no scenario found under: empty" in proc.stderr and "No scenario found" in summary.read_text()
    assert "exit-code=1" in output.read_text()


def test_pre_commit_hooks_call_the_suites_own_commands():
    """.pre-commit-hooks.yaml: each hook's entry is an authz-conformance subcommand that exists."""
    from conformance.cli import main as cli_main

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert {h["id"] for h in hooks} == {"authz-conformance-validate", "authz-conformance-lint"}
    for hook in hooks:
        assert hook["language"] == "python" and hook["entry"].split()[0] == "authz-conformance"
        with pytest.raises(SystemExit) as exc:
            cli_main([hook["entry"].split()[1], "--help"])
        assert exc.value.code == 0
