"""Policies as the engine reads them: a typed model compiled once from the manifests of a step.

This mirrors the API (istio/api security/v1beta1/authorization_policy.proto) one to one; it decides
nothing. Each data plane interprets it in its own module (proxy.py for Envoy sidecars and waypoints,
ztunnel.py for ambient L4), because they genuinely differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from conformance.model import Manifest
from conformance.names import DRY_RUN_ANNOTATION

SOURCE_FIELDS = (
    "principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts",
    "ipBlocks", "notIpBlocks",
    "trustDomains", "notTrustDomains",  # Istio 1.30.2+ (istio/istio#59358, backported in #60528)
    # L7 sources: Envoy matches request principals on the JWT filter's metadata and remote IPs on the HCM's remote
    # address (proxy.py, xff.py). The ztunnel translation must see both to drop or strip the rule the way istiod
    # does (ambient/authorization.go httpSources).
    "requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks",
)
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")


@dataclass(frozen=True)
class Field:
    """One attribute of a source or operation with its values and `not` values, e.g. principals."""

    name: str  # the positive field name: "principals", "ports", ...
    values: tuple[str, ...]
    not_values: tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    """One `when` entry: `key` with `values` and/or `notValues`."""

    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """`from` AND `to` AND every `when`; `None` means the section is absent (matches anything)."""

    index: int
    sources: tuple[tuple[Field, ...], ...] | None
    operations: tuple[tuple[Field, ...], ...] | None
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    action: str  # ALLOW | DENY | AUDIT | CUSTOM
    selector: Mapping[str, str] | None  # None: no selector (namespace-wide, or mesh-wide in the root namespace)
    target_refs: tuple[TargetRef, ...]
    rules: tuple[Rule, ...] | None  # None: `rules` absent (never matches)
    dry_run: bool
    origin: str
    provider: str | None = None  # CUSTOM: `provider.name` as written (the mesh config may have no such provider)

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class JwtRule:
    """One `jwtRules` entry of a RequestAuthentication (istio/api security/v1beta1/request_authentication.proto
    JWTRule), the fields istiod copies into an Envoy JwtProvider (authn/policy_applier.go@1.30.3
    convertToEnvoyJwtConfig)."""

    index: int
    issuer: str | None
    audiences: tuple[str, ...]
    jwks: str | None  # as written: `${jwks:<issuer name>}` in the suite's scenarios
    jwks_uri: str | None
    from_headers: tuple[tuple[str, str], ...]  # (name, prefix)
    from_params: tuple[str, ...]
    from_cookies: tuple[str, ...]
    forward_original_token: bool
    output_payload_to_header: str | None
    output_claim_to_headers: tuple[tuple[str, str], ...]  # (header, claim)
    space_delimited_claims: tuple[str, ...]


@dataclass(frozen=True)
class RequestAuthentication:
    namespace: str
    name: str
    selector: Mapping[str, str] | None
    target_refs: tuple[TargetRef, ...]
    jwt_rules: tuple[JwtRule, ...]
    origin: str

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: Mapping[str, str] | None  # None: no `selector` at all ({}: one without labels)
    mode: str  # UNSET | PERMISSIVE | STRICT | DISABLE
    # portLevelMtls as (workload port, mode), in the order written; an entry without a mode is UNSET
    port_level: tuple[tuple[int, str], ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_bool(text: object) -> bool:
    """Go strconv.ParseBool, which istiod uses for the `istio.io/dry-run` annotation; junk is false."""
    return str(text) in ("1", "t", "T", "TRUE", "true", "True")


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _fields(block: Mapping[str, Any], names: Sequence[str]) -> tuple[Field, ...]:
    out: list[Field] = []
    for name in names:
        if name.startswith("not"):
            continue
        neg = "not" + name[0].upper() + name[1:]
        values, not_values = _strs(block.get(name)), _strs(block.get(neg))
        if values or not_values:
            out.append(Field(name, values, not_values))
    return tuple(out)


def _selector(spec: Mapping[str, Any]) -> Mapping[str, str] | None:
    selector = spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    return dict(labels or {}) if selector is not None else None


def _target_refs(spec: Mapping[str, Any]) -> tuple[TargetRef, ...]:
    """`targetRefs`, or the older single `targetRef` (model.GetTargetRefs, policyattachment.go@1.30.3)."""
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    return tuple(
        TargetRef(str(r.get("group", "")), str(r.get("kind", "")), str(r.get("name", "")),
                  str(r.get("namespace", "") or ""))
        for r in refs if isinstance(r, Mapping)
    )


def compile_authorization_policy(manifest: Manifest) -> AuthorizationPolicy:
    spec = manifest.spec
    target_refs = _target_refs(spec)
    rules: tuple[Rule, ...] | None = None
    if "rules" in spec and spec["rules"] is not None:
        compiled: list[Rule] = []
        for i, r in enumerate(spec["rules"] or []):
            r = r or {}
            # An empty `from: []` / `to: []` is the same as absent: proto3 decodes an empty repeated field
            # to nothing, so the webhook and istiod never see it (validation only warns, see validation.py).
            sources = (
                tuple(_fields((f or {}).get("source") or {}, SOURCE_FIELDS) for f in r["from"])
                if r.get("from") else None
            )
            operations = (
                tuple(_fields((t or {}).get("operation") or {}, OPERATION_FIELDS) for t in r["to"])
                if r.get("to") else None
            )
            conditions = tuple(
                Condition(str(w.get("key")), _strs(w.get("values")), _strs(w.get("notValues")))
                for w in (r.get("when") or [])
            )
            compiled.append(Rule(i, sources, operations, conditions))
        rules = tuple(compiled)
    provider = spec.get("provider")
    provider_name = provider.get("name") if isinstance(provider, Mapping) else None
    return AuthorizationPolicy(
        namespace=manifest.namespace,
        name=manifest.name,
        action=str(spec.get("action", "ALLOW")),
        selector=_selector(spec),
        target_refs=target_refs,
        rules=rules,
        dry_run=parse_bool(manifest.annotations.get(DRY_RUN_ANNOTATION, "")),
        origin=manifest.origin,
        provider=str(provider_name) if provider_name is not None else None,
    )


def _opt_str(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value != "" else None


def compile_request_authentication(manifest: Manifest) -> RequestAuthentication:
    """A RequestAuthentication as the API has it; which proxies use it is scope.py's business, what Envoy
    does with it jwt.py's."""
    spec = manifest.spec
    rules: list[JwtRule] = []
    for i, r in enumerate(spec.get("jwtRules") or []):
        r = r if isinstance(r, Mapping) else {}
        headers = tuple((str(h.get("name", "")), str(h.get("prefix", "") or ""))
                        for h in (r.get("fromHeaders") or []) if isinstance(h, Mapping))
        claims = tuple((str(c.get("header", "")), str(c.get("claim", "")))
                       for c in (r.get("outputClaimToHeaders") or []) if isinstance(c, Mapping))
        rules.append(JwtRule(
            index=i,
            issuer=_opt_str(r.get("issuer")),
            audiences=_strs(r.get("audiences")),
            jwks=_opt_str(r.get("jwks")),
            jwks_uri=_opt_str(r.get("jwksUri")),
            from_headers=headers,
            from_params=_strs(r.get("fromParams")),
            from_cookies=_strs(r.get("fromCookies")),
            forward_original_token=r.get("forwardOriginalToken") is True,
            output_payload_to_header=_opt_str(r.get("outputPayloadToHeader")),
            output_claim_to_headers=claims,
            space_delimited_claims=_strs(r.get("spaceDelimitedClaims")),
        ))
    return RequestAuthentication(
        namespace=manifest.namespace,
        name=manifest.name,
        selector=_selector(spec),
        target_refs=_target_refs(spec),
        jwt_rules=tuple(rules),
        origin=manifest.origin,
    )


def _mtls_mode(section: Any) -> str:
    """`mtls.mode` as written; no section, no mode or null is UNSET (proto default; isMtlsModeUnset)."""
    return str(section.get("mode") or "UNSET") if isinstance(section, Mapping) else "UNSET"


def compile_peer_authentication(manifest: Manifest) -> PeerAuthentication:
    """The fields istiod reads. `portLevelMtls` keys are uint32 workload ports (the map key of the proto;
    validation has refused anything else)."""
    spec = manifest.spec
    per_port = spec.get("portLevelMtls")
    port_level = tuple((int(k), _mtls_mode(v)) for k, v in per_port.items()) if isinstance(per_port, Mapping) else ()
    return PeerAuthentication(
        namespace=manifest.namespace,
        name=manifest.name,
        selector=_selector(spec),
        mode=_mtls_mode(spec.get("mtls")),
        port_level=port_level,
    )
