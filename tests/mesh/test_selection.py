"""Which policies apply where, and which mTLS mode: the local mesh against istiod's selection code.

Why: a correct RBAC filter on the wrong proxy is still a wrong verdict. These follow
`pilot/pkg/model/authorization.go` (ListAuthorizationPolicies), `policyattachment.go`
(ShouldAttachPolicy), `authentication.go` (getConfigsForWorkload) and `security/authn/
policy_applier.go` (ComposePeerAuthentication) at Istio 1.30.3, and their tests in
`authorization_test.go` / `policyattachment_test.go`.
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.mesh.local.authz import peer_authentication_mode, select_policies, select_waypoint_policies
from conformance.model import MeshConfig, Waypoint, Workload
from tests.mesh.envoy_support import manifest

MESH = MeshConfig()
FOO_APP = Workload("app", "foo", "app", {"app": "app", "version": "v1"})
BAR_APP = Workload("app", "bar", "app", {"app": "app"})
WAYPOINT = Waypoint("waypoint", "foo")


def ap(name: str, namespace: str, **spec: Any) -> Any:
    return manifest(name, namespace, {"rules": [{}], **spec})


def names(policies: list[Any]) -> list[str]:
    return [p.ref for p in policies]


def test_root_namespace_without_selector_is_mesh_wide() -> None:
    policy = ap("mesh", "istio-system")
    assert names(select_policies([policy], FOO_APP, MESH)) == ["istio-system/mesh"]
    assert names(select_policies([policy], BAR_APP, MESH)) == ["istio-system/mesh"]


def test_root_namespace_selector_applies_in_every_namespace() -> None:
    policy = ap("sel", "istio-system", selector={"matchLabels": {"app": "app"}})
    assert names(select_policies([policy], BAR_APP, MESH)) == ["istio-system/sel"]


def test_custom_root_namespace() -> None:
    mesh = MeshConfig(root_namespace="mesh-root")
    assert names(select_policies([ap("a", "mesh-root"), ap("b", "istio-system")], FOO_APP, mesh)) == ["mesh-root/a"]


def test_other_namespace_policies_never_apply() -> None:
    """ListAuthorizationPolicies looks only in the root and the workload's namespace."""
    assert select_policies([ap("x", "bar"), ap("y", "bar", selector={"matchLabels": {"app": "app"}})],
                           FOO_APP, MESH) == []


def test_selector_must_be_a_subset_of_labels() -> None:
    """labels.Instance.SubsetOf; an empty matchLabels selects every workload."""
    policies = [
        ap("subset", "foo", selector={"matchLabels": {"app": "app"}}),
        ap("exact", "foo", selector={"matchLabels": {"app": "app", "version": "v1"}}),
        ap("superset", "foo", selector={"matchLabels": {"app": "app", "tier": "x"}}),
        ap("wrong-value", "foo", selector={"matchLabels": {"app": "other"}}),
        ap("empty", "foo", selector={}),
    ]
    assert names(select_policies(policies, FOO_APP, MESH)) == ["foo/subset", "foo/exact", "foo/empty"]


def test_target_refs_never_apply_to_sidecars_or_ztunnel() -> None:
    """ShouldAttachPolicy: a non-gateway workload ignores targetRef(s) policies (even kind Service)."""
    policies = [
        ap("svc", "foo", targetRefs=[{"kind": "Service", "group": "", "name": "app"}]),
        ap("legacy", "foo", targetRef={"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w"}),
    ]
    assert select_policies(policies, FOO_APP, MESH) == []


def test_input_order_kept_and_other_kinds_ignored() -> None:
    pa = manifest("pa", "foo", {"mtls": {"mode": "STRICT"}}, kind="PeerAuthentication")
    policies = [ap("b", "foo"), pa, ap("a", "istio-system"), ap("c", "foo")]
    assert names(select_policies(policies, FOO_APP, MESH)) == ["foo/b", "istio-system/a", "foo/c"]


GW = "gateway.networking.k8s.io"


