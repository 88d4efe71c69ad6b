"""ztunnel's view of AuthorizationPolicies, and Envoy RBAC that enforces exactly that view.

Why this exists: in ambient mode the local mesh has no ztunnel, only Envoy processes standing in for
it. ztunnel does not enforce what a policy says but what istiod sends it, and that differs from the
sidecar's view (ALLOW rules with HTTP attributes vanish, DENY rules lose them and may become no-ops,
no trust-domain rewriting, dry-run policies are not sent). So this module is two explicit steps:

1. `convert_authorization_policy`: a port of istiod's ambient translation
   (`istio/istio@1.30.3:pilot/pkg/serviceregistry/ambient/authorization.go`, convertAuthorizationPolicy
   and handleRule) into ztunnel-like `Authorization` objects (groups → clauses → matches, the
   workload-API proto `istio.security.Authorization`). `Authorization.to_dict()` renders the proto3
   JSON istiod's golden files hold, so this step is checked on its own against them.
2. `hbone_filters` / `plaintext_filters`: Envoy RBAC whose decisions equal ztunnel's evaluation of
   those objects (`istio/ztunnel@1.30.3:src/rbac.rs`, Authorization::matches; `src/state.rs`,
   assert_rbac: any matching DENY denies, ALLOW policies present and none matching denies).

What changed between releases is read from a `Release` (release.py): before 1.25.2 istiod sent dry-run
policies to ztunnel as ordinary policies, which ztunnel enforced (istio/istio#55414).

Like `rbac.py`, this is independent of the verdict engine and imports nothing from it. A direct
evaluator of the same objects (rbac.rs line by line), to test the Envoy form against, lives with the
tests (tests/mesh/rbac_rs.py): nothing in the mesh uses it.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from conformance.mesh.local.rbac import (
    HTTP_RBAC_FILTER,
    HTTP_RBAC_TYPE,
    NETWORK_RBAC_FILTER,
    NETWORK_RBAC_TYPE,
    RBAC_TCP_FILTER_STAT_PREFIX,
    RULES_STAT_PREFIX,
    SPIFFE_PREFIX,
    Json,
    is_dry_run,
    policy_action,
    policy_name,
    quote_meta,
    strings,
    target_refs,
)
from conformance.mesh.local.release import Release
from conformance.model import Manifest

Scope = Literal["GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"]
Action = Literal["ALLOW", "DENY"]

# authorization.go l4WhenAttributes: the only `when` keys ztunnel can evaluate.
L4_WHEN_ATTRIBUTES = frozenset({
    "source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port",
})

# authorization.go: status messages (reason UnsupportedValue).
HTTP_RULE_FMT = ("ztunnel does not support HTTP attributes (found: {}). "
                 "In ambient mode you must use a waypoint proxy to enforce HTTP rules. {}")
HTTP_DENY_RULE_BOILERPLATE = ("DENY policy with HTTP attributes is enforced without the HTTP rules. "
                              "This will be more restrictive than requested.")
HTTP_ALLOW_RULE_BOILERPLATE = ("Within an ALLOW policy, rules matching HTTP attributes are omitted. "
                               "This will be more restrictive than requested.")


# ---------------------------------------------------------------------------------------------------
# The workload-API model (pkg/workloadapi/security/authorization.proto; ztunnel src/rbac.rs).


@dataclass(frozen=True)
class StringMatch:
    """`istio.security.StringMatch`: exact / prefix / suffix / presence."""

    kind: Literal["exact", "prefix", "suffix", "presence"]
    value: str = ""

    def matches(self, check: str) -> bool:
        """rbac.rs StringMatch::matches (presence: non-empty)."""
        if self.kind == "prefix":
            return check.startswith(self.value)
        if self.kind == "suffix":
            return check.endswith(self.value)
        if self.kind == "exact":
            return check == self.value
        return check != ""

    def to_dict(self) -> Json:
        return {"presence": {}} if self.kind == "presence" else {self.kind: self.value}


@dataclass(frozen=True)
class ServiceAccountMatch:
    """`istio.security.ServiceAccountMatch`: namespace and service account, compared for equality."""

    namespace: str
    service_account: str

    def to_dict(self) -> Json:
        out: Json = {}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.service_account:
            out["serviceAccount"] = self.service_account
        return out


@dataclass(frozen=True)
class Address:
    """`istio.security.Address`: an address as written (not masked) and a prefix length."""

    address: str
    length: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """How ztunnel reads it: `IpNet::new(addr, len)`, whose `contains` masks."""
        return ipaddress.ip_network(f"{self.address}/{self.length}", strict=False)

    def to_dict(self) -> Json:
        packed = ipaddress.ip_address(self.address).packed
        out: Json = {"address": base64.b64encode(packed).decode()}
        if self.length:
            out["length"] = self.length
        return out


@dataclass(frozen=True)
class Match:
    """`istio.security.Match`: types are ANDed, values of one type ORed, `not_*` must not match."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[Address, ...] = ()
    not_source_ips: tuple[Address, ...] = ()
    destination_ips: tuple[Address, ...] = ()
    not_destination_ips: tuple[Address, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def is_empty(self) -> bool:
        """rbac.rs RbacMatch::is_empty: ztunnel skips such a match (it never matches)."""
        return not any(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> Json:
        out: Json = {}
        for f in fields(self):
            values = getattr(self, f.name)
            if values:
                key = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), f.name)
                out[key] = [v if isinstance(v, int) else v.to_dict() for v in values]
        return out


