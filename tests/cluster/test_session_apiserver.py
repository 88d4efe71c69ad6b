"""A whole scenario step through `ClusterSession` over the real `kubernetes` client and the test API server
(apiserver.py): start (namespaces, workloads, rollouts, pods, canary), apply (server-side apply, the
propagation barrier reading the sidecar's config dump over exec), probe (the real probe script run by
/bin/sh with real curl, answered over the v5 exec websocket), proof (the Envoy JSON access-log record the
pretend sidecar wrote, served by the logs endpoint with kubelet timestamps), close (deletes through the API).

The pretend data plane behind the server: each Service port is a local HTTP server; its "sidecar" knows
one policy form, an ALLOW AuthorizationPolicy with no rules (`spec: {}`, which allows nothing: Envoy
denies with `rbac_access_denied_matched_policy[none]`), in the workload's namespace or the root namespace,
and looks it up in the API server's store at every request, so what the session applied is what it meets.
In ambient mode the same policy makes the pretend ztunnel reset the connection and write what
istio/ztunnel@1.30.3 writes (src/proxy/metrics.rs `access_log!`): for an in-mesh client the source
ztunnel's outbound record of curl's connection ("http status: 401 Unauthorized", h2/client.rs) and the
destination's inbound record from the pooled HBONE connection (src.addr = the source pod's IP, port 15008);
for a plaintext client one inbound record with curl's own address. `istioctl ztunnel-config policies` is
answered from the API server's store.
A curl shim only maps Service names to those local ports, as cluster DNS would, and tells the pretend
data plane which pod the exec ran in (a real ztunnel knows it from the connection).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conformance.mesh.cluster.istioctl import Kubeconfig, Result
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import WORKLOAD_LABEL, enrollment_labels
from conformance.mesh.cluster.session import BarrierWarning, ClusterContext, ClusterSession, Timeouts
from conformance.mesh.local.app import EchoHandler, EchoServer
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, Manifest, Mode, Scenario
from conformance.probe import NO_ALLOW_MATCHED, PROBE_HEADER
from conformance.runner import run_step
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.apiserver import ExecAnswer, FakeApiServer, kubelet_timestamp
from tests.cluster.envoy_dump import listeners_dump
from tests.cluster.test_session import CURL

pytest.importorskip("kubernetes")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")
ROOT = Path(__file__).resolve().parents[2]
V130 = IstioVersion.parse("1.30")
ROOT_NAMESPACE = "istio-system"
SOURCE_HEADER = "x-pretend-source"
ZTUNNEL = "ztunnel-6xq2v"
SHIM = """#!{python}
import json, os, sys
routes = json.load(open({routes!r}))
args = sys.argv[1:]
for i, a in enumerate(args):
    if a.startswith("http://"):
        hostport, _, path = a[len("http://"):].partition("/")
        host = hostport if ":" in hostport else hostport + ":80"
        if host in routes:
            # the Host curl would send, unless the probe sets its own (a gateway probe's route host)
            own = any(args[j - 1] == "-H" and args[j].lower().startswith("host:") for j in range(1, len(args)))
            args[i:i + 1] = ([] if own else ["-H", "host: " + hostport]) + [
                "-H", {header!r} + ": " + os.environ["PRETEND_SOURCE"], "http://127.0.0.1:%d/%s" % (routes[host], path)]
        break
