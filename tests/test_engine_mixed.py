"""Mode mixed in the verdict engine (DESIGN.md §10): each crossing of data planes, the identity each enforcer
sees, who decides, and what a client observes — as istiod 1.30.3 builds it (engine/path.py cites the lines).

The properties (hypothesis) pin the rule that makes mixed mode trustworthy: a crossing between two namespaces of
the same data plane decides exactly as that plane's own mode does, whatever the policies; and the crossings that
differ differ only where Istio's source says they do.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.engine import decide
from conformance.engine.decide import probe_route
from conformance.engine.path import (
    AMBIENT_TO_SIDECAR,
    AMBIENT_TO_WAYPOINT,
    OUTSIDE_TO_AMBIENT,
    OUTSIDE_TO_SIDECAR,
    SIDECAR_TO_AMBIENT,
    SIDECAR_TO_SIDECAR,
)
from conformance.model import DENIED_L4, DENIED_L7, DENIED_UPSTREAM, Waypoint
from tests.engine_world import BACKEND, FINANCE, FRONTEND, OUTSIDER, ROGUE, V130, ap, pa, probe, state
from tests.test_engine_properties import l4_policy, policy_sets

WAYPOINT = Waypoint("waypoint", "default")
BACKEND_ID = "cluster.local/ns/default/sa/backend"


def mixed(text: str = "", planes: dict[str, str] | None = None) -> Any:
    """A state in which `planes` gives the data planes (the engine_world namespaces: default, rogue, finance)."""
    return replace(state(text, waypoints=(WAYPOINT,)), dataplanes=planes or {})


def dec(s: Any, p: Any) -> Any:
    return decide(s, p, "mixed", V130)


# -- the crossings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("src_plane", "dst_plane", "crossing", "enforcers"), [
    ("sidecar", "sidecar", SIDECAR_TO_SIDECAR, ["sidecar default/backend"]),
    ("sidecar", "ambient", SIDECAR_TO_AMBIENT, ["ztunnel default/backend"]),
    ("sidecar", "waypoint", SIDECAR_TO_AMBIENT, ["ztunnel default/backend"]),  # sidecars bypass waypoints
    ("ambient", "sidecar", AMBIENT_TO_SIDECAR, ["sidecar default/backend"]),
    ("waypoint", "sidecar", AMBIENT_TO_SIDECAR, ["sidecar default/backend"]),  # a client's own waypoint: no hop
    ("ambient", "waypoint", AMBIENT_TO_WAYPOINT, ["waypoint default/waypoint", "ztunnel default/backend"]),
])
def test_each_crossing_puts_the_right_proxies_on_the_path(src_plane: str, dst_plane: str, crossing: str,
                                                          enforcers: list[str]) -> None:
    s = mixed(planes={"finance": src_plane, "default": dst_plane})
    r = probe_route(s, probe(FINANCE), "mixed", V130)
    assert r.crossing == crossing
    assert [f"{h.proxy} {h.ref}" for h in r.deciders] == enforcers
    client = r.hops[0]
    assert client.ref == FINANCE.ref and not client.decides
    assert client.presents == FINANCE.identity("cluster.local")


@pytest.mark.parametrize(("dst_plane", "crossing", "enforcer"), [
    ("sidecar", OUTSIDE_TO_SIDECAR, "sidecar default/backend"),
    ("ambient", OUTSIDE_TO_AMBIENT, "ztunnel default/backend"),
    ("waypoint", OUTSIDE_TO_AMBIENT, "ztunnel default/backend"),  # nothing captured the client: no waypoint
])
def test_out_of_mesh_clients_meet_only_the_destinations_proxy(dst_plane: str, crossing: str, enforcer: str) -> None:
    r = probe_route(mixed(planes={"default": dst_plane}), probe(OUTSIDER), "mixed", V130)
    assert r.crossing == crossing
    assert [f"{h.proxy} {h.ref}" for h in r.hops] == [enforcer]
    assert r.hops[0].sees is None


def test_unlisted_namespaces_run_sidecars() -> None:
    r = probe_route(mixed(planes={"rogue": "ambient"}), probe(FINANCE), "mixed", V130)
    assert r.crossing == SIDECAR_TO_SIDECAR


# -- sidecar client → ambient server ------------------------------------------------------------------------------

def test_sidecar_to_ambient_ztunnel_sees_the_sidecars_identity() -> None:
    """endpoint_builder.go: the sidecar tunnels with its own certificate; ztunnel matches its principal."""
    only = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/finance/sa/app"]}}]}]}
    s = mixed(ap("only-finance", only), {"default": "ambient"})
    assert dec(s, probe(FINANCE)).verdict == "allow"
    d = dec(s, probe(ROGUE))
    assert (d.verdict, d.outcome, d.enforcer(probe(ROGUE))) == ("deny", DENIED_UPSTREAM, "ztunnel:default/backend")


def test_sidecar_to_ambient_drops_l7_allow_rules_and_a_tcp_denial_is_a_reset() -> None:
    s = mixed(ap("get-only", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}), {"default": "ambient"})
    d = dec(s, probe(FINANCE))
    assert (d.verdict, d.outcome, d.layer) == ("deny", DENIED_UPSTREAM, "ztunnel")  # 503 from the client sidecar
    assert dec(s, probe(FINANCE, port=9000)).outcome == DENIED_L4
    # the same policy with the server on sidecars is enforced at L7 and allows GET
    assert dec(replace(s, dataplanes={}), probe(FINANCE)).verdict == "allow"


def test_sidecar_to_waypoint_namespace_bypasses_the_waypoint() -> None:
    """TestIngressToWaypoint/sidecar: 200 despite a deny-all waypoint policy; the bypass is istiod's choice
    (endpoint_builder.go "We intentionally do not take into account waypoints here")."""
    deny_all = ap("deny-all", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                               "name": "waypoint"}], "action": "DENY", "rules": [{}]})
    s = mixed(deny_all, {"default": "waypoint", "rogue": "ambient"})
    d = dec(s, probe(FINANCE))
    assert (d.verdict, d.layer) == ("allow", "ztunnel")
    d = dec(s, probe(ROGUE))  # an ambient client goes through the waypoint
    assert (d.verdict, d.outcome, d.enforcer(probe(ROGUE))) == ("deny", DENIED_L7, "waypoint:default/waypoint")


# -- ambient client → sidecar server ------------------------------------------------------------------------------

def test_ambient_to_sidecar_is_decided_by_the_sidecar_at_l7() -> None:
    s = mixed(ap("get-only", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}), {"finance": "ambient"})
    assert dec(s, probe(FINANCE)).verdict == "allow"
    d = dec(s, probe(FINANCE, method="POST"))
    assert (d.verdict, d.outcome, d.enforcer(probe(FINANCE))) == ("deny", DENIED_L7, "sidecar:default/backend")


def test_ambient_to_sidecar_sees_the_clients_identity_whatever_peer_authentication_says() -> None:
    """HBONE chains are plaintext inside the tunnel with the principal from filter state (listener_inbound.go
    buildInboundHBONEListeners): STRICT does not refuse it and DISABLE does not hide the identity."""
    allow = ap("only-finance", {"rules": [{"from": [{"source": {"namespaces": ["finance"]}}]}]})
    for mode in ("STRICT", "DISABLE"):
        s = mixed(allow + pa("mtls", mode), {"finance": "ambient"})
        assert dec(s, probe(FINANCE)).verdict == "allow", mode
        # a sidecar client to a DISABLE port sends plaintext: no identity, so the namespace ALLOW fails
        sidecar_client = dec(replace(s, dataplanes={}), probe(FINANCE)).verdict
        assert sidecar_client == ("allow" if mode == "STRICT" else "deny"), mode


def test_ambient_to_sidecar_ip_blocks_see_the_internal_address() -> None:
    """The same connect_terminate → main_internal hand-off as a waypoint: direct_remote_ip is Envoy's internal
    address, so a positive ipBlocks never matches there (and its not-form always does)."""
    ip = "10.0.0.4"  # FINANCE's address in engine_world
    s = mixed(ap("from-ip", {"rules": [{"from": [{"source": {"ipBlocks": [ip]}}]}]}), {"finance": "ambient"})
    assert dec(s, probe(FINANCE)).verdict == "deny"
    assert dec(replace(s, dataplanes={}), probe(FINANCE)).verdict == "allow"  # sidecar to sidecar sees the peer


def test_out_of_mesh_to_a_strict_sidecar_is_reset() -> None:
    s = mixed(pa("mtls", "STRICT"), {"finance": "ambient"})
    d = dec(s, probe(OUTSIDER))
    assert (d.verdict, d.outcome, d.layer) == ("deny", DENIED_L4, "sidecar")


def test_explain_words_the_path_and_who_sees_what() -> None:
    s = mixed(planes={"finance": "sidecar", "default": "ambient"})
    from conformance.engine import explain

    lines = "\n".join(explain(s, probe(FINANCE), "mixed", V130).trace)
    assert "Path (sidecar->ambient): sidecar finance/app → ztunnel default/backend (decides)" in lines
    assert "sees cluster.local/ns/finance/sa/app" in lines
    assert "endpoint_builder.go" in lines


# -- properties ------------------------------------------------------------------------------------------------

PLANE_OF_MODE = {"sidecar": "sidecar", "ambient": "ambient", "waypoint": "waypoint"}
CLIENTS = [FRONTEND, ROGUE, FINANCE, OUTSIDER]
ports = st.sampled_from([80, 8080, 9000])


@settings(max_examples=200, deadline=None)
@given(policy_sets, st.sampled_from(CLIENTS), ports, st.sampled_from(["sidecar", "ambient", "waypoint"]))
def test_one_plane_everywhere_decides_as_that_planes_mode(policies: str, client: Any, port: int, mode: str) -> None:
    """Every namespace on one data plane is exactly that plane's mode: same verdict, form, layer and policy."""
    s = mixed(policies, {ns: mode for ns in ("default", "rogue", "finance")})
    p = probe(client, port=port)
    a, b = dec(s, p), decide(s, p, mode, V130)  # type: ignore[arg-type]
    assert (a.verdict, a.outcome, a.layer, a.policy) == (b.verdict, b.outcome, b.layer, b.policy)


