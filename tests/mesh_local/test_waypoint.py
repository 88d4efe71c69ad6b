"""Waypoint mode on the local target: a waypoint Envoy terminating HBONE as itself, L7 policies bound by
targetRefs, and the destination ztunnel seeing the waypoint's identity (research/envoy-waypoint.md)."""

from __future__ import annotations

from typing import Any

from conformance.mesh.local.mesh import LocalMeshSession
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, DENIED_UPSTREAM
from tests.mesh_local.world import BACKEND, FRONTEND, OUTSIDER, ROGUE, echo, policy, probe

GATEWAY_REF: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
WP_ALLOW_FRONTEND_GET = policy("wp-allow-frontend-get", "default", {
    "targetRefs": [GATEWAY_REF],
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}],
               "to": [{"operation": {"methods": ["GET"]}}]}],
})
WP_DENY_ADMIN = policy("wp-deny-admin", "default", {
    "targetRefs": [{"kind": "Service", "group": "", "name": "backend"}],
    "action": "DENY",
    "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}],
})
L4_ALLOW_FRONTEND_ONLY = policy("l4-allow-frontend", "default", {
    "selector": {"matchLabels": {"app": "backend"}},
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}]}],
})


def test_waypoint_applies_l7_policies_with_the_clients_identity(waypoint_mesh: LocalMeshSession) -> None:
    waypoint_mesh.apply([WP_ALLOW_FRONTEND_GET, WP_DENY_ADMIN])
    get, post, admin, rogue = waypoint_mesh.probe([
        probe(FRONTEND, BACKEND, 80), probe(FRONTEND, BACKEND, 80, method="POST"),
        probe(FRONTEND, BACKEND, 80, path="/admin/x"), probe(ROGUE, BACKEND, 80),
    ])
    assert get.outcome == ALLOWED, get
    assert get.proof is not None and get.proof.proxy == "waypoint:default/waypoint"
    assert get.proof.policy == "default/wp-allow-frontend-get"
    assert post.outcome == DENIED_L7 and post.proof is not None and post.proof.policy is None
    assert admin.outcome == DENIED_L7 and admin.proof is not None
    assert (admin.proof.policy, admin.proof.rule) == ("default/wp-deny-admin", 0)
    assert rogue.outcome == DENIED_L7 and rogue.proof is not None and rogue.proof.denied


def test_destination_ztunnel_sees_the_waypoint(waypoint_mesh: LocalMeshSession) -> None:
    """An L4 policy allowing only frontend at the destination denies frontend-through-the-waypoint: the
    waypoint answers 503 and the destination ztunnel's record is the proof."""
    waypoint_mesh.apply([L4_ALLOW_FRONTEND_ONLY])
    [obs] = waypoint_mesh.probe([probe(FRONTEND, BACKEND, 80)])
    assert obs.outcome == DENIED_UPSTREAM, obs
    assert obs.proof is not None and obs.proof.denied and obs.proof.policy is None
    assert obs.proof.proxy == "ztunnel:default/backend"
    assert "spiffe://cluster.local/ns/default/sa/waypoint" in obs.proof.line


def test_tcp_port_through_the_waypoint(waypoint_mesh: LocalMeshSession) -> None:
    waypoint_mesh.apply([WP_ALLOW_FRONTEND_GET])
    frontend, rogue = waypoint_mesh.probe([probe(FRONTEND, BACKEND, 9000), probe(ROGUE, BACKEND, 9000)])
    # At a TCP port the waypoint uses network RBAC: the ALLOW rule has an HTTP attribute (methods),
    # so it is dropped and nothing is allowed (istiod BuildTCP).
    assert frontend.outcome == DENIED_L4, frontend
    assert rogue.outcome == DENIED_L4, rogue
    assert frontend.proof is not None and frontend.proof.proxy == "waypoint:default/waypoint"


def test_out_of_mesh_clients_bypass_the_waypoint(waypoint_mesh: LocalMeshSession) -> None:
    waypoint_mesh.apply([WP_ALLOW_FRONTEND_GET])
    [obs] = waypoint_mesh.probe([probe(OUTSIDER, BACKEND, 80)])
    assert obs.outcome == ALLOWED, obs
    assert obs.proof is not None and obs.proof.proxy == "ztunnel:default/backend"


def test_concurrent_mixed_identities_never_swap(waypoint_mesh: LocalMeshSession) -> None:
    """The `envoy.string` trap: non-hashable filter state swaps identities under concurrency."""
    waypoint_mesh.apply([WP_ALLOW_FRONTEND_GET])
    probes = [probe(FRONTEND if i % 2 else ROGUE, BACKEND, 80, path=f"/c{i}") for i in range(60)]
    for p, obs in zip(probes, waypoint_mesh.probe(probes), strict=True):
        expected = ALLOWED if p.source is FRONTEND else DENIED_L7
        assert obs.outcome == expected, (p.describe(), obs)
        if expected == ALLOWED:
            assert echo(obs.evidence.body)["path"] == p.request.path


def test_policy_change_is_enforced_on_the_very_next_probe(waypoint_mesh: LocalMeshSession) -> None:
    probes = [probe(FRONTEND, BACKEND, 80, path="/admin/x"), probe(FRONTEND, BACKEND, 80)]
    for _ in range(4):
        waypoint_mesh.apply([WP_DENY_ADMIN])
        assert [o.outcome for o in waypoint_mesh.probe(probes)] == [DENIED_L7, ALLOWED]
        waypoint_mesh.apply([L4_ALLOW_FRONTEND_ONLY])
        assert [o.outcome for o in waypoint_mesh.probe(probes)] == [DENIED_UPSTREAM, DENIED_UPSTREAM]
        waypoint_mesh.apply([])
        assert [o.outcome for o in waypoint_mesh.probe(probes)] == [ALLOWED, ALLOWED]