@pytest.mark.parametrize(("policy", "applies"), [
    (ap("gw", "foo", targetRefs=[{"kind": "Gateway", "group": GW, "name": "waypoint"}]), True),
    (ap("gw-ns", "foo", targetRefs=[{"kind": "Gateway", "group": GW, "name": "waypoint", "namespace": "foo"}]), True),
    (ap("gw-other-ns-ref", "foo", targetRefs=[{"kind": "Gateway", "group": GW, "name": "waypoint",
                                                "namespace": "bar"}]), False),
    (ap("gw-wrong-name", "foo", targetRefs=[{"kind": "Gateway", "group": GW, "name": "other"}]), False),
    (ap("gw-wrong-group", "foo", targetRefs=[{"kind": "Gateway", "group": "", "name": "waypoint"}]), False),
    (ap("gw-legacy", "foo", targetRef={"kind": "Gateway", "group": GW, "name": "waypoint"}), True),
    (ap("svc", "foo", targetRefs=[{"kind": "Service", "group": "", "name": "app"}]), True),
    (ap("svc-core", "foo", targetRefs=[{"kind": "Service", "group": "core", "name": "app"}]), True),
    (ap("svc-no-group", "foo", targetRefs=[{"kind": "Service", "name": "app"}]), True),
    (ap("svc-other", "foo", targetRefs=[{"kind": "Service", "group": "", "name": "db"}]), False),
    (ap("svc-many", "foo", targetRefs=[{"kind": "Service", "name": "db"}, {"kind": "Service", "name": "app"}]), True),
    (ap("class", "istio-system", targetRefs=[{"kind": "GatewayClass", "group": GW, "name": "istio-waypoint"}]), True),
    (ap("class-not-root", "foo", targetRefs=[{"kind": "GatewayClass", "group": GW, "name": "istio-waypoint"}]),
     False),
    (ap("class-other", "istio-system", targetRefs=[{"kind": "GatewayClass", "group": GW, "name": "istio"}]), False),
    (ap("selector", "foo", selector={"matchLabels": {"app": "app"}}), False),
    (ap("namespace-wide", "foo"), False),
    (ap("mesh-wide", "istio-system"), False),
])
def test_waypoint_selection(policy: Any, applies: bool) -> None:
    """ShouldAttachPolicy with IsWaypoint: Gateway / Service / GatewayClass targetRefs only."""
    assert bool(select_waypoint_policies([policy], WAYPOINT, FOO_APP, MESH)) is applies


def test_waypoint_in_other_namespace_than_service() -> None:
    """Gateway refs bind in the waypoint's namespace, Service refs in the service's."""
    waypoint = Waypoint("wp", "infra")
    policies = [
        ap("gw-in-infra", "infra", targetRefs=[{"kind": "Gateway", "group": GW, "name": "wp"}]),
        ap("gw-in-foo", "foo", targetRefs=[{"kind": "Gateway", "group": GW, "name": "wp"}]),
        ap("svc-in-foo", "foo", targetRefs=[{"kind": "Service", "name": "app"}]),
        ap("svc-in-infra", "infra", targetRefs=[{"kind": "Service", "name": "app"}]),
    ]
    assert names(select_waypoint_policies(policies, waypoint, FOO_APP, MESH)) == ["infra/gw-in-infra", "foo/svc-in-foo"]


def pa(name: str, namespace: str, mode: str | None, selector: dict[str, str] | None = None,
       ports: dict[Any, Any] | None = None) -> Any:
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = ports
    return manifest(name, namespace, spec, kind="PeerAuthentication")


@pytest.mark.parametrize(("policies", "expected"), [
    ([], "PERMISSIVE"),
    ([pa("m", "istio-system", "STRICT")], "STRICT"),
    ([pa("m", "istio-system", "STRICT"), pa("n", "foo", "PERMISSIVE")], "PERMISSIVE"),
    ([pa("m", "istio-system", "STRICT"), pa("n", "foo", "UNSET")], "STRICT"),
    ([pa("m", "istio-system", "STRICT"), pa("n", "foo", None)], "STRICT"),
    ([pa("n", "foo", "STRICT"), pa("w", "foo", "PERMISSIVE", {"app": "app"})], "PERMISSIVE"),
    ([pa("n", "foo", "PERMISSIVE"), pa("w", "foo", "STRICT", {"app": "app"})], "STRICT"),
    ([pa("n", "foo", "STRICT"), pa("w", "foo", "UNSET", {"app": "app"})], "STRICT"),
    ([pa("n", "foo", "PERMISSIVE"), pa("w", "foo", "STRICT", {"app": "other"})], "PERMISSIVE"),
    ([pa("n", "bar", "STRICT")], "PERMISSIVE"),
    ([pa("root-selector", "istio-system", "STRICT", {"app": "app"})], "PERMISSIVE"),
    ([pa("old", "foo", "STRICT"), pa("new", "foo", "PERMISSIVE")], "STRICT"),
    ([pa("n", "foo", "DISABLE")], "DISABLE"),
])
def test_peer_authentication_precedence(policies: list[Any], expected: str) -> None:
    """ComposePeerAuthentication: workload > namespace > mesh, UNSET inherits, oldest of a scope wins."""
    assert peer_authentication_mode(policies, FOO_APP, MESH) == expected


def test_peer_authentication_port_level() -> None:
    """MergedPeerAuthentication.PerPort: a port entry overrides, UNSET inherits the workload mode."""
    policies = [pa("w", "foo", "STRICT", {"app": "app"}, {"8080": {"mode": "PERMISSIVE"}, 9090: {"mode": "UNSET"}})]
    assert peer_authentication_mode(policies, FOO_APP, MESH, port=8080) == "PERMISSIVE"
    assert peer_authentication_mode(policies, FOO_APP, MESH, port=9090) == "STRICT"
    assert peer_authentication_mode(policies, FOO_APP, MESH, port=7070) == "STRICT"
    assert peer_authentication_mode(policies, FOO_APP, MESH) == "STRICT"
