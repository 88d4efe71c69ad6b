"""The command line as a user runs it: predict, explain, lint, schema, compare."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_predict_json_has_the_documented_keys_per_probe_and_mode() -> None:
    r = cli("predict", str(DATA / "good.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 5 * 2
    keys = {"scenario", "step", "mode", "from", "to", "port", "method", "path", "verdict", "expected", "layer",
            "policy", "reason"}
    assert all(keys <= set(row) for row in rows)
    deny_all = next(r for r in rows if r["step"] == "deny-all" and r["mode"] == "ambient")
    assert (deny_all["verdict"], deny_all["layer"], deny_all["reason"]) == ("deny", "ztunnel", "allow-unmatched")
    outsider = next(r for r in rows if r["from"] == "legacy/outsider" and r["mode"] == "sidecar")
    assert outsider["expected"] is None and outsider["verdict"] == "deny"  # plaintext: no namespace identity


def test_predict_mode_filter_and_table() -> None:
    r = cli("predict", str(DATA / "good.yaml"), "--mode", "ambient")
    assert r.returncode == 0 and "ambient" in r.stdout and "· sidecar ·" not in r.stdout


def test_explain_says_why_the_seed_claim_is_false() -> None:
    r = cli("explain", str(DATA / "wrong-claim.yaml"), "--step", "deny-plus-allow", "--probe", "0")
    assert r.returncode == 0, r.stderr
    assert "DENY (denied-l7) — the scenario expects allow" in r.stdout
    assert "DENY is evaluated before ALLOW" in r.stdout


def test_explain_prints_only_notes_that_concern_the_probe() -> None:
    """issue 15: a waypoint probe whose waypoint policies read no address or SNI gets no ipBlocks/SNI note; the
    path, the policies that apply and the deciding rule are still printed."""
    r = cli("explain", str(ROOT / "policies" / "waypoint-l7-policy.yaml"), "--step", "waypoint-l7", "--probe", "0",
            "--mode", "waypoint")
    assert r.returncode == 0, r.stderr
    assert "internal_client_address" not in r.stdout and "istio/istio#53588" not in r.stdout
    assert "Waypoint apps/waypoint serves apps/server" in r.stdout
    assert "applies: ALLOW apps/policy-waypoint (targetRefs)" in r.stdout
    assert "ALLOW policies apply and none matches" in r.stdout or " matches → " in r.stdout


def test_explain_unknown_step_is_one_line() -> None:
    r = cli("explain", str(DATA / "good.yaml"), "--step", "nope", "--probe", "0")
    assert r.returncode == 1 and "no step 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_lint_fails_on_contradiction_and_passes_policies() -> None:
    bad = cli("lint", str(DATA / "wrong-claim.yaml"))
    assert bad.returncode == 1 and "expects allow in sidecar mode, but Istio 1.30.5 gives deny" in bad.stdout
    ok = cli("lint", *sorted(str(p) for p in (ROOT / "policies").glob("*.yaml")))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_schema_is_valid_json_schema_and_accepts_the_shipped_scenarios() -> None:
    r = cli("schema")
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in [DATA / "good.yaml", *sorted((ROOT / "policies").glob("*.yaml"))]:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_compare_reports_the_dry_run_change_in_ambient(tmp_path: Path) -> None:
    scenario = tmp_path / "dry.yaml"
    scenario.write_text(yaml.safe_dump({
        "apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "dry"},
        "spec": {"workloads": [{"name": "b", "namespace": "x", "ports": [8080]}, {"name": "a", "namespace": "y"}],
                 "steps": [{"name": "s", "expect": [{"from": "y/a", "to": "x/b"}], "policies": [{
                     "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "d", "namespace": "x", "annotations": {"istio.io/dry-run": "true"}},
                     "spec": {"action": "DENY", "rules": [{}]}}]}]}}))
    r = cli("compare", str(scenario), "--from", "1.25.1", "--to", "1.30")
    assert r.returncode == 1, r.stderr  # a change: a pipeline's upgrade gate stops here (issue 13)
    assert "[ambient]" in r.stdout and "1.25.1 deny" in r.stdout and "1.30.5 allow" in r.stdout
    assert "[sidecar]" not in r.stdout
    assert "compare: 1 probe(s) change" in r.stdout


def test_compare_names_policies_the_older_release_rejects(tmp_path: Path) -> None:
    scenario = tmp_path / "sa.yaml"
    scenario.write_text(yaml.safe_dump({
        "apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "sa"},
        "spec": {"workloads": [{"name": "b", "namespace": "x", "ports": [8080]}, {"name": "a", "namespace": "y"}],
                 "steps": [{"name": "s", "expect": [{"from": "y/a", "to": "x/b"}], "policies": [{
                     "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "sa", "namespace": "x"},
                     "spec": {"rules": [{"from": [{"source": {"serviceAccounts": ["y/a"]}}]}]}}]}]}}))
    r = cli("compare", str(scenario), "--from", "1.24", "--to", "1.30")
    assert r.returncode == 1, r.stderr  # a release rejects a policy: that stops an upgrade gate too
    assert "serviceAccounts" in r.stdout and "Istio 1.24.6 rejects it; 1.30.5 accepts it" in r.stdout
    back = cli("compare", str(scenario), "--from", "1.30", "--to", "1.24", "--json")
    assert back.returncode == 1
    (record,) = [json.loads(line) for line in back.stdout.splitlines()]
    assert record["kind"] == "rejected" and record["version"] == "1.24.6" and "serviceAccounts" in record["problem"]


def test_a_mode_the_scenario_does_not_list_is_an_error_naming_its_modes() -> None:
    # good.yaml runs in sidecar and ambient: --mode waypoint has nothing to predict, explain or reproduce,
    # and must say so instead of exiting 0 with no output.
    for args in (("predict", str(DATA / "good.yaml"), "--mode", "waypoint"),
                 ("predict", str(DATA / "good.yaml"), "--mode", "ambient", "--mode", "waypoint", "--json"),
                 ("explain", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--mode", "waypoint"),
                 ("repro", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--mode", "waypoint")):
        r = cli(*args)
        assert r.returncode != 0, args
        assert "waypoint" in r.stderr and "sidecar, ambient" in r.stderr, r.stderr
        assert r.stdout == "" and "Traceback" not in r.stderr


def test_explain_with_a_listed_mode_shows_only_that_mode() -> None:
    r = cli("explain", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--mode", "ambient")
    assert r.returncode == 0, r.stderr
    assert "[ambient]" in r.stdout and "[sidecar]" not in r.stdout


def test_published_schema_checks_inline_policies_with_istios_crd() -> None:
    # Editors validating against `authz-conformance schema` see a misspelt policy field (Istio's CRD schema,
    # conformance/crd); `validate` reports it once, from validation.py, with its Istio-version-aware message.
    schema = json.loads(cli("schema").stdout)
    doc = yaml.safe_load((DATA / "good.yaml").read_text())
    policy = doc["spec"]["steps"][1]["policies"][0]
    assert policy["kind"] == "AuthorizationPolicy"
    jsonschema.validate(doc, schema)
    policy["spec"] = {"rules": [{"from": [{"source": {"principal": ["cluster.local/ns/a/sa/b"]}}]}]}
    assert not jsonschema.Draft202012Validator(schema).is_valid(doc)
    policy["spec"] = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}
    jsonschema.validate(doc, schema)
    policy.update(kind="PeerAuthentication", spec={"mtls": {"mode": "strict"}})
    assert not jsonschema.Draft202012Validator(schema).is_valid(doc)


def test_a_misspelt_inline_policy_field_is_reported_once(tmp_path: Path) -> None:
    doc = yaml.safe_load((DATA / "good.yaml").read_text())
    doc["spec"]["steps"][1]["policies"][0]["spec"] = {"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    r = cli("validate", str(tmp_path / "s.yaml"))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "principal" in line]
    assert len(lines) == 1, r.stderr
    assert "field spec.rules[0].from[0].source.principal: unknown field 'principal'" in lines[0]
    assert "did you mean 'principals'?" in lines[0]


def test_validate_and_lint_take_directories_and_skip_what_is_not_a_scenario(tmp_path: Path) -> None:
    """Issue 13: `validate DIR` / `lint DIR` search it recursively, recognising scenarios by content (a misspelt kind
    still counts, so its errors are shown); a file given that is no scenario is skipped with a notice (a pre-commit
    hook hands over every changed YAML file); a directory with no scenario, or a path that does not exist, fails."""
    nested = tmp_path / "repo" / "authz"
    nested.mkdir(parents=True)
    (nested / "good.yaml").write_text((DATA / "good.yaml").read_text())
    shutil.copytree(DATA / "manifests", nested / "manifests")  # its policies, relative to it
    (tmp_path / "repo" / "deploy.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    ok = cli("validate", str(tmp_path / "repo"), str(tmp_path / "repo" / "deploy.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert f"{nested / 'good.yaml'}: valid" in ok.stdout and "deploy.yaml: not a scenario file" in ok.stdout
    lint = cli("lint", str(tmp_path / "repo"))
    assert lint.returncode == 0 and "lint: 1 scenario file(s)" in lint.stdout
    (nested / "typo.yaml").write_text((DATA / "good.yaml").read_text().replace("kind: Scenario", "kind: Scenaro"))
    bad = cli("validate", str(tmp_path / "repo"))
    assert bad.returncode == 1 and "typo.yaml" in bad.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("validate", str(tmp_path / "empty"), str(tmp_path / "nowhere.yaml"))
    assert empty.returncode == 1
    assert "no scenario file in this directory" in empty.stderr and "no such file or directory" in empty.stderr


def test_every_command_has_help_with_examples_and_the_runnable_ones_run() -> None:
    """Issue 13: every subcommand's --help ends with examples; each one that names files of this repository (no
    placeholder, no shell pipe) is run here and must succeed, so the examples cannot rot."""
    from conformance.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ran = 0
    for name, sub in subparsers.choices.items():
        epilog = sub.epilog or ""
        assert epilog.startswith("examples:"), f"{name} --help has no examples"
        for line in epilog.splitlines()[1:]:
            command = line.split("#")[0].strip()
            words = command.split()
            if not words or any(c in command for c in "|>") or name in ("repro",):
                continue  # a pipe or redirection, or a command that needs a target (repro runs the local mesh)
            if not all((ROOT / w).exists() for w in words[2:] if "/" in w or w.endswith(".yaml")):
                continue  # a placeholder file
            r = cli(*words[1:])
            assert r.returncode == 0, f"{command}: {r.stdout[-500:]}{r.stderr[-500:]}"
            ran += 1
    assert ran >= 6


RAW_POLICIES = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
    - from: [{source: {principals: ["spiffe://cluster.local/ns/shop/sa/curl"]}}]
      to: [{operation: {methods: ["GET"]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: []}}]}]
"""


