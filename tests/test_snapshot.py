"""`authz-conformance snapshot` (issue 13, deliverable 3) against the loopback API server (tests/cluster/apiserver.py)
with recorded objects, through the real `kubernetes` client: the scenario it writes validates and runs on the local
mesh unchanged, it only ever sends GET requests, and every failure is one line naming the context."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.cli import main
from conformance.scenario import load
from tests.cluster.apiserver import FakeApiServer

pytest.importorskip("kubernetes")

WRITES = ("PATCH", "PUT", "POST", "DELETE")
SERVER_FIELDS = {"managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}],
                 "creationTimestamp": "2026-01-02T03:04:05Z", "generation": 3,
                 "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"kind": "..."}'}}


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **copy.deepcopy(SERVER_FIELDS), **extra}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _deployment(name: str, ns: str, port: int | None = None, kind: str = "Deployment",
                labels: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.example/app:1", "terminationMessagePath": "/dev/x"}
    if port:
        container["ports"] = [{"name": "web", "containerPort": port, "protocol": "TCP"}]
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": _meta(name, ns),
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels or {"app": name}, "creationTimestamp": None},
                                  "spec": {"serviceAccountName": name, "containers": [container]}}},
            "status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 3}}


def _service(name: str, ns: str, port: int, port_name: str, created: str) -> dict[str, Any]:
    meta = _meta(name, ns)
    meta["creationTimestamp"] = created
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.17", "clusterIPs": ["10.96.0.17"],
                     "type": "ClusterIP", "ports": [{"name": port_name, "port": port, "targetPort": port,
                                                     "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}}


def _namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(name, labels={"kubernetes.io/metadata.name": name, **(labels or {})}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _policy(kind: str, name: str, ns: str, spec: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": f"security.istio.io/{version}", "kind": kind, "metadata": _meta(name, ns), "spec": spec,
            "status": {"validationMessages": []}}


ALLOW_FRONTEND = {"selector": {"matchLabels": {"app": "orders"}}, "action": "ALLOW",
                  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/frontend"]}}],
                             "to": [{"operation": {"methods": ["GET"], "paths": ["/orders/*"]}}]}]}


def record(api: FakeApiServer, policy_version: str = "v1", mesh: str = "rootNamespace: istio-system\n") -> None:
    """A small app as a cluster holds it: web/frontend calls shop/orders (HTTP) and shop/db (a StatefulSet, TCP);
    a bare debugging Pod; an owned Pod and a waypoint's Deployment (neither is a workload); kube-system and
    local-path-storage with their own Deployments; istiod in istio-system with a mesh-wide STRICT
    PeerAuthentication there (the root namespace); an AuthorizationPolicy on orders."""
    api.install_istiod(mesh=mesh)
    for ns in ("kube-system", "local-path-storage"):
        api.put(_namespace(ns))
    api.put(_deployment("coredns", "kube-system", 53))
    api.put(_deployment("local-path-provisioner", "local-path-storage"))
    api.put(_namespace("web", {"istio-injection": "enabled"}))
    api.put(_namespace("shop", {"istio-injection": "enabled"}))
    api.put(_deployment("frontend", "web", 8080))
    api.put(_deployment("orders", "shop", 8080))
    api.put(_deployment("db", "shop", 5432, kind="StatefulSet"))
    api.put(_deployment("waypoint", "shop", labels={"gateway.networking.k8s.io/gateway-name": "waypoint"}))
    api.put({"apiVersion": "v1", "kind": "Pod", "metadata": _meta("debug", "shop", labels={"app": "debug"}),
             "spec": {"serviceAccountName": "default", "containers": [{"name": "sh", "image": "busybox"}]},
             "status": {"phase": "Running", "podIP": "10.244.0.9"}})
    api.put({"apiVersion": "v1", "kind": "Pod",
             "metadata": _meta("orders-7d9f8b6c5-abcde", "shop", labels={"app": "orders"},
                               ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                 "name": "orders-7d9f8b6c5", "uid": "u1"}]),
             "spec": {"serviceAccountName": "orders", "containers": [{"name": "app"}]}})
    for ns, accounts in (("web", ("default", "frontend")), ("shop", ("default", "orders", "db"))):
        for sa in accounts:
            api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(sa, ns)})
    api.put(_service("frontend", "web", 8080, "http", "2026-01-01T00:00:00Z"))
    api.put(_service("orders", "shop", 8080, "http-api", "2026-01-01T00:00:00Z"))
    api.put(_service("db", "shop", 5432, "tcp-postgres", "2026-01-01T00:00:01Z"))
    api.put(_policy("AuthorizationPolicy", "orders-allow-frontend", "shop", ALLOW_FRONTEND, policy_version))
    api.put(_policy("PeerAuthentication", "default", "istio-system", {"mtls": {"mode": "STRICT"}}, policy_version))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    api = FakeApiServer().start()
    try:
        yield api, api.kubeconfig(tmp_path, context="prod")
    finally:
        api.stop()


def _snapshot(kubeconfig: Path, *args: str) -> int:
    return main(["snapshot", "--kube-context", "prod", "--kubeconfig", str(kubeconfig), *args])


def _only_reads(api: FakeApiServer) -> None:
    """The snapshot sent no write: every request a GET (discovery, LIST and GET of objects)."""
    assert api.requests, "no request reached the API server"
    assert [r for r in api.requests if r.method in WRITES] == []
    assert {r.method for r in api.requests} == {"GET"}


def test_snapshot_writes_a_scenario_that_validates_and_runs_on_the_local_mesh_and_only_reads(
        cluster: tuple[FakeApiServer, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, kubeconfig = cluster
    record(api)
    out = tmp_path / "gate" / "prod.yaml"
    out.parent.mkdir()
    assert _snapshot(kubeconfig, "-o", str(out)) == 0
    err = capsys.readouterr().err
    assert ("namespaces skipped: istio-system (Istio's own: istiod runs there), kube-system (Kubernetes' own), "
            "local-path-storage (kind's storage provisioner)") in err
    _only_reads(api)
    paths = {r.path for r in api.requests}
    assert "/apis/security.istio.io/v1/namespaces/istio-system/peerauthentications" in paths  # the root namespace
    assert "/api/v1/namespaces/istio-system/configmaps/istio" in paths
    assert not any("/namespaces/kube-system/" in p for p in paths)

    manifests = out.parent / "prod.manifests.yaml"
    objects = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    assert [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects] == [
        ("Namespace", None, "shop"), ("Namespace", None, "web"),
        ("Deployment", "shop", "orders"), ("StatefulSet", "shop", "db"), ("Pod", "shop", "debug"),
        ("Service", "shop", "orders"), ("Service", "shop", "db"),
        ("Deployment", "web", "frontend"), ("Service", "web", "frontend"),
        ("AuthorizationPolicy", "shop", "orders-allow-frontend"), ("PeerAuthentication", "istio-system", "default")]
    text = manifests.read_text()
    for server_side in ("managedFields", "resourceVersion", "uid:", "creationTimestamp", "generation", "status:",
                        "last-applied-configuration", "clusterIP", "annotations", "finalizers",
                        "kubernetes.io/metadata.name"):
        assert server_side not in text, server_side
    assert objects[0] == {"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}
    assert objects[-2] == {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": "orders-allow-frontend", "namespace": "shop"},
                           "spec": ALLOW_FRONTEND}

    scenario_text = out.read_text()
    header = scenario_text.split("apiVersion: authz-conformance/v1")[0]
    assert "# Written by `authz-conformance snapshot --kube-context prod`" in header
    assert "REVIEW EVERY VERDICT" in header and "Namespaces skipped: istio-system" in header
    assert "Deployment shop/waypoint left out: an Istio gateway or waypoint" in header
    doc = yaml.safe_load(scenario_text)
    spec = doc["spec"]
    assert spec["workloadsFrom"] == [{"file": "prod.manifests.yaml"}]
    assert spec["steps"][0]["policies"] == [{"file": "prod.manifests.yaml"}]  # kept whole: referenced
    assert "mesh" not in spec  # the cluster's mesh config is Istio's default
    expect = spec["steps"][0]["expect"]
    assert {"from": "shop/debug", "to": "shop/orders:8080", "verdict": "deny"} in expect
    assert {"from": "web/frontend", "to": "shop/db:5432", "verdict": "allow"} in expect
    scenario = load(out)
    assert sorted(w.ref for w in scenario.workloads) == ["shop/db", "shop/debug", "shop/orders", "web/frontend"]
    assert [p.number for p in scenario.workload("shop/db").ports] == [5432]
    assert scenario.workload("shop/db").ports[0].protocol == "TCP"
    assert main(["validate", str(out)]) == 0

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out)],
                         capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout and "0 failing cell(s)" in run.stdout
    _only_reads(api)  # still nothing written: the run used the local mesh, never the cluster


def test_named_namespaces_a_mesh_root_from_the_configmap_and_stdout_inline(
        cluster: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    api, kubeconfig = cluster
    record(api, mesh="rootNamespace: mesh-root\ntrustDomain: corp.example\n")
    api.put(_namespace("mesh-root"))
    api.put(_policy("AuthorizationPolicy", "deny-debug", "mesh-root",
                    {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug"]}}]}]}))
    del api.objects[("ServiceAccount", "shop", "db")]
    assert _snapshot(kubeconfig, "--namespace", "shop", "--mode", "sidecar") == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.err  # named namespaces are read as named
    doc = yaml.safe_load(captured.out)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "snapshot-prod"
    assert spec["mesh"] == {"rootNamespace": "mesh-root", "trustDomain": "corp.example"}
    assert sorted(w["name"] for w in spec["workloads"]) == ["db", "debug", "orders"]  # inline: no file to refer to
    assert [(p["kind"], p["metadata"]["namespace"]) for p in spec["steps"][0]["policies"]] == [
        ("AuthorizationPolicy", "mesh-root"), ("AuthorizationPolicy", "shop")]
    assert "mesh config istio-system/istio: root namespace mesh-root, trust domain corp.example" in captured.out
    assert "StatefulSet shop/db: its ServiceAccount shop/db does not exist (its pods cannot start)" in captured.out
    paths = {r.path for r in api.requests}
    assert "/apis/security.istio.io/v1/namespaces/mesh-root/authorizationpolicies" in paths
    assert not any("/namespaces/web/" in p for p in paths)
    _only_reads(api)


def test_policies_fall_back_to_v1beta1_when_v1_is_not_served(
        cluster: tuple[FakeApiServer, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, kubeconfig = cluster
    api.unserved.add("security.istio.io/v1")
    record(api, policy_version="v1beta1")
    out = tmp_path / "old.yaml"
    assert _snapshot(kubeconfig, "-o", str(out), "--mode", "sidecar") == 0
    capsys.readouterr()
    objects = [d for d in yaml.safe_load_all((tmp_path / "old.manifests.yaml").read_text()) if d]
    assert {o["apiVersion"] for o in objects if o["kind"].endswith(("Policy", "Authentication"))} == {
        "security.istio.io/v1beta1"}
    assert "AuthorizationPolicy: security.istio.io/v1 not served, read as security.istio.io/v1beta1" in out.read_text()
    assert any(r.path == "/apis/security.istio.io/v1beta1/namespaces/shop/authorizationpolicies" for r in api.requests)
    assert not any(r.path.startswith("/apis/security.istio.io/v1/") for r in api.requests)
    assert len(load(out).steps[0].policies) == 2
    _only_reads(api)


def test_a_cluster_without_istios_crds_gives_a_scenario_without_policies_and_says_so(
        cluster: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    api, kubeconfig = cluster
    api.unserved.update({"security.istio.io/v1", "security.istio.io/v1beta1"})
    record(api)
    assert _snapshot(kubeconfig, "--namespace", "web", "--namespace", "shop") == 0
    text = capsys.readouterr().out
    for kind in ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"):
        assert f"{kind}: not served by this cluster" in text
    assert yaml.safe_load(text)["spec"]["steps"][0]["policies"] == []


@pytest.mark.parametrize("case", ["no such context", "unreachable", "forbidden", "no such namespace",
                                  "no workload"])
def test_failures_are_one_line_naming_the_context_with_exit_1(
        case: str, cluster: tuple[FakeApiServer, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, kubeconfig = cluster
    record(api)
    args = ["-o", str(tmp_path / "s.yaml")]
    context = "prod"
    expected = ""
    if case == "no such context":
        context, expected = "staging", "cannot load kubeconfig"
    elif case == "unreachable":
        api.stop()
        expected = "did not answer"
    elif case == "forbidden":
        api.fail_next("GET", "/api/v1/namespaces", 403, "Forbidden",
                      'namespaces is forbidden: User "dev" cannot list resource "namespaces" in API group "" at the '
                      "cluster scope")
        expected = 'namespaces is forbidden: User "dev" cannot list resource "namespaces"'
    elif case == "no such namespace":
        args += ["--namespace", "nope"]
        expected = "namespace 'nope' not found"
    else:
        api.put(_namespace("empty"))
        args += ["--namespace", "empty"]
        expected = "no workload"
    status = main(["snapshot", "--kube-context", context, "--kubeconfig", str(kubeconfig), *args])
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"kube context '{context}'" in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err
    if case == "forbidden":
        assert "--namespace" in lines[0]  # what to do about it
    assert not list(tmp_path.glob("s*.yaml"))  # nothing written, not even the manifests
    if case != "unreachable":
        assert not [r for r in api.requests if r.method in WRITES]


def test_the_write_check_itself_fails_on_a_write(cluster: tuple[FakeApiServer, Path]) -> None:
    """`_only_reads` is not vacuous: one server-side apply through the same client is caught."""
    from conformance.mesh.cluster.kube import Kube

    api, kubeconfig = cluster
    api.put(_namespace("shop"))
    kube = Kube(str(kubeconfig), "prod")
    try:
        kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "namespace": "shop"}})
    finally:
        kube.close()
    with pytest.raises(AssertionError):
        _only_reads(api)


def test_snapshot_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["snapshot", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "authz-conformance snapshot --kube-context prod --namespace shop" in text
    assert "--kubeconfig" in text and "GET and LIST only" in text