@dataclass(frozen=True)
class Clause:
    """`istio.security.Rules` (a from, to or when clause): matches are ORed; none at all matches."""

    matches: tuple[Match, ...] = ()

    def to_dict(self) -> Json:
        return {"matches": [m.to_dict() for m in self.matches]} if self.matches else {}


@dataclass(frozen=True)
class Group:
    """`istio.security.Group` (one policy rule): its clauses are ANDed; no clause at all matches.

    `rule_index` is ours, not in the proto: which rule of the policy it came from, to name it the way
    the sidecar's RBAC does (`ns[..]-policy[..]-rule[i]`).
    """

    rules: tuple[Clause, ...] = ()
    rule_index: int = field(default=0, compare=False)

    def to_dict(self) -> Json:
        return {"rules": [c.to_dict() for c in self.rules]} if self.rules else {}


@dataclass(frozen=True)
class Authorization:
    """`istio.security.Authorization` as istiod sends it to ztunnel: groups are ORed, none never matches."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    groups: tuple[Group, ...] = ()
    dry_run: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> Json:
        """proto3 JSON (camelCase; defaults GLOBAL, ALLOW, false, empty omitted), as in istiod's testdata."""
        out: Json = {}
        if self.name:
            out["name"] = self.name
        if self.namespace:
            out["namespace"] = self.namespace
        if self.scope != "GLOBAL":
            out["scope"] = self.scope
        if self.action != "ALLOW":
            out["action"] = self.action
        if self.groups:
            out["groups"] = [g.to_dict() for g in self.groups]
        if self.dry_run:
            out["dryRun"] = True
        return out


# ---------------------------------------------------------------------------------------------------
# Step 1: istiod's translation (pilot/pkg/serviceregistry/ambient/authorization.go at 1.30.3).


def string_to_match(values: Sequence[str]) -> tuple[StringMatch, ...]:
    """authorization.go stringToMatch."""
    out: list[StringMatch] = []
    for v in values:
        if v == "*":
            out.append(StringMatch("presence"))
        elif v.startswith("*"):
            out.append(StringMatch("suffix", v[1:]))
        elif v.endswith("*"):
            out.append(StringMatch("prefix", v[:-1]))
        else:
            out.append(StringMatch("exact", v))
    return tuple(out)


def string_to_service_account_match(values: Sequence[str], rule_namespace: str) -> tuple[ServiceAccountMatch, ...]:
    """authorization.go stringToServiceAccountMatch: a bare name is in the policy's namespace."""
    out: list[ServiceAccountMatch] = []
    for v in values:
        ns, sep, sa = v.partition("/")
        out.append(ServiceAccountMatch(ns, sa) if sep else ServiceAccountMatch(rule_namespace, v))
    return tuple(out)


def string_to_port(values: Sequence[str]) -> tuple[int, ...]:
    """authorization.go stringToPort: unparsable ports are silently dropped."""
    return tuple(int(v) for v in values if re.fullmatch(r"[0-9]+", v) and int(v) <= 65535)


