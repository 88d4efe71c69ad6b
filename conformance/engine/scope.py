"""Which policies apply where: sidecars and ztunnel by namespace and selector, waypoints by targetRefs.

Sources: istio/istio@1.30.3 `pilot/pkg/model/authorization.go` (ListAuthorizationPolicies: the root
namespace and the workload's own namespace; a selector must be a subset of the workload's labels) and
`policyattachment.go` (ShouldAttachPolicy: a policy with targetRefs never attaches to a sidecar or any
workload that is not a Gateway API gateway; a waypoint uses targetRefs only), the ambient translation
(`convertAuthorizationPolicy`: targetRefs policies are never sent to ztunnel; scopes GLOBAL, NAMESPACE,
WORKLOAD_SELECTOR). PeerAuthentication's own selection and composition is in mtls.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from conformance.engine.policy import TargetRef
from conformance.model import MeshConfig, Waypoint, Workload
from conformance.names import GATEWAY_API_GROUP, WAYPOINT_GATEWAY_CLASS
from conformance.versions import GATEWAY_CLASS_TARGET_REF, WAYPOINT_SERVICE_NAMESPACE, IstioVersion

GATEWAY_GROUP = GATEWAY_API_GROUP


class Attachable(Protocol):
    """What ShouldAttachPolicy reads of a policy (policyattachment.go@1.30.3 TargetablePolicy): an
    AuthorizationPolicy or a RequestAuthentication, which istiod attaches the same way
    (authentication.go getConfigsForWorkload calls ShouldAttachPolicy for RequestAuthentication)."""

    @property
    def namespace(self) -> str: ...

    @property
    def selector(self) -> Mapping[str, str] | None: ...

    @property
    def target_refs(self) -> tuple[TargetRef, ...]: ...


def _subset(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def applies_to_workload(policy: Attachable, workload: Workload, mesh: MeshConfig) -> bool:
    """A policy enforced by the sidecar or ztunnel of `workload`."""
    if policy.target_refs:
        return False  # ShouldAttachPolicy: targetRefs policies only attach to gateways and waypoints
    if policy.namespace not in (workload.namespace, mesh.root_namespace):
        return False
    return policy.selector is None or _subset(policy.selector, workload.labels)


def scope_of(policy: Attachable, mesh: MeshConfig) -> str:
    if policy.target_refs:
        return "targetRefs"
    if policy.selector is not None:
        return "selector" if policy.namespace != mesh.root_namespace else "root-namespace selector"
    return "mesh-wide (root namespace)" if policy.namespace == mesh.root_namespace else "namespace-wide"


def binds_waypoint(ref: TargetRef, policy: Attachable, waypoint: Waypoint, service: Workload,
                   mesh: MeshConfig, version: IstioVersion) -> bool:
    """policyattachment.go: Gateway (the waypoint itself, same namespace), Service (that service, in
    its namespace, waypoints only), GatewayClass istio-waypoint from the root namespace (1.25+).

    Before 1.24.0 the policy's own namespace was not compared: of the policies istiod looks up for the
    waypoint (the root namespace's and the waypoint's own, authorization.go ListAuthorizationPolicies),
    a Gateway or Service targetRef attached by name, its namespace empty or the waypoint's
    (istio/istio@1.23.0 pilot/pkg/model/policyattachment.go ShouldAttachPolicy; 1.24.0 added
    `policyName.Namespace == p.ServiceNamespace`). So a root-namespace policy naming Gateway `waypoint`
    bound every waypoint of that name.
    """
    if not version.has(WAYPOINT_SERVICE_NAMESPACE):  # istio/istio#52760, 1.24.0
        if policy.namespace not in (mesh.root_namespace, waypoint.namespace):
            return False
        if ref.namespace and ref.namespace != waypoint.namespace:
            return False
        if ref.kind == "Gateway" and ref.group == GATEWAY_GROUP:
            return ref.name == waypoint.name
        if ref.kind == "Service" and ref.group in ("", "core"):
            return ref.name == service.name
        return False
    if ref.namespace and ref.namespace != policy.namespace:
        return False
    if ref.kind == "Gateway" and ref.group == GATEWAY_GROUP:
        return policy.namespace == waypoint.namespace and ref.name == waypoint.name
    if ref.kind == "Service" and ref.group in ("", "core"):
        return policy.namespace == service.namespace and ref.name == service.name
    if ref.kind == "GatewayClass" and ref.group == GATEWAY_GROUP and version.has(GATEWAY_CLASS_TARGET_REF):
        return policy.namespace == mesh.root_namespace and ref.name == WAYPOINT_GATEWAY_CLASS
    return False


def applies_at_waypoint(policy: Attachable, waypoint: Waypoint, service: Workload, mesh: MeshConfig,
                        version: IstioVersion) -> bool:
    """Waypoints never use selector or namespace-wide policies (API: "selector policies will be
    ignored"); only policies whose targetRefs bind this waypoint or this service."""
    return any(binds_waypoint(r, policy, waypoint, service, mesh, version) for r in policy.target_refs)


# The pod label a Gateway API gateway's Deployment carries (istio-discovery/files/kube-gateway.yaml l.59-70); a
# classic gateway (istioctl's istio-ingressgateway, the Helm `gateway` chart) has none.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def applies_to_gateway(policy: Attachable, gateway: Workload, mesh: MeshConfig) -> bool:
    """A policy an ingress gateway enforces (policyattachment.go@1.30 ShouldAttachPolicy l.123-201;
    docs/ingress-gateways.md §6): of the root namespace's and its own namespace's policies (authorization.go
    ListAuthorizationPolicies), a selector (or no selector) policy as for any workload; for a Gateway API gateway
    (pod label gateway.networking.k8s.io/gateway-name) also a policy in its namespace whose targetRefs name that
    Gateway (group gateway.networking.k8s.io, kind Gateway, namespace empty or its own). A classic gateway ignores
    targetRefs policies entirely (l.133-134). ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY (default true) keeps selector
    policies on Gateway API gateways."""
    if not policy.target_refs:
        return applies_to_workload(policy, gateway, mesh)
    name = gateway.labels.get(GATEWAY_NAME_LABEL)
    if name is None or policy.namespace != gateway.namespace:
        return False
    return any(r.group == GATEWAY_GROUP and r.kind == "Gateway" and r.name == name
               and r.namespace in ("", gateway.namespace) for r in policy.target_refs)
