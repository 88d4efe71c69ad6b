"""An ingress gateway scenario through `ClusterSession` over the real `kubernetes` client and the test API server
(issue 12): start renders and applies the gateway's Deployment, Service, Istio Gateway and VirtualService, the
canary reaches the route's app through the gateway with the route's Host; then the three places a denial of a
gateway probe is proved, as engine/path.py `ingress_route` lays them out and logs.py reads them:

- the gateway's own RBAC: its access-log record of the probe header (`gateway:<ref>`);
- a sidecar behind it (sidecar mode): the gateway's record says it passed the upstream's 403 on (`via_upstream`),
  so the proof is the sidecar's record of the same probe id (`Wanted.onward`);
- the destination ztunnel (ambient): it refuses the gateway's own HBONE connection (src.addr the gateway pod's
  address, dst.hbone_addr the pod's port), the gateway answers 503, the rejection is counted for that pooled source.

The pretend gateway (this file) forwards by the VirtualServices in the store, appends its peer to X-Forwarded-For as
Envoy does with use_remote_address, and writes Envoy records in the JSON access-log format of clusters/istio/; the
pretend sidecars and ztunnel are test_session_apiserver.py's.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.cluster.manifests.render import PROXY_CONFIG_ANNOTATION, WORKLOAD_LABEL
from conformance.mesh.cluster.meshconfig import MeshConfigAccess, istiod_selector, mesh_configmap_name
from conformance.mesh.cluster.session import ClusterContext, ClusterSession
from conformance.model import ALLOWED, DENIED_L7, DENIED_UPSTREAM, Mode
from conformance.probe import NO_ALLOW_MATCHED, PROBE_HEADER
from conformance.runner import run_step
from conformance.scenario import load
from tests.cluster.apiserver import kubelet_timestamp
from tests.cluster.test_session_apiserver import (
    ROOT_NAMESPACE,
    SOURCE_HEADER,
    V130,
    ZTUNNEL,
    PretendPod,
    SidecarHandler,
    World,
    make_world,
    tear_down,
)

pytest.importorskip("kubernetes")

SCENARIO = """
apiVersion: authz-conformance/v1
kind: Scenario
metadata:
  name: gateway-over-the-api
  description: An ingress gateway in front of one app; an ALLOW with no rules at the gateway, then at the app.
spec:
  modes: [sidecar, ambient]
  workloads:
    - name: ingress
      namespace: edge
      kind: ingress-gateway
      labels: {istio: ingressgateway}
      ports: [80]
      routes: [{host: "*.shop.example", to: shop/cart:8080}]
    - {name: cart, namespace: shop, ports: [8080]}
    - {name: internet, namespace: outside, mesh: false}
  steps:
    - name: open
      policies: []
      expect:
        - {from: outside/internet, to: edge/ingress:80, request: {headers: {host: www.shop.example}}, verdict: allow}
    - name: gateway-denies
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: gate, namespace: edge}
          spec: {selector: {matchLabels: {istio: ingressgateway}}}
      expect:
        - {from: outside/internet, to: edge/ingress:80, request: {headers: {host: www.shop.example}}, verdict: deny}
    - name: backend-denies
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: nothing, namespace: shop}
          spec: {}
      expect:
        - {from: outside/internet, to: edge/ingress:80, request: {headers: {host: www.shop.example}}, verdict: deny}
