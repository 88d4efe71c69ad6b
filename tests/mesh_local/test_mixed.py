"""Mode mixed on the local target: sidecar and ambient namespaces in one mesh, each crossing built with real
Envoys as Istio 1.30 builds it, and every denial proven by the proxy that decided (not by one on another path).

World: `legacy` runs sidecars (legacy/orders serves 8080 and TCP 9000, legacy/curl is a client), `shop` is
ambient (shop/api, shop/curl), `pay` has a waypoint (pay/billing), outside/internet is out of the mesh.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, DENIED_UPSTREAM, MeshConfig, Scenario, Waypoint
from tests.mesh_local.world import policy, probe, strict, wl

ORDERS = wl("legacy/orders", 8080, (9000, "TCP"))
LEGACY_CURL = wl("legacy/curl")
API = wl("shop/api", 8080, (9000, "TCP"))
SHOP_CURL = wl("shop/curl")
BILLING = wl("pay/billing", 8080)
INTERNET = wl("outside/internet", mesh=False)
WORLD = Scenario(
    name="mixed-local", description="", path="mixed-local.yaml", modes=("mixed",), mesh=MeshConfig(),
    workloads=(ORDERS, LEGACY_CURL, API, SHOP_CURL, BILLING, INTERNET), waypoints=(Waypoint("waypoint", "pay"),),
    steps=(), dataplanes={"legacy": "sidecar", "shop": "ambient", "pay": "waypoint"},
)


@pytest.fixture(scope="module")
def mixed_mesh() -> Iterator[LocalMeshSession]:
    target = LocalTarget()
    reason = target.unavailable("mixed", WORLD)
    if reason:
        pytest.skip(reason)
    with target.start(WORLD, "mixed") as session:
        yield session


def allow_only(namespace: str, app: str, principal: str, **rule: Any) -> Any:
    return policy(f"allow-{app}", namespace, {"selector": {"matchLabels": {"app": app}},
                                              "rules": [{"from": [{"source": {"principals": [principal]}}], **rule}]})


def test_each_workload_gets_its_namespaces_data_plane(mixed_mesh: LocalMeshSession) -> None:
    kinds = {ref: mixed_mesh._kind[ref] for ref in mixed_mesh._kind}
    assert kinds == {"legacy/orders": "sidecar", "legacy/curl": "sidecar", "shop/api": "ztunnel",
                     "shop/curl": "ztunnel", "pay/billing": "ztunnel", "pay/waypoint": "waypoint"}


def test_sidecar_to_ambient_is_hbone_with_the_sidecars_identity(mixed_mesh: LocalMeshSession) -> None:
    """ztunnel sees cluster.local/ns/legacy/sa/curl (the sidecar's own certificate); a refusal is the client
    sidecar's 503 on HTTP and a reset on TCP, proven by the destination ztunnel's record."""
    mixed_mesh.apply([allow_only("shop", "api", "cluster.local/ns/legacy/sa/curl")])
    allowed, allowed_tcp, other = mixed_mesh.probe([probe(LEGACY_CURL, API), probe(LEGACY_CURL, API, 9000),
                                                    probe(SHOP_CURL, API)])
    assert allowed.outcome == ALLOWED and allowed_tcp.outcome == ALLOWED
    assert other.outcome == DENIED_L4  # ambient to ambient: ztunnel resets
    mixed_mesh.apply([allow_only("shop", "api", "cluster.local/ns/shop/sa/curl")])
    denied, denied_tcp = mixed_mesh.probe([probe(LEGACY_CURL, API), probe(LEGACY_CURL, API, 9000)])
    assert denied.outcome == DENIED_UPSTREAM and denied_tcp.outcome == DENIED_L4
    for o in (denied, denied_tcp):
        assert o.proof is not None and o.proof.proxy == "ztunnel:shop/api", o.notes


def test_sidecar_bypasses_the_waypoint_ambient_does_not(mixed_mesh: LocalMeshSession) -> None:
    deny_all = policy("deny-all", "pay", {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                          "name": "waypoint"}], "action": "DENY", "rules": [{}]})
    mixed_mesh.apply([deny_all])
    from_sidecar, from_ambient = mixed_mesh.probe([probe(LEGACY_CURL, BILLING), probe(SHOP_CURL, BILLING)])
    assert from_sidecar.outcome == ALLOWED
    assert from_ambient.outcome == DENIED_L7
    assert from_ambient.proof is not None and from_ambient.proof.proxy == "waypoint:pay/waypoint"
    # the sidecar's request never reached the waypoint
    assert not [r for r in mixed_mesh.access_log("pay/waypoint") if r.get("client") and ":" in r["client"]
                and r["client"].split(":")[0] == mixed_mesh.addresses["legacy/curl"]]


def test_ambient_to_sidecar_is_decided_by_the_sidecar_at_l7_with_the_clients_identity(
        mixed_mesh: LocalMeshSession) -> None:
    mixed_mesh.apply([strict("legacy"), allow_only("legacy", "orders", "cluster.local/ns/shop/sa/curl",
                                                    to=[{"operation": {"methods": ["GET"]}}])])
    get, post, tcp, sidecar, outside = mixed_mesh.probe([
        probe(SHOP_CURL, ORDERS), probe(SHOP_CURL, ORDERS, method="POST"), probe(SHOP_CURL, ORDERS, 9000),
        probe(LEGACY_CURL, ORDERS), probe(INTERNET, ORDERS)])
    assert get.outcome == ALLOWED  # STRICT does not refuse HBONE, the principal is the ambient client's
    assert post.outcome == DENIED_L7 and post.proof is not None and post.proof.proxy == "sidecar:legacy/orders"
    assert tcp.outcome == DENIED_L4  # a TCP chain drops the ALLOW rule with `methods`
    assert sidecar.outcome == DENIED_L7
    assert outside.outcome == DENIED_L4 and outside.proof is not None  # STRICT: plaintext finds no chain


def test_ambient_to_sidecar_ip_blocks_see_no_client_address(mixed_mesh: LocalMeshSession) -> None:
    """As the engine predicts (listener_inbound.go: the HBONE chains are internal listeners), a positive
    ipBlocks with the client's own address never matches at the sidecar's HBONE chain."""
    ip = mixed_mesh.addresses["shop/curl"]
    mixed_mesh.apply([policy("from-ip", "legacy", {"selector": {"matchLabels": {"app": "orders"}},
                                                   "rules": [{"from": [{"source": {"ipBlocks": [ip]}}]}]})])
    (o,) = mixed_mesh.probe([probe(SHOP_CURL, ORDERS)])
    assert o.outcome == DENIED_L7
    # the same policy admits the sidecar client when it names the sidecar's address (mTLS: the direct peer)
    mixed_mesh.apply([policy("from-ip", "legacy", {"selector": {"matchLabels": {"app": "orders"}}, "rules": [
        {"from": [{"source": {"ipBlocks": [mixed_mesh.addresses["legacy/curl"]]}}]}]})])
    (o,) = mixed_mesh.probe([probe(LEGACY_CURL, ORDERS)])
    assert o.outcome == ALLOWED