os.execv({curl!r}, [{curl!r}, *args])
"""


class Reset(Exception):
    """The pretend ztunnel reset the connection: nothing more to write."""


class SidecarHandler(EchoHandler):
    """The app behind a pretend sidecar or ztunnel: when a policy in force denies, a 403 and an Envoy record
    (sidecar) or a reset and ztunnel's records (ambient)."""

    server: PretendPod

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except Reset:
            self.close_connection = True

    def _answer(self) -> None:
        pod = self.server
        where = pod.world.denies(pod.namespace)
        if where is None:
            super()._answer()
            return
        self._drain_body()
        if where == "ztunnel":
            pod.world.ztunnel_refusal(pod, f"{self.client_address[0]}:{self.client_address[1]}",
                                      self.headers.get(SOURCE_HEADER, ""))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()  # with SO_LINGER 0: a reset, as ztunnel refuses a connection
            raise Reset
        body = b"RBAC: access denied"
        self.send_response(403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        pod.world.access_log(pod, where, {
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

    def __init__(self, tmp: Path, mode: Mode = "sidecar"):
        self.tmp, self.mode = tmp, mode
        self.api = FakeApiServer(exec_handler=self.exec)
        self.api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROOT_NAMESPACE}})
        self.pods: dict[tuple[str, str, int], PretendPod] = {}
        self.bindir = tmp / "bin"
        self.bindir.mkdir()
        self.routes = tmp / "routes.json"
        (self.bindir / "curl").write_text(SHIM.format(python=sys.executable, routes=str(self.routes), curl=CURL,
                                                      header=SOURCE_HEADER))
        (self.bindir / "curl").chmod(0o755)
        self.lock = threading.Lock()
        self.execs: list[tuple[str, str, str]] = []

    def policies_for(self, namespace: str) -> list[dict[str, Any]]:
        return [p for p in self.api.policies({namespace, ROOT_NAMESPACE}) if p["kind"] == "AuthorizationPolicy"]

    def waypoint_of(self, namespace: str) -> str | None:
        """The waypoint a namespace uses (its `istio.io/use-waypoint` label), in waypoint mode."""
        ns = self.api.objects.get(("Namespace", "", namespace)) or {}
        return (ns.get("metadata") or {}).get("labels", {}).get("istio.io/use-waypoint") if self.mode == "waypoint" \
            else None

    def denies(self, namespace: str) -> str | None:
        """Which pretend proxy denies a request to `namespace` ("sidecar", "ztunnel", "waypoint"), or None."""
        waypoint = self.waypoint_of(namespace)
        for p in self.policies_for(namespace):
            spec = p.get("spec") or {}
            if spec.get("action", "ALLOW") != "ALLOW" or spec.get("rules"):
                continue
            refs = spec.get("targetRefs") or []
            if not refs:
                return "sidecar" if self.mode == "sidecar" else "ztunnel"
            if waypoint and any(r.get("kind") == "Gateway" and r.get("name") == waypoint for r in refs):
                return "waypoint"
        return None

    def pod_of(self, pod: PretendPod) -> dict[str, Any]:
        (info,) = [o for (k, ns, _), o in list(self.api.objects.items()) if k == "Pod" and ns == pod.namespace and
                   o["metadata"]["labels"].get(WORKLOAD_LABEL) == pod.name]
        return info

    def access_log(self, pod: PretendPod, where: str, record: dict[str, Any]) -> None:
        """The Envoy record of a denial, in the sidecar's log or the namespace's waypoint's."""
        info = self.pod_of(pod)
        record["local"] = f"{info['status']['podIP']}:{pod.port}"
        if where == "waypoint":
            waypoint = self.waypoint_of(pod.namespace)
            (info,) = [o for (k, ns, _), o in list(self.api.objects.items()) if k == "Pod" and ns == pod.namespace
                       and o["metadata"]["labels"].get("gateway.networking.k8s.io/gateway-name") == waypoint]
            record["local"] = f"{info['status']['podIP']}:15008"
        self.api.log(pod.namespace, info["metadata"]["name"], "istio-proxy", json.dumps(record))

    def ztunnel_refusal(self, pod: PretendPod, curl: str, source: str) -> None:
        """What the node's ztunnel logs when it refuses `curl`'s connection from the pod at `source` by policy."""
        dst_ip = self.pod_of(pod)["status"]["podIP"]
        source_pod = next(o for (k, _, _), o in list(self.api.objects.items())
                          if k == "Pod" and o["status"].get("podIP") == source)
        in_mesh = (source_pod["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"
        base = (f'dst.service="{pod.name}.{pod.namespace}.svc.cluster.local" dst.workload="{pod.name}" '
                'bytes_sent=0 bytes_recv=0 duration="0ms"')
        error = "connection closed due to policy rejection: allow policies exist, but none allowed"
        lines = []
        if in_mesh:
            lines.append(f'src.addr={curl} dst.addr={dst_ip}:15008 dst.hbone_addr={dst_ip}:{pod.port} '
                         f'direction="outbound" {base} error="http status: 401 Unauthorized"')
            lines.append(f'src.addr={source}:15008 dst.addr={dst_ip}:15008 dst.hbone_addr={dst_ip}:{pod.port} '
                         f'direction="inbound" {base} error="{error}"')
        else:
            lines.append(f'src.addr={curl} dst.addr={dst_ip}:{pod.port} direction="inbound" {base} error="{error}"')
        for fields in lines:
            now = self.api.clock()
            self.api.log(ROOT_NAMESPACE, ZTUNNEL, "istio-proxy",
                         f"{kubelet_timestamp(now)}\terror\taccess\tconnection complete\t{fields}", when=now)

    def istioctl(self, argv: list[str], timeout: float, ok: tuple[int, ...] = (0,)) -> Result:
        """`istioctl ztunnel-config policies` from the store (every policy is pushed at once); analyze: clean."""
        if argv[1:3] == ["ztunnel-config", "policies"]:
            listed = [{"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"]}
                      for p in self.api.policies() if p["kind"] == "AuthorizationPolicy"]
            return Result(tuple(argv), 0, json.dumps(listed), "", 0.01)
        return Result(tuple(argv), 0, "[]", "", 0.01)

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecAnswer:
        self.execs.append((namespace, pod, container))
        if container == "istio-proxy":  # pilot-agent request GET config_dump: the RBAC policy ids istiod pushed
            ids = [f"ns[{p['metadata']['namespace']}]-policy[{p['metadata']['name']}]-rule[0]"
                   for p in self.policies_for(namespace)]
            return ExecAnswer(listeners_dump(ids).encode(), b"", 0)
        self._serve_services()
        source = self.api.objects[("Pod", namespace, pod)]["status"]["podIP"]
        env = {"PATH": f"{self.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PRETEND_SOURCE": source}
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


def make_world(tmp_path: Path, mode: Mode) -> tuple[World, ClusterContext]:
    world = World(tmp_path, mode)
    world.api.start()
    if mode != "sidecar":  # the ztunnel DaemonSet's pod on the node (istio/istio manifests/charts/ztunnel)
        world.api.put({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": ZTUNNEL, "namespace": ROOT_NAMESPACE, "labels": {"app": "ztunnel"}},
                       "spec": {"nodeName": world.api.node, "containers": [{"name": "istio-proxy"}]},
                       "status": {"podIP": "10.244.0.2", "conditions": [{"type": "Ready", "status": "True"}],
                                  "containerStatuses": [{"name": "istio-proxy", "restartCount": 0,
                                                         "state": {"running": {}}}]}})
    kubeconfig = world.api.kubeconfig(tmp_path)
    kube = Kube(str(kubeconfig), "fake", request_timeout=10)
    ctx = ClusterContext(kube=kube, kubeconfig=Kubeconfig(str(kubeconfig), "fake"),
                         istioctl=None if mode == "sidecar" else "istioctl", version=V130,
                         curl_image="c@sha256:1", app_image="a@sha256:2", prefix="azapi01-",
                         enrollment=enrollment_labels(mode), run_command=world.istioctl,
                         timeouts=Timeouts(barrier=5.0, canary=5.0, probe=5.0, connect=2.0, proof_grace=2.0))
    return world, ctx


def tear_down(world: World, ctx: ClusterContext) -> None:
    ctx.kube.close()
    world.api.stop()
    world.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, ClusterContext]]:
    made = make_world(tmp_path, "sidecar")
    yield made
    tear_down(*made)


