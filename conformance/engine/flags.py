"""What istiod's authorization feature flags (`mesh.pilotEnv`, conformance/pilotenv.py) add to what the proxies
enforce, as the engine models it. decide.py calls these at the two places the flags reach: the policies istiod
sends a destination ztunnel, and the policies a waypoint enforces at its HBONE termination. The CUSTOM flag
(PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS) only changes how decide.py's CUSTOM step groups providers.

Sources (istio/istio@1.30.3):
- PILOT_AUTO_ALLOW_WAYPOINT_POLICY: pilot/pkg/serviceregistry/ambient/policies.go implicitWaypointPolicyName
  (l.299-305: `"istio_allow_waypoint_" + waypoint.Namespace + "_" + waypoint.Name`) and implicitWaypointPolicy
  (l.307-341: an ALLOW in the waypoint's namespace, one rule, one Match of Principals, each the exact SPIFFE
  identity of a waypoint service account without `spiffe://`); workloads.go implicitWaypointPolicies (l.1368+):
  every workload whose own waypoint or whose services' waypoint is that waypoint gets the policy's key appended to
  its AuthorizationPolicies ("enforce traversing waypoints", l.730).
- ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES: pilot/pkg/networking/core/listener_waypoint.go l.276-281 (an RBAC
  HTTP filter first on the connect_terminate HCM, built by BuildTCPRulesAsHTTPFilter: TCP rules, i.e. HTTP-only
  attributes drop ALLOW rules and are removed from DENY rules); networking/plugin/authz/authorization.go
  NewWaypointTerminationBuilder (l.53-56, `alwaysTreatAsNonWaypoint`: selectionOpts.IsWaypoint = false, authz.Local:
  ALLOW, DENY, AUDIT only, no CUSTOM); model/policyattachment.go ShouldAttachPolicy: for a Gateway API workload that
  is not treated as a waypoint, a policy without targetRefs attaches by selector (EnableSelectorBasedK8sGatewayPolicy,
  default true) and a targetRef to its own Gateway, from its namespace, attaches; Service and GatewayClass refs
  need IsWaypoint. ListAuthorizationPolicies looks in the root namespace and the waypoint's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from conformance.engine.policy import AuthorizationPolicy, compile_authorization_policy
from conformance.model import Manifest, MeshConfig, Waypoint
from conformance.names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL

# What a waypoint's HBONE listener is (pilot/pkg/model/proxy.go HBoneInboundListenPort): the local port an RBAC
# `destination_port` matcher compares at the termination layer, so a `ports: ["8080"]` rule never matches there.
HBONE_PORT = 15008


def implicit_waypoint_policy_name(waypoint: Waypoint) -> str:
    """policies.go implicitWaypointPolicyName: `_` because it is illegal in Kubernetes names (no clash)."""
    return f"istio_allow_waypoint_{waypoint.namespace}_{waypoint.name}"


def implicit_waypoint_policy(waypoint: Waypoint, mesh: MeshConfig) -> AuthorizationPolicy:
    """policies.go implicitWaypointPolicy: ALLOW from the waypoint's identity (its service account is its name,
    model.Waypoint), in the mesh trust domain (spiffe.MustGenSpiffeURI with meshCfg)."""
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": implicit_waypoint_policy_name(waypoint), "namespace": waypoint.namespace},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [waypoint.identity(
            mesh.trust_domain)]}}]}]},
    }
    manifest = Manifest("AuthorizationPolicy", "security.istio.io/v1", implicit_waypoint_policy_name(waypoint),
                        waypoint.namespace, body, "istiod (PILOT_AUTO_ALLOW_WAYPOINT_POLICY)")
    return compile_authorization_policy(manifest)


def waypoint_labels(waypoint: Waypoint) -> Mapping[str, str]:
    """The waypoint pod's label a selector can name: the Gateway API deployment's
    `gateway.networking.k8s.io/gateway-name: <gateway>` (the only one the suite models)."""
    return {GATEWAY_NAME_LABEL: waypoint.name}


def _targets_own_gateway(policy: AuthorizationPolicy, waypoint: Waypoint) -> bool:
    """ShouldAttachPolicy with IsWaypoint false: a Gateway targetRef naming this waypoint, policy and ref in its
    namespace (Service / ServiceEntry / GatewayClass refs need IsWaypoint and do not attach)."""
    if policy.namespace != waypoint.namespace:
        return False
    return any(r.kind == "Gateway" and r.group == GATEWAY_API_GROUP and r.name == waypoint.name
               and (not r.namespace or r.namespace == waypoint.namespace) for r in policy.target_refs)


def termination_policies(policies: Sequence[AuthorizationPolicy], waypoint: Waypoint,
                         mesh: MeshConfig) -> tuple[AuthorizationPolicy, ...]:
    """The policies the layered termination filter holds: ALLOW, DENY, AUDIT from the root and the waypoint's
    namespace that select the waypoint's pod (no selector = namespace- or mesh-wide), or target its Gateway."""
    out = []
    labels = waypoint_labels(waypoint)
    for p in policies:
        if p.action not in ("ALLOW", "DENY", "AUDIT") or p.namespace not in (mesh.root_namespace, waypoint.namespace):
            continue
        if p.target_refs:
            if _targets_own_gateway(p, waypoint):
                out.append(p)
        elif p.selector is None or all(labels.get(k) == v for k, v in p.selector.items()):
            out.append(p)
    return tuple(out)