"""
UPSTREAM_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"


class GatewayHandler(SidecarHandler):
    """The pretend ingress gateway: its own RBAC (an ALLOW with no rules selecting it: 403), else forwarded by the
    VirtualServices bound to it, the upstream's answer passed on; an Envoy record of each request it denies or
    passes a denial on."""

    def _answer(self) -> None:
        pod: PretendPod = self.server
        world: GatewayWorld = pod.world  # type: ignore[assignment]
        self._drain_body()
        info = world.pod_of(pod)
        ip = info["status"]["podIP"]
        # the connection's peer: the client pod, or what a source-translating path to the Service made of it
        peer = world.nat_peer or self.headers.get(SOURCE_HEADER)
        record = {"type": "DownstreamEnd", "method": self.command, "path": self.path,
                  "authority": self.headers.get("host"), "flags": "-", "term": "-",
                  "probe": self.headers.get(PROBE_HEADER), "src": f"{peer}:40001",
                  "local": f"{ip}:{pod.port}", "upstream": "-"}
        if world.gateway_denies(pod.namespace, info["metadata"]["labels"]):
            self._reply(403, b"RBAC: access denied")
            world.log_record(info, {**record, "code": "403", "details": "rbac_access_denied_matched_policy[none]"})
            return
        backend = world.route(pod.namespace, pod.name, self.headers.get("host", ""))
        forwarded = [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in ("host", SOURCE_HEADER)]
        xff = ", ".join(x for x in (self.headers.get("x-forwarded-for"), peer) if x)
        conn = http.client.HTTPConnection("127.0.0.1", backend.server_address[1], timeout=5)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("host", self.headers.get("host", ""))
            for line in forwarded:
                name, _, value = line.partition(": ")
                if name.lower() != "x-forwarded-for":
                    conn.putheader(name, value)
            conn.putheader("x-forwarded-for", xff)
            conn.putheader(SOURCE_HEADER, ip)  # the gateway's own connection: its pod's address
            conn.endheaders()
            answer = conn.getresponse()
            status, body = answer.status, answer.read()
        except (ConnectionError, http.client.HTTPException):
            self._reply(503, UPSTREAM_RESET)
            world.log_record(info, {**record, "code": "503", "flags": "UC",
                                    "details": "upstream_reset_before_response_started{connection_termination}"})
            return
        finally:
            conn.close()
        self._reply(status, body)
        # Envoy logs every request (accessLogFile in clusters/istio/*.yaml), the allowed ones too
        world.log_record(info, {**record, "code": str(status), "details": "via_upstream"})

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GatewayWorld(World):
    """test_session_apiserver's world with a gateway: the Service of a gateway-injected Deployment answers as one.
    `nat_peer`: the address the gateway sees every client connection come from (a path translating the source, as
    kube-proxy's masquerade does); None: the client pod's own."""

    nat_peer: str | None = None

    def gateway_denies(self, namespace: str, labels: dict[str, str]) -> bool:
        for p in self.policies_for(namespace):
            spec = p.get("spec") or {}
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if spec.get("action", "ALLOW") == "ALLOW" and not spec.get("rules") and not spec.get("targetRefs") \
                    and selector.items() <= labels.items() and p["metadata"]["namespace"] == namespace:
                return True
        return False

    def denies(self, namespace: str) -> str | None:
        # the pretend sidecar / ztunnel of an app: only its own namespace's policies (the gateway's are its own)
        return None if self._is_gateway_namespace(namespace) else super().denies(namespace)

    def _is_gateway_namespace(self, namespace: str) -> bool:
        return any(k == "Deployment" and ns == namespace and _is_gateway(o)
                   for (k, ns, _), o in list(self.api.objects.items()))

    def route(self, namespace: str, gateway: str, host: str) -> PretendPod:
        host = host.lower().partition(":")[0]
        for (kind, ns, _), vs in list(self.api.objects.items()):
            if kind != "VirtualService" or f"{namespace}/{gateway}" not in vs["spec"]["gateways"]:
                continue
            for pattern in vs["spec"]["hosts"]:
                if pattern == host or (pattern.startswith("*") and host.endswith(pattern[1:])):
                    dest = vs["spec"]["http"][0]["route"][0]["destination"]
                    return self.pods[(ns, dest["host"], dest["port"]["number"])]
        raise AssertionError(f"no route for {host}")

    def log_record(self, info: dict[str, Any], record: dict[str, Any]) -> None:
        self.api.log(info["metadata"]["namespace"], info["metadata"]["name"], "istio-proxy", json.dumps(record))

    def ztunnel_refusal(self, pod: PretendPod, curl: str, source: str) -> None:
        """The destination ztunnel's record of refusing the gateway's HBONE connection from the gateway pod."""
        dst_ip = self.pod_of(pod)["status"]["podIP"]
        fields = (f'src.addr={source}:52100 dst.addr={dst_ip}:15008 dst.hbone_addr={dst_ip}:{pod.port} '
                  f'direction="inbound" dst.workload="{pod.name}" bytes_sent=0 bytes_recv=0 duration="0ms" '
                  'error="connection closed due to policy rejection: allow policies exist, but none allowed"')
        now = self.api.clock()
        self.api.log(ROOT_NAMESPACE, ZTUNNEL, "istio-proxy",
                     f"{kubelet_timestamp(now)}\terror\taccess\tconnection complete\t{fields}", when=now)

    def _serve_services(self) -> None:
        super()._serve_services()
        for (ns, name, _), srv in self.pods.items():
            dep = self.api.objects.get(("Deployment", ns, name))
            if dep is not None and _is_gateway(dep):
                srv.RequestHandlerClass = GatewayHandler


def _is_gateway(deployment: dict[str, Any]) -> bool:
    template = (deployment.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get("inject.istio.io/templates") == "gateway"


@pytest.fixture(params=["sidecar", "ambient"])
def gateway_world(request, tmp_path: Path, monkeypatch) -> Iterator[tuple[GatewayWorld, ClusterContext, Mode]]:
    monkeypatch.setattr("tests.cluster.test_session_apiserver.World", GatewayWorld)
    world, ctx = make_world(tmp_path, request.param)
    assert isinstance(world, GatewayWorld)
    yield world, ctx, request.param
    tear_down(world, ctx)


def test_an_ingress_gateway_scenario_over_the_api(gateway_world, tmp_path):
    world, ctx, mode = gateway_world
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    scenario = load(path, V130)
    session = ClusterSession(scenario, mode, ctx).start()
    api = world.api
    # start: the gateway's objects by server-side apply; its pod is a gateway, never ztunnel-captured
    applied = {(r.path.rsplit("/", 2)[-2], r.path.rsplit("/", 1)[-1]) for r in api.made("PATCH")}
    assert {("gateways", "ingress"), ("virtualservices", "edge-ingress-route-0"), ("deployments", "ingress"),
            ("services", "ingress")} <= applied
    gw_pod = session._pods["edge/ingress"]
    assert gw_pod.labels[WORKLOAD_LABEL] == "ingress" and gw_pod.labels["sidecar.istio.io/inject"] == "true"
    gw = api.objects[("Pod", "azapi01-edge", gw_pod.name)]
    assert "ambient.istio.io/redirection" not in (gw["metadata"].get("annotations") or {})
    assert not [e for e in world.execs if e[1] == gw_pod.name and e[2] == "curl"]  # no probe runs in it

    open_step = run_step(session, scenario, scenario.steps[0], V130, required=2, deadline=20)
    assert open_step.passed, [(r.probe.describe(), r.last) for r in open_step.table.rows]
    assert open_step.convergence.records[0].observations[-1].outcome == ALLOWED  # cart's app answered

    at_gateway = run_step(session, scenario, scenario.steps[1], V130, required=2, deadline=20)
    assert at_gateway.passed, [(r.probe.describe(), r.last) for r in at_gateway.table.rows]
    assert session.barriers[-1].reached  # the gateway's config dump named edge/gate
    obs = at_gateway.convergence.records[0].observations[-1]
    assert obs.outcome == DENIED_L7 and obs.proof is not None, obs.notes
    assert (obs.proof.kind, obs.proof.layer, obs.proof.serves) == (NO_ALLOW_MATCHED, "gateway", "edge/ingress")

    behind = run_step(session, scenario, scenario.steps[2], V130, required=2, deadline=20)
    assert behind.passed, [(r.probe.describe(), r.last, r.predicted) for r in behind.table.rows]
    obs = behind.convergence.records[0].observations[-1]
    assert obs.proof is not None and obs.proof.kind == NO_ALLOW_MATCHED, obs.notes
    if mode == "sidecar":  # the gateway passed the sidecar's 403 on: the sidecar's record is the proof
        assert obs.outcome == DENIED_L7
        assert (obs.proof.layer, obs.proof.serves, obs.proof.proxy) == ("sidecar", "shop/cart", "sidecar:shop/cart")
        assert json.loads(obs.proof.line)["local"].startswith(session._pods["shop/cart"].ip + ":")
    else:  # ztunnel refused the gateway's own HBONE connection: the gateway's 503
        assert obs.outcome == DENIED_UPSTREAM
        assert (obs.proof.layer, obs.proof.serves) == ("ztunnel", "shop/cart")
        assert f"src.addr={gw_pod.ip}:" in obs.proof.line
    session.close()
    assert not [k for k in api.objects if k[1].startswith("azapi")]


def test_a_gateway_record_that_passed_the_answer_on_without_the_proxy_behinds_is_no_proof():
    """logs.py: the gateway only passed a 403 on (via_upstream) and the sidecar behind it has no record of the probe:
    unproven, with a note naming both, never the gateway's record as if it had decided."""
    from conformance.mesh.cluster.logs import LogLine, Onward, RecordMatcher, Wanted

    record = {"probe": "n-0", "code": "403", "details": "via_upstream", "local": "10.244.0.9:80", "src": "-"}
    line = LogLine("edge/ingress-1", 10.0, json.dumps(record), "t1 " + json.dumps(record))
    onward = Onward("shop/cart-1", "sidecar:shop/cart", "sidecar", "shop/cart", local_host="10.244.0.5")
    wanted = Wanted(0, "edge/ingress-1", "envoy", 9.0, "gateway:edge/ingress", "gateway", "edge/ingress",
                    probe_id="n-0", local_host="10.244.0.9", onward=onward)
    assert wanted.logs == ("edge/ingress-1", "shop/cart-1")
    matcher = RecordMatcher(lambda ns: ns)
    assert matcher.match([wanted], {"edge/ingress-1": [line], "shop/cart-1": []}, final=False) == {}
    (match,) = matcher.match([wanted], {"edge/ingress-1": [line], "shop/cart-1": []}, final=True).values()
    assert match.proof is None and "sidecar:shop/cart has no record" in (match.note or "")
    denied = {**record, "details": "rbac_access_denied_matched_policy[none]", "local": "10.244.0.5:8080"}
    behind = LogLine("shop/cart-1", 11.0, json.dumps(denied), "t2 " + json.dumps(denied))
    (match,) = RecordMatcher(lambda ns: ns).match([wanted], {"edge/ingress-1": [line], "shop/cart-1": [behind]},
                                                  final=False).values()
    assert match.proof is not None and (match.proof.kind, match.proof.layer) == (NO_ALLOW_MATCHED, "sidecar")


# -- the gateway's numTrustedProxies against a cluster's mesh default (existing clusters) ------------------------------
TWO_BY_DEFAULT = "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 2\n"


def _with_mesh_config(world: GatewayWorld, ctx: ClusterContext, mesh: str) -> None:
    """istiod's mesh ConfigMap with `mesh`, readable by the session as an existing cluster's target makes it."""
    world.api.install_istiod(mesh=mesh)
    ctx.mesh_config_source = MeshConfigAccess(ROOT_NAMESPACE, (mesh_configmap_name(None),), istiod_selector(None))


def test_a_mesh_default_num_trusted_proxies_is_replaced_by_the_gateways_annotation(gateway_world, tmp_path):
    """A cluster whose mesh default says numTrustedProxies 2, a scenario of 0: the gateway pod's annotation carries 0,
    which replaces the default's gatewayTopology (meshconfig.effective_trusted_proxies), so the scenario runs."""
    world, ctx, mode = gateway_world
    _with_mesh_config(world, ctx, TWO_BY_DEFAULT)
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    scenario = load(path, V130)
    assert scenario.mesh.num_trusted_proxies == 0
    session = ClusterSession(scenario, mode, ctx).start()
    dep = world.api.objects[("Deployment", "azapi01-edge", "ingress")]
    annotation = dep["spec"]["template"]["metadata"]["annotations"][PROXY_CONFIG_ANNOTATION]
    assert json.loads(annotation) == {"gatewayTopology": {"numTrustedProxies": 0}}
    assert any("numTrustedProxies 2; the scenario's gateways replace it with 0" in n for n in session.notes)
    session.close()


def test_a_gateway_that_would_keep_the_mesh_default_is_skipped_before_anything_is_applied(
        gateway_world, tmp_path, monkeypatch):
    """Were the annotation without gatewayTopology (as render.py wrote it for 0 before), the gateway would run with the
    mesh default: a skip naming the value found, the one wanted and why, and nothing applied."""
    world, ctx, mode = gateway_world
    _with_mesh_config(world, ctx, TWO_BY_DEFAULT)
    monkeypatch.setattr("conformance.mesh.cluster.manifests.render.gateway_proxy_config", lambda n: "{}")
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    with pytest.raises(TargetUnavailable) as info:
        ClusterSession(load(path, V130), mode, ctx).start()
    text = str(info.value)
    assert "edge/ingress would run with gatewayTopology.numTrustedProxies 2" in text
    assert "istio-system/istio defaultConfig sets 2" in text and "the scenario wants 0" in text
    assert "X-Forwarded-For" in text
    assert not world.api.made("PATCH") and not [k for k in world.api.objects if k[1].startswith("azapi")]


def test_an_unreadable_mesh_config_is_a_clear_target_error(gateway_world, tmp_path):
    world, ctx, mode = gateway_world
    _with_mesh_config(world, ctx, "defaultConfig: [")
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    with pytest.raises(TargetError, match=r"istio-system/istio: the mesh config .* is not YAML"):
        ClusterSession(load(path, V130), mode, ctx).start()
    assert not world.api.made("PATCH")


# -- client address translation on the way to the gateway ------------------------------------------------------------
NAT = "172.18.0.1"  # what kube-proxy's masquerade would make of the client: the kind node's docker gateway, say


def _address_scenario(tmp_path: Path, source: str) -> Path:
    """SCENARIO with a gateway policy whose `source` block names addresses (`${ip:...}` or literal)."""
    text = SCENARIO.replace(
        "      spec: {selector: {matchLabels: {istio: ingressgateway}}}",
        "      spec:\n"
        "            selector: {matchLabels: {istio: ingressgateway}}\n"
        f"            rules: [{{from: [{{source: {source}}}]}}]", 1)
    assert text != SCENARIO
    path = tmp_path / "address.yaml"
    path.write_text(text)
    return path


def test_a_client_address_the_gateway_sees_unchanged_is_noted(gateway_world, tmp_path):
    _world, ctx, mode = gateway_world
    scenario = load(_address_scenario(tmp_path, '{remoteIpBlocks: ["${ip:outside/internet}"]}'), V130)
    session = ClusterSession(scenario, mode, ctx).start()
    client = session._pods["outside/internet"].ip
    assert any(f"edge/ingress saw outside/internet from its own address {client}" in n for n in session.notes)
    session.close()


def test_a_translated_client_address_skips_a_scenario_whose_verdicts_use_it(gateway_world, tmp_path):
    """The gateway's record of the canary says the client came from another address than its pod's: a scenario with
    `${ip:outside/internet}` in remoteIpBlocks (the peer fallback) cannot be reproduced here, a skip saying both
    addresses and why; everything it made is deleted."""
    world, ctx, mode = gateway_world
    world.nat_peer = NAT
    scenario = load(_address_scenario(tmp_path, '{remoteIpBlocks: ["${ip:outside/internet}"]}'), V130)
    session = ClusterSession(scenario, mode, ctx)
    with pytest.raises(TargetUnavailable) as info:
        session.start()
    text = str(info.value)
    client = session._pods["outside/internet"].ip
    assert f"(pod address {client}) come from {NAT}" in text and "kube-proxy masquerade" in text
    assert "edge/gate rule 0 remoteIpBlocks (step gateway-denies): ${ip:outside/internet}" in text
    assert session.closed and not [k for k in world.api.objects if k[1].startswith("azapi")]


def test_a_translated_address_inside_a_literal_block_skips_too(gateway_world, tmp_path):
    world, ctx, mode = gateway_world
    world.nat_peer = NAT
    scenario = load(_address_scenario(tmp_path, "{ipBlocks: [172.18.0.0/16]}"), V130)
    with pytest.raises(TargetUnavailable, match=r"edge/gate rule 0 ipBlocks \(step gateway-denies\) holds 172\.18\."):
        ClusterSession(scenario, mode, ctx).start()


def test_a_translated_client_address_does_not_stop_a_scenario_that_does_not_use_it(gateway_world, tmp_path):
    """No policy names the client's address, and the translated one is in no literal block: the scenario runs, with a
    note saying what the gateway saw, and its steps pass."""
    world, ctx, mode = gateway_world
    world.nat_peer = NAT
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    scenario = load(path, V130)
    session = ClusterSession(scenario, mode, ctx).start()
    assert any(f"come from {NAT}" in n and "do not use the client's address, so it runs" in n for n in session.notes)
    at_gateway = run_step(session, scenario, scenario.steps[1], V130, required=2, deadline=20)
    assert at_gateway.passed, [(r.probe.describe(), r.last) for r in at_gateway.table.rows]
    session.close()


def test_no_record_of_the_canary_at_the_gateway(gateway_world, tmp_path, monkeypatch):
    """The gateway's log has no record of the canary (another access-log format, say): an infrastructure error when the
    scenario depends on the client's address, a note otherwise."""
    _world, ctx, mode = gateway_world
    monkeypatch.setattr(GatewayWorld, "log_record", lambda self, info, record: None)
    scenario = load(_address_scenario(tmp_path, '{ipBlocks: ["${ip:outside/internet}"]}'), V130)
    with pytest.raises(TargetError, match="has no access-log record of the canary from outside/internet"):
        ClusterSession(scenario, mode, ctx).start()
    path = tmp_path / "gateway.yaml"
    path.write_text(SCENARIO)
    session = ClusterSession(load(path, V130), mode, ctx).start()
    assert any("has no access-log record" in n and "use no address, so it runs" in n for n in session.notes)
    session.close()
