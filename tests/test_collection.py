"""Collection: every YAML file meant as a scenario becomes test items, and a broken one fails the run.

Before issue 9 a typo in the header (`kind: Scenerio`, `apiVersion: authz-conformance/v2`) made the file
invisible: a directory run skipped it and exited 0, an explicit run said "not found". Now such a file is
collected and fails as one "invalid scenario" item listing every problem, while ordinary Kubernetes
manifests next to scenarios (policies/manifests) are still not collected. Runs pytest in a subprocess on
small files (pytester), as tests/test_plugin.py does; no mesh is started (no valid scenario is run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conformance.scenario import looks_like_scenario, sniff

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def _good(**header: str) -> str:
    doc = yaml.safe_load((DATA / "good.yaml").read_text())
    doc.update(header)
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory holding two misspelt scenarios, a Kubernetes manifest and a plain YAML file."""
    shutil.copytree(DATA / "manifests", pytester.path / "manifests")
    (pytester.path / "typo-kind.yaml").write_text(_good(kind="Scenerio"))
    (pytester.path / "v2.yaml").write_text(_good(apiVersion="authz-conformance/v2"))
    (pytester.path / "notes.yaml").write_text("just: a yaml file that is not a scenario\n")
    shutil.copy(ROOT / "policies" / "manifests" / sorted(p.name for p in (ROOT / "policies" / "manifests")
                                                         .glob("*.yaml"))[0], pytester.path / "policy.yaml")
    return pytester


def test_misspelt_scenarios_in_a_directory_are_collected_and_fail(tree: pytest.Pytester) -> None:
    result = tree.runpytest_subprocess(".")
    result.assert_outcomes(failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    # each problem starts with the file:line:col of its field (issue 15)
    assert "typo-kind.yaml:2:1: field kind: 'Scenerio' is not a valid value (must be Scenario)" in out
    assert "v2.yaml:1:1: field apiVersion: 'authz-conformance/v2' is not a valid value" in out
    assert "invalid scenario" in out and "Traceback" not in out
    assert "policy.yaml" not in out and "notes.yaml" not in out  # manifests and other YAML: not collected


def test_a_misspelt_scenario_given_explicitly_is_collected(tree: pytest.Pytester) -> None:
    result = tree.runpytest_subprocess("typo-kind.yaml")
    result.assert_outcomes(failed=1)
    assert "not found" not in result.stdout.str() + result.stderr.str()
    ids = [line for line in tree.runpytest_subprocess("--collect-only", "-q", ".").outlines if "::" in line]
    assert ids == ["typo-kind.yaml::invalid-scenario", "v2.yaml::invalid-scenario"]


def test_the_invalid_item_lists_every_problem(tree: pytest.Pytester) -> None:
    doc = yaml.safe_load(_good(kind="Senario"))
    doc["spec"]["steps"][0]["expect"][0].update({"from": "finance/cur", "verdict": "denied"})
    (tree.path / "many.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = tree.runpytest_subprocess("many.yaml")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    for needle in ("field kind:", "field from: unknown workload 'finance/cur'",
                   "field verdict: 'denied' is not a valid value (valid values: allow, deny, auto)"):
        assert needle in out, needle


def test_the_shipped_manifests_are_not_collected() -> None:
    manifests = sorted((ROOT / "policies" / "manifests").glob("*.yaml"))
    assert manifests
    assert not any(sniff(p) for p in manifests)
    assert all(sniff(p) for p in sorted((ROOT / "policies").glob("*.yaml")))


@pytest.mark.parametrize(("doc", "meant"), [
    ({"apiVersion": "authz-conformance/v1", "kind": "Scenario"}, True),
    ({"apiVersion": "authz-conformance/v2"}, True),
    ({"apiVersion": "authz-conformance/v1", "kind": "Whatever"}, True),
    ({"kind": "Scenerio", "spec": {"steps": []}}, True),
    ({"kind": "scenario", "spec": {"steps": []}}, True),
    ({"kind": "Senario", "spec": {"steps": []}}, True),
    ({"kind": "Scenerio", "spec": {"workloads": []}}, False),  # no steps: not a scenario
    ({"kind": "Scenes", "spec": {"steps": []}}, False),  # edit distance 3
    ({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "spec": {}}, False),
    ({"apiVersion": "v1", "kind": "Service", "spec": {"steps": []}}, False),
    (["a", "list"], False),
    ("text", False),
])
def test_what_counts_as_meant_as_a_scenario(doc: object, meant: bool) -> None:
    assert looks_like_scenario(doc) is meant


def test_sniff_never_raises_and_reports_malformed_scenarios(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: authz-conformance/v1\nkind: [Scenario\n")
    assert sniff(broken)  # collected, so that the malformed YAML is reported
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind: Scenario")
    assert not sniff(binary)
    assert not sniff(tmp_path / "missing.yaml")
