"""The pytest plugin as users drive it: collection, ids and markers, skips, failures, --require-target.

These run pytest in a subprocess on small scenario files (pytester), against the real local mesh where
a step must run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copy(DATA / "good.yaml", pytester.path / "good.yaml")
    shutil.copytree(DATA / "manifests", pytester.path / "manifests")
    shutil.copy(DATA / "wrong-claim.yaml", pytester.path / "wrong-claim.yaml")
    (pytester.path / "notes.yaml").write_text("just: a yaml file that is not a scenario\n")
    return pytester


def test_collects_one_item_per_scenario_mode_and_step(scenarios: pytest.Pytester) -> None:
    result = scenarios.runpytest_subprocess("--collect-only", "-q", ".")  # scenarios found by content
    ids = [line for line in result.outlines if "::" in line]
    assert ids == [f"good.yaml::{mode}::{step}" for mode in ("sidecar", "ambient")
                   for step in ("baseline", "deny-all", "allow-finance")] + [
                       "wrong-claim.yaml::sidecar::deny-plus-allow"]


def test_markers_and_keywords_select(scenarios: pytest.Pytester) -> None:
    result = scenarios.runpytest_subprocess("--collect-only", "-q", "good.yaml", "-m", "ambient", "-k", "good and deny")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == ["good.yaml::ambient::deny-all"]


def test_unavailable_target_skips_with_its_reason_and_require_target_fails(scenarios: pytest.Pytester) -> None:
    result = scenarios.runpytest_subprocess("good.yaml", "--mesh", "kind")
    result.assert_outcomes(skipped=6)
    result.stdout.fnmatch_lines(["*3 step(s) skipped: kind target, sidecar mode*",
                                 "*3 step(s) skipped: kind target, ambient mode*",
                                 "*Nothing ran on the kind target*"])
    assert result.ret == 0
    strict = scenarios.runpytest_subprocess("good.yaml", "--mesh", "kind", "--require-target")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    # the plan is printed before anything starts, here as on a CI runner with Docker
    result.stdout.fnmatch_lines(["*authz-conformance plan (kind)*", "Plan: --mesh kind, Istio 1.30.5*",
                                 "*side by side, 1 at once: good.yaml (3 step(s)*"])


def test_invalid_scenario_is_one_failing_item_without_traceback(scenarios: pytest.Pytester) -> None:
    text = (DATA / "good.yaml").read_text().replace("finance/curl, to", "finance/cur, to", 1)
    (scenarios.path / "bad.yaml").write_text(text)
    result = scenarios.runpytest_subprocess("bad.yaml")
    result.assert_outcomes(failed=1)
    line = "bad.yaml:16:12: step 'baseline': probe expect[0]: field from: unknown workload 'finance/cur'"
    assert line in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_junit_carries_the_file_line_and_column_of_a_validation_error(scenarios: pytest.Pytester) -> None:
    """Issue 15: the failure's message and text start each problem with file:line:col of its field, a property
    `problem[i]` holds it, and (xunit1) the testcase's line is the first problem's."""
    import xml.etree.ElementTree as ET

    text = (DATA / "good.yaml").read_text().replace("finance/curl, to", "finance/cur, to", 1)
    (scenarios.path / "bad.yaml").write_text(text)
    result = scenarios.runpytest_subprocess("bad.yaml", "--junitxml", "junit.xml", "-o", "junit_family=xunit1")
    result.assert_outcomes(failed=1)
    (case,) = ET.parse(scenarios.path / "junit.xml").getroot().iter("testcase")
    failure = case.find("failure")
    assert failure is not None
    expected = "bad.yaml:16:12: step 'baseline': probe expect[0]: field from: unknown workload"
    assert expected in failure.get("message", "") and expected in (failure.text or "")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["problem[0]"].endswith("bad.yaml:16:12")
    assert case.get("line") == "15"  # 0-based, as pytest's location counts


def test_a_wrong_expectation_fails_with_tables_evidence_explanation_and_repro(scenarios: pytest.Pytester) -> None:
    result = scenarios.runpytest_subprocess("wrong-claim.yaml", "--converge", "1", "--converge-deadline", "1")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "expected allowed, observed denied-l7" in out
    assert "✗ default/frontend → default/backend:80 GET /api/v1/data" in out
    assert "proxy record" in out
    assert "rbac_access_denied_matched_policy[ns[default]-policy[deny-all-backend]-rule[0]]" in out
    assert "DENY is evaluated before ALLOW" in out
    assert ("reproduce: authz-conformance repro wrong-claim.yaml --step deny-plus-allow --probe 0 --mode sidecar "
            "--istio-version 1.30.5") in out


REFUSED = """\
apiVersion: authz-conformance/v1
kind: Scenario
metadata: {name: refused-at-1-29-1}
spec:
  modes: [sidecar, ambient]
  workloads:
    - {name: api, namespace: shop, ports: [8080]}
    - {name: web, namespace: shop}
  steps:
    - name: plus-in-a-service-account
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: allow-odd, namespace: shop}
          spec:
            selector: {matchLabels: {app: api}}
            action: ALLOW
            rules: [{from: [{source: {serviceAccounts: ["we+b"]}}]}]
      expect:
        - {from: shop/web, to: shop/api:8080, verdict: deny}
"""


def test_a_release_the_local_mesh_cannot_emulate_is_skipped_with_its_reason(pytester: pytest.Pytester) -> None:
    """issue 9, honest versions: never a silent run of another release's semantics, never a traceback."""
    (pytester.path / "refused.yaml").write_text(REFUSED)
    result = pytester.runpytest_subprocess("refused.yaml", "--istio-version", "1.29.1", "-rs", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(skipped=1, passed=1)  # sidecar refused; ambient (ztunnel compares strings) runs
    out = result.stdout.str()
    assert "1.29.1 puts" in out and "we+b" in out and "Traceback" not in out