@pytest.fixture
def waypoint(tmp_path: Path) -> Iterator[tuple[World, ClusterContext]]:
    made = make_world(tmp_path, "waypoint")
    yield made
    tear_down(*made)


@pytest.fixture
def ambient(tmp_path: Path) -> Iterator[tuple[World, ClusterContext]]:
    made = make_world(tmp_path, "ambient")
    yield made
    tear_down(*made)


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


def test_an_ambient_step_is_proved_by_ztunnel_records_served_by_the_logs_endpoint(ambient):
    """HBONE client: the source ztunnel's outbound record of curl's connection ties the probe to the destination
    ztunnel's policy rejection; a plaintext client is tied by curl's own address; both through the API."""
    world, ctx = ambient
    scenario = good()
    session = ClusterSession(scenario, "ambient", ctx).start()
    assert ("ambient.istio.io/redirection", "enabled") in world.api.objects[
        ("Pod", "azapi01-accounts", session._pods["accounts/accounts"].name)]["metadata"]["annotations"].items()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BarrierWarning)
        result = run_step(session, scenario, scenario.steps[1], V130, required=2, deadline=20)
    assert result.passed, [(r.probe.describe(), r.last) for r in result.table.rows]
    assert session.barriers[-1].reached  # `istioctl ztunnel-config policies` named the policy
    obs = result.convergence.records[0].observations[-1]
    assert obs.outcome == DENIED_L4 and obs.proof is not None, obs.notes
    assert (obs.proof.kind, obs.proof.layer, obs.proof.proxy) == (NO_ALLOW_MATCHED, "ztunnel", "ztunnel:node1")
    assert 'direction="inbound"' in obs.proof.line and ":15008" in obs.proof.line
    reads = world.api.made("GET", f"/pods/{ZTUNNEL}/log")
    assert reads and all(r.param("container") == "istio-proxy" and r.param("timestamps") == "true" for r in reads)

    outsider = next(e.probe for e in scenario.steps[2].expectations if e.probe.source.ref == "legacy/outsider")
    plain = replace(outsider, port=next(p for p in outsider.destination.ports if p.number == 8080))
    (seen,) = session.probe([plain])
    assert seen.outcome == DENIED_L4 and seen.proof is not None and seen.proof.kind == NO_ALLOW_MATCHED, seen.notes
    assert "src.addr=127.0.0.1:" in seen.proof.line  # curl's own address: exact
    session.close()
    assert not [k for k in world.api.objects if k[1].startswith("azapi")]


