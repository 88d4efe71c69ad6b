"""RequestAuthentication: which ones a proxy applies, and the JWT filter istiod builds from them.

A line-by-line port of istiod 1.30.3 (nothing here reads the verdict engine; an import-linter contract
keeps the two apart):

- selection: `pilot/pkg/model/authentication.go` getConfigsForWorkload for RequestAuthentication, i.e.
  the workload's and the root namespace (from 1.25 the waypoint's service's too) searched, and
  `policyattachment.go` ShouldAttachPolicy deciding, as for AuthorizationPolicies: a sidecar applies
  selector and namespace-wide ones, never targetRefs ones; a waypoint only targetRefs ones;
- the filter: `pilot/pkg/security/authn/policy_applier.go` newPolicyApplier (every applicable policy's
  jwtRules, sorted by issuer) and convertToEnvoyJwtConfig (one provider `origins-<i>` per rule, the
  `requires_any` tree with `allow_missing`, `payload_in_metadata: payload`, normalize_payload_in_metadata
  with buildSpaceDelimitedClaims, `clear_route_cache` on waypoints), emitted by
  `pilot/pkg/networking/plugin/authn/authentication.go` BuildHTTP (`b.proxy.Type != SidecarProxy`).

ztunnel has no JWT filter (nothing in istiod's ambient translation mentions RequestAuthentication): the
ambient role applies none. The inline JWKS is the rule's `jwks` as written (after the target filled
`${jwks:<issuer>}`); a rule with only a `jwksUri` would make istiod fetch keys, which the local mesh never
does: `unemulated` refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conformance.mesh.local.rbac import JWT_FILTER, JWT_PAYLOAD, Json, strings
from conformance.mesh.local.release import Release
from conformance.model import Manifest, MeshConfig, Waypoint, Workload
from conformance.names import GATEWAY_NAME_LABEL

REQUEST_AUTHENTICATION = "RequestAuthentication"
JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
DEFAULT_SPACE_DELIMITED = ("permission", "scope")  # buildSpaceDelimitedClaims defaultClaims
# Before 1.28 (no jwtRules[].spaceDelimitedClaims; policy_applier.go@1.27.0): the fixed list, in this order.
SPACE_DELIMITED_BEFORE_1_28 = ("scope", "permission")


def select_request_authentications(policies: Sequence[Manifest], workload: Workload,
                                   mesh: MeshConfig) -> list[Manifest]:
    """The RequestAuthentications a sidecar applies at `workload`, in input order (creation order).

    getConfigsForWorkload: the workload's and the root namespace; ShouldAttachPolicy for a non-gateway
    workload: targetRef(s) never, a selector when its matchLabels are a subset of the labels, none: all.
    """
    from conformance.mesh.local.authz import _should_attach  # one port of ShouldAttachPolicy

    namespaces = {workload.namespace, mesh.root_namespace}
    return [p for p in policies if p.kind == REQUEST_AUTHENTICATION and p.namespace in namespaces
            and _should_attach(p, workload_namespace=workload.namespace, labels=workload.labels,
                               is_waypoint=False, services=(), root_namespace=mesh.root_namespace)]


def select_waypoint_request_authentications(policies: Sequence[Manifest], waypoint: Waypoint, service: Workload,
                                            mesh: MeshConfig, release: Release | None = None) -> list[Manifest]:
    """The RequestAuthentications a waypoint applies to traffic for `service` (authn.NewBuilderForService).

    getConfigsForWorkload with the waypoint's namespace and the root namespace, plus (from 1.25,
    authentication.go@1.25.0) the service's; ShouldAttachPolicy with IsWaypoint: targetRefs only.
    """
    from conformance.mesh.local.authz import _should_attach

    release = release or Release.newest()
    namespaces = {waypoint.namespace, mesh.root_namespace}
    if release.waypoint_attachment == "1.25":
        namespaces.add(service.namespace)
    return [p for p in policies if p.kind == REQUEST_AUTHENTICATION and p.namespace in namespaces
            and _should_attach(p, workload_namespace=waypoint.namespace, labels={GATEWAY_NAME_LABEL: waypoint.name},
                               is_waypoint=True, services=((service.name, service.namespace),),
                               root_namespace=mesh.root_namespace, release=release)]


def jwt_rules(policies: Sequence[Manifest]) -> list[Mapping[str, Any]]:
    """newPolicyApplier: every policy's jwtRules in order, then sorted by issuer (a stable sort: rules
    with the same issuer keep their order, as Go's pdqsort does for the few rules a proxy has)."""
    rules: list[Mapping[str, Any]] = []
    for policy in policies:
        for rule in policy.spec.get("jwtRules") or []:
            if isinstance(rule, Mapping):
                rules.append(rule)
    return sorted(rules, key=lambda r: str(r.get("issuer") or ""))


def _space_delimited(rule: Mapping[str, Any], release: Release) -> list[str]:
    """buildSpaceDelimitedClaims: the defaults, plus the rule's own, deduplicated and sorted (1.28+)."""
    if not release.space_delimited_claims:
        return list(SPACE_DELIMITED_BEFORE_1_28)
    extra = rule.get("spaceDelimitedClaims")
    if extra is None:
        return list(DEFAULT_SPACE_DELIMITED)
    return sorted({*strings(extra), *DEFAULT_SPACE_DELIMITED})


