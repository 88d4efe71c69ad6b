"""A whole scenario step through `ClusterSession` over the real `kubernetes` client and the test API server
(apiserver.py): start (namespaces, workloads, rollouts, pods, canary), apply (server-side apply, the
propagation barrier reading the sidecar's config dump over exec), probe (the real probe script run by
/bin/sh with real curl, answered over the v5 exec websocket), proof (the Envoy JSON access-log record the
pretend sidecar wrote, served by the logs endpoint with kubelet timestamps), close (deletes through the API).

The pretend data plane behind the server: each Service port is a local HTTP server; its "sidecar" knows
one policy form, an ALLOW AuthorizationPolicy with no rules (`spec: {}`, which allows nothing: Envoy
denies with `rbac_access_denied_matched_policy[none]`), in the workload's namespace or the root namespace,
and looks it up in the API server's store at every request, so what the session applied is what it meets.
A curl shim only maps Service names to those local ports, as cluster DNS would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conformance.mesh.cluster.istioctl import Kubeconfig
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import WORKLOAD_LABEL
from conformance.mesh.cluster.session import BarrierWarning, ClusterContext, ClusterSession, Timeouts
from conformance.mesh.local.app import EchoHandler, EchoServer
from conformance.model import ALLOWED, DENIED_L7, Manifest, Scenario
from conformance.probe import NO_ALLOW_MATCHED, PROBE_HEADER
from conformance.runner import run_step
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.apiserver import ExecAnswer, FakeApiServer
from tests.cluster.test_session import CURL, SHIM

pytest.importorskip("kubernetes")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")
ROOT = Path(__file__).resolve().parents[2]
V130 = IstioVersion.parse("1.30")
ROOT_NAMESPACE = "istio-system"


class SidecarHandler(EchoHandler):
    """The app behind a pretend sidecar: 403 and an access-log record when a policy in force denies."""

    server: PretendPod

    def _answer(self) -> None:
        pod = self.server
        if not pod.world.denies(pod.namespace):
            super()._answer()
            return
        self._drain_body()
        body = b"RBAC: access denied"
        self.send_response(403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        pod.world.access_log(pod, {
            "type": "DownstreamEnd", "method": self.command, "path": self.path, "authority": self.headers.get("host"),
            "code": "403", "flags": "-", "details": "rbac_access_denied_matched_policy[none]", "term": "-",
            "probe": self.headers.get(PROBE_HEADER), "src": f"{self.client_address[0]}:{self.client_address[1]}",
            "upstream": "-"})


class PretendPod(EchoServer):
    """One Service port of one workload, on a local port."""

    def __init__(self, world: World, namespace: str, name: str, port: int):
        self.world, self.namespace, self.name, self.port = world, namespace, name, port
        super().__init__(("127.0.0.1", 0), f"{namespace}/{name}")
        self.RequestHandlerClass = SidecarHandler


class World:
    """What answers the execs: the sidecars' config dumps, and the probe script run for real."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.api = FakeApiServer(exec_handler=self.exec)
        self.api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROOT_NAMESPACE}})
        self.pods: dict[tuple[str, str, int], PretendPod] = {}
        self.bindir = tmp / "bin"
        self.bindir.mkdir()
        self.routes = tmp / "routes.json"
        (self.bindir / "curl").write_text(SHIM.format(python=sys.executable, routes=str(self.routes), curl=CURL))
        (self.bindir / "curl").chmod(0o755)
        self.lock = threading.Lock()
        self.execs: list[tuple[str, str, str]] = []

    def policies_for(self, namespace: str) -> list[dict[str, Any]]:
        return [p for p in self.api.policies({namespace, ROOT_NAMESPACE}) if p["kind"] == "AuthorizationPolicy"]

    def denies(self, namespace: str) -> bool:
        return any((p.get("spec") or {}).get("action", "ALLOW") == "ALLOW" and not (p.get("spec") or {}).get("rules")
                   for p in self.policies_for(namespace))

    def access_log(self, pod: PretendPod, record: dict[str, Any]) -> None:
        (info,) = [o for (k, ns, _), o in list(self.api.objects.items()) if k == "Pod" and ns == pod.namespace and
                   o["metadata"]["labels"].get(WORKLOAD_LABEL) == pod.name]
        record["local"] = f"{info['status']['podIP']}:{pod.port}"
        self.api.log(pod.namespace, info["metadata"]["name"], "istio-proxy", json.dumps(record))

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecAnswer:
        self.execs.append((namespace, pod, container))
        if container == "istio-proxy":  # pilot-agent request GET config_dump: the RBAC policy ids istiod pushed
            ids = [f"ns[{p['metadata']['namespace']}]-policy[{p['metadata']['name']}]-rule[0]"
                   for p in self.policies_for(namespace)]
            return ExecAnswer(json.dumps({"rbac": ids}).encode(), b"", 0)
        self._serve_services()
        env = {"PATH": f"{self.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.run(command, capture_output=True, env=env, timeout=60, check=False)
        return ExecAnswer(proc.stdout, proc.stderr, proc.returncode)

    def _serve_services(self) -> None:
        with self.lock:
            for (kind, ns, name), svc in list(self.api.objects.items()):
                if kind != "Service":
                    continue
                for port in svc["spec"]["ports"]:
                    key = (ns, name, port["port"])
                    if key not in self.pods:
                        srv = PretendPod(self, ns, name, port["port"])
                        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
                        self.pods[key] = srv
            routes = {f"{name}.{ns}:{port}": srv.server_address[1] for (ns, name, port), srv in self.pods.items()}
            tmp = self.tmp / "routes.tmp"
            tmp.write_text(json.dumps(routes))
            tmp.replace(self.routes)

    def close(self) -> None:
        for srv in self.pods.values():
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, ClusterContext]]:
    world = World(tmp_path)
    world.api.start()
    kubeconfig = world.api.kubeconfig(tmp_path)
    kube = Kube(str(kubeconfig), "fake", request_timeout=10)
    ctx = ClusterContext(kube=kube, kubeconfig=Kubeconfig(str(kubeconfig), "fake"), istioctl=None, version=V130,
                         curl_image="c@sha256:1", app_image="a@sha256:2", prefix="azapi01-",
                         enrollment={"istio-injection": "enabled"},
                         timeouts=Timeouts(barrier=5.0, canary=5.0, probe=5.0, connect=2.0, proof_grace=2.0))
    yield world, ctx
    kube.close()
    world.api.stop()
    world.close()


