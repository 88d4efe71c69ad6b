"""The local mesh's ingress gateway on real Envoys: the address it settles on and the X-Forwarded-For it forwards are
Envoy's rule for an Istio gateway (engine/xff.py states it from Envoy's source), although every address here is
loopback, where Envoy itself would append its own address instead (gateway.py explains the emulation); and its
routes take the way Istio 1.30 does to each backend.

The check is against the engine's own statement of the rule (`xff.remote_address`, `xff.appended`), on X-Forwarded-For
values hypothesis draws, read back from what the proxies recorded (the gateway's `remote` field, the address RBAC's
`remote_ip` matches) and what the backend app received.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.engine import xff
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import (
    ALLOWED,
    DENIED_L7,
    DENIED_UPSTREAM,
    INGRESS_USE_WAYPOINT,
    GatewayRoute,
    MeshConfig,
    Scenario,
    Waypoint,
)
from tests.mesh_local.world import echo, policy, probe, wl

GATEWAY = replace(wl("istio-ingress/ingressgateway", 80, sa="istio-ingressgateway-service-account"),
                  kind="ingress-gateway",
                  routes=(GatewayRoute("direct.example.com", "apps/plain", 8080),
                          GatewayRoute("*.opted.com", "apps/opted", 8080)))
PLAIN = wl("apps/plain", 8080)
OPTED = replace(wl("apps/opted", 8080), labels={"app": "opted", INGRESS_USE_WAYPOINT: "true"})
INTERNET = wl("outside/internet", mesh=False)
TRUSTED = 2


def world(mode: str) -> Scenario:
    return Scenario(name="gateway-local", description="", path="gateway-local.yaml", modes=(mode,),  # type: ignore[arg-type]
                    mesh=MeshConfig(num_trusted_proxies=TRUSTED), workloads=(GATEWAY, PLAIN, OPTED, INTERNET),
                    waypoints=(Waypoint("waypoint", "apps"),), steps=())


@pytest.fixture(scope="module")
def waypoint_mesh() -> Iterator[LocalMeshSession]:
    target = LocalTarget()
    reason = target.unavailable("waypoint", world("waypoint"))
    if reason:
        pytest.skip(reason)
    with target.start(world("waypoint"), "waypoint") as session:
        yield session


# X-Forwarded-For text: addresses (v4, v6, with a port), words, blanks and stray commas, as clients send them
ENTRY = st.sampled_from(["203.0.113.7", "10.1.2.3", " 72.9.5.6 ", "2001:db8::1", "72.9.5.6:8080", "unknown", "",
                         "\t198.51.100.1", "010.1.2.3"])
# HTTP drops the blanks around a field value (RFC 9110 5.5) and curl sends no header for an empty one: what Envoy
# receives is the text stripped, and never empty
XFF_TEXT = (st.lists(ENTRY, min_size=1, max_size=4).map(", ".join) | st.lists(ENTRY, min_size=1, max_size=4).map(
    ",".join)).map(lambda text: text.strip(" \t")).filter(bool)


@given(values=st.lists(XFF_TEXT, min_size=1, max_size=8))
@settings(max_examples=15, deadline=None)
def test_the_gateway_settles_on_envoys_address_and_forwards_envoys_header(waypoint_mesh: LocalMeshSession,
                                                                            values: list[str]) -> None:
    """For each X-Forwarded-For a client sends: the gateway's `remote_ip` is getLastAddressFromXFF(XFF, N - 1) or the
    peer (xff.remote_address, use_remote_address with N = numTrustedProxies), and the backend receives the header
    with the peer appended (xff.appended); a request without the header gets the peer alone."""
    waypoint_mesh.apply([])
    peer = waypoint_mesh.addresses[INTERNET.ref]
    cases: list[str | None] = [None, *values]
    probes = [probe(INTERNET, GATEWAY, headers=(("host", "direct.example.com"),)
                    + ((("x-forwarded-for", v),) if v is not None else ())) for v in cases]
    observations = waypoint_mesh.probe(probes)
    records = {r["probe"]: r for r in waypoint_mesh.access_log(GATEWAY.ref) if r.get("probe")}
    for sent, o in zip(cases, observations, strict=True):
        assert o.outcome == ALLOWED, (sent, o.evidence)
        received = {k.lower(): v for k, v in echo(o.evidence.body)["headers"].items()}
        assert received.get("x-forwarded-for") == xff.appended(sent, peer), sent
        probe_id = received["x-authz-conformance-probe"]
        remote = str(records[probe_id]["remote"])
        address = remote.rsplit(":", 1)[0].strip("[]")
        assert address == xff.remote_address(sent, peer, True, TRUSTED), (sent, remote)


def test_each_route_takes_istios_way_and_the_decider_is_proven(waypoint_mesh: LocalMeshSession) -> None:
    """A deny-all waypoint policy: the gateway bypasses the waypoint for a Service without
    istio.io/ingress-use-waypoint (HBONE to the pod: 200) and goes through it for one with it (the waypoint's 403,
    proven by the waypoint's record); a gateway DENY is the gateway's own 403, proven by its record; a ztunnel that
    refuses the gateway's identity is the gateway's 503, proven by the ztunnel's record."""
    waypoint_mesh.apply([policy("deny-all", "apps", {"targetRefs": [
        {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]})])
    bypass, through = waypoint_mesh.probe([probe(INTERNET, GATEWAY, headers=(("host", "direct.example.com"),)),
                                           probe(INTERNET, GATEWAY, headers=(("host", "a.opted.com"),))])
    assert bypass.outcome == ALLOWED, bypass.evidence
    assert through.outcome == DENIED_L7 and through.proof is not None
    assert through.proof.proxy == "waypoint:apps/waypoint"

    waypoint_mesh.apply([policy("no-b", "istio-system", {
        "selector": {"matchLabels": {"app": "ingressgateway"}}, "action": "DENY",
        "rules": [{"to": [{"operation": {"hosts": ["direct.example.com"]}}]}]})])
    denied, other = waypoint_mesh.probe([probe(INTERNET, GATEWAY, headers=(("host", "DIRECT.example.com"),)),
                                         probe(INTERNET, GATEWAY, headers=(("host", "direct.example.com:80"),))])
    assert denied.outcome == DENIED_L7 and denied.proof is not None
    assert (denied.proof.proxy, denied.proof.policy) == ("gateway:istio-ingress/ingressgateway", "istio-system/no-b")
    assert other.outcome == ALLOWED  # `hosts` keeps the port, routing ignores it

    waypoint_mesh.apply([policy("only-someone", "apps", {
        "selector": {"matchLabels": {"app": "plain"}},
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/apps/sa/someone"]}}]}]})])
    (refused,) = waypoint_mesh.probe([probe(INTERNET, GATEWAY, headers=(("host", "direct.example.com"),))])
    assert refused.outcome == DENIED_UPSTREAM and refused.proof is not None
    assert refused.proof.proxy == "ztunnel:apps/plain"


def test_a_gateway_is_its_own_kind_of_proxy_and_has_no_app(waypoint_mesh: LocalMeshSession) -> None:
    assert waypoint_mesh._kind[GATEWAY.ref] == "gateway"
    assert waypoint_mesh._kind[PLAIN.ref] == "ztunnel"
    routes = {o.host: (o.peer.ref, o.way) for o in waypoint_mesh._gateway_routes[GATEWAY.ref]}
    assert routes == {"direct.example.com": ("apps/plain", "hbone"), "*.opted.com": ("apps/opted", "waypoint")}