def string_to_ip(values: Sequence[str]) -> tuple[Address, ...]:
    """authorization.go stringToIP: an address or CIDR as written; unparsable ones silently dropped."""
    out: list[Address] = []
    for v in values:
        if not v:
            continue
        try:
            if "/" in v:
                iface = ipaddress.ip_interface(v)
                out.append(Address(str(iface.ip), iface.network.prefixlen))
            else:
                ip = ipaddress.ip_address(v)
                out.append(Address(str(ip), ip.max_prefixlen))
        except ValueError:
            continue
    return tuple(out)


def _http_operations(op: Mapping[str, Any]) -> list[str]:
    """authorization.go httpOperations."""
    return [k for k in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths") if op.get(k)]


def _http_sources(src: Mapping[str, Any]) -> list[str]:
    """authorization.go httpSources (`trustDomains` is neither translated nor flagged at 1.30.3)."""
    keys = ("remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals")
    return [k for k in keys if src.get(k)]


def _section(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def handle_rule(action: Action, rule: Mapping[str, Any], rule_namespace: str,
                release: Release | None = None) -> tuple[list[Clause] | None, list[str]]:
    """authorization.go handleRule: (clauses, HTTP attributes found); `None` clauses = rule dropped.

    One `to` clause (ports only), one `from` clause (L4 source fields only), one clause per `when`
    (a Match holding only an L4 key's values, empty otherwise). An ALLOW rule with any HTTP attribute
    is dropped whole; a DENY rule keeps its L4 remains, empty Matches included. `serviceAccounts` are
    translated from 1.25 (`release.service_accounts`: before, the API has no such field).
    """
    release = release or Release.newest()
    l7_found = False
    http_match: list[str] = []
    to_matches: list[Match] = []
    for entry in rule.get("to") or []:
        op = _section(_section(entry).get("operation"))
        problems = _http_operations(op)
        if problems:
            l7_found = True
            http_match.extend(problems)
        to_matches.append(Match(
            destination_ports=string_to_port(strings(op.get("ports"))),
            not_destination_ports=string_to_port(strings(op.get("notPorts"))),
        ))
    from_matches: list[Match] = []
    for entry in rule.get("from") or []:
        src = _section(_section(entry).get("source"))
        problems = _http_sources(src)
        if problems:
            l7_found = True
            http_match.extend(problems)
        from_matches.append(Match(
            source_ips=string_to_ip(strings(src.get("ipBlocks"))),
            not_source_ips=string_to_ip(strings(src.get("notIpBlocks"))),
            namespaces=string_to_match(strings(src.get("namespaces"))),
            not_namespaces=string_to_match(strings(src.get("notNamespaces"))),
            service_accounts=string_to_service_account_match(
                strings(src.get("serviceAccounts")) if release.service_accounts else [], rule_namespace),
            not_service_accounts=string_to_service_account_match(
                strings(src.get("notServiceAccounts")) if release.service_accounts else [], rule_namespace),
            principals=string_to_match(strings(src.get("principals"))),
            not_principals=string_to_match(strings(src.get("notPrincipals"))),
        ))
    clauses: list[Clause] = []
    if to_matches:
        clauses.append(Clause(tuple(to_matches)))
    if from_matches:
        clauses.append(Clause(tuple(from_matches)))
    for when in rule.get("when") or []:
        when = _section(when)
        key = str(when.get("key", ""))
        if key not in L4_WHEN_ATTRIBUTES:
            l7_found = True
            http_match.append(key)
        values, not_values = strings(when.get("values")), strings(when.get("notValues"))

        def pick(k: str, negate: bool, key: str = key, values: list[str] = values,
                 not_values: list[str] = not_values) -> list[str]:
            """authorization.go whenMatch."""
            if key != k:
                return []
            return not_values if negate else values

        clauses.append(Clause((Match(
            namespaces=string_to_match(pick("source.namespace", False)),
            principals=string_to_match(pick("source.principal", False)),
            source_ips=string_to_ip(pick("source.ip", False)),
            destination_ports=string_to_port(pick("destination.port", False)),
            destination_ips=string_to_ip(pick("destination.ip", False)),
            not_namespaces=string_to_match(pick("source.namespace", True)),
            not_principals=string_to_match(pick("source.principal", True)),
            not_source_ips=string_to_ip(pick("source.ip", True)),
            not_destination_ports=string_to_port(pick("destination.port", True)),
            not_destination_ips=string_to_ip(pick("destination.ip", True)),
        ),)))
    if action == "ALLOW" and l7_found:
        return None, http_match  # "L7 policies never match for ALLOW"
    return clauses, http_match


def convert_authorization_policy(
    policy: Manifest, root_namespace: str, *, dry_run_enabled: bool = False, release: Release | None = None,
) -> tuple[Authorization | None, str | None]:
    """authorization.go convertAuthorizationPolicy: (what ztunnel receives or None, status message).

    Not sent: dry-run policies (unless AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY, default off:
    `dry_run_enabled`), `targetRef(s)` policies, AUDIT and CUSTOM. Scope: no selector → NAMESPACE,
    or GLOBAL in the root namespace; a selector → WORKLOAD_SELECTOR. No trust-domain handling
    ("TODO: TDA"): principals are compared literally.

    Before 1.25.2 (`release.ztunnel_receives_dry_run`, istio/istio#55414) the annotation was not read
    at all (kube/controller/ambient/policies.go and authorization.go at 1.25.1 never mention it): a
    dry-run policy is translated like any other, without `dryRun`, and ztunnel enforces it.
    """
    release = release or Release.newest()
    spec = policy.spec
    # Not read before 1.25.2: an ordinary policy (the proto had no dry-run field before 1.29).
    dry_run = False if release.ztunnel_receives_dry_run else is_dry_run(policy)
    if dry_run and not dry_run_enabled:
        return None, (f'found policy "{policy.namespace}/{policy.name}" using dry-run annotation, but support '
                      "for ambient dry-run authorizationPolicies isn't enabled")
    if target_refs(spec):
        return None, None  # "TargetRef is not intended for ztunnel"
    scope: Scope = "WORKLOAD_SELECTOR"
    if spec.get("selector") is None:
        scope = "GLOBAL" if policy.namespace == root_namespace else "NAMESPACE"
    raw_action = policy_action(policy)
    if raw_action not in ("ALLOW", "DENY"):
        return None, f"ztunnel does not support the {raw_action} action"
    action: Action = "DENY" if raw_action == "DENY" else "ALLOW"
    boilerplate = HTTP_DENY_RULE_BOILERPLATE if action == "DENY" else HTTP_ALLOW_RULE_BOILERPLATE
    groups: list[Group] = []
    with_l7: set[str] = set()
    for i, rule in enumerate(spec.get("rules") or []):
        clauses, found = handle_rule(action, _section(rule), policy.namespace, release)
        if clauses is not None:
            groups.append(Group(tuple(clauses), rule_index=i))
        with_l7.update(found)
    authz = Authorization(policy.name, policy.namespace, scope, action, tuple(groups), dry_run)
    if with_l7:
        return authz, HTTP_RULE_FMT.format(", ".join(sorted(with_l7)), boilerplate)
    return authz, None


def translate(policies: Sequence[Manifest], root_namespace: str, release: Release | None = None, *,
              dry_run_enabled: bool = False) -> list[Authorization]:
    """What istiod at `release` (default: the newest) sends ztunnel for these (already selected) policies,
    in order. `dry_run_enabled`: istiod's AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (pilotenv.py)."""
    out: list[Authorization] = []
    for policy in policies:
        if policy.kind != "AuthorizationPolicy":
            continue
        authz, _ = convert_authorization_policy(policy, root_namespace, release=release,
                                                dry_run_enabled=dry_run_enabled)
        if authz is not None:
            out.append(authz)
    return out


def implicit_waypoint_policy(waypoint_namespace: str, waypoint_name: str, identities: Sequence[str]) -> Authorization:
    """PILOT_AUTO_ALLOW_WAYPOINT_POLICY: istiod's synthetic ALLOW for a waypoint (serviceregistry/ambient/policies.go
    @1.30.3 implicitWaypointPolicyName l.299-305, implicitWaypointPolicy l.307-341): named
    `istio_allow_waypoint_<ns>_<name>` ("use '_' character since those are illegal in k8s names"), in the
    waypoint's namespace, WORKLOAD_SELECTOR scope (referred to by name from each workload that uses the waypoint,
    workloads.go implicitWaypointPolicies), one group with one Match of exact principals: each waypoint service
    account's SPIFFE identity without `spiffe://`."""
    principals = tuple(StringMatch("exact", i.removeprefix(SPIFFE_PREFIX)) for i in identities)
    return Authorization(f"istio_allow_waypoint_{waypoint_namespace}_{waypoint_name}", waypoint_namespace,
                         "WORKLOAD_SELECTOR", "ALLOW", (Group((Clause((Match(principals=principals),)),)),))


# ---------------------------------------------------------------------------------------------------
# Step 1b: PeerAuthentication, as istiod turns it into ztunnel DENYs (ambient authorization.go at 1.30.3,
# convertedSelectorPeerAuthentications and convertPeerAuthentication; policies.go PeerAuthDerivedPolicies;
# workloads.go buildWorkloadPolicies). ztunnel has no mTLS modes: a workload is referred to these DENYs by
# name, and they match only connections without a peer identity.

STATIC_STRICT_NAME = "istio_converted_static_strict"  # authorization.go staticStrictPolicyName
CONVERTED_PA_PREFIX = "converted_peer_authentication_"  # model/authentication.go GetAmbientPolicyConfigName
_NO_PRINCIPAL = Match(not_principals=(StringMatch("presence"),))


def _pa_mode(section: Any) -> str:
    """`PeerAuthentication_MutualTLS.GetMode()`: a missing section or mode is UNSET."""
    return str(section.get("mode") or "UNSET") if isinstance(section, Mapping) else "UNSET"


def _pa_ports(policy: Manifest) -> list[tuple[int, str]]:
    """portLevelMtls as (port, mode), ascending ports (maps.SeqStable); the keys are uint32 workload ports."""
    raw = policy.spec.get("portLevelMtls")
    if not isinstance(raw, Mapping):
        return []
    return sorted((int(k), _pa_mode(v)) for k, v in raw.items())


def _pa_labels(policy: Manifest) -> Mapping[str, Any] | None:
    """The selector's matchLabels: None without a `selector` (GetSelector() == nil), {} with one but no labels."""
    selector = policy.spec.get("selector")
    if selector is None:
        return None
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def static_strict_policy(root_namespace: str) -> Authorization:
    """policies.go DefaultPolicy: the DENY of every connection without a principal."""
    return Authorization(STATIC_STRICT_NAME, root_namespace, "WORKLOAD_SELECTOR", "DENY",
                         (Group((Clause((_NO_PRINCIPAL,)),)),))


def convert_peer_authentication(policy: Manifest, ns_policy: Manifest | None, root_policy: Manifest | None,
                                root_namespace: str) -> Authorization | None:
    """authorization.go convertPeerAuthentication, as written (its Go operator precedence included)."""
    if policy.namespace == root_namespace or policy.spec.get("selector") is None or not _pa_ports(policy):
        return None  # "it isn't a workload policy with port level mTLS"
    mode = _pa_mode(policy.spec.get("mtls"))
    ns_mode = _pa_mode(ns_policy.spec.get("mtls")) if ns_policy is not None else None
    root_mode = _pa_mode(root_policy.spec.get("mtls")) if root_policy is not None else None
    rules: list[Clause] = []
    groups: list[Group] = []
    if mode == "STRICT":
        rules.append(Clause((_NO_PRINCIPAL,)))
    found_non_strict = False
    for port, port_mode in _pa_ports(policy):
        if port_mode == "STRICT":
            parent_strict = (mode == "STRICT"
                             or (mode == "UNSET" and ns_mode == "STRICT")
                             or (ns_mode in (None, "UNSET") and root_mode == "STRICT"))
            if parent_strict:
                continue
            groups.append(Group((Clause((Match(not_principals=(StringMatch("presence"),),
                                               destination_ports=(port,)),)),)))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE"):
                continue
            if mode == "UNSET" and ((ns_mode is not None and ns_mode != "STRICT")
                                    or (ns_mode is None and root_mode is not None and root_mode != "STRICT")
                                    or (ns_mode is None and root_mode is None)):
                continue
            found_non_strict = True
            rules.append(Clause((Match(not_destination_ports=(port,)),)))
    if mode == "STRICT" and not found_non_strict:
        return None
    if not rules and not groups:
        return None
    merge = ((root_mode == "STRICT" and ns_mode in (None, "UNSET", "STRICT")) or ns_mode == "STRICT")
    if merge and found_non_strict:
        rules.append(Clause((_NO_PRINCIPAL,)))
    if rules:
        groups.append(Group(tuple(rules)))
    numbered = tuple(Group(g.rules, rule_index=i) for i, g in enumerate(groups))
    return Authorization(CONVERTED_PA_PREFIX + policy.name, policy.namespace, "WORKLOAD_SELECTOR", "DENY", numbered)


def _oldest(policies: Sequence[Manifest]) -> Manifest | None:
    """getOldestPeerAuthn; input order stands for creation order."""
    return policies[0] if policies else None


def peer_authentication_policies(policies: Sequence[Manifest], namespace: str, labels: Mapping[str, str],
                                 root_namespace: str) -> list[Authorization]:
    """The PeerAuthentication DENYs a workload's ztunnel applies, in the order of its policy list.

    workloads.go fetchPeerAuthentications (root-namespace policies without a selector; the workload's
    namespace's whose selector, if any, is a subset of its labels), convertedSelectorPeerAuthentications
    (which keys the workload refers to: the static strict policy when the effective mode is STRICT; the
    converted workload policy when its port modes differ from it), and policies.go PeerAuthDerivedPolicies
    (the converted policy, merged with the oldest namespace and root policies that have no selector at all).
    A key istiod builds no policy for is skipped by ztunnel (state.rs assert_rbac: "skipping unknown policy").
    """
    peer = [p for p in policies if p.kind == "PeerAuthentication"]

    def fetched(p: Manifest) -> bool:
        if p.namespace == root_namespace and p.spec.get("selector") is None:
            return True
        if p.namespace != namespace:
            return False
        selector = _pa_labels(p)
        return selector is None or all(k in labels and str(labels[k]) == str(v) for k, v in selector.items())

    mesh_cfg = ns_cfg = workload_cfg = None
    for p in filter(fetched, peer):
        if not _pa_labels(p):
            if p.namespace == root_namespace:
                mesh_cfg = mesh_cfg or p
            else:
                ns_cfg = ns_cfg or p
        elif p.namespace != root_namespace:
            workload_cfg = workload_cfg or p
    strict = mesh_cfg is not None and _pa_mode(mesh_cfg.spec.get("mtls")) == "STRICT"
    if ns_cfg is not None and _pa_mode(ns_cfg.spec.get("mtls")) != "UNSET":
        strict = _pa_mode(ns_cfg.spec.get("mtls")) == "STRICT"
    refer_workload = False
    if workload_cfg is not None:
        mode = _pa_mode(workload_cfg.spec.get("mtls"))
        if mode == "STRICT":
            strict = True
        elif mode in ("PERMISSIVE", "DISABLE"):
            strict = False
        if isinstance(workload_cfg.spec.get("portLevelMtls"), Mapping):
            port_modes = [m for _, m in _pa_ports(workload_cfg)]
            if mode == "STRICT":
                if any(m in ("PERMISSIVE", "DISABLE") for m in port_modes):
                    refer_workload, strict = True, False
            elif mode in ("PERMISSIVE", "DISABLE"):
                refer_workload = "STRICT" in port_modes
            elif strict:
                if "PERMISSIVE" in port_modes:  # DISABLE is not looked for here (authorization.go@1.30.3)
                    refer_workload, strict = True, False
            else:
                refer_workload = "STRICT" in port_modes
    out: list[Authorization] = []
    if strict:
        out.append(static_strict_policy(root_namespace))
    if refer_workload and workload_cfg is not None:
        ns_nil = _oldest([p for p in peer if p.namespace == workload_cfg.namespace and p.spec.get("selector") is None])
        root_nil = _oldest([p for p in peer if p.namespace == root_namespace and p.spec.get("selector") is None])
        converted = convert_peer_authentication(workload_cfg, ns_nil, root_nil, root_namespace)
        if converted is not None:
            out.append(converted)
    return sorted(out, key=lambda a: a.ref)  # effectivePeerAuthenticationKeys: sets.SortedList


# ---------------------------------------------------------------------------------------------------
# Step 2: Envoy RBAC principals that evaluate like rbac.rs Authorization::matches.

_TRUE: Json = {"any": True}
_FALSE: Json = {"not_id": {"any": True}}


def _and(ids: Sequence[Json]) -> Json:
    if any(i == _FALSE for i in ids):
        return dict(_FALSE)
    rest = [i for i in ids if i != _TRUE]
    if not rest:
        return dict(_TRUE)
    return rest[0] if len(rest) == 1 else {"and_ids": {"ids": rest}}


def _or(ids: Sequence[Json]) -> Json:
    if any(i == _TRUE for i in ids):
        return dict(_TRUE)
    rest = [i for i in ids if i != _FALSE]
    if not rest:
        return dict(_FALSE)
    return rest[0] if len(rest) == 1 else {"or_ids": {"ids": rest}}


def _not(x: Json) -> Json:
    if x == _TRUE:
        return dict(_FALSE)
    if x == _FALSE:
        return dict(_TRUE)
    return {"not_id": x}


def _const(value: bool) -> Json:
    return dict(_TRUE) if value else dict(_FALSE)


def _authority_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True)
class _Connection:
    """What the emulating Envoy can know about the connection, per rbac.rs Connection.

    HBONE (`identity=True`, `port=None`): the peer identity is the mTLS peer certificate
    (`authenticated`), the destination port is the CONNECT `:authority`'s port. Plaintext inbound
    passthrough (`identity=False`): no identity; the destination port is known statically.
    """

    destination_ip: str
    identity: bool
    port: int | None = None

    def principal_check(self, m: StringMatch) -> Json:
        """rbac.rs matches_principal: strip `spiffe://` (absent: no match), then the string match."""
        if not self.identity:
            return dict(_FALSE)
        if m.kind == "exact":
            sm: Json = {"exact": SPIFFE_PREFIX + m.value}
        elif m.kind == "prefix":
            sm = {"prefix": SPIFFE_PREFIX + m.value}
        elif m.kind == "suffix":
            sm = {"safe_regex": {"regex": "spiffe://.*" + quote_meta(m.value)}}
        else:
            sm = {"safe_regex": {"regex": "spiffe://.+"}}
        return {"authenticated": {"principal_name": sm}}

    def namespace_check(self, m: StringMatch) -> Json:
        """rbac.rs: the namespace parsed from `spiffe://<td>/ns/<ns>/sa/<sa>` (Identity::from_str)."""
        if not self.identity:
            return dict(_FALSE)
        ns = {"exact": quote_meta(m.value), "prefix": quote_meta(m.value) + "[^/]*",
              "suffix": "[^/]*" + quote_meta(m.value), "presence": "[^/]+"}[m.kind]
        regex = f"spiffe://[^/]*/ns/{ns}/sa/[^/]*"
        return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}

    def service_account_check(self, m: ServiceAccountMatch) -> Json:
        """rbac.rs ServiceAccountMatch::matches: namespace and service account equal."""
        if not self.identity:
            return dict(_FALSE)
        regex = f"spiffe://[^/]*/ns/{quote_meta(m.namespace)}/sa/{quote_meta(m.service_account)}"
        return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}

    def source_ip_check(self, a: Address) -> Json:
        """rbac.rs: `conn.src.ip()`, the peer of the inbound connection → `direct_remote_ip`."""
        return {"direct_remote_ip": {"address_prefix": a.address, "prefix_len": a.length}}

    def destination_ip_check(self, a: Address) -> Json:
        """rbac.rs: `conn.dst.ip()`, the workload's address, carried in the CONNECT `:authority`."""
        inside = ipaddress.ip_address(self.destination_ip) in a.network
        if not inside or not self.identity:
            return _const(inside)
        prefix = _authority_host(self.destination_ip) + ":"
        return {"header": {"name": ":authority", "string_match": {"prefix": prefix}}}

    def destination_port_check(self, port: int) -> Json:
        """rbac.rs: `conn.dst.port()`, the target port (never 15008): the `:authority`'s port."""
        if self.port is not None:
            return _const(port == self.port)
        return {"header": {"name": ":authority", "string_match": {"suffix": f":{port}"}}}

    def match(self, m: Match) -> Json:
        """rbac.rs matches_internal for every type: any positive (if any) and no negative."""
        checks: list[Json] = []
        pairs: list[tuple[Sequence[Any], Sequence[Any], Any]] = [
            (m.destination_ips, m.not_destination_ips, self.destination_ip_check),
            (m.source_ips, m.not_source_ips, self.source_ip_check),
            (m.destination_ports, m.not_destination_ports, self.destination_port_check),
            (m.service_accounts, m.not_service_accounts, self.service_account_check),
            (m.principals, m.not_principals, self.principal_check),
            (m.namespaces, m.not_namespaces, self.namespace_check),
        ]
        for positive, negative, predicate in pairs:
            if positive:
                checks.append(_or([predicate(v) for v in positive]))
            if negative:
                checks.append(_not(_or([predicate(v) for v in negative])))
        return _and(checks)

    def group(self, g: Group) -> Json:
        """rbac.rs: a rule (group) is an AND of clauses; a clause ORs its non-empty matches, an empty
        match is skipped, a clause without matches matches."""
        clauses: list[Json] = []
        for clause in g.rules:
            if not clause.matches:
                continue
            clauses.append(_or([self.match(m) for m in clause.matches if not m.is_empty()]))
        return _and(clauses)