def good() -> Scenario:
    return load(ROOT / "tests" / "data" / "good.yaml", V130)


def test_one_step_start_apply_probe_prove_close_over_the_api(world):
    world, ctx = world
    scenario = good()
    session = ClusterSession(scenario, "sidecar", ctx).start()
    api = world.api
    # start: every object by server-side apply, namespaces first; the canary ran the script over exec
    patches = api.made("PATCH")
    assert patches[0].path == "/api/v1/namespaces/azapi01-accounts"
    assert {p.headers["content-type"] for p in patches} == {"application/apply-patch+yaml"}
    assert ("azapi01-accounts", session._pods["accounts/accounts"].name, "curl") in world.execs
    assert session.addresses["accounts/accounts"].startswith("10.244.0.")

    with warnings.catch_warnings():
        warnings.simplefilter("error", BarrierWarning)
        result = run_step(session, scenario, scenario.steps[1], V130, required=2, deadline=20)
    assert result.passed, [(r.probe.describe(), r.last) for r in result.table.rows]
    assert session.barriers[-1].reached  # the sidecar's config dump, read over exec, named the policy
    assert ("AuthorizationPolicy", "azapi01-accounts", "deny-all") in api.objects
    record = result.convergence.records[0]
    obs = record.observations[-1]
    assert obs.outcome == DENIED_L7
    assert obs.proof is not None and obs.proof.kind == NO_ALLOW_MATCHED
    assert obs.proof.proxy == "sidecar:accounts/accounts"
    line = json.loads(obs.proof.line)
    assert line["details"] == "rbac_access_denied_matched_policy[none]" and line["probe"]
    logs = api.made("GET", "/log")
    assert logs and {r.param("timestamps") for r in logs} == {"true"} and all(r.param("sinceSeconds") for r in logs)

    session.close()
    deleted = [r.path for r in api.made("DELETE")]
    assert sorted(deleted) == [f"/api/v1/namespaces/azapi01-{ns}" for ns in ("accounts", "finance", "legacy", "rogue")]
    assert set(api.objects) == {("Namespace", "", ROOT_NAMESPACE)}


def mesh_deny_all() -> Manifest:
    """A root-namespace ALLOW that allows nothing: every workload of the mesh denies everything."""
    body = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "mesh-deny-all", "namespace": ROOT_NAMESPACE}, "spec": {}}
    return Manifest("AuthorizationPolicy", "security.istio.io/v1", "mesh-deny-all", ROOT_NAMESPACE, body,
                    "test: step mesh-deny-all")


def test_the_next_scenario_on_the_same_cluster_sees_none_of_the_first_ones_policies(world):
    """Without cleanup of the root namespace, the second scenario's canary would already be refused."""
    world, ctx = world
    api = world.api
    scenario = good()
    with ClusterSession(scenario, "sidecar", ctx).start() as first:
        first.apply((mesh_deny_all(),))
        assert first.barriers[-1].reached
        (obs,) = first.probe([scenario.steps[0].expectations[0].probe])  # finance/curl -> accounts: now denied
        assert obs.outcome == DENIED_L7 and obs.proof is not None and obs.proof.kind == NO_ALLOW_MATCHED
        assert api.policies({ROOT_NAMESPACE})
    assert api.made("DELETE")[0].path == \
        f"/apis/security.istio.io/v1/namespaces/{ROOT_NAMESPACE}/authorizationpolicies/mesh-deny-all"
    assert first.cleanup and first.cleanup[0].reached  # the sidecar's config dump no longer named it
    assert api.policies() == []

    second = ClusterSession(scenario, "sidecar", replace(ctx, prefix="azapi02-")).start()  # the canary passes
    result = run_step(second, scenario, scenario.steps[0], V130, required=2, deadline=20)
    assert result.passed and result.convergence.records[0].observations[-1].outcome == ALLOWED
    second.close()
    assert api.policies() == [] and not [k for k in api.objects if k[1].startswith("azapi")]


def test_a_session_that_fails_to_start_leaves_nothing_over_the_api(world):
    world, ctx = world
    scenario = good()
    world.api.put({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",  # someone else's
                   "metadata": {"name": "other-team", "namespace": ROOT_NAMESPACE}, "spec": {}})
    from conformance.errors import TargetError

    with pytest.raises(TargetError, match="the mesh does not work"):
        ClusterSession(scenario, "sidecar", replace(ctx, timeouts=replace(ctx.timeouts, canary=0.5))).start()
    assert not [k for k in world.api.objects if k[1].startswith("azapi")]
    assert [p["metadata"]["name"] for p in world.api.policies()] == ["other-team"]  # never ours to delete