@settings(max_examples=200, deadline=None)
@given(policy_sets, st.sampled_from([FRONTEND, ROGUE, FINANCE]), ports)
def test_sidecar_client_to_ambient_decides_as_ambient_but_answers_like_a_proxy(policies: str, client: Any,
                                                                                port: int) -> None:
    """Only the destination's ztunnel decides, as in ambient mode; an HTTP denial reaches the client as its
    sidecar's 503 (denied-upstream), a TCP one as a reset."""
    s = mixed(policies, {"default": "ambient", client.namespace: "sidecar"} if client.namespace != "default"
              else {"default": "ambient"})
    p = probe(client, port=port)
    if client.namespace == "default":
        return  # same namespace: the client is ambient too (covered above)
    a, b = dec(s, p), decide(s, p, "ambient", V130)
    assert (a.verdict, a.layer, a.policy) == (b.verdict, b.layer, b.policy)
    if a.verdict == "deny":
        assert a.outcome == (DENIED_UPSTREAM if p.port.protocol == "HTTP" else DENIED_L4)


@settings(max_examples=200, deadline=None)
@given(st.lists(l4_policy(), max_size=4).map(lambda ps: "".join(
    t.replace("name: p", f"name: q{i}-p", 1) for i, t in enumerate(ps))), st.sampled_from([ROGUE, FINANCE]), ports)
def test_ambient_client_to_sidecar_decides_as_sidecar_without_ip_and_mtls(policies: str, client: Any,
                                                                          port: int) -> None:
    """An ambient client at a sidecar is the sidecar's decision with the client's identity; it can differ from a
    sidecar client only by what HBONE changes (ipBlocks/source.ip see the internal address, no SNI)."""
    s = mixed(policies, {client.namespace: "ambient"})
    p = probe(client, port=port)
    a, b = dec(s, p), decide(s, p, "sidecar", V130)
    assert a.layer == "sidecar"
    if "ipblocks" not in policies.lower() and "source.ip" not in policies:  # notIpBlocks too
        assert (a.verdict, a.outcome, a.policy) == (b.verdict, b.outcome, b.policy)


def test_backend_identity_constant_matches_the_world() -> None:
    assert BACKEND.identity("cluster.local") == BACKEND_ID