def _policies(authorizations: Sequence[Authorization], conn: _Connection) -> Json:
    return {
        policy_name(a.namespace, a.name, g.rule_index): {"permissions": [{"any": True}],
                                                         "principals": [conn.group(g)]}
        for a in authorizations
        for g in a.groups
    }


def _rbac(action: Action, policies: Json) -> Json:
    out: Json = {} if action == "ALLOW" else {"action": action}
    if policies:
        out["policies"] = policies
    return out


def _by_action(authorizations: Sequence[Authorization]) -> list[tuple[Action, list[Authorization]]]:
    """state.rs assert_rbac: DENY first; an ALLOW layer exists as soon as one ALLOW policy applies,
    even one without groups (which then allows nothing). Dry-run policies are never enforced."""
    enforced = [a for a in authorizations if not a.dry_run]
    out: list[tuple[Action, list[Authorization]]] = []
    for action in ("DENY", "ALLOW"):
        selected = [a for a in enforced if a.action == action]
        if selected:
            out.append((action, selected))
    return out


def hbone_filters(authorizations: Sequence[Authorization], destination_ip: str) -> list[Json]:
    """HTTP RBAC filters for the HBONE (HTTP/2 CONNECT) terminating listener on :15008."""
    conn = _Connection(destination_ip, identity=True)
    return [
        {"name": HTTP_RBAC_FILTER, "typed_config": {
            "@type": HTTP_RBAC_TYPE,
            "rules": _rbac(action, _policies(selected, conn)),
            "rules_stat_prefix": RULES_STAT_PREFIX[action],
        }}
        for action, selected in _by_action(authorizations)
    ]