def _provider(rule: Mapping[str, Any], clear_route_cache: bool, release: Release) -> Json:
    """One JwtProvider, fields in convertToEnvoyJwtConfig's order, proto3-JSON (unset fields omitted)."""
    provider: Json = {}
    if rule.get("issuer"):
        provider["issuer"] = str(rule["issuer"])
    if rule.get("audiences"):
        provider["audiences"] = strings(rule["audiences"])
    if rule.get("forwardOriginalToken"):
        provider["forward"] = True
    if rule.get("outputPayloadToHeader"):
        provider["forward_payload_header"] = str(rule["outputPayloadToHeader"])
    provider["payload_in_metadata"] = JWT_PAYLOAD
    provider["normalize_payload_in_metadata"] = {"space_delimited_claims": _space_delimited(rule, release)}
    if clear_route_cache:
        provider["clear_route_cache"] = True
    claim_headers = [{"header_name": str(c.get("header", "")), "claim_name": str(c.get("claim", ""))}
                     for c in rule.get("outputClaimToHeaders") or [] if isinstance(c, Mapping)]
    if claim_headers:
        provider["claim_to_headers"] = claim_headers
    from_headers = []
    for location in rule.get("fromHeaders") or []:
        if isinstance(location, Mapping):
            header: Json = {"name": str(location.get("name", ""))}
            if location.get("prefix"):
                header["value_prefix"] = str(location["prefix"])
            from_headers.append(header)
    if from_headers:
        provider["from_headers"] = from_headers
    if rule.get("fromParams"):
        provider["from_params"] = strings(rule["fromParams"])
    if rule.get("fromCookies"):
        provider["from_cookies"] = strings(rule["fromCookies"])
    # BuildLocalJwks with the rule's inline jwks (istiod's default fetch mode, JwksFetchMode Istiod, inlines
    # too, after fetching a jwksUri itself: refused by `unemulated`, so `jwks` is always set here).
    provider["local_jwks"] = {"inline_string": str(rule.get("jwks") or "")}
    return provider


def _provider_name(i: int) -> str:
    return f"origins-{i}"


def jwt_authn_config(rules: Sequence[Mapping[str, Any]], clear_route_cache: bool,
                     release: Release | None = None) -> Json | None:
    """convertToEnvoyJwtConfig: the JwtAuthentication for `rules` (already sorted), None without rules.

    One provider: requires_any[origins-0, allow_missing]. Several: requires_any[origins-0, ..., origins-N-1,
    requires_all[requires_any[origins-i, allow_missing] for each i]]: a present token must be valid for the
    provider whose location it is in, a missing one passes, and the outer OR covers providers sharing a
    location (the inner AND then always fails for the other providers' tokens).
    """
    if not rules:
        return None
    release = release or Release.newest()
    providers: Json = {}
    inner_and: list[Json] = []
    outer_or: list[Json] = []
    for i, rule in enumerate(rules):
        name = _provider_name(i)
        providers[name] = _provider(rule, clear_route_cache, release)
        inner_and.append({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}})
        outer_or.append({"provider_name": name})
    if len(inner_and) == 1:
        requires = inner_and[0]
    else:
        requires = {"requires_any": {"requirements": [*outer_or, {"requires_all": {"requirements": inner_and}}]}}
    return {
        "@type": JWT_AUTHN_TYPE,
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": True,
    }


def jwt_filters(policies: Sequence[Manifest], *, waypoint: bool, release: Release | None = None) -> list[Json]:
    """authn Builder.BuildHTTP: the JWT filter for the selected RequestAuthentications, or nothing.

    `clear_route_cache` is `proxy.Type != SidecarProxy`: true at waypoints (and gateways), false at sidecars.
    (At 1.22-1.27 istiod built the same filter for proxies of its own release, SupportsEnvoyExtendedJwt, with
    the fixed space-delimited claims `scope`, `permission`.)
    """
    config = jwt_authn_config(jwt_rules(policies), clear_route_cache=waypoint, release=release)
    return [] if config is None else [{"name": JWT_FILTER, "typed_config": config}]


def unemulated_rule(policy: Manifest) -> str | None:
    """Why the local mesh will not build `policy`'s jwtRules, or None.

    A rule without inline `jwks` makes istiod fetch the keys from `jwksUri` (or the issuer's OpenID
    discovery) and inline what it got, or a public-only key when that fails: what a cluster would fetch is
    not the local mesh's to guess, and it fetches nothing.
    """
    for i, rule in enumerate(policy.spec.get("jwtRules") or []):
        if not isinstance(rule, Mapping):
            continue
        jwks = rule.get("jwks")
        if not jwks:
            where = "jwksUri" if (rule.get("jwksUri") or rule.get("jwks_uri")) else "the issuer's OpenID discovery"
            return (f"RequestAuthentication {policy.ref} jwtRules[{i}] has no inline jwks: istiod would fetch the "
                    f"keys from {where}, which the local mesh does not do (use jwks: \"${{jwks:<issuer>}}\")")
        if "${jwks:" in str(jwks):
            continue  # filled by the target from the run's keys
    return None
