"""Lint as a linter (issue 15): rule codes and their catalog, positions, once per finding, selection and
suppression, GitHub annotations and SARIF, and the pitfall rules on scenarios that fire and stay silent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.errors import Location
from conformance.lint import _suffix_can_match, findings
from conformance.lint_rules import RULES, markdown
from conformance.positions import locate
from conformance.scenario import load
from conformance.versions import IstioVersion

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
LINT = DATA / "lint"
V = IstioVersion.parse(None)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)


def codes(path: Path) -> list[str]:
    return [f.code for f in findings(load(path, V), V)]


def test_the_committed_rule_doc_is_the_catalog():
    """Regenerate with `authz-conformance lint --rules --markdown > docs/lint-rules.md` after a catalog change."""
    assert (ROOT / "docs" / "lint-rules.md").read_text() == markdown(), "docs/lint-rules.md is stale"


def test_every_rule_has_a_unique_code_a_source_and_a_fix():
    assert len({r.code for r in RULES}) == len(RULES) and len({r.name for r in RULES}) == len(RULES)
    for r in RULES:
        assert re.fullmatch(r"AC\d{3}", r.code) and r.severity in ("error", "warning", "notice")
        assert r.source and r.fix and r.meaning and r.summary


@pytest.mark.parametrize("code", ["AC101", "AC102", "AC201", "AC205", "AC206", "AC207", "AC208", "AC302", "AC303",
                                  "AC501"])
def test_each_pitfall_fires_once_on_its_scenario(code: str):
    found = codes(LINT / f"fires-{code}.yaml")
    assert found == [code], found


@pytest.mark.parametrize("name", ["silent-AC101", "silent-AC102", "silent-AC201", "silent-AC205-AC206",
                                  "silent-AC207", "silent-AC208", "silent-AC302", "silent-AC303", "silent-AC011",
                                  "silent-AC501"])
def test_clean_scenarios_are_silent(name: str):
    assert codes(LINT / f"{name}.yaml") == []


def test_once_per_finding_not_per_step_and_at_the_first_place():
    """fires-AC205 lists the same policy in two steps: one finding, in the first step."""
    (f,) = findings(load(LINT / "fires-AC205.yaml", V), V)
    assert f.policy == "AuthorizationPolicy shop/allow-waypoint" and f.mode == "waypoint"
    assert "step 'admit-waypoint'" in f.problem.location.where


def test_no_selector_finding_is_at_spec():
    (f,) = findings(load(LINT / "fires-AC101.yaml", V), V)
    assert f.problem.location.field == "spec" and "namespace shopp has no workload" in f.problem.message


@pytest.mark.parametrize(("suffix", "ok"), [
    ("/cluster.local/ns/a/sa/b", False), ("/ns/a/sa/b", True), ("ns/a/sa/b", True), ("s/a/sa/b", True),
    ("x/a/sa/b", False), ("/sa/b", True), ("/sa/", False), ("a/b", True), ("x/b", False), ("b", True),
    ("td/ns/a/sa/b", True), ("local/ns/a/sa/b", True), ("/a/ns/a/sa/b", False),
])
def test_suffix_principals_that_can_match(suffix: str, ok: bool):
    assert _suffix_can_match(suffix) is ok


def test_positions_of_inline_referenced_and_raw_policies(tmp_path: Path):
    scenario = str(DATA / "good.yaml")
    pos = locate(Location(scenario, "step 'deny-all': policies[0] (AuthorizationPolicy accounts/deny-all)", "spec"))
    assert pos is not None and (pos.line, pos.column) == (22, 11)
    ref = locate(Location(scenario, "step 'allow-finance': policies[0] manifests/allow-finance.yaml document 2 "
                                    "(AuthorizationPolicy accounts/allow-finance)", "spec.rules[0]"))
    assert ref is not None and ref.file.endswith("manifests/allow-finance.yaml")
    assert (ref.line, ref.column) == (11, 7)  # `- from:` of document 2, not the scenario's line
    raw = tmp_path / "p.yaml"
    raw.write_text("# c\n---\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                   "metadata: {name: a, namespace: b}\nspec:\n  selector: {matchLabels: {app: x}}\n")
    pos = locate(Location(str(raw), "document 1 (AuthorizationPolicy b/a)", "spec.selector.matchLabels.app"))
    assert pos is not None and (pos.line, pos.column) == (8, 28)
    missing = locate(Location(str(raw), "document 1 (AuthorizationPolicy b/a)", "spec.rules[0]"))
    assert missing is not None and (missing.line, missing.column) == (7, 1)  # the deepest part that exists


def test_select_ignore_annotation_comment_and_config(tmp_path: Path):
    src = (LINT / "fires-AC302.yaml").read_text()
    (tmp_path / "s.yaml").write_text(src)
    assert "AC302" in cli("lint", str(tmp_path / "s.yaml")).stdout
    assert "AC302" not in cli("lint", str(tmp_path / "s.yaml"), "--ignore", "AC3").stdout
    assert "AC302" not in cli("lint", str(tmp_path / "s.yaml"), "--select", "AC1").stdout
    bad = cli("lint", str(tmp_path / "s.yaml"), "--select", "AC999")
    assert bad.returncode == 1 and "names no lint rule" in bad.stderr
    (tmp_path / "a.yaml").write_text(src.replace("metadata: {name: allow-web, namespace: shop}",
                                                 "metadata: {name: allow-web, namespace: shop, annotations: "
                                                 "{authz-conformance.io/ignore: 'AC302'}}"))
    r = cli("lint", str(tmp_path / "a.yaml"))
    assert r.returncode == 0 and "AC302" not in r.stdout, r.stdout + r.stderr
    (tmp_path / "c.yaml").write_text(src.replace("        - apiVersion: security.istio.io/v1",
                                                 "        # authz-conformance: ignore[AC302]\n"
                                                 "        - apiVersion: security.istio.io/v1"))
    assert "AC302" not in cli("lint", str(tmp_path / "c.yaml")).stdout
    sub = tmp_path / "repo" / "authz"
    sub.mkdir(parents=True)
    (sub / "s.yaml").write_text(src)
    (tmp_path / "repo" / "pyproject.toml").write_text('[tool.authz-conformance.lint]\nfail-on = "warning"\n')
    failing = cli("lint", str(sub / "s.yaml"))
    assert failing.returncode == 1 and "AC302" in failing.stdout
    (tmp_path / "repo" / "authz" / ".authz-conformance.yaml").write_text("lint: {ignore: [suffix-principal-never-"
                                                                          "matches]}\n")
    quiet = cli("lint", str(sub / "s.yaml"))
    assert quiet.returncode == 0 and "AC302" not in quiet.stdout


def test_github_annotations_have_file_line_and_title():
    r = cli("lint", "tests/data/lint/fires-AC205.yaml", "tests/data/wrong-claim.yaml", "--format", "github")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines and all(re.match(r"^::(error|warning|notice) file=[^,]+,line=\d+,col=\d+,title=AC\d{3} [^:]+::.+",
                                  line) for line in lines), r.stdout
    assert any(line.startswith("::warning file=tests/data/lint/fires-AC205.yaml,line=23,col=17,title=AC205")
               for line in lines)
    assert any(",title=AC010 " in line and line.startswith("::error ") for line in lines)


def test_sarif_has_the_required_structure():
    """SARIF 2.1.0's required properties (version, runs[].tool.driver.name, results[].message) and what code
    scanning reads: rules from the catalog, ruleId/ruleIndex, level, physicalLocation with a region."""
    r = cli("lint", str(LINT / "fires-AC206.yaml"), str(DATA / "wrong-claim.yaml"), "--format", "sarif")
    assert r.returncode == 1
    log = json.loads(r.stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert run["tool"]["driver"]["name"] == "authz-conformance"
    assert [x["id"] for x in rules] == [x.code for x in RULES]
    assert {x["defaultConfiguration"]["level"] for x in rules} <= {"error", "warning", "note"}
    by_rule = {res["ruleId"]: res for res in run["results"]}
    assert {"AC206", "AC010"} <= set(by_rule)
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"] and res["level"] in ("error", "warning", "note")
        assert res["message"]["text"]
        (loc,) = res["locations"]
        physical = loc["physicalLocation"]
        assert physical["artifactLocation"]["uri"] and physical["region"]["startLine"] >= 1
    assert by_rule["AC206"]["locations"][0]["physicalLocation"]["region"] == {"startLine": 21, "startColumn": 13}


def test_sarif_validates_against_the_sarif_2_1_0_schema():
    """Issue 15's bar: the SARIF log validates against OASIS's own SARIF 2.1.0 JSON Schema (vendored with its
    provenance in tests/data/sarif/), formats included, for findings of every severity over the shipped scenarios."""
    import jsonschema

    schema = json.loads((DATA / "sarif" / "sarif-schema-2.1.0.json").read_text())
    r = cli("lint", str(LINT / "fires-AC206.yaml"), str(DATA / "wrong-claim.yaml"), "policies", "--format", "sarif")
    log = json.loads(r.stdout)
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
    assert errors == []
    assert {res["level"] for res in log["runs"][0]["results"]} >= {"error", "warning"}
    # and the validator does reject what the schema forbids
    log["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(log))


def test_rules_listing():
    r = cli("lint", "--rules")
    assert r.returncode == 0 and all(x.code in r.stdout for x in RULES)


INGRESS_SCENARIOS = ("ingress-gateway", "ingress-remote-ip", "ingress-backends", "ingress-to-waypoint")


def test_policies_that_select_only_an_ingress_gateway_get_no_ztunnel_warning():
    """A gateway is an Envoy: selector policies with L7 fields, CUSTOM, RequestAuthentication, cluster.local
    principals on a custom trust domain and a targetRefs policy on its own Gateway all apply there, so none of the
    ambient rules (AC201-AC204, AC303) nor AC102 fires."""
    assert codes(LINT / "silent-gateway.yaml") == []
    r = cli("lint", *(f"policies/{n}.yaml" for n in INGRESS_SCENARIOS))
    assert r.returncode == 0, r.stdout + r.stderr
    gateway_policies = ("istio-system/policy-b", "istio-system/ingress-policy", "istio-ingress/")
    for line in r.stdout.splitlines():
        if any(p in line for p in gateway_policies):
            # Istio's own webhook warning, and the Host-with-port pitfall ingress-gateway.yaml shows on purpose
            # (its "deny.b.com:80" probe); no ztunnel / waypoint warning on a policy the gateway enforces
            assert re.search(r": AC(002|501) warning", line), line
    assert "no-op at ztunnel" not in r.stdout and "ignores CUSTOM" not in r.stdout


def test_the_shipped_scenarios_have_no_waypoint_pitfall_left_unexplained(tmp_path: Path):
    """Every AC205/AC206 on policies/ is either a false positive fixed in the rule (the layered termination filter
    restricts clients at the waypoint: pilot-env-layered-waypoint.yaml) or suppressed beside the policy with the
    reason the scenario shows it on purpose."""
    r = cli("lint", "policies", "--select", "AC205,AC206", "--fail-on", "warning")
    assert r.returncode == 0 and "AC20" not in r.stdout, r.stdout + r.stderr
    assert cli("lint", "policies").returncode == 0
    # the flag-on world is silent by the rule itself; its flag-off twin fires once its suppressions are taken out
    assert "AC205" not in codes(ROOT / "policies" / "pilot-env-layered-waypoint.yaml")
    off = (ROOT / "policies" / "pilot-env-layered-waypoint-off.yaml").read_text()
    (tmp_path / "off.yaml").write_text("\n".join(line for line in off.splitlines()
                                                 if "authz-conformance: ignore" not in line))
    assert codes(tmp_path / "off.yaml").count("AC205") == 2


def test_a_negative_l7_only_deny_is_ac201_and_a_mixed_source_is_ac207():
    """(a) ztunnel skips an empty Match (rbac.rs l.115), so `notRequestPrincipals` alone is AC201's no-op; beside an
    L4 field in the same source the L4 field stays and the DENY is broader (AC207)."""
    (no_op,) = findings(load(LINT / "fires-AC201.yaml", V), V)
    assert "notRequestPrincipals" in no_op.problem.message and no_op.mode == "ambient"
    (broader,) = findings(load(LINT / "fires-AC207.yaml", V), V)
    assert broader.problem.location.field == "spec.rules[0].from[0].source"
    assert "strips notRequestPrincipals" in broader.problem.message and "keeps namespaces" in broader.problem.message


@pytest.mark.parametrize(("release", "words"), [("1.25.1", "ztunnel enforces it"),
                                                ("1.25.2", "neither enforced nor logged"),
                                                ("1.30", "neither enforced nor logged")])
def test_dry_run_in_ambient_depends_on_the_release(release: str, words: str):
    v = IstioVersion.parse(release)
    (f,) = findings(load(LINT / "fires-AC208.yaml", v), v)
    assert f.code == "AC208" and words in f.problem.message and f.problem.location.field == "metadata.annotations"
    assert ("exists from 1.29.0" in f.problem.message) == (release == "1.25.2")


def test_strict_that_cuts_off_an_out_of_mesh_client_is_at_the_peer_authentication():
    """(c) from the engine's decision (STRICT_MTLS), once for both modes, beside the two AC010 contradictions."""
    found = findings(load(LINT / "fires-AC011.yaml", V), V)
    assert [f.code for f in found] == ["AC011", "AC010", "AC010"]
    strict = found[0]
    assert strict.policy == "PeerAuthentication shop/default" and strict.mode == "sidecar and ambient"
    assert strict.problem.location.field == "spec.mtls.mode"
    pos = locate(strict.problem.location)
    assert pos is not None and (pos.line, pos.column) == (20, 20)


def test_host_without_port_names_the_host_the_client_sends():
    (f,) = findings(load(LINT / "fires-AC501.yaml", V), V)
    assert "'api.shop:8080'" in f.problem.message and "'api.shop:*'" in f.problem.message
    assert f.problem.location.field == "spec.rules[0].to[0].operation.hosts"