def test_lint_of_a_raw_policy_file_gives_istios_validation_and_the_static_warnings(tmp_path: Path) -> None:
    """Issue 13: `lint` takes a raw policy file (no scenario): each policy document checked as Istio's validation
    does, named by its document number; the warnings that need no mesh (a spiffe:// principal that never matches,
    ALLOW rules ztunnel drops in ambient) for the valid ones, even beside an invalid one; other kinds ignored."""
    raw = tmp_path / "policies.yaml"
    raw.write_text(RAW_POLICIES)
    r = cli("lint", str(raw))
    assert r.returncode == 1, r.stdout + r.stderr  # document 3 is invalid
    # issue 15: each finding at file:line:col with its rule code
    assert f"{raw}:19:18: AC001 error: document 3 (AuthorizationPolicy shop/bad): field spec.rules[0].to[0].operation" \
        in r.stdout
    assert "document 2" not in r.stdout  # the Deployment is no policy: ignored
    assert f"{raw}:7:24: AC301 warning: document 1 (AuthorizationPolicy shop/allow-get)" in r.stdout
    assert "can never match: principals are written without spiffe://" in r.stdout
    assert "ztunnel drops ALLOW rules [0]" in r.stdout
    assert "applies to no workload" not in r.stdout  # needs a scenario's workloads
    raw.write_text(RAW_POLICIES.split("---", maxsplit=1)[0])
    ok = cli("lint", str(raw))
    assert ok.returncode == 0 and "policy file, 2 warning(s)" in ok.stdout, ok.stdout + ok.stderr


def test_validate_prints_the_file_line_and_column_of_each_problems_field(tmp_path: Path) -> None:
    """Issue 15 (positions in the console): a workload's field and a probe's field are reported where they are
    written, compiler style, as lint does."""
    bad = tmp_path / "gw.yaml"
    bad.write_text("""apiVersion: authz-conformance/v1
kind: Scenario
metadata: {name: bad}
spec:
  modes: [sidecar]
  workloads:
    - {name: gw, namespace: ingress, kind: ingress-gateway, ports: [80], routes: [{host: "web.*", to: apps/a:8080}]}
    - {name: a, namespace: apps, ports: [8080]}
    - {name: internet, namespace: outside, mesh: false}
  steps:
    - name: s
      policies: []
      expect:
        - {from: outside/internet, to: ingress/gw:80, request: {headers: {host: web.x}}, verdict: allow}
""")
    r = cli("validate", str(bad))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(line.startswith(f"{bad}:7:84: workload 'ingress/gw': field routes[0].host") for line in lines), lines
    assert any(line.startswith(f"{bad}:14:75: step 's': probe expect[0]: field request.headers.host") for line in lines)