WAYPOINT_SCENARIO = """
apiVersion: authz-conformance/v1
kind: Scenario
metadata:
  name: waypoint-over-the-api
  description: An ALLOW bound to the namespace's waypoint, with no rules, allows nothing there.
spec:
  modes: [waypoint]
  waypoints:
    - {name: waypoint, namespace: shop}
  workloads:
    - {name: cart, namespace: shop, ports: [8080]}
    - {name: client, namespace: front}
  steps:
    - name: baseline
      policies: []
      expect:
        - {from: front/client, to: shop/cart:8080, verdict: allow}
    - name: waypoint-allows-nothing
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: allow-nothing, namespace: shop}
          spec:
            targetRefs:
              - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
      expect:
        - {from: front/client, to: shop/cart:8080, verdict: deny}
"""


def test_a_waypoint_step_is_proved_by_the_waypoints_record_served_by_the_logs_endpoint(waypoint, tmp_path):
    """The Gateway applied over the API, Programmed, its Deployment rolled out; the policy reaches the waypoint's
    config dump; the 403 is proved by the waypoint pod's Envoy record of that very probe."""
    world, ctx = waypoint
    path = tmp_path / "waypoint-over-the-api.yaml"
    path.write_text(WAYPOINT_SCENARIO)
    scenario = load(path, V130)
    session = ClusterSession(scenario, "waypoint", ctx).start()
    assert world.api.objects[("Namespace", "", "azapi01-shop")]["metadata"]["labels"]["istio.io/use-waypoint"] == \
        "waypoint"
    assert world.api.made("GET", "/apis/gateway.networking.k8s.io/v1/namespaces/azapi01-shop/gateways/waypoint")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BarrierWarning)
        result = run_step(session, scenario, scenario.steps[1], V130, required=2, deadline=20)
    assert result.passed, [(r.probe.describe(), r.last) for r in result.table.rows]
    obs = result.convergence.records[0].observations[-1]
    assert obs.outcome == DENIED_L7 and obs.proof is not None, obs.notes
    assert (obs.proof.kind, obs.proof.layer, obs.proof.proxy) == (NO_ALLOW_MATCHED, "waypoint",
                                                                  "waypoint:shop/waypoint")
    (wp_pod,) = session._waypoint_pods
    assert world.api.made("GET", f"/namespaces/azapi01-shop/pods/{wp_pod.name}/log")
    session.close()
    assert not [k for k in world.api.objects if k[1].startswith("azapi")]


class InterruptedKube(Kube):
    """The real client; the user presses Ctrl-C right after the API server accepted the root policy."""

    def apply(self, doc: Any, field_manager: str = "authz-conformance") -> dict[str, Any]:
        out = super().apply(doc, field_manager)
        if doc["metadata"].get("namespace") == ROOT_NAMESPACE:
            raise KeyboardInterrupt
        return out


def test_ctrl_c_after_a_root_policy_was_accepted_still_removes_it_over_the_api(world):
    world, ctx = world
    kube = InterruptedKube(ctx.kube.kubeconfig, ctx.kube.context, request_timeout=10)
    session = ClusterSession(good(), "sidecar", replace(ctx, kube=kube)).start()
    with pytest.raises(KeyboardInterrupt):
        session.apply((mesh_deny_all(),))
    assert world.api.policies({ROOT_NAMESPACE})  # it reached the cluster before the interrupt
    session.close()  # the plugin's teardown, which pytest runs after a KeyboardInterrupt too
    assert world.api.policies() == [] and not [k for k in world.api.objects if k[1].startswith("azapi")]
    kube.close()
