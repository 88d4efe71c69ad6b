"""The local mesh's authorization compiler: which policies apply where, and the Envoy filters for them.

Why this exists: the local target enforces AuthorizationPolicies in real Envoy processes standing in
for sidecars, ztunnels and waypoints. This module is what the mesh assembly calls; it answers the
questions istiod answers for each proxy, the way istiod 1.30.3 answers them:

- which policies a proxy applies (`select_policies`, `select_waypoint_policies`: ports of
  `pilot/pkg/model/authorization.go` ListAuthorizationPolicies and `policyattachment.go`
  ShouldAttachPolicy);
- which mTLS mode a sidecar's inbound port has, and so which mode its clients use to reach it
  (`peer_authentication_mode`: `pilot/pkg/security/authn/policy_applier.go` ComposePeerAuthentication and
  GetMutualTLSModeForPort with `pilot/pkg/model/authentication.go` selection; the client side is
  `pilot/pkg/xds/endpoints/mtls_checker.go` checkMtlsEnabled on the same composition), and which
  PeerAuthentication DENYs a ztunnel applies (`ztunnel_peer_authentication`, ambient authorization.go);
- the Envoy RBAC filters of a sidecar HTTP or TCP chain and of a waypoint (`rbac.py`, a port of
  `pilot/pkg/security/authz/builder`), and the filters that make an Envoy enforce what ztunnel
  enforces (`ztunnel.py`, istiod's ambient translation, then ztunnel's evaluation in Envoy form).

Every function takes the `Release` to emulate (release.py; default: 1.30's newest patch): what changed
between the releases the suite models is honoured the way that release's istiod generated config, and
what the local mesh cannot turn into real Envoy config is refused by `unemulated`, never approximated.

It is one of two independent implementations of Istio's semantics (the other is `conformance.engine`);
they check each other, so nothing here imports the engine (an import-linter contract enforces it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, cast

from conformance import pilotenv
from conformance.mesh.local import authn, ztunnel
from conformance.mesh.local.extauthz import CustomBuilder, ServiceIndex
from conformance.mesh.local.rbac import (
    PEER_PRINCIPAL_KEY,
    Json,
    RbacBuilder,
    TrustDomainBundle,
    strings,
    target_refs,
)
from conformance.mesh.local.release import Release, unquoted_hazard
from conformance.model import Manifest, MeshConfig, Mode, Waypoint, Workload
from conformance.names import GATEWAY_API_GROUP, GATEWAY_NAME_LABEL, WAYPOINT_GATEWAY_CLASS

__all__ = [
    "GATEWAY_NAME_LABEL",
    "PEER_PRINCIPAL_KEY",
    "WAYPOINT_GATEWAY_CLASS",
    "custom_builder",
    "peer_authentication_mode",
    "select_policies",
    "select_waypoint_policies",
    "sidecar_http_filters",
    "sidecar_tcp_filters",
    "unemulated",
    "waypoint_filters",
    "waypoint_tcp_filters",
    "ztunnel_authorizations",
    "ztunnel_filters",
    "ztunnel_peer_authentication",
    "ztunnel_plaintext_filters",
]

AUTHORIZATION_POLICY = "AuthorizationPolicy"
PEER_AUTHENTICATION = "PeerAuthentication"

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


# ---------------------------------------------------------------------------------------------------
# Policy selection: pilot/pkg/model/authorization.go and policyattachment.go.


def _selector_labels(spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    selector = spec.get("selector")
    if selector is None:
        return None
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def _subset_of(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """labels.Instance.SubsetOf: every selector label present with the same value (empty: true)."""
    return all(k in labels and str(labels[k]) == str(v) for k, v in selector.items())


def _canonical_group(group: str) -> str:
    """config.CanonicalGroup: the core group is spelled "" or "core"."""
    return group or "core"


def _matches_group_kind(ref: Mapping[str, Any], group: str, kind: str) -> bool:
    """policyattachment.go matchesGroupKind."""
    return _canonical_group(str(ref.get("group") or "")) == _canonical_group(group) and ref.get("kind") == kind


def _should_attach(
    policy: Manifest,
    *,
    workload_namespace: str,
    labels: Mapping[str, str],
    is_waypoint: bool,
    services: Sequence[tuple[str, str]],
    root_namespace: str,
    release: Release | None = None,
) -> bool:
    """policyattachment.go ShouldAttachPolicy (Kubernetes services only, no ServiceEntry) at `release`.

    The targetRefs part changed twice (`Release.waypoint_attachment`); the selector part never did.
    """
    release = release or Release.newest()
    spec = policy.spec
    gateway_name = labels.get(GATEWAY_NAME_LABEL)
    refs = target_refs(spec)
    if gateway_name is None:
        # Non-gateway: targetRef(s) policies never apply; otherwise the selector decides.
        if refs:
            return False
        selector = _selector_labels(spec)
        return selector is None or _subset_of(selector, labels)
    if not refs:
        # Waypoints never use selector policies (features.EnableSelectorBasedK8sGatewayPolicy is for
        # other gateways, which the local mesh does not have).
        if is_waypoint:
            return False
        selector = _selector_labels(spec)
        return selector is None or _subset_of(selector, labels)
    if release.waypoint_attachment == "1.22":
        return _attach_1_22(policy, refs, workload_namespace, gateway_name, is_waypoint, services)
    if release.waypoint_attachment == "1.24":
        return _attach_1_24(policy, refs, workload_namespace, gateway_name, is_waypoint, services)
    for ref in refs:
        target = ref.get("name")
        # Service attached: the policy in the service's namespace (targetRef.namespace unchecked).
        if is_waypoint and _matches_group_kind(ref, "", "Service") and any(
                target == name and policy.namespace == ns for name, ns in services):
            return True
        if (release.gateway_class_binds_waypoints and policy.namespace == root_namespace and is_waypoint
                and _matches_group_kind(ref, GATEWAY_API_GROUP, "GatewayClass")
                and target == WAYPOINT_GATEWAY_CLASS):
            return True
        if workload_namespace != policy.namespace:
            continue
        if ref.get("namespace") not in (None, "", workload_namespace):
            continue
        if _matches_group_kind(ref, GATEWAY_API_GROUP, "Gateway") and target == gateway_name:
            return True
    return False


def _attach_1_24(policy: Manifest, refs: Sequence[Mapping[str, Any]], workload_namespace: str,
                 gateway_name: str, is_waypoint: bool, services: Sequence[tuple[str, str]]) -> bool:
    """ShouldAttachPolicy's targetRefs loop at 1.24 (policyattachment.go at 1.24.6, after istio/istio#52760):
    no GatewayClass, and no "policy in the waypoint's namespace" check for a Gateway ref (added by #54140
    in 1.25; ListAuthorizationPolicies only searched the service's namespace, `_waypoint_lookup_namespaces`)."""
    for ref in refs:
        target = ref.get("name")
        if is_waypoint and _matches_group_kind(ref, "", "Service") and any(
                target == name and policy.namespace == ns for name, ns in services):
            return True
        if ref.get("namespace") not in (None, "", workload_namespace):
            continue
        if _matches_group_kind(ref, GATEWAY_API_GROUP, "Gateway") and target == gateway_name:
            return True
    return False


def _attach_1_22(policy: Manifest, refs: Sequence[Mapping[str, Any]], workload_namespace: str,
                 gateway_name: str, is_waypoint: bool, services: Sequence[tuple[str, str]]) -> bool:
    """ShouldAttachPolicy's targetRefs loop at 1.22 and 1.23 (policyattachment.go at 1.22.0 / 1.23.0):
    Gateway and Service refs attach by name alone, the targetRef's namespace empty or the waypoint's
    (`p.Namespace`), whatever namespace the policy lives in (so a root-namespace policy reaches every
    waypoint of that name, or every waypoint serving a service of that name); no GatewayClass."""
    for ref in refs:
        target = ref.get("name")
        if ref.get("namespace") not in (None, "", workload_namespace):
            continue
        if _matches_group_kind(ref, GATEWAY_API_GROUP, "Gateway") and target == gateway_name:
            return True
        if is_waypoint and _matches_group_kind(ref, "", "Service") and any(target == name for name, _ in services):
            return True
    return False


def _lookup_namespaces(mesh: MeshConfig, *namespaces: str) -> set[str]:
    """authorization.go ListAuthorizationPolicies: only the root namespace and the proxy's (and its
    service's) namespaces are searched."""
    return {mesh.root_namespace, *namespaces}


def _waypoint_lookup_namespaces(mesh: MeshConfig, waypoint: Waypoint, service: Workload,
                                release: Release) -> set[str]:
    """ListAuthorizationPolicies for a waypoint's per-service builder (NewBuilderForService) at `release`:
    1.22-1.23 the root and the waypoint's namespace; 1.24 only the service's namespace (`if svcNamespace
    != "" { lookupInNamespaces = []string{svcNamespace} }`, authorization.go at 1.24.6); 1.25+ the root,
    the waypoint's and the service's namespaces."""
    if release.waypoint_attachment == "1.22":
        return {mesh.root_namespace, waypoint.namespace}
    if release.waypoint_attachment == "1.24":
        return {service.namespace}
    return _lookup_namespaces(mesh, waypoint.namespace, service.namespace)


def select_policies(policies: Sequence[Manifest], workload: Workload, mesh: MeshConfig) -> list[Manifest]:
    """The AuthorizationPolicies a sidecar or ztunnel applies at `workload`, in input order.

    ListAuthorizationPolicies + ShouldAttachPolicy for a non-gateway workload: policies from the root
    namespace (mesh-wide without selector; with a selector, for matching workloads of every namespace)
    and from the workload's namespace (namespace-wide without selector); a selector's `matchLabels`
    must be a subset of the workload's labels; `targetRef(s)` policies never apply. The same set is
    what istiod sends ztunnel for the workload (GLOBAL + NAMESPACE scopes + buildWorkloadPolicies).
    """
    namespaces = _lookup_namespaces(mesh, workload.namespace)
    return [
        p for p in policies
        if p.kind == AUTHORIZATION_POLICY and p.namespace in namespaces and _should_attach(
            p, workload_namespace=workload.namespace, labels=workload.labels, is_waypoint=False,
            services=(), root_namespace=mesh.root_namespace)
    ]


def select_waypoint_policies(
    policies: Sequence[Manifest], waypoint: Waypoint, service: Workload, mesh: MeshConfig,
    release: Release | None = None,
) -> list[Manifest]:
    """The AuthorizationPolicies a waypoint applies to traffic for `service`, in input order.

    authz.NewBuilderForService(svc) → ListAuthorizationPolicies with IsWaypoint and the service. From
    1.25: `targetRefs` Gateway (the waypoint's name, policy in the waypoint's namespace), Service
    (`service.name`, policy in the service's namespace) and GatewayClass `istio-waypoint` (policy in
    the root namespace; releasenotes/notes/54780.yaml). Before 1.25 no GatewayClass, and the lookup and
    the namespace checks differ (`_waypoint_lookup_namespaces`, `_attach_1_24`, `_attach_1_22`).
    Selector and namespace-wide policies never apply to waypoints.
    """
    release = release or Release.newest()
    labels = {GATEWAY_NAME_LABEL: waypoint.name}
    namespaces = _waypoint_lookup_namespaces(mesh, waypoint, service, release)
    return [
        p for p in policies
        if p.kind == AUTHORIZATION_POLICY and p.namespace in namespaces and _should_attach(
            p, workload_namespace=waypoint.namespace, labels=labels, is_waypoint=True,
            services=((service.name, service.namespace),), root_namespace=mesh.root_namespace,
            release=release)
    ]


def select_waypoint_termination_policies(policies: Sequence[Manifest], waypoint: Waypoint, mesh: MeshConfig,
                                         release: Release | None = None) -> list[Manifest]:
    """ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES: the policies of the waypoint's HBONE termination layer
    (plugin/authz/authorization.go@1.30.3 NewWaypointTerminationBuilder: ListAuthorizationPolicies for the waypoint's
    own pod with IsWaypoint false and no service, "the standard workload selector policy semantics"). The pod is a
    Gateway API gateway, so ShouldAttachPolicy takes selector (and namespace- / mesh-wide) policies and targetRefs
    to its own Gateway; Service and GatewayClass refs need IsWaypoint."""
    labels = {GATEWAY_NAME_LABEL: waypoint.name}
    namespaces = _lookup_namespaces(mesh, waypoint.namespace)
    return [
        p for p in policies
        if p.kind == AUTHORIZATION_POLICY and p.namespace in namespaces and _should_attach(
            p, workload_namespace=waypoint.namespace, labels=labels, is_waypoint=False, services=(),
            root_namespace=mesh.root_namespace, release=release)
    ]


# ---------------------------------------------------------------------------------------------------
# PeerAuthentication: authentication.go getConfigsForWorkload + policy_applier.go ComposePeerAuthentication.


def _mtls_mode(section: Any) -> str:
    """The mode as written; a missing `mtls` or `mode` is UNSET."""
    if not isinstance(section, Mapping):
        return "UNSET"
    return str(section.get("mode") or "UNSET")


def peer_authentication_mode(
    policies: Sequence[Manifest], workload: Workload, mesh: MeshConfig, port: int | None = None,
) -> MtlsMode:
    """The effective mTLS mode of `workload`'s inbound listener: "STRICT", "PERMISSIVE" or "DISABLE".

    getConfigsForWorkload: PeerAuthentications in the workload's and the root namespace whose selector
    (if any) is a subset of the workload's labels. ComposePeerAuthentication: one mesh-level (root
    namespace, no selector), one namespace-level and one workload-level (selector, not in the root
    namespace) policy, the oldest of each (input order stands for creation order); PERMISSIVE, then
    mesh, namespace and workload each override unless UNSET. With `port`, the workload policy's
    `portLevelMtls` entry for it (UNSET inherits). A sidecar's inbound listener has the chains of that mode
    (filterchain_options.go getFilterChainMatchOptions: STRICT TLS only, PERMISSIVE both, DISABLE plaintext
    only), and a client's sidecar sends plaintext to a DISABLE port (mtls_checker.go checkMtlsEnabled: auto-
    mTLS, no DestinationRule in the suite).
    """
    mesh_cfg = ns_cfg = workload_cfg = None
    for p in policies:
        if p.kind != PEER_AUTHENTICATION or p.namespace not in (workload.namespace, mesh.root_namespace):
            continue
        selector = _selector_labels(p.spec)
        if selector is not None and not _subset_of(selector, workload.labels):
            continue
        if not selector:
            if p.namespace == mesh.root_namespace:
                mesh_cfg = mesh_cfg or p
            else:
                ns_cfg = ns_cfg or p
        elif p.namespace != mesh.root_namespace:
            workload_cfg = workload_cfg or p

    mode = "PERMISSIVE"
    for cfg in (mesh_cfg, ns_cfg, workload_cfg):
        if cfg is not None and _mtls_mode(cfg.spec.get("mtls")) != "UNSET":
            mode = _mtls_mode(cfg.spec.get("mtls"))
    if port is not None and workload_cfg is not None:
        per_port = workload_cfg.spec.get("portLevelMtls")
        if isinstance(per_port, Mapping):
            for key, section in per_port.items():
                if str(key) == str(port):
                    port_mode = _mtls_mode(section)
                    mode = mode if port_mode == "UNSET" else port_mode
    if mode not in ("STRICT", "PERMISSIVE", "DISABLE"):
        raise ValueError(f"unknown PeerAuthentication mTLS mode {mode!r}")
    return cast(MtlsMode, mode)


# ---------------------------------------------------------------------------------------------------
# Envoy filters.


def _bundle(mesh: MeshConfig) -> TrustDomainBundle:
    """authz.go newBuilder: NewBundle(meshConfig.trustDomain, trustDomainAliases); the local mesh has
    no aliases, but `cluster.local/...` principals still mean the mesh's trust domain."""
    return TrustDomainBundle.of(mesh.trust_domain)


def _builder(mesh: MeshConfig, port_map: Mapping[int, int], use_filter_state: bool,
             release: Release | None) -> RbacBuilder:
    return RbacBuilder(_bundle(mesh), use_filter_state=use_filter_state, port_map=dict(port_map),
                       release=release or Release.newest())


def custom_builder(mesh: MeshConfig, port_map: Mapping[int, int], use_filter_state: bool,
                   release: Release | None, services: ServiceIndex | None) -> CustomBuilder:
    """The CUSTOM builder (extauthz.py) with the mesh's extension providers and the service registry."""
    return CustomBuilder(_bundle(mesh), [p.mesh_config_entry() for p in mesh.extension_providers], services or {},
                         use_filter_state=use_filter_state, port_map=dict(port_map),
                         release=release or Release.newest(),
                         multiple_providers=mesh.pilot_flag(pilotenv.MULTIPLE_CUSTOM_PROVIDERS))


def sidecar_http_filters(policies: Sequence[Manifest], mesh: MeshConfig, port_map: Mapping[int, int],
                         release: Release | None = None, *, request_authentications: Sequence[Manifest] = (),
                         services: ServiceIndex | None = None, use_filter_state: bool = False) -> list[Json]:
    """The authn/authz HTTP filters of a sidecar's inbound HTTP chain, in istiod's order
    (listener_builder.go buildHTTPConnectionManager): CUSTOM pairs (shadow RBAC + ext_authz per provider),
    the JWT filter, then RBAC AUDIT, DENY, ALLOW.

    `policies` are the ones `select_policies` chose for the workload, `request_authentications` the ones
    `authn.select_request_authentications` chose (their `${jwks:...}` filled), `services` the registry CUSTOM
    providers are looked up in (`extauthz.service_index`). Principals match the mTLS peer (`authenticated`);
    `port_map` moves scenario ports to the listener's real ports; each RBAC filter has `rules_stat_prefix`
    audit_ / deny_ / allow_; identity regexes as `release`'s istiod wrote them. `use_filter_state`: the
    sidecar's HBONE chains (mode mixed), whose principal is the filter-state object the HBONE termination set
    (listener_inbound.go@1.30.3 buildInboundHBONEListeners: `authz.NewBuilder(authz.Local, ..., true)`).
    """
    return [
        *custom_builder(mesh, port_map, use_filter_state, release, services).build_http(policies),
        *authn.jwt_filters(request_authentications, waypoint=False, release=release),
        *_builder(mesh, port_map, use_filter_state, release).build_http(policies),
    ]


def gateway_http_filters(policies: Sequence[Manifest], mesh: MeshConfig, port_map: Mapping[int, int],
                         release: Release | None = None, *, request_authentications: Sequence[Manifest] = (),
                         services: ServiceIndex | None = None) -> list[Json]:
    """The authn/authz HTTP filters of an ingress gateway's listener: the same builders in the same order as a
    sidecar's (listener_builder.go@1.30 buildHTTPConnectionManager l.395-411, for every proxy but a waypoint, with
    `authz.NewBuilder(..., node.Type == model.Waypoint)`: principals from the TLS peer, of which a plaintext client
    has none), except the JWT filter's `clear_route_cache`, which istiod sets for every proxy but a sidecar."""
    return [
        *custom_builder(mesh, port_map, False, release, services).build_http(policies),
        *authn.jwt_filters(request_authentications, waypoint=True, release=release),
        *_builder(mesh, port_map, False, release).build_http(policies),
    ]


def sidecar_tcp_filters(policies: Sequence[Manifest], mesh: MeshConfig, port_map: Mapping[int, int],
                        release: Release | None = None, *, services: ServiceIndex | None = None,
                        use_filter_state: bool = False) -> list[Json]:
    """The network filters of a sidecar's inbound TCP chain: CUSTOM pairs (gRPC providers only: an HTTP
    provider is skipped on TCP chains), then istiod's BuildTCP (network RBAC, stat_prefix `tcp.`).

    HTTP-only attributes make ALLOW rules vanish and are dropped from DENY / AUDIT rules (checkError).
    """
    return [
        *custom_builder(mesh, port_map, use_filter_state, release, services).build_tcp(policies),
        *_builder(mesh, port_map, use_filter_state, release).build_tcp(policies),
    ]


def waypoint_filters(policies: Sequence[Manifest], mesh: MeshConfig, port_map: Mapping[int, int],
                     release: Release | None = None, *, request_authentications: Sequence[Manifest] = (),
                     services: ServiceIndex | None = None) -> list[Json]:
    """The authn/authz HTTP filters of the waypoint's inner HTTP listener for one service
    (listener_waypoint.go buildWaypointHTTPFilters): CUSTOM pairs, the JWT filter (`clear_route_cache`),
    RBAC.

    `policies` are the ones `select_waypoint_policies` chose, `request_authentications` the ones
    `authn.select_waypoint_request_authentications` chose. As sidecar HTTP, but identity matchers read the
    filter-state object `PEER_PRINCIPAL_KEY` (istiod's UseFilterState), which the waypoint's HBONE
    termination must set from `%DOWNSTREAM_PEER_URI_SAN%`.
    """
    return [
        *custom_builder(mesh, port_map, True, release, services).build_http(policies),
        *authn.jwt_filters(request_authentications, waypoint=True, release=release),
        *_builder(mesh, port_map, True, release).build_http(policies),
    ]


def waypoint_termination_filters(policies: Sequence[Manifest], mesh: MeshConfig,
                                 release: Release | None = None) -> list[Json]:
    """The RBAC filters istiod puts first on a waypoint's connect_terminate HCM when
    ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES is on (listener_waypoint.go@1.30.3 l.276-281): `policies` from
    `select_waypoint_termination_policies`, BuildTCPRulesAsHTTPFilter, identities from the HBONE peer certificate
    (`authenticated`: the builder has no UseFilterState), ports as the listener sees them (no remapping: the
    connection's local port is 15008, which a scenario's `ports` never name). Empty when the flag is off."""
    if not mesh.pilot_flag(pilotenv.LAYERED_WAYPOINT):
        return []
    return _builder(mesh, {}, False, release).build_tcp_rules_as_http(policies)


def waypoint_tcp_filters(policies: Sequence[Manifest], mesh: MeshConfig, port_map: Mapping[int, int],
                         release: Release | None = None, *, services: ServiceIndex | None = None) -> list[Json]:
    """The network filters of a waypoint's TCP service port: CUSTOM pairs (gRPC providers), then istiod's
    BuildTCP with identities read from the waypoint's filter state (listener_waypoint.go
    buildWaypointNetworkFilters → networkfilter.go buildCompleteNetworkFilters with useFilterState)."""
    return [
        *custom_builder(mesh, port_map, True, release, services).build_tcp(policies),
        *_builder(mesh, port_map, True, release).build_tcp(policies),
    ]


def ztunnel_authorizations(policies: Sequence[Manifest], mesh: MeshConfig,
                           release: Release | None = None,
                           waypoint: Waypoint | None = None) -> list[ztunnel.Authorization]:
    """Step one of the ztunnel emulation: what istiod at `release` (default: 1.30's newest patch) sends ztunnel.

    ALLOW rules with any HTTP attribute are dropped whole; DENY rules keep only their L4 content (an
    L7-only clause becomes an empty match, which never matches); a policy left without rules never
    matches but is still an ALLOW; AUDIT, CUSTOM and targetRef(s) policies are not sent, nor are
    dry-run ones from 1.25.2 (before, they were sent as ordinary policies and enforced, #55414);
    principals are compared literally (no `cluster.local` or alias rewriting).

    istiod's feature flags (`mesh.pilotEnv`, read here, never from the engine): with
    AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (1.29+) dry-run policies are sent marked dryRun, which ztunnel only
    logs; with PILOT_AUTO_ALLOW_WAYPOINT_POLICY, a workload that uses `waypoint` (a deployed one) also gets the
    waypoint's synthetic ALLOW (ztunnel.implicit_waypoint_policy), appended after the user's policies as
    workloads.go@1.30.3 appends its key (l.730).
    """
    out = ztunnel.translate(policies, mesh.root_namespace, release,
                            dry_run_enabled=mesh.pilot_flag(pilotenv.AMBIENT_DRY_RUN))
    if waypoint is not None and mesh.pilot_flag(pilotenv.AUTO_ALLOW_WAYPOINT):
        identity = f"{mesh.trust_domain}/ns/{waypoint.namespace}/sa/{waypoint.service_account}"
        out.append(ztunnel.implicit_waypoint_policy(waypoint.namespace, waypoint.name, [identity]))
    return out


def ztunnel_filters(policies: Sequence[Manifest], mesh: MeshConfig, destination_ip: str,
                    release: Release | None = None, waypoint: Waypoint | None = None) -> list[Json]:
    """HTTP RBAC filters (DENY, ALLOW) for the ztunnel stand-in's HBONE listener on :15008.

    Principals, namespaces and service accounts come from the mTLS peer certificate (`authenticated`),
    source IPs are `direct_remote_ip`; destination ports and IPs are matched on the CONNECT
    `:authority` (`<ip>:<port>`, the scenario port, not remapped), since the local port is 15008.
    """
    return ztunnel.hbone_filters(ztunnel_authorizations(policies, mesh, release, waypoint), destination_ip)


def ztunnel_peer_authentication(policies: Sequence[Manifest], workload: Workload,
                                mesh: MeshConfig) -> list[ztunnel.Authorization]:
    """The DENYs istiod sends `workload`'s ztunnel for PeerAuthentication (`policies`: every policy in force,
    unselected: istiod merges namespace and root policies it finds itself). See ztunnel.py."""
    return ztunnel.peer_authentication_policies(policies, workload.namespace, workload.labels, mesh.root_namespace)


def ztunnel_plaintext_filters(
    policies: Sequence[Manifest], mesh: MeshConfig, destination_ip: str, port: int, release: Release | None = None,
    peer_authentication: Sequence[ztunnel.Authorization] = (), waypoint: Waypoint | None = None,
) -> list[Json]:
    """Network RBAC filters for plaintext connections at an ambient workload's inbound passthrough.

    The same translated policies, with no identity: positive identity matchers never match, their
    `not` forms always do; the destination (`destination_ip`, scenario `port`) is known statically.
    `peer_authentication` (`ztunnel_peer_authentication`) are the PeerAuthentication DENYs, after the
    AuthorizationPolicy ones (the order ztunnel walks them).
    """
    return ztunnel.plaintext_filters(ztunnel_authorizations(policies, mesh, release, waypoint), destination_ip, port,
                                     peer_authentication)


# ---------------------------------------------------------------------------------------------------
# What the local mesh cannot emulate at a release: refused, never approximated.


def _unquoted_values(policy: Manifest, release: Release) -> Iterator[tuple[str, str, str]]:
    """(field, value, fix) for every identity value `release`'s istiod puts into an Envoy regex unquoted
    and that may not be a valid RE2 (`release.unquoted_hazard`)."""
    fix_59992 = "namespaces and *suffix principals quoted from 1.28.7 / 1.29.3 / 1.30.0, istio/istio#59992"
    fix_59700 = "serviceAccounts quoted from 1.27.9 / 1.28.6 / 1.29.2, istio/istio#59700"
    for rule in policy.spec.get("rules") or []:
        if not isinstance(rule, Mapping):
            continue
        found: list[tuple[str, list[str]]] = []
        for entry in rule.get("from") or []:
            source = entry.get("source") if isinstance(entry, Mapping) else None
            if isinstance(source, Mapping):
                found += [(k, strings(source.get(k))) for k in
                          ("namespaces", "notNamespaces", "principals", "notPrincipals",
                           "serviceAccounts", "notServiceAccounts")]
        for when in rule.get("when") or []:
            if isinstance(when, Mapping):
                key = str(when.get("key", ""))
                found += [(key, strings(when.get("values"))), (key, strings(when.get("notValues")))]
        for key, values in found:
            for value in values:
                if key in ("namespaces", "notNamespaces", "source.namespace") and not release.quotes_namespaces:
                    if unquoted_hazard(value.replace("*", "")):
                        yield key, value, fix_59992
                elif key in ("principals", "notPrincipals", "source.principal") and not release.quotes_namespaces:
                    if value.startswith("*") and value != "*" and unquoted_hazard(value[1:]):
                        yield key, value, fix_59992
                elif (key in ("serviceAccounts", "notServiceAccounts", "source.serviceAccount")
                      and release.service_accounts and not release.quotes_service_accounts
                      and unquoted_hazard(value)):
                    yield key, value, fix_59700


def unemulated(policies: Sequence[Manifest], mode: Mode, release: Release) -> str | None:
    """Why the local mesh refuses to run these policies in `mode` at `release`, or None.

    Before istio/istio#59992 and #59700 istiod put identity values into Envoy regexes unquoted. A `.`
    is emulated exactly (real Envoy matches the same unquoted regex), but a value with another regex
    metacharacter may be an invalid RE2: Envoy then rejects the listener and an Istio proxy keeps its
    previous one, so earlier policies stay in force. The local mesh does not emulate that, so it refuses
    the scenario at such a release, in the modes where Envoy RBAC carries those regexes (sidecar; a
    waypoint's targetRefs policies). ztunnel compares strings, never regexes, so ambient mode without a
    waypoint is unaffected.

    A RequestAuthentication the proxies apply (sidecar mode; targetRefs ones in waypoint mode) must hold its
    keys inline (`authn.unemulated_rule`): istiod would fetch a jwksUri's keys, the local mesh fetches nothing.
    """
    if mode == "ambient":
        return None  # ztunnel applies no RequestAuthentication and compares identities as strings
    for policy in policies:
        if policy.kind == authn.REQUEST_AUTHENTICATION and (mode == "sidecar" or target_refs(policy.spec)):
            reason = authn.unemulated_rule(policy)
            if reason:
                return reason
    for policy in policies:
        if policy.kind != AUTHORIZATION_POLICY:
            continue
        if mode == "waypoint" and not target_refs(policy.spec):
            continue  # selector / namespace policies go to ztunnel in waypoint mode
        for key, value, fix in _unquoted_values(policy, release):
            return (f"{release} puts {key} value {value!r} of AuthorizationPolicy {policy.ref} into an Envoy "
                    f"regex unquoted ({fix}); it may be a regex Envoy rejects (Istio then keeps the proxy's "
                    "previous listener), which the local mesh does not emulate")
    return None
