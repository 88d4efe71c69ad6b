"""`authz-conformance init` (issue 13, deliverable 2): a scenario from rendered manifests that validates and passes on
the local mesh unchanged, with the engine's verdicts written out and a header asking for review."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conformance.cli import main
from conformance.errors import ScenarioError
from conformance.scenario import load

RENDERED = Path(__file__).parent / "data" / "manifests-rendered"
SHOP, PAYMENTS = RENDERED / "kustomize-shop.yaml", RENDERED / "helm-payments.yaml"


def _cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, check=False, cwd=cwd)


def test_init_writes_a_scenario_that_validates_and_passes_on_the_local_mesh(tmp_path: Path) -> None:
    out = tmp_path / "gate" / "shop.yaml"
    proc = _cli("init", "--from", str(SHOP), "--from", str(PAYMENTS), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("# Written by `authz-conformance init")
    assert "REVIEW EVERY VERDICT" in text and "not what they are meant to do" in text
    doc = yaml.safe_load(text)
    spec = doc["spec"]
    # the gate follows the repository: workloads and policies by reference, relative to the written file
    assert [e["file"] for e in spec["workloadsFrom"]] == [os.path.relpath(p, out.parent) for p in (SHOP, PAYMENTS)]
    assert spec["steps"][0]["policies"] == spec["workloadsFrom"]
    assert spec["modes"] == ["sidecar", "ambient"]
    expect = spec["steps"][0]["expect"]
    assert all("verdict" in e and e["verdict"] != "auto" for e in expect)
    # each client to each other workload's server port, and the rules' methods and paths, both ways
    assert {"from": "shop/loadgen", "to": "shop/orders:5432", "verdict": "allow"} in expect
    rule = [e for e in expect if e.get("note") == "exercises shop/orders-allow-frontend rules[0]"]
    assert [(e["from"], e["request"], e["verdict"]) for e in rule] == [
        ("shop/frontend", {"method": "GET", "path": "/orders/x"}, {"sidecar": "allow", "ambient": "deny"}),
        ("shop/loadgen", {"method": "GET", "path": "/orders/x"}, "deny")]
    scenario = load(out)
    assert len(scenario.steps[0].expectations) == len(expect)

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out)],
                         capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout and "0 failing cell(s)" in run.stdout


_STDIN = """\
# Source: chart/templates/all.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    metadata: {labels: {app: api}}
    spec: {serviceAccountName: api, containers: [{name: c, image: x, ports: [{name: web, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec: {selector: {app: api}, ports: [{name: http, port: 80, targetPort: web}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: other}
spec: {template: {metadata: {labels: {app: client}}, spec: {containers: []}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, uid: 7c1e, resourceVersion: "12"}
spec:
  selector: {matchLabels: {app: api}}
  rules: [{to: [{operation: {methods: [GET], paths: ["/public/*"], hosts: ["*.example.com"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules: [{issuer: "https://issuer.example.com", jwksUri: "https://issuer.example.com/jwks"}]
"""


def test_init_from_stdin_writes_workloads_and_policies_inline_and_leaves_out_what_it_cannot_express(
        tmp_path: Path) -> None:
    proc = _cli("init", "--from", "-", "--mode", "sidecar", "--name", "api-gate", stdin=_STDIN)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "RequestAuthentication default/jwt (<stdin> document 5): spec.jwtRules[0] has no inline jwks" in text
    doc = yaml.safe_load(text)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "api-gate" and spec["modes"] == ["sidecar"]
    assert spec["workloads"] == [
        {"name": "api", "namespace": "default", "serviceAccount": "api", "labels": {"app": "api"}, "ports": [8080]},
        {"name": "client", "namespace": "other", "serviceAccount": "default", "labels": {"app": "client"}}]
    # metadata trimmed to what a scenario's policy may carry, the namespace made explicit
    assert spec["steps"][0]["policies"] == [{
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "api"}},
                 "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"],
                                                  "hosts": ["*.example.com"]}}]}]}}]
    expect = spec["steps"][0]["expect"]
    assert {"from": "other/client", "to": "default/api:8080", "verdict": "deny"} in expect
    assert {"from": "other/client", "to": "default/api:8080",
            "request": {"method": "GET", "path": "/public/x", "headers": {"host": "x.example.com"}},
            "note": "exercises default/api rules[0]", "verdict": "allow"} in expect
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert load(path).name == "api-gate"


def test_a_file_with_a_policy_left_out_is_inlined_not_referenced(tmp_path: Path) -> None:
    rendered = tmp_path / "r.yaml"
    rendered.write_text(textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: shop}
        spec: {template: {metadata: {labels: {app: api}}, spec: {containers: []}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api, namespace: shop}
        spec: {selector: {app: api}, ports: [{name: http, port: 8080}]}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: xff, namespace: shop}
        spec: {rules: [{when: [{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: [update]}]}]}
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: shop}
        spec: {mtls: {mode: STRICT}}
        """))
    out = tmp_path / "gate.yaml"
    proc = _cli("init", "--from", str(tmp_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "AuthorizationPolicy shop/xff" in text.split("apiVersion: authz-conformance/v1")[0]
    doc = yaml.safe_load(text)
    assert doc["spec"]["workloadsFrom"] == [{"file": "r.yaml"}]
    assert [p["kind"] for p in doc["spec"]["steps"][0]["policies"]] == ["PeerAuthentication"]
    load(out)


def test_init_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "authz-conformance init --from rendered.yaml" in text and "--from -" in text


def test_no_workload_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    proc = _cli("init", "--from", str(tmp_path / "p.yaml"))
    assert proc.returncode == 1 and "no workload found" in proc.stderr


def test_a_document_given_to_the_loader_is_the_scenario_its_file_is(tmp_path: Path) -> None:
    # `init` checks its draft from the document itself, never parsing it back: the same Scenario as from the file
    out = tmp_path / "shop.yaml"
    assert _cli("init", "--from", str(SHOP), "--from", str(PAYMENTS), "-o", str(out)).returncode == 0
    from_file = load(out)
    from_doc = load(out, doc=yaml.safe_load(out.read_text()))
    assert from_doc == from_file and len(from_doc.steps[0].expectations) > 10
    with pytest.raises(ScenarioError, match="not a scenario"):
        load(out, doc={"kind": "Deployment"})


def test_init_on_a_mesh_of_270_workloads_writes_all_72630_probes(tmp_path: Path) -> None:
    # over 200,000 YAML nodes without one alias: the alias-bomb guard had refused init's draft, and the file
    docs: list[dict[str, object]] = []
    for i in range(270):
        meta = {"name": f"w{i}", "namespace": f"ns{i % 20}"}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "labels": {"app": f"w{i}"}},
                     "spec": {"serviceAccountName": f"sa{i}",
                              "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}})
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                     "spec": {"selector": {"app": f"w{i}"}, "ports": [{"name": "http", "port": 8080}]}})
    manifests = tmp_path / "m.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    out = tmp_path / "big.yaml"
    proc = _cli("init", "--from", str(manifests), "--mode", "sidecar", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    expect = load(out).steps[0].expectations  # the file as a user's `pytest` reads it
    assert len(expect) == 270 * 269 and {e.verdicts["sidecar"] for e in expect} == {"allow"}
