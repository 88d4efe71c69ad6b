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
    # L7 sources: scenarios reject them as not supported yet, but the ztunnel translation must see them
    # to drop or strip the rule the way istiod does (ambient/authorization.go httpSources).
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
    action: str  # ALLOW | DENY | AUDIT
    selector: Mapping[str, str] | None  # None: no selector (namespace-wide, or mesh-wide in the root namespace)
    target_refs: tuple[TargetRef, ...]
    rules: tuple[Rule, ...] | None  # None: `rules` absent (never matches)
    dry_run: bool
    origin: str

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: Mapping[str, str] | None
    mode: str  # UNSET | PERMISSIVE | STRICT

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


def compile_authorization_policy(manifest: Manifest) -> AuthorizationPolicy:
    spec = manifest.spec
    selector = spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    target_refs = tuple(
        TargetRef(str(r.get("group", "")), str(r.get("kind", "")), str(r.get("name", "")),
                  str(r.get("namespace", "") or ""))
        for r in refs if isinstance(r, Mapping)
    )
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
    return AuthorizationPolicy(
        namespace=manifest.namespace,
        name=manifest.name,
        action=str(spec.get("action", "ALLOW")),
        selector=(dict(labels or {}) if selector is not None else None),
        target_refs=target_refs,
        rules=rules,
        dry_run=parse_bool(manifest.annotations.get(DRY_RUN_ANNOTATION, "")),
        origin=manifest.origin,
    )


def compile_peer_authentication(manifest: Manifest) -> PeerAuthentication:
    spec = manifest.spec
    selector = spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    mtls = spec.get("mtls") or {}
    return PeerAuthentication(
        namespace=manifest.namespace,
        name=manifest.name,
        selector=(dict(labels or {}) if selector is not None else None),
        mode=str(mtls.get("mode", "UNSET")) if isinstance(mtls, Mapping) else "UNSET",
    )