def plaintext_filters(authorizations: Sequence[Authorization], destination_ip: str, port: int,
                      peer_authentication: Sequence[Authorization] = ()) -> list[Json]:
    """Network RBAC filters for plaintext connections at ztunnel's inbound passthrough (no identity).

    `peer_authentication` (`peer_authentication_policies`) goes in a DENY filter of its own after the
    AuthorizationPolicy DENYs: state.rs assert_rbac walks the namespace's policies, the global ones, then the
    workload's list, where the PeerAuthentication keys come after the AuthorizationPolicies, and names the
    first DENY that matches (one Envoy filter would name the smallest policy id instead).
    """
    conn = _Connection(destination_ip, identity=False, port=port)

    def network_rbac(action: Action, selected: Sequence[Authorization]) -> Json:
        return {"name": NETWORK_RBAC_FILTER, "typed_config": {
            "@type": NETWORK_RBAC_TYPE,
            "rules": _rbac(action, _policies(selected, conn)),
            "stat_prefix": RBAC_TCP_FILTER_STAT_PREFIX,
        }}

    layers = _by_action(authorizations)
    out = [network_rbac(action, selected) for action, selected in layers if action == "DENY"]
    if peer_authentication:
        out.append(network_rbac("DENY", peer_authentication))
    return out + [network_rbac(action, selected) for action, selected in layers if action == "ALLOW"]
