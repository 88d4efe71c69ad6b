"""Istio's own validation of AuthorizationPolicy, PeerAuthentication and RequestAuthentication documents, and
of the mesh config's ext_authz extension providers, ported to Python.

Why this exists: a scenario states policies exactly as a user would `kubectl apply` them. A policy that
Istio would refuse must fail the scenario before anything runs, with the field and the reason, instead of
failing late on a cluster (or, worse, being enforced by our local mesh although no real mesh would ever
accept it). So every document goes through the same three gates a real cluster puts in its way:

1. the API server and the CRD's structural schema at the chosen Istio version (types, unknown fields
   under strict field validation, enums, required, maxItems, maxLength, patterns), checked with
   `jsonschema` against Istio's own CRD schema, vendored from `manifests/charts/base/files/crd-all.gen.yaml`
   at 1.30.3 (conformance/crd; older releases derived from it in `_structural_for`), and the CRD's CEL
   rules (`x-kubernetes-validations`), which jsonschema cannot evaluate and this module ports by hand;
2. the decoding istiod's validation webhook does (`crd.ConvertObject` -> `protomarshal.ApplyJSON`,
   golang/protobuf `jsonpb`), which turns an empty JSON list into a nil Go slice;
3. `pkg/config/validation/validation.go` (`ValidateAuthorizationPolicy`, `ValidatePeerAuthentication`,
   `ValidateRequestAuthentication`, `validateJwtRule`, `warnPrivateJwksKeys`, `validateMetadata`,
   `checkDryRunAnnotation`, `validatePolicyTargetReference`, `validateWorkloadSelector`,
   `validateOneOfSelectorType`) with the helpers of `pkg/config/security/security.go` (`ValidateAttribute`,
   `ValidateIPs`, `ValidatePorts`, `CheckEmptyValues`, `CheckServiceAccount`, `CheckValidPathTemplate`,
   `CheckTrustDomainValues`, `ParseJwksURI`).
`validate_extension_provider` checks a scenario's `mesh.extensionProviders` entry the way
`pkg/config/validation/agent/extensionprovider.go` (`validateExtensionProvider`) does, and warns where istiod
would then treat the provider as invalid (`pilot/pkg/security/authz/builder/extauthz.go`).

Citations ("validation.go:1497") are line numbers at tag 1.30.3 unless a version is named. Behaviour that
changed between 1.22 and 1.30 is keyed on the version (see `_Features`).

On top of Istio's verdict this module reports what the suite cannot model yet ("unsupported": valid
Istio, not simulated) and a few things Istio accepts but that almost certainly do not do what their
author meant ("warning", each saying so). It never raises: every malformed piece becomes a Finding.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, TypeGuard

import jsonschema

from conformance import crd, versions
from conformance.errors import closest, yaml_type
from conformance.model import ExtensionProvider
from conformance.names import DRY_RUN_ANNOTATION, GATEWAY_API_GROUP, WAYPOINT_GATEWAY_CLASS
from conformance.versions import IstioVersion

ERROR = "error"
WARNING = "warning"
UNSUPPORTED = "unsupported"
SEVERITIES = (ERROR, WARNING, UNSUPPORTED)

GROUP = "security.istio.io"
SERVED_VERSIONS = ("v1", "v1beta1")  # both served for all three kinds, 1.22 ... 1.30 (crd-all.gen.yaml)
AUTHORIZATION_POLICY = "AuthorizationPolicy"
PEER_AUTHENTICATION = "PeerAuthentication"
REQUEST_AUTHENTICATION = "RequestAuthentication"
KINDS = (AUTHORIZATION_POLICY, PEER_AUTHENTICATION, REQUEST_AUTHENTICATION)
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")  # CRD enum, AuthorizationPolicy.action
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")  # CRD enum, PeerAuthentication mtls.mode


@dataclass(frozen=True)
class Finding:
    """One problem in a policy document.

    `field` is a path into the document: `.name` for a field, `[3]` for a list item, `[key]` for an entry of a
    free-form map (labels, annotations, matchLabels, portLevelMtls), `[\"...\"]` (JSON) for a key that itself
    holds brackets or quotes. `severity` is `error` (Istio rejects the document), `warning` (Istio accepts it,
    but warns or it very likely does not do what was meant) or `unsupported` (valid Istio that this suite does
    not model yet).
    """

    field: str
    message: str
    severity: str


# --------------------------------------------------------------------------------------------------
# Which Istio release does what


@dataclass(frozen=True)
class _Features:
    version: IstioVersion
    cel: bool  # 1.23: CEL rules and length limits on selector, targetRef, portLevelMtls (crd-all.gen.yaml)
    target_ref_kind_cel: bool  # 1.23-1.24 only: CEL `[self.group, self.kind] in [...]` on every targetRef
    one_of_cel: bool  # 1.24: CEL "only one of targetRefs or selector can be set" (has()-based)
    target_refs_max: bool  # 1.24: targetRefs maxItems 16
    service_entry_ref: bool  # 1.24: allowedTargetRefs gains ServiceEntry (validation.go)
    service_accounts: bool  # 1.25: Source.serviceAccounts/notServiceAccounts, when key source.serviceAccount
    gateway_class_ref: bool  # 1.25: allowedTargetRefs gains GatewayClass
    rules_max: bool  # 1.25: rules and from maxItems 512
    new_path_template: bool  # 1.23.5 / 1.24.3 / 1.25: CheckValidPathTemplate rewritten (trim, {**} last, pchar)
    internal_parent_annotations: bool  # 1.27: validateMetadata bans internal.istio.io/parents, parent-namespace
    trust_domains: bool  # 1.30.0: CRD has trustDomains/notTrustDomains; ValidateAttribute knows source.trustDomain
    trust_domain_checks: bool  # 1.30.2: validation counts and checks trustDomains (backport of #59358)
    jwt_rule_checks: bool  # 1.23: validateJwtRule checks timeout and outputClaimToHeaders header names (#51946, #51343)
    issuer_optional: bool  # 1.27: a jwtRule needs issuer or jwksUri, the CRD no longer requires issuer (#56158)
    space_delimited_claims: bool  # 1.28: jwtRules[].spaceDelimitedClaims in the CRD
    provider_name_check: bool  # 1.30: istiod's validateProviderName (builder/extauthz.go)
    private_jwks_warning: bool  # 1.30.3: warnPrivateJwksKeys (#60727)

    @classmethod
    def of(cls, v: IstioVersion) -> _Features:
        return cls(
            version=v,
            cel=v.has(versions.CEL_RULES),
            target_ref_kind_cel=v.has(versions.TARGET_REF_KIND_CEL) and not v.has(versions.TARGET_REF_KIND_CEL_DROPPED),
            one_of_cel=v.has(versions.ONE_OF_CEL),
            target_refs_max=v.has(versions.TARGET_REFS_MAX),
            service_entry_ref=v.has(versions.SERVICE_ENTRY_TARGET_REF),
            service_accounts=v.has(versions.SERVICE_ACCOUNTS),
            gateway_class_ref=v.has(versions.GATEWAY_CLASS_TARGET_REF),
            rules_max=v.has(versions.RULES_MAX),
            new_path_template=v.has(versions.NEW_PATH_TEMPLATE_CHECK),
            internal_parent_annotations=v.has(versions.INTERNAL_PARENT_ANNOTATIONS),
            trust_domains=v.has(versions.TRUST_DOMAIN_FIELDS),
            trust_domain_checks=v.has(versions.TRUST_DOMAINS_ENFORCED),
            jwt_rule_checks=v.has(versions.JWT_RULE_CHECKS),
            issuer_optional=v.has(versions.JWT_ISSUER_OPTIONAL),
            space_delimited_claims=v.has(versions.SPACE_DELIMITED_CLAIMS),
            provider_name_check=v.has(versions.EXT_AUTHZ_PROVIDER_NAME_CHECK),
            private_jwks_warning=v.has(versions.PRIVATE_JWKS_WARNING),
        )


# --------------------------------------------------------------------------------------------------
# Paths into the document

_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")


# A YAML mapping key as the JSON object key it becomes on its way to the API server (sigs.k8s.io/yaml); the
# structural check (crd.prune_nulls) and the field paths must spell keys the same way.
_key_text = crd.key_text


def _bracket(text: str) -> str:
    if any(c in text for c in '[]"'):
        return "[" + json.dumps(text) + "]"
    return f"[{text}]"


def _child(path: str, key: object) -> str:
    """The path of a schema field (or an unknown key where a field was expected)."""
    text = _key_text(key)
    if _IDENT.fullmatch(text):
        return f"{path}.{text}" if path else text
    return path + _bracket(text)


def _entry(path: str, key: object) -> str:
    """The path of an entry of a free-form map (labels, annotations, matchLabels, portLevelMtls)."""
    return path + _bracket(_key_text(key))


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _under(field: str, prefix: str) -> bool:
    return field == prefix or field.startswith((prefix + ".", prefix + "["))


# --------------------------------------------------------------------------------------------------
# Findings


class _Out:
    """The findings of one document, with the CRD gate's errors told apart from Istio's validation's.

    Both gates often say the same thing about one field (validation.go:1337 "targetRef name must be set"
    and the CRD's `required: [kind, name]`; validation.go:1725 and the CRD's `minProperties: 1`): a user
    needs one line per field, so at a field the CRD gate rejected, Istio validation's error is dropped,
    except where the CRD only says "is required" and validation.go says more.
    """

    def __init__(self, features: _Features) -> None:
        self.f = features
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str, str]] = set()
        self._crd: dict[int, bool] = {}  # id of a CRD-gate finding -> whether it is a plain "is required"

    def add(self, field: str, message: str, severity: str) -> Finding | None:
        key = (field, message, severity)
        if key in self._seen:
            return None
        self._seen.add(key)
        finding = Finding(field, message, severity)
        self.findings.append(finding)
        return finding

    def structural(self, field: str, message: str, required: bool = False) -> None:
        """An error of the CRD's structural schema (gate 1)."""
        finding = self.add(field, message, ERROR)
        if finding is not None:
            self._crd[id(finding)] = required

    def error(self, field: str, message: str) -> None:
        self.add(field, message, ERROR)

    def warn(self, field: str, message: str) -> None:
        self.add(field, message, WARNING)

    def unsupported(self, field: str, message: str) -> None:
        self.add(field, message, UNSUPPORTED)

    def result(self) -> list[Finding]:
        crd_fields = {f.field for f in self.findings if id(f) in self._crd and not self._crd[id(f)]}
        istio_fields = {f.field for f in self.findings if f.severity == ERROR and id(f) not in self._crd}
        kept = [
            f for f in self.findings
            if not (f.severity == ERROR and id(f) not in self._crd and f.field in crd_fields)
            and not (self._crd.get(id(f)) and f.field in istio_fields)
        ]
        errors = [f.field for f in kept if f.severity == ERROR]
        # An error takes precedence over "not supported yet" at the same field (or inside it).
        return [f for f in kept if f.severity != UNSUPPORTED or not any(_under(e, f.field) for e in errors)]


# --------------------------------------------------------------------------------------------------
# Small typed accessors over untrusted YAML data


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _get(container: object, name: str) -> Any:
    """A field of a mapping, or None when the container is not a mapping or lacks it (null = absent)."""
    if isinstance(container, Mapping):
        try:
            return container.get(name)
        except Exception:  # a Mapping with exotic keys could refuse the lookup; treat as absent
            return None
    return None


def _has(container: object, name: str) -> bool:
    """CEL `has(self.name)`: present and not null (the API server prunes null fields first)."""
    return _get(container, name) is not None


def _is_list(value: object) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return isinstance(value, (list, tuple))


def _strings(value: object) -> list[tuple[int, str]]:
    """The string items of a list, with their index; other items are reported by the schema walk."""
    if not _is_list(value):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def _set(value: object) -> bool:
    """Go's `len(x) > 0` after jsonpb decoding: an empty list decodes to a nil slice.

    A malformed value (a string where a list belongs) counts as set: the schema walk reports it, and the
    semantic checks must not pile "must not be empty" on top.
    """
    if value is None:
        return False
    if _is_list(value):
        return len(value) > 0
    return True


def _pairs(value: object) -> list[tuple[object, object]]:
    if not isinstance(value, Mapping):
        return []
    try:
        return list(value.items())
    except Exception:
        return []


def _can_descend(value: object) -> bool:
    """A path may go below a value only when it is a mapping or absent."""
    return value is None or isinstance(value, Mapping)


# --------------------------------------------------------------------------------------------------
# Go-compatible parsers (net/netip, strconv) and Kubernetes name rules

_IPV4 = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_DECIMAL = re.compile(r"[0-9]+")
_CANONICAL_UINT = re.compile(r"0|[1-9][0-9]*")
_MAX_DIGITS = 20  # longer digit strings are out of every range here (and beyond int()'s default limit)
_GO_BOOLS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")  # strconv.ParseBool


def _small_int(text: str) -> int | None:
    """The value of an ASCII decimal string, or None when it is not one or is too long to be in range."""
    if not _DECIMAL.fullmatch(text) or len(text) > _MAX_DIGITS:
        return None
    return int(text)


def _parse_addr(text: str) -> tuple[int, bool] | str:
    """netip.ParseAddr: (address bits, has zone), or the reason it fails."""
    for ch in text:  # netip.ParseAddr dispatches on the first '.', ':' or '%'
        if ch == ".":
            match = _IPV4.fullmatch(text)
            if not match or any(int(g) > 255 for g in match.groups()):
                return "not a valid IPv4 address"
            return 32, False
        if ch == ":":
            addr, sep, zone = text.partition("%")
            if sep and not zone:
                return "an IPv6 zone must not be empty"
            if not _IPV6_CHARS.fullmatch(addr):
                return "not a valid IPv6 address"
            try:
                ipaddress.IPv6Address(addr)
            except ValueError:
                return "not a valid IPv6 address"
            return 128, bool(sep)
        if ch == "%":
            return "missing IPv6 address"
    return "unable to parse IP"


def _ip_problem(text: str) -> str | None:
    """security.ValidateIPs (security.go:285) for one value: an address, or a CIDR when it holds '/'."""
    if "/" not in text:
        parsed = _parse_addr(text)
        return f"bad IP address ({text}): {parsed}" if isinstance(parsed, str) else None
    cut = text.rfind("/")  # netip.ParsePrefix
    parsed = _parse_addr(text[:cut])
    if isinstance(parsed, str):
        return f"bad CIDR range ({text}): {parsed}"
    bits_max, zone = parsed
    if zone:
        return f"bad CIDR range ({text}): IPv6 zones cannot be present in a prefix"
    bits = text[cut + 1:]
    value = _small_int(bits)
    if not _DECIMAL.fullmatch(bits) or (len(bits) > 1 and bits[0] == "0"):
        return f"bad CIDR range ({text}): bad bits after slash: {bits!r}"
    if value is None or value > bits_max:
        return f"bad CIDR range ({text}): prefix length out of range"
    return None


def _port_problem(text: str) -> str | None:
    """security.ValidatePorts (security.go:301): strconv.ParseUint(port, 10, 32) and at most 65535."""
    value = _small_int(text)
    if value is None or value > 65535:
        return f"bad port ({text}): must be a decimal number from 0 to 65535"
    return None


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_DNS_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _subdomain_problem(text: str) -> str | None:
    if len(text) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(text):
        return ("must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit")
    return None


def _label_name_problem(text: str) -> str | None:
    if len(text) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.fullmatch(text):
        return ("must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit")
    return None


def _qualified_name_problem(text: str) -> str | None:
    """k8s.io/apimachinery validation.IsQualifiedName (label and annotation keys)."""
    parts = text.split("/")
    if len(parts) > 2:
        return "must be a name with an optional DNS subdomain prefix and '/', e.g. 'example.com/MyName'"
    if len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return "the prefix before '/' must not be empty"
        problem = _subdomain_problem(prefix)
        if problem:
            return f"prefix {prefix!r} {problem}"
    else:
        name = parts[0]
    if not name:
        return "the name part must not be empty"
    if len(name) > 63:
        return "the name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return ("the name part must consist of letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def _label_value_problem(text: str) -> str | None:
    if len(text) > 63:
        return "must be no more than 63 characters"
    if text and not _QUALIFIED_NAME.fullmatch(text):
        return "must be empty or letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


# --------------------------------------------------------------------------------------------------
# security.go helpers

_VALID_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")  # security.go:69 (RFC 3986 pchar)
_MATCH_ONE, _MATCH_ANY = "{*}", "{**}"


def _path_template_problem(path: str, new_rules: bool) -> str | None:
    """security.CheckValidPathTemplate for one path (security.go:183; the 1.22 form before 1.23.5/1.24.3)."""
    has_template = _MATCH_ONE in path or _MATCH_ANY in path
    if not new_rules:
        for glob in path.split("/"):
            if glob in (_MATCH_ONE, _MATCH_ANY):
                continue
            if "{" in glob or "}" in glob:
                return f"invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
            if "*" in glob and has_template:
                return f"invalid or unsupported path {path}: contains '*' beyond a supported path template"
        return None
    found_any = False
    for glob in path.strip("/").split("/"):
        if glob == _MATCH_ONE and not found_any:
            continue
        if glob == _MATCH_ANY and not found_any:
            found_any = True
            continue
        if glob in (_MATCH_ONE, _MATCH_ANY):
            return f"invalid or unsupported path {path}: {{**}} is not the last operator"
        if "{" in glob or "}" in glob:
            return f"invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
        if has_template and not _VALID_LITERAL.fullmatch(glob):
            return f"invalid or unsupported path {path}: contains segment {glob!r} with invalid string literal"
    return None


def _service_account_problem(value: str) -> str | None:
    """security.CheckServiceAccount (security.go:146) for one value."""
    if value == "":
        return "empty value not allowed"
    if "*" in value:
        return "wildcard not allowed in a service account"
    if value.count("/") not in (0, 1):
        return f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {value!r}"
    if len(value) > 320:
        return "value cannot exceed 320 characters"
    ns, sep, sa = value.partition("/")
    if sep and not ns:
        return f"expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace in {value!r}"
    if sep and not sa:
        return (f"expected format 'serviceAccount' or 'namespace/serviceAccount', "
                f"found empty serviceAccount in {value!r}")
    return None


def _wildcard_problem(value: str) -> str | None:
    """security.CheckWildcardValues (security.go:117) for one value."""
    if value == "":
        return "empty value not allowed"
    count = value.count("*")
    if count > 1:
        return f"at most one wildcard is allowed, found {value!r}"
    if count == 1 and value != "*" and not value.startswith("*") and not value.endswith("*"):
        return f"wildcard is only allowed at the start or end, found {value!r}"
    return None


def _trust_domain_problem(value: str) -> str | None:
    """security.CheckTrustDomainValues (security.go:134) for one value."""
    problem = _wildcard_problem(value)
    if problem:
        return problem
    if "/" in value:
        return f"trust domain must not contain '/', found {value!r}"
    return None


def _map_key_problem(key: str) -> str | None:
    """security.validateMapKey (security.go:312): `a[b]` with a non-empty b."""
    opening = key.find("[")
    if key.endswith("]") and 0 < opening < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"


def _mid_wildcard(value: str) -> bool:
    """A `*` Istio's string matchers do not treat as a wildcard (only one leading or trailing `*` is)."""
    if "*" not in value or value == "*":
        return False
    inner = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    return "*" in inner


# --------------------------------------------------------------------------------------------------
# Structural schema: Istio's own CRD at the chosen version (conformance/crd, checked with jsonschema)

SOURCE_FIELDS = (
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces", "notNamespaces",
    "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
)
SERVICE_ACCOUNT_FIELDS = ("serviceAccounts", "notServiceAccounts")
TRUST_DOMAIN_FIELDS = ("trustDomains", "notTrustDomains")
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
TARGET_REF_FIELDS = ("group", "kind", "name", "namespace")
OBJECT_META_OTHER = (  # ObjectMeta fields a scenario has no use for (known to the API server, so not "unknown")
    "generateName", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields", "selfLink",
)
# Fields the 1.30.3 CRD has that older releases' CRDs lack (crd-all.gen.yaml at each tag): unknown there.
_FIELD_SINCE = {("spec.rules.from.source", "serviceAccounts"): "1.25",
                ("spec.rules.from.source", "notServiceAccounts"): "1.25",
                ("spec.rules.from.source", "trustDomains"): "1.30",
                ("spec.rules.from.source", "notTrustDomains"): "1.30",
                ("spec.jwtRules", "spaceDelimitedClaims"): "1.28"}

# ObjectMeta is validated by the API server's own Go types, not by the CRD: a string name and namespace,
# string-to-string labels and annotations, and the other ObjectMeta fields (any shape: _check_metadata
# reports them as not supported). Anything else is an unknown field under strict field validation.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP,
                   "annotations": _STRING_MAP, **{name: {} for name in OBJECT_META_OTHER}},
    "additionalProperties": False,
}

# What each object of the schema is, for "unknown field ... in <what>" (paths without list indices).
_WHAT = {
    "": "{kind} document", "metadata": "ObjectMeta", "spec": "{kind} spec", "spec.rules": "AuthorizationPolicy Rule",
    "spec.rules.from": "Rule.From", "spec.rules.from.source": "AuthorizationPolicy Source",
    "spec.rules.to": "Rule.To", "spec.rules.to.operation": "AuthorizationPolicy Operation",
    "spec.rules.when": "AuthorizationPolicy Condition", "spec.selector": "selector", "spec.provider": "provider",
    "spec.targetRef": "PolicyTargetReference", "spec.targetRefs": "PolicyTargetReference",
    "spec.mtls": "PeerAuthentication MutualTLS", "spec.portLevelMtls": "PeerAuthentication MutualTLS",
    "spec.jwtRules": "RequestAuthentication JWTRule", "spec.jwtRules.fromHeaders": "JWTHeader",
    "spec.jwtRules.outputClaimToHeaders": "ClaimToHeader",
}


def _node(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """The sub-schema at `path` ("items" steps into a list), or an empty dict when the schema has none."""
    node: Any = schema
    for step in path:
        node = node.get("items", {}) if step == "items" else node.get("properties", {}).get(step, {})
    return node if isinstance(node, dict) else {}


def _drop(node: dict[str, Any], *keys: str) -> None:
    """Remove what an older release's CRD lacks (absent keys are fine: the derivation is idempotent)."""
    for key in keys:
        node.pop(key, None)


def _structural_for(f: _Features, kind: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema of `kind` as Istio `f.version` ships it, derived from the vendored 1.30.3 one.

    v1 and v1beta1 carry the same schema at every tag 1.22 ... 1.30. What older releases lack, by
    crd-all.gen.yaml at each tag (tests/test_crd_schemas.py compares the derivation with those files):
    - trustDomains / notTrustDomains: from 1.30.0;
    - serviceAccounts / notServiceAccounts (maxItems 16, maxLength 320), rules and from maxItems 512: 1.25.0;
    - targetRefs maxItems 16: 1.24.0;
    - matchLabels maxProperties 4096 and value maxLength 63, targetRef(s) `required: [kind, name]` and the
      group / kind / name length and pattern limits, portLevelMtls minProperties 1: 1.23.0;
    - RequestAuthentication: jwtRules[].spaceDelimitedClaims from 1.28.0; jwtRules[] `required: [issuer]` before
      1.27.0 (added back); before 1.23.0 no minLength on issuer, audiences, fromHeaders name, fromParams,
      fromCookies and outputClaimToHeaders claim / header, no pattern and `required: [header, claim]` on
      outputClaimToHeaders, no length limits on jwksUri / jwks_uri and no jwtRules maxItems 4096.
    (Their CEL rules, x-kubernetes-validations, are left to the Python checks below.)
    """
    schema = crd.crd_schema(kind, "v1")
    schema.setdefault("properties", {})["status"] = {}  # ignored on create (status subresource); warned about
    spec = _node(schema, "spec")
    if kind == AUTHORIZATION_POLICY:
        rules = _node(spec, "rules")
        froms = _node(rules, "items", "from")
        source = _node(froms, "items", "source")
        if not f.trust_domains:
            _drop(source.get("properties", {}), *TRUST_DOMAIN_FIELDS)
        if not f.service_accounts:
            _drop(source.get("properties", {}), *SERVICE_ACCOUNT_FIELDS)
            _drop(source, "x-kubernetes-validations")
        if not f.rules_max:
            _drop(rules, "maxItems")
            _drop(froms, "maxItems")
    if kind == REQUEST_AUTHENTICATION:
        jwt_rules = _node(spec, "jwtRules")
        rule = _node(jwt_rules, "items")
        if not f.space_delimited_claims:
            _drop(rule.get("properties", {}), "spaceDelimitedClaims")
        if not f.issuer_optional:
            rule["required"] = ["issuer"]
        if not f.cel:
            _drop(jwt_rules, "maxItems")
            for name in ("audiences", "fromParams", "fromCookies"):
                _drop(_node(rule, name, "items"), "minLength")
            _drop(_node(rule, "fromHeaders", "items", "name"), "minLength")
            _drop(_node(rule, "issuer"), "minLength")
            for name in ("jwksUri", "jwks_uri"):
                _drop(_node(rule, name), "maxLength", "minLength")
            claim_to_header = _node(rule, "outputClaimToHeaders", "items")
            _drop(claim_to_header, "required")
            _drop(_node(claim_to_header, "claim"), "minLength")
            _drop(_node(claim_to_header, "header"), "minLength", "pattern")
    if kind in (AUTHORIZATION_POLICY, REQUEST_AUTHENTICATION):
        if not f.target_refs_max:
            _drop(_node(spec, "targetRefs"), "maxItems")
        if not f.cel:
            for ref in (_node(spec, "targetRef"), _node(spec, "targetRefs", "items")):
                _drop(ref, "required")
                for name in ("group", "kind", "name"):
                    _drop(_node(ref, name), "maxLength", "minLength", "pattern")
    if kind == PEER_AUTHENTICATION and not f.cel:
        _drop(_node(spec, "portLevelMtls"), "minProperties")
    if not f.cel:
        labels = _node(spec, "selector", "matchLabels")
        _drop(labels, "maxProperties")
        if isinstance(labels.get("additionalProperties"), dict):
            _drop(labels["additionalProperties"], "maxLength")
    return schema


@lru_cache(maxsize=64)
def _validator(f: _Features, kind: str) -> jsonschema.Draft202012Validator:
    """One compiled validator per release and kind: building it costs more than validating a document."""
    return jsonschema.Draft202012Validator(crd.json_schema(_structural_for(f, kind), _OBJECT_META))


def _locate(schema: Mapping[str, Any], segments: Iterable[Any]) -> tuple[str, Mapping[str, Any], str]:
    """(field path, sub-schema, shape path without indices) of a JSON path into the document.

    A key that is a declared property is a field (`.name`); a key of a map (`additionalProperties` holding a
    schema: labels, matchLabels, portLevelMtls) is an entry (`[key]`).
    """
    path, shape, node = "", "", schema
    for seg in segments:
        if isinstance(seg, int):
            path, node = _item(path, seg), node.get("items", {})
            continue
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        if seg in props:
            path, node = _child(path, seg), props[seg]
            shape = f"{shape}.{seg}" if shape else str(seg)
        elif isinstance(extra, Mapping):
            path, node, shape = _entry(path, seg), extra, f"{shape}[]"
        else:
            path, node = _child(path, seg), {}
    return path, node, shape


_NOUN = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
         "boolean": "a boolean", "number": "a number"}


def _type_message(expected: object, value: object) -> str:
    """A type error with the fix YAML authors need most: quoting a number, or writing a one-item list."""
    types = expected if isinstance(expected, list) else [expected]
    message = f"must be {' or '.join(_NOUN.get(str(t), str(t)) for t in types)}, not {yaml_type(value)}"
    if "string" in types and isinstance(value, (bool, int, float)):
        message += f' (quote it: "{_yaml_scalar(value)}")'
    elif "array" in types and isinstance(value, (str, bool, int, float)):
        message += f" (write a list: [{json.dumps(_yaml_scalar(value))}])"
    return message


def _unknown_field_message(key: str, node: Mapping[str, Any], shape: str, kind: str, f: _Features) -> str:
    """An unknown field, with the release that added it when it is only unknown to an older one, or a guess."""
    what = _WHAT.get(shape, "").format(kind=kind)
    message = f"unknown field {key!r}{f' in {what}' if what else ''}"
    known = sorted(node.get("properties", {}))
    if (shape, key) in _FIELD_SINCE:
        return (f"{message}: {key} exists from Istio {_FIELD_SINCE[shape, key]}, this scenario targets Istio "
                f"{f.version}, whose CRD rejects it (Kubernetes strict field validation)")
    close = closest(key, known, cutoff=0.7)
    folded = [k for k in known if k.lower() == key.lower()]
    if folded or close:
        return f"{message}: did you mean {(folded[0] if folded else close)!r}?"
    return f"{message} (Kubernetes strict field validation rejects it); known fields: {', '.join(known)}"


def _error_path(err: jsonschema.ValidationError) -> list[Any]:
    """The path an error is reported at: an unknown field's own path, not its parent's."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        props = err.schema.get("properties", {}) if isinstance(err.schema, Mapping) else {}
        extra = next((k for k in err.instance if k not in props), None)
        if extra is not None:
            path.append(extra)
    return path


def _document_order(instance: object, segments: Iterable[Any]) -> list[int]:
    """Where a JSON path lies in the document (key positions and indices), to report in document order."""
    order: list[int] = []
    node = instance
    for seg in segments:
        if isinstance(node, Mapping):
            keys = list(node)
            order.append(keys.index(seg) if seg in keys else len(keys))
            node = node.get(seg)
        elif isinstance(node, list) and isinstance(seg, int):
            order.append(seg)
            node = node[seg] if seg < len(node) else None
        else:
            break
    return order



# The CRD's size and pattern limits, in the words a policy author reads (the rule and the value filled in).
_CRD_LIMITS = {
    "maxLength": "must be no more than {rule} characters (CRD maxLength)",
    "minLength": "must not be empty (CRD minLength {rule})",
    "maxItems": "must have at most {rule} items, has {size} (CRD maxItems)",
    "maxProperties": "must have at most {rule} entries (CRD maxProperties)",
    "minProperties": "must have at least {rule} entry (CRD minProperties)",
    "pattern": "{value!r} does not match the CRD pattern {rule}",
}


def _check_structure(doc: Mapping[Any, Any], kind: str, out: _Out) -> None:
    """Gate 1: the API server's structural validation against Istio's CRD schema at this version.

    Types, unknown fields (strict field validation), enums, required fields, maxItems / maxProperties /
    maxLength / minLength / minProperties and patterns come from the vendored CRD (conformance/crd), read by
    jsonschema; every error is reported at its field.
    """
    validator = _validator(out.f, kind)
    instance = crd.prune_nulls(doc)
    errors = sorted(validator.iter_errors(instance), key=lambda e: _document_order(instance, _error_path(e)))
    for err in errors:
        path, node, shape = _locate(validator.schema, err.absolute_path)
        value, rule = err.instance, err.validator_value
        if err.validator == "additionalProperties" and isinstance(value, Mapping):
            for key in value:
                if key not in node.get("properties", {}):
                    out.structural(_child(path, key), _unknown_field_message(key, node, shape, kind, out.f))
        elif err.validator == "required" and isinstance(value, Mapping):
            for name in rule:
                if name not in value:
                    out.structural(_child(path, name), f"{name} is required", required=True)
        elif err.validator == "type":
            out.structural(path, _type_message(rule, value))
        elif err.validator == "enum":
            hint = next((e for e in rule if isinstance(value, str) and e.lower() == value.lower()), None)
            extra = f"; did you mean {hint!r}?" if hint else ""
            out.structural(path, f"unsupported value {value!r}: must be one of {', '.join(rule)}{extra}")
        elif err.validator in _CRD_LIMITS:
            size = len(value) if isinstance(value, (str, list, Mapping)) else 0
            out.structural(path, _CRD_LIMITS[err.validator].format(rule=rule, value=value, size=size))
        else:
            out.structural(path, f"{err.message} (CRD {err.validator})".replace("\n", " "))


# --------------------------------------------------------------------------------------------------
# Entry point


def validate_manifest(doc: Mapping[str, Any], version: IstioVersion) -> list[Finding]:
    """Check one policy document the way a cluster running Istio `version` would, plus our limits.

    Returns the findings in document order; an empty list means Istio accepts it and the suite models it.
    """
    features = _Features.of(version)
    out = _Out(features)
    # Any document, however damaged, gives findings; an exception here is a bug of ours and is raised as
    # one (the hypothesis test feeding random damage would catch it), never turned into a user's error.
    _validate_document(doc, out)
    return out.result()


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


def _validate_document(doc: object, out: _Out) -> None:
    if not isinstance(doc, Mapping):
        out.error("", f"a policy document must be a mapping (apiVersion, kind, metadata, spec), not {yaml_type(doc)}")
        return
    api_version, kind = _get(doc, "apiVersion"), _get(doc, "kind")
    if not isinstance(kind, str):
        out.error("kind", "kind is required" if kind is None else f"kind must be a string, not {yaml_type(kind)}")
        kind = None
    if not isinstance(api_version, str):
        out.error("apiVersion", "apiVersion is required" if api_version is None
                  else f"apiVersion must be a string, not {yaml_type(api_version)}")
        api_version = None
    group, _, served = (api_version or "").rpartition("/")

    if kind is not None and kind not in KINDS:
        if group == GROUP:
            out.error("kind", f"{GROUP} has no kind {kind!r}: it serves {', '.join(KINDS)}")
        else:
            out.error("kind", f"kind {kind!r} cannot be a policy in a scenario: use {AUTHORIZATION_POLICY}, "
                              f"{PEER_AUTHENTICATION} or {REQUEST_AUTHENTICATION} ({GROUP}/v1)")
        return
    if api_version is not None and kind is not None and (group != GROUP or served not in SERVED_VERSIONS):
        if group == GROUP:
            out.error("apiVersion", f"{api_version} is not served for {kind}: use {GROUP}/v1 (or {GROUP}/v1beta1)")
        else:
            out.error("apiVersion", f"{kind} belongs to {GROUP}, not {group or api_version!r}: use {GROUP}/v1")
    if kind is None:
        return

    _check_structure(doc, kind, out)
    if _get(doc, "status") is not None:
        out.warn("status", "status is ignored when a policy is applied (status subresource); remove it")
    spec = _get(doc, "spec")
    _check_metadata(_get(doc, "metadata"), kind, spec, out)
    if not _can_descend(spec):
        return  # the schema walk reported it
    spec_map: Mapping[Any, Any] = spec if isinstance(spec, Mapping) else {}
    if kind == AUTHORIZATION_POLICY:
        _check_authorization_policy(spec_map, out)
    elif kind == REQUEST_AUTHENTICATION:
        _check_request_authentication(spec_map, out)
    else:
        _check_peer_authentication(spec_map, out)


# --------------------------------------------------------------------------------------------------
# metadata: names, labels, annotations (validateMetadata, checkDryRunAnnotation)


def _check_metadata(meta: object, kind: str, spec: object, out: _Out) -> None:
    if meta is None:
        out.error("metadata", "metadata is required, with name and namespace")
        return
    if not isinstance(meta, Mapping):
        return  # the schema walk reported it
    name, namespace = _get(meta, "name"), _get(meta, "namespace")
    if name is None:
        out.error("metadata.name", "metadata.name is required")
    elif isinstance(name, str):
        problem = _subdomain_problem(name)  # custom resources: NameIsDNSSubdomain
        if problem:
            out.error("metadata.name", f"name {name!r} {problem}")
    if namespace is None:
        out.error("metadata.namespace", "metadata.namespace is required in a scenario: kubectl would take the "
                                        "current context's namespace, a scenario must say which one it means")
    elif isinstance(namespace, str):
        problem = _label_name_problem(namespace)
        if problem:
            out.error("metadata.namespace", f"namespace {namespace!r} {problem}")
    for extra in OBJECT_META_OTHER:
        if _has(meta, extra):
            out.unsupported(f"metadata.{extra}", f"metadata.{extra} is not supported yet: a scenario's "
                                                 "policies carry only name, namespace, labels and annotations")

    labels = _get(meta, "labels")
    for key, value in _pairs(labels):
        path = _entry("metadata.labels", key)
        problem = _qualified_name_problem(_key_text(key))
        if problem:
            out.error(path, f"label key {_key_text(key)!r}: {problem}")
        if isinstance(value, str):
            problem = _label_value_problem(value)
            if problem:
                out.error(path, f"label value {value!r} {problem}")

    annotations = _get(meta, "annotations")
    total = 0
    for key, value in _pairs(annotations):
        text = _key_text(key)
        total += len(text) + (len(value) if isinstance(value, str) else 0)
        problem = _qualified_name_problem(text.lower())
        if problem:
            out.error(_entry("metadata.annotations", key), f"annotation key {text!r}: {problem}")
    if total > 256 * 1024:
        out.error("metadata.annotations", "annotations may hold at most 256 KiB in total")
    ann = {_key_text(k): v for k, v in _pairs(annotations) if v is not None}

    # validateMetadata (validation.go:205): internal annotations users may not set.
    banned = ["internal.istio.io/webhook-always-reject"]  # constants.AlwaysReject
    if out.f.internal_parent_annotations:  # 1.27+
        banned += ["internal.istio.io/parent-namespace", "internal.istio.io/parents"]
    for key in banned:
        if key in ann:
            out.error(_entry("metadata.annotations", key), f"annotation {key!r} may not be set by users "
                                                          "(Istio's validation rejects it)")

    # checkDryRunAnnotation (validation.go:228)
    if DRY_RUN_ANNOTATION in ann:
        path = _entry("metadata.annotations", DRY_RUN_ANNOTATION)
        value = ann[DRY_RUN_ANNOTATION]
        if kind != AUTHORIZATION_POLICY:
            out.error(path, f"{kind} does not support the annotation {DRY_RUN_ANNOTATION}; remove it")
            return
        action = _get(spec, "action")
        action = "ALLOW" if action is None else action
        if action in ("ALLOW", "DENY"):
            if isinstance(value, str) and value not in _GO_BOOLS:
                out.error(path, f"{DRY_RUN_ANNOTATION} has invalid value {value!r}: must be true or false "
                                "(Go strconv.ParseBool)")
        elif isinstance(action, str) and action in ACTIONS:
            out.error(path, f"the annotation {DRY_RUN_ANNOTATION} only supports action ALLOW/DENY, "
                            f"found action {action}")


# --------------------------------------------------------------------------------------------------
# Shared spec pieces: selector and targetRef


def _label_count(selector: object) -> int:
    return sum(1 for _, v in _pairs(_get(selector, "matchLabels")) if v is not None)


def _check_selector(spec: Mapping[Any, Any], out: _Out) -> None:
    """validateWorkloadSelector (validation.go:1360) and the matchLabels CEL rules (1.23+)."""
    selector = _get(spec, "selector")
    if not isinstance(selector, Mapping):
        return
    labels = _get(selector, "matchLabels")
    for key, value in _pairs(labels):
        if value is None:
            continue
        path = _entry("spec.selector.matchLabels", key)
        text = _key_text(key)
        if text == "":
            out.error(path, "empty key is not supported in selector")
        if "*" in text:
            out.error(path, f"wildcard is not supported in selector key {text!r}")
        if isinstance(value, str) and "*" in value:
            out.error(path, f"wildcard is not supported in selector value {value!r}")
    if labels is None or (isinstance(labels, Mapping) and _label_count(selector) == 0):
        out.warn("spec.selector", "Istio warns: workload selector specified without labels "
                                  "(the policy then applies to every workload in the namespace)")


def _check_one_of_selector(spec: Mapping[Any, Any], out: _Out) -> None:
    """validateOneOfSelectorType (validation.go:1383) and the CEL rule of the same name (1.24+, has()-based)."""
    by_go = [name for name, set_ in (
        ("selector", _get(spec, "selector") is not None),
        ("targetRef", _get(spec, "targetRef") is not None),
        ("targetRefs", _set(_get(spec, "targetRefs"))),
    ) if set_]
    by_cel = [name for name in ("selector", "targetRef", "targetRefs") if _has(spec, name)] if out.f.one_of_cel else []
    both = by_cel if len(by_cel) > len(by_go) else by_go
    if len(both) > 1:
        out.error(f"spec.{both[0]}", f"only one of selector, targetRef and targetRefs can be set, "
                                     f"found {' and '.join(both)}")


def _allowed_target_refs(f: _Features) -> list[tuple[str, str]]:
    """allowedTargetRefs (validation.go:1326) at this version, as (canonical group, kind)."""
    allowed = [("core", "Service"), (GATEWAY_API_GROUP, "Gateway")]
    if f.service_entry_ref:
        allowed.append(("networking.istio.io", "ServiceEntry"))
    if f.gateway_class_ref:
        allowed.append((GATEWAY_API_GROUP, "GatewayClass"))
    return allowed


_REF_SINCE = {"ServiceEntry": "1.24", "GatewayClass": "1.25"}


def _check_target_ref(ref: object, path: str, out: _Out) -> None:
    """validatePolicyTargetReference (validation.go:1333) and the targetRef CRD constraints (1.23+)."""
    if not isinstance(ref, Mapping):
        return
    f = out.f
    raw = {k: _get(ref, k) for k in TARGET_REF_FIELDS}
    text = {k: v if isinstance(v, str) else "" for k, v in raw.items()}
    group, kind, name, namespace = text["group"], text["kind"], text["name"], text["namespace"]
    # Lengths and patterns of group, kind and name are the CRD's (1.23+), checked by _check_structure.
    if name == "" and (raw["name"] is None or isinstance(raw["name"], str)):  # validation.go:1337
        out.error(f"{path}.name", "targetRef name must be set")
    if namespace:  # validation.go:1341; CEL "cross namespace referencing is not currently supported" (1.23+)
        out.error(f"{path}.namespace", "targetRef namespace must not be set; cross namespace referencing is "
                                       "not supported")
    if f.target_ref_kind_cel and raw["group"] is None:
        # 1.23-1.24: CEL `[self.group, self.kind] in [...]` reads group without has(): "no such key: group".
        out.error(f"{path}.group", f"the Istio {f.version} CRD requires targetRef group to be written out "
                                   "(its CEL rule fails with \"no such key: group\"): use group: \"\" for a "
                                   "Service, gateway.networking.k8s.io for a Gateway")
    canonical = group or "core"
    allowed = _allowed_target_refs(f)
    if (canonical, kind) not in allowed:
        names = ", ".join(f"{g}/{k}" for g, k in allowed)
        if raw["kind"] is None:
            message = f"targetRef kind is required (one of {names})"
        else:
            message = f"targetRef must be to one of {names} but was {group}/{kind}"
            known_kinds = {k for _, k in allowed} | set(_REF_SINCE)
            if kind in _REF_SINCE and not any(k == kind for _, k in allowed):
                message += f" ({kind} targetRefs are accepted from Istio {_REF_SINCE[kind]}; this scenario " \
                           f"targets Istio {f.version})"
            elif kind in known_kinds:
                message += f" (wrong group {group!r} for {kind})"
        out.error(f"{path}.kind", message)
        return
    if kind == "ServiceEntry":
        out.unsupported(f"{path}.kind", "targetRefs of kind ServiceEntry are not supported yet")
    elif kind == "GatewayClass" and name and name != WAYPOINT_GATEWAY_CLASS:
        out.warn(f"{path}.name", f"a GatewayClass targetRef attaches only when named {WAYPOINT_GATEWAY_CLASS!r} "
                                 "(from the root namespace); this one attaches to nothing "
                                 "(policyattachment.go, ShouldAttachPolicy)")


# --------------------------------------------------------------------------------------------------
# AuthorizationPolicy (ValidateAuthorizationPolicy, validation.go:1404)

_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_WILDCARD_SOURCE_FIELDS = ("principals", "notPrincipals", "namespaces", "notNamespaces")
_WILDCARD_VALUE_KEYS = ("source.principal", "source.namespace", "connection.sni")


def _check_authorization_policy(spec: Mapping[Any, Any], out: _Out) -> None:
    raw_action = _get(spec, "action")
    action: str | None = "ALLOW" if raw_action is None else raw_action if raw_action in ACTIONS else None
    rules = _get(spec, "rules")
    rules_set = _set(rules)

    _check_one_of_selector(spec, out)
    _check_selector(spec, out)
    _check_target_ref(_get(spec, "targetRef"), "spec.targetRef", out)
    for i, ref in enumerate(_get(spec, "targetRefs") if _is_list(_get(spec, "targetRefs")) else []):
        _check_target_ref(ref, _item("spec.targetRefs", i), out)

    provider = _get(spec, "provider")
    if action == "CUSTOM":
        if not rules_set:  # validation.go:1421
            out.error("spec.rules", "CUSTOM action without rules is meaningless as it will never be triggered; "
                                    "add an empty rule {} if you want it triggered for every request")
        elif _can_descend(provider):
            pname = _get(provider, "name")
            if pname is None or pname == "":  # validation.go:1426
                out.error("spec.provider.name", "provider.name must not be empty with action CUSTOM")
        _check_custom_rules(rules, out)
    if provider is not None and action is not None and action != "CUSTOM":  # validation.go:1464
        out.error("spec.provider", f"provider must not be set with non CUSTOM action, found {action}")
    if action == "DENY" and not rules_set and (rules is None or _is_list(rules)):  # validation.go:1468
        out.error("spec.rules", "DENY action without rules is meaningless as it will never be triggered; add an "
                                "empty rule {} if you want it triggered for every request"
                  + (" (rules: [] counts as no rules)" if _is_list(rules) else ""))

    if not _is_list(rules):
        return
    for i, rule in enumerate(rules):
        if isinstance(rule, Mapping):
            _check_rule(rule, _item("spec.rules", i), action, out)


def _check_custom_rules(rules: object, out: _Out) -> None:
    """The CUSTOM-only restrictions (validation.go:1430): no identity fields, no identity when keys."""
    f = out.f
    banned_fields = ["namespaces", "notNamespaces", "principals", "notPrincipals", "requestPrincipals",
                     "notRequestPrincipals"]
    banned_keys = ["source.namespace", "source.principal"]
    if f.service_accounts:
        banned_fields += list(SERVICE_ACCOUNT_FIELDS)
        banned_keys.append("source.serviceAccount")
    if f.trust_domain_checks:
        banned_fields += list(TRUST_DOMAIN_FIELDS)
        banned_keys.append("source.trustDomain")
    for i, rule in enumerate(rules if _is_list(rules) else []):
        rpath = _item("spec.rules", i)
        froms = _get(rule, "from")
        for j, entry in enumerate(froms if _is_list(froms) else []):
            source = _get(entry, "source")
            for name in banned_fields:
                if _set(_get(source, name)) and _is_list(_get(source, name)):
                    out.error(f"{_item(rpath + '.from', j)}.source.{name}",
                              f"{name} is currently not supported with CUSTOM action")
        whens = _get(rule, "when")
        for j, cond in enumerate(whens if _is_list(whens) else []):
            key = _get(cond, "key")
            if isinstance(key, str) and (key in banned_keys or key.startswith("request.auth.")):
                out.error(f"{_item(rpath + '.when', j)}.key", f"{key} is currently not supported with CUSTOM action")


def _check_rule(rule: Mapping[Any, Any], path: str, action: str | None, out: _Out) -> None:
    froms, tos, whens = _get(rule, "from"), _get(rule, "to"), _get(rule, "when")
    from_exists = to_exists = tcp_in_from = tcp_in_to = False

    if _is_list(froms) and len(froms) == 0:
        # validation.go:1478 rejects `from: []`, but never sees it: the webhook's jsonpb decoding turns an empty
        # list into a nil slice (protomarshal.ApplyJSON), so Istio accepts the policy and treats from as absent.
        out.warn(f"{path}.from", "from: [] is accepted by Istio and treated as if from were absent, so this "
                                 "rule matches requests from any source; remove it or list sources")
    for j, entry in enumerate(froms if _is_list(froms) else []):
        if not isinstance(entry, Mapping):
            continue
        epath = _item(f"{path}.from", j)
        source = _get(entry, "source")
        if source is None:  # validation.go:1490
            out.error(f"{epath}.source", "from.source must not be nil: give each from entry a source")
            continue
        if not isinstance(source, Mapping):
            continue
        from_exists = True
        tcp_in_from |= _check_source(source, f"{epath}.source", out)

    if _is_list(tos) and len(tos) == 0:
        out.warn(f"{path}.to", "to: [] is accepted by Istio and treated as if to were absent, so this rule "  # :1531
                               "matches every operation; remove it or list operations")
    for j, entry in enumerate(tos if _is_list(tos) else []):
        if not isinstance(entry, Mapping):
            continue
        epath = _item(f"{path}.to", j)
        operation = _get(entry, "operation")
        if operation is None:  # validation.go:1539
            out.error(f"{epath}.operation", "to.operation must not be nil: give each to entry an operation")
            continue
        if not isinstance(operation, Mapping):
            continue
        to_exists = True
        tcp_in_to |= _check_operation(operation, f"{epath}.operation", out)

    for j, cond in enumerate(whens if _is_list(whens) else []):
        if isinstance(cond, Mapping):
            _check_condition(cond, _item(f"{path}.when", j), out)

    # validation.go:1584: a DENY rule with only HTTP attributes denies all TCP traffic it selects.
    if action == "DENY" and ((from_exists and not to_exists and not tcp_in_from) or (to_exists and not tcp_in_to)):
        out.warn(path, "Istio warns: configured AuthorizationPolicy will deny all traffic to TCP ports under its "
                       "scope due to the use of only HTTP attributes in a DENY rule; it is recommended to "
                       "explicitly specify the port")


def _has_unknown_field(block: Mapping[Any, Any], known: Mapping[str, Any]) -> bool:
    """Whether a Source or Operation holds a field its schema lacks (already an "unknown field" error, which
    is the real problem: "must not be empty" on top of it would only distract)."""
    return any(_key_text(k) not in known for k, v in _pairs(block) if v is not None)


def _check_values(values: object, path: str, name: str, out: _Out) -> None:
    """security.CheckEmptyValues (security.go:106), reported at the offending item."""
    for k, value in _strings(values):
        if value == "":
            out.error(_item(path, k), f"empty value not allowed, found in {name}")


def _warn_mid_wildcards(values: object, path: str, name: str, out: _Out) -> None:
    for k, value in _strings(values):
        if not _mid_wildcard(value) or _MATCH_ONE in value or _MATCH_ANY in value:
            continue  # path templates are checked by CheckValidPathTemplate
        if name in ("paths", "notPaths"):
            hint = "; for one path segment use the template {*}, for the rest of a path {**} (Istio 1.22+)"
        elif name in ("namespaces", "notNamespaces", "source.namespace"):
            # builder generator.go srcNamespaceGenerator (every '*' -> '.*') vs ambient authorization.go
            # stringToMatch (leading/trailing '*' only).
            hint = ("; note that sidecars and waypoints turn every '*' in a namespace into a glob while ztunnel "
                    "does not, so the modes may disagree")
        else:
            hint = ""
        out.warn(_item(path, k), f"a '*' inside {value!r} is not a wildcard: Istio matches only a single leading "
                                 f"or trailing '*' (prefix, suffix or presence match){hint}")


def _check_source(source: Mapping[Any, Any], path: str, out: _Out) -> bool:
    """Checks of one Rule.From.Source; returns whether it holds TCP attributes (validation.go:1521)."""
    f = out.f
    sa_fields = SERVICE_ACCOUNT_FIELDS if f.service_accounts else ()
    td_fields = TRUST_DOMAIN_FIELDS if f.trust_domains else ()
    values = {name: _get(source, name) for name in (*SOURCE_FIELDS, *sa_fields, *td_fields)}

    if sa_fields:
        # validation.go:1495 (len-based) and the CRD CEL rule on Source (1.25+, has()-based).
        identity = ("principals", "notPrincipals", "namespaces", "notNamespaces")
        clash_go = any(_set(values[n]) for n in sa_fields) and any(_set(values[n]) for n in identity)
        clash_cel = any(_has(source, n) for n in sa_fields) and any(_has(source, n) for n in identity)
        if clash_go or clash_cel:
            out.error(path, "cannot set serviceAccounts or notServiceAccounts together with principals, "
                            "notPrincipals, namespaces or notNamespaces in one source; use separate from entries")
    counted = (*SOURCE_FIELDS, *sa_fields, *(td_fields if f.trust_domain_checks else ()))
    if not _has_unknown_field(source, values) and not any(_set(values[n]) for n in counted):  # validation.go:1499
        message = "from.source must not be empty: set at least one of its fields"
        if any(_set(values[n]) for n in td_fields):
            message += f" (Istio {f.version} does not count trustDomains here; 1.30.2 does)"
        out.error(path, message)

    for name in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):  # validation.go:1505
        for k, value in _strings(values[name]):
            problem = _ip_problem(value) if value else None
            if problem:
                out.error(_item(f"{path}.{name}", k), problem)
    for name in SOURCE_FIELDS:  # validation.go:1509
        _check_values(values[name], f"{path}.{name}", name, out)
    for name in sa_fields:  # validation.go:1512, security.go:146
        items = values[name]
        if _is_list(items) and len(items) > 16:
            out.error(f"{path}.{name}", f"{name} may not have more than 16 values")
        for k, value in _strings(items):
            problem = _service_account_problem(value)
            if problem:
                out.error(_item(f"{path}.{name}", k), f"{problem}, found in {name}")
    if f.trust_domain_checks:
        for name in td_fields:  # validation.go:1513, security.go:134
            for k, value in _strings(values[name]):
                problem = _trust_domain_problem(value)
                if problem:
                    out.error(_item(f"{path}.{name}", k), f"{problem}, found in {name}")
    for name in _WILDCARD_SOURCE_FIELDS:
        _warn_mid_wildcards(values[name], f"{path}.{name}", name, out)

    for name in ("requestPrincipals", "notRequestPrincipals"):
        _warn_request_principals(values[name], f"{path}.{name}", name, out)
    for name in td_fields:
        if _set(values[name]) and not f.trust_domain_checks:
            out.unsupported(f"{path}.{name}", f"{name} is not supported yet before Istio 1.30.2 (the 1.30.0 CRD "
                                              "accepts it, but istiod's RBAC builder only uses it from 1.30.2)")

    tcp = ("principals", "notPrincipals", "ipBlocks", "notIpBlocks", "namespaces", "notNamespaces",
           "remoteIpBlocks", "notRemoteIpBlocks", *sa_fields)
    return any(_set(values[n]) for n in tcp)


def _check_operation(operation: Mapping[Any, Any], path: str, out: _Out) -> bool:
    """Checks of one Rule.To.Operation; returns whether it holds TCP attributes (ports, notPorts)."""
    values = {name: _get(operation, name) for name in OPERATION_FIELDS}
    if not _has_unknown_field(operation, values) and not any(_set(v) for v in values.values()):  # :1544
        out.error(path, "to.operation must not be empty: set at least one of its fields")
    for name in ("ports", "notPorts"):  # validation.go:1548
        for k, value in _strings(values[name]):
            problem = _port_problem(value) if value else None
            if problem:
                out.error(_item(f"{path}.{name}", k), problem)
            elif value and _small_int(value) == 0:
                out.warn(_item(f"{path}.{name}", k), "port 0 is accepted by Istio but no connection has it")
    for name in OPERATION_FIELDS:  # validation.go:1550
        _check_values(values[name], f"{path}.{name}", name, out)
    for name in ("paths", "notPaths"):  # validation.go:1558
        for k, value in _strings(values[name]):
            problem = _path_template_problem(value, out.f.new_path_template) if value else None
            if problem:
                out.error(_item(f"{path}.{name}", k), f"{problem}, found in {name}")
    for name in ("methods", "notMethods"):
        for k, value in _strings(values[name]):
            if value != value.upper() and value.upper() in _HTTP_METHODS:
                out.warn(_item(f"{path}.{name}", k),
                         f"method {value!r} is matched case-sensitively and request methods are upper-case, "
                         f"so it matches no {value.upper()} request; write {value.upper()!r}")
    for name in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"):
        _warn_mid_wildcards(values[name], f"{path}.{name}", name, out)
    return _set(values["ports"]) or _set(values["notPorts"])


def _attribute_problem(key: str, f: _Features) -> str | None:
    """The key part of security.ValidateAttribute (security.go:231) at this version."""
    if key.startswith("request.headers"):
        return _map_key_problem(key)
    if key in ("source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
               "request.auth.audiences", "request.auth.presenter", "destination.ip", "destination.port",
               "connection.sni"):
        return None
    if key == "source.serviceAccount" and f.service_accounts:
        return None
    if key == "source.trustDomain" and f.trust_domains:
        return None
    if key.startswith("request.auth.claims") or key.startswith("experimental.envoy.filters."):
        return _map_key_problem(key)
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    message = f"unknown attribute: {key}"
    since = {"source.serviceAccount": "1.25", "source.trustDomain": "1.30"}.get(key)
    if since:
        return f"{message} (Istio knows it from {since}; this scenario targets Istio {f.version})"
    known = ["request.headers[]", "source.ip", "remote.ip", "source.namespace", "source.principal",
             "source.serviceAccount", "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
             "request.auth.claims[]", "destination.ip", "destination.port", "connection.sni"]
    close = closest(key, known, cutoff=0.75)
    return f"{message}; did you mean {close!r}?" if close else message


def _check_condition(cond: Mapping[Any, Any], path: str, out: _Out) -> None:
    """One `when` condition (validation.go:1565) with security.ValidateAttribute (security.go:231)."""
    f = out.f
    key = _get(cond, "key")
    if not isinstance(key, str):
        return  # missing or not a string: the schema walk reported it
    if key == "":
        out.error(f"{path}.key", "key must not be empty")
        return
    values, not_values = _get(cond, "values"), _get(cond, "notValues")
    if not _set(values) and not _set(not_values):
        out.error(path, f"at least one of values or notValues must be set for key {key}")
    key_problem = _attribute_problem(key, f)
    if key_problem:
        out.error(f"{path}.key", key_problem)
    for field_name, items in (("values", values), ("notValues", not_values)):
        ipath = f"{path}.{field_name}"
        _check_values(items, ipath, key, out)
        if key_problem:
            continue
        for k, value in _strings(items):
            if value == "":
                continue
            problem: str | None = None
            if key in ("source.ip", "remote.ip", "destination.ip"):
                problem = _ip_problem(value)
            elif key == "destination.port":
                problem = _port_problem(value)
                if not problem and _small_int(value) == 0:
                    out.warn(_item(ipath, k), "port 0 is accepted by Istio but no connection has it")
            elif key == "source.serviceAccount":
                problem = _service_account_problem(value)
            elif key == "source.trustDomain" and f.trust_domain_checks:
                problem = _wildcard_problem(value)
            if problem:
                out.error(_item(ipath, k), f"invalid value for key {key}: {problem}")
        if key in _WILDCARD_VALUE_KEYS or key.startswith("request.headers"):
            _warn_mid_wildcards(items, ipath, key, out)
    if key_problem:
        return
    if key in _REQUEST_PRINCIPAL_KEYS:
        for field_name in ("values", "notValues"):
            _warn_request_principals(_get(cond, field_name), f"{path}.{field_name}", key, out)
    if key.startswith("experimental."):
        out.unsupported(f"{path}.key", f"when key {key} is not supported yet (Envoy filter metadata is not modelled)")
    elif key == "source.trustDomain" and not f.trust_domain_checks:
        out.unsupported(f"{path}.key", "when key source.trustDomain is not supported yet before Istio 1.30.2 (istiod's "
                                       "RBAC builder only uses it from 1.30.2)")


# --------------------------------------------------------------------------------------------------
# Go parsers the JWT and ext_authz checks need (time.ParseDuration, net/url, lestrrat-go/jwx jwk.Parse)

_GO_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                      "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_DURATION_NS = (1 << 63) - 1


def _go_duration(text: str) -> int | str:
    """time.ParseDuration: nanoseconds, or the reason it fails.

    A protobuf Duration reaches istiod as JSON and golang/protobuf's jsonpb (protomarshal.ApplyJSON, Istio's
    webhook and mesh config reader) decodes it with time.ParseDuration ("bad Duration: ..."); the CRD's CEL
    `duration()` reads the same Go syntax: "1.5s", "500ms", "1h2m".
    """
    rest = text
    negative = rest.startswith("-")
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return f"invalid duration {text!r}"
    total = Fraction(0)
    while rest:
        m = _DURATION_PART.match(rest)
        assert m is not None  # every group may be empty
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            return f"invalid duration {text!r}"
        if not unit:
            return f"missing unit in duration {text!r}"
        if unit not in _GO_DURATION_UNITS:
            return f"unknown unit {unit!r} in duration {text!r}"
        value = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += value * _GO_DURATION_UNITS[unit]
        if total > _MAX_DURATION_NS:
            return f"invalid duration {text!r}"
        rest = rest[m.end():]
    ns = int(total)
    return -ns if negative else ns


def _jwks_uri_problem(uri: str) -> str | None:
    """security.ParseJwksURI (pkg/config/security/security.go:77): net/url parses it, the scheme must be http or
    https, an explicit port must be a number. (The CRD's CEL `url(self).getScheme() in ["http", "https"]`, 1.23+,
    refuses the same values; one message is enough.)"""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = m.group(1).lower() if m else ""
    if scheme not in ("http", "https"):
        return f"URI scheme {scheme!r} is not supported (jwksUri must be http:// or https://)"
    authority = uri[m.end():] if m else uri
    if authority.startswith("//"):
        host = re.split(r"[/?#]", authority[2:], maxsplit=1)[0].rpartition("@")[2]
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
        if port and not port.isdigit():
            return f"invalid port {':' + port!r} after host"
    return None


_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_JWK_REQUIRED = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


def _jwks_problem(text: str) -> tuple[str | None, list[int]]:
    """lestrrat-go/jwx jwk.Parse (v1.2, what istiod 1.30 links), approximately: (why it fails, or None; the
    indices of keys holding private material, for warnPrivateJwksKeys).

    A JSON object that is a key set (`keys`) or a single key; each key needs a known `kty` and that type's
    parameters, base64url-encoded. Symmetric (`oct`) keys and keys with `d` are private material.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"failed to unmarshal JSON: {exc}", []
    if not isinstance(doc, dict):
        return "failed to unmarshal JSON into a key or a key set", []
    keys = doc.get("keys") if "keys" in doc else [doc]
    if not isinstance(keys, list):
        return "failed to unmarshal JSON: keys must be an array", []
    private: list[int] = []
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            return f"key {i}: failed to unmarshal JSON into a key", []
        kty = key.get("kty")
        if kty not in _JWK_REQUIRED:
            return f"key {i}: invalid key type {kty!r} (kty must be RSA, EC, OKP or oct)", []
        for name in _JWK_REQUIRED[kty]:
            if name not in key:
                return f"key {i}: required field {name} is missing", []
        for name in ("n", "e", "x", "y", "k", "d"):
            value = key.get(name)
            if value is not None and (not isinstance(value, str) or not _B64URL.fullmatch(value)):
                return f"key {i}: field {name} is not base64url-encoded", []
        if kty == "oct" or "d" in key:
            private.append(i)
    return None, private


_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def _header_value_problem(value: str) -> str | None:
    """ValidateHTTPHeaderValue (validation.go@1.22.0, with header_value_validator.go validateHeaderValue, a port
    of Envoy's header_parser.cc): no control characters, and every unescaped '%' opens a %VARIABLE% that closes.
    Istio 1.22 checks outputClaimToHeaders header *names* with it."""
    if not _HEADER_VALUE.fullmatch(value):
        return f"header value configuration {value} is invalid"
    literal, variable, expect_array, expect_string, string, expect_delim, expect_args_end, expect_var_end = range(8)
    state, pos = literal, 0
    while pos < len(value):
        ch, has_next = value[pos], pos + 1 < len(value)
        if state == literal:
            if ch == "%":
                if not has_next:
                    return "header value configuration: invalid header configuration. Un-escaped %"
                if value[pos + 1] == "%":
                    pos += 1
                else:
                    state = variable
        elif state == variable:
            state = literal if ch == "%" else expect_array if ch == "(" else variable
        elif state == expect_array:
            state = expect_string if ch == "[" else state if ch == " " else string
        elif state == expect_delim:
            if ch == ",":
                state = expect_string
            elif ch == "]":
                state = expect_args_end
            elif ch != " ":
                return "header value configuration: invalid header configuration. Expecting ',', ']', or whitespace"
        elif state == expect_string:
            if ch == '"':
                state = string
            elif ch != " ":
                return "header value configuration: invalid header configuration. Expecting '\"'"
        elif state == string:
            if ch == "\\":
                if not has_next:
                    return ("header value configuration: invalid header configuration. Un-terminated backslash in "
                            "JSON string")
                pos += 1
            elif ch == ")":
                state = expect_var_end
            elif ch == '"':
                state = expect_delim
        elif state == expect_args_end:
            if ch == ")":
                state = expect_var_end
            elif ch != " ":
                return "header value configuration: invalid header configuration. Expecting ')' or whitespace"
        elif state == expect_var_end:
            if ch == "%":
                state = literal
            elif ch != " ":
                return "header value configuration: invalid header configuration. Expecting '%' or whitespace after"
        pos += 1
    if state != literal:
        return f"header value configuration: invalid header configuration. Un-terminated variable expression {value!r}"
    return None


_STRICT_HEADER_NAME = re.compile(r"[-_A-Za-z0-9]+")  # validStrictHeaderNameRegex (validation.go:81)


# --------------------------------------------------------------------------------------------------
# RequestAuthentication (ValidateRequestAuthentication, validation.go:1597; validateJwtRule, :1639)

JWT_RULE_FIELDS = ("issuer", "audiences", "jwksUri", "jwks_uri", "jwks", "fromHeaders", "fromParams", "fromCookies",
                   "outputPayloadToHeader", "outputClaimToHeaders", "forwardOriginalToken", "timeout",
                   "spaceDelimitedClaims")


def _check_request_authentication(spec: Mapping[Any, Any], out: _Out) -> None:
    """ValidateRequestAuthentication: the selector / targetRef(s) checks shared with AuthorizationPolicy, then
    validateJwtRule and (1.30.3+) warnPrivateJwksKeys per jwtRule, and the CRD's CEL rule on a jwtRule (1.23+)."""
    _check_one_of_selector(spec, out)
    _check_selector(spec, out)
    _check_target_ref(_get(spec, "targetRef"), "spec.targetRef", out)
    refs = _get(spec, "targetRefs")
    for i, ref in enumerate(refs if _is_list(refs) else []):
        _check_target_ref(ref, _item("spec.targetRefs", i), out)
    rules = _get(spec, "jwtRules")
    for i, rule in enumerate(rules if _is_list(rules) else []):
        if isinstance(rule, Mapping):
            _check_jwt_rule(rule, _item("spec.jwtRules", i), out)


def _check_jwt_rule(rule: Mapping[Any, Any], path: str, out: _Out) -> None:
    f = out.f
    issuer, jwks, jwks_uri = _get(rule, "issuer"), _get(rule, "jwks"), _get(rule, "jwksUri")
    jwks_uri_snake = _get(rule, "jwks_uri")  # the proto field's original name: jsonpb fills JwksUri from either
    uri = jwks_uri if isinstance(jwks_uri, str) and jwks_uri else jwks_uri_snake
    uri_field = f"{path}.jwksUri" if isinstance(jwks_uri, str) and jwks_uri else f"{path}.jwks_uri"

    for k, audience in _strings(_get(rule, "audiences")):  # validateJwtRule: "audience must be non-empty string"
        if audience == "":
            out.error(_item(f"{path}.audiences", k), "audience must be non-empty string")
    if not f.issuer_optional:
        if not (isinstance(issuer, str) and issuer):
            out.error(f"{path}.issuer", f"issuer must be set (Istio {f.version}; from 1.27 a jwksUri alone will do)")
    elif not (isinstance(issuer, str) and issuer) and not (isinstance(uri, str) and uri):
        out.error(f"{path}.issuer", "issuer or jwksUri must be non-empty string")
    if isinstance(uri, str) and uri:
        problem = _jwks_uri_problem(uri)
        if problem:
            out.error(uri_field, problem)
    if f.cel and sum(_has(rule, n) for n in ("jwksUri", "jwks_uri", "jwks")) > 1:  # CRD CEL on JWTRule (1.23+)
        out.error(path, "only one of jwks or jwksUri can be set")

    private: list[int] = []
    if isinstance(jwks, str) and jwks != "" and "${jwks:" not in jwks:
        # A `${jwks:<issuer>}` placeholder is the JWKS the suite makes for that issuer (public keys only);
        # the loader checks its name and that it is the whole value.
        problem, private = _jwks_problem(jwks)
        if problem:
            out.error(f"{path}.jwks", f"jwks parse error: {problem}")
    if f.private_jwks_warning:
        for index in private:
            out.warn(f"{path}.jwks", f"Istio warns: jwks key at index {index} contains private key material; only "
                                     "public keys are used for verification")

    headers = _get(rule, "fromHeaders")
    for k, location in enumerate(headers if _is_list(headers) else []):
        if location is None:
            out.error(_item(f"{path}.fromHeaders", k), "location header name must be non-null")
        elif isinstance(location, Mapping) and _get(location, "name") == "":
            out.error(f"{_item(f'{path}.fromHeaders', k)}.name", "location header name must be non-empty string")
    for name, message in (("fromParams", "location query must be non-empty string"),
                          ("fromCookies", "cookie name must be non-empty string")):
        for k, value in _strings(_get(rule, name)):
            if value == "":
                out.error(_item(f"{path}.{name}", k), message)

    claims = _get(rule, "outputClaimToHeaders")
    for k, entry in enumerate(claims if _is_list(claims) else []):
        epath = _item(f"{path}.outputClaimToHeaders", k)
        if entry is None:
            out.error(epath, "outputClaimToHeaders must not be null")
            continue
        if not isinstance(entry, Mapping):
            continue
        claim, header = _get(entry, "claim"), _get(entry, "header")
        if not claim or not header:  # reported at the empty one, where the CRD (1.23+) says it is required
            out.error(f"{epath}.{'claim' if not claim else 'header'}",
                      "outputClaimToHeaders header and claim value must be non-empty string")
            continue
        if not isinstance(header, str):
            continue
        if f.jwt_rule_checks:  # ValidateStrictHTTPHeaderName (ValidateHTTPHeaderName before 1.24.4, same regex)
            if not _STRICT_HEADER_NAME.fullmatch(header):
                out.error(f"{epath}.header", f"header name {header} is not a valid header name")
        else:  # 1.22: ValidateHTTPHeaderValue on the header name
            problem = _header_value_problem(header)
            if problem:
                out.error(f"{epath}.header", problem)

    timeout = _get(rule, "timeout")
    if isinstance(timeout, str):
        parsed = _go_duration(timeout)
        if isinstance(parsed, str):
            out.error(f"{path}.timeout", f"bad Duration: time: {parsed}")
        elif f.jwt_rule_checks and parsed < 1_000_000:  # agent.ValidateDuration; the CRD's CEL (1.23+) agrees
            out.error(f"{path}.timeout", "duration must be greater than 1ms")
        elif f.jwt_rule_checks and parsed % 1_000_000:
            out.error(f"{path}.timeout", "only durations to ms precision are supported")

    # What this suite does not model (valid Istio): the targets serve no JWKS endpoint, so a key set comes inline.
    if isinstance(uri, str) and uri:
        out.unsupported(uri_field, "jwksUri is not supported yet: the suite serves no JWKS endpoint (nothing is "
                                   "fetched on any target); write jwks: \"${jwks:<issuer name>}\"")
    elif not (isinstance(jwks, str) and jwks):
        out.unsupported(path, "a jwtRule without jwks is not supported yet: istiod would fetch the key set from the "
                              "issuer's OpenID discovery document; write jwks: \"${jwks:<issuer name>}\"")


_REQUEST_PRINCIPAL_KEYS = ("request.auth.principal",)


def _request_principal_matchers(value: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """How istiod matches one requestPrincipals value (requestPrincipalGenerator.extendedPrincipal,
    pilot/pkg/security/authz/model/generator.go@1.30.3): the (kind, text) matchers of `iss` and `sub`, kind one of
    exact, prefix, suffix, any (`.+`). The value is split at its LAST '/'."""
    idx = value.rfind("/")
    found = idx >= 0
    iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
    if value == "*":
        return ("any", ""), ("any", "")
    if value.startswith("*"):
        if found:
            return (("any", "") if iss == "*" else ("suffix", iss[1:])), ("exact", sub)
        return ("any", ""), ("suffix", value[1:])
    if value.endswith("*"):
        if found:
            return ("exact", iss), (("any", "") if sub == "*" else ("prefix", sub[:-1]))
        return ("prefix", value[:-1]), ("any", "")
    return ("exact", iss), ("exact", sub)


def _warn_request_principals(values: object, path: str, name: str, out: _Out) -> None:
    """Warnings (Istio accepts them) for requestPrincipals values that do not match what they seem to."""
    for k, value in _strings(values):
        if value == "":
            continue  # CheckEmptyValues reports it
        (iss_kind, iss), (sub_kind, sub) = _request_principal_matchers(value)
        where = _item(path, k)
        if sub_kind == "exact" and sub == "" and "/" not in value:
            out.warn(where, f"{value!r} has no '/': Istio reads it as iss {value!r} with an empty sub, which no "
                            f"token with a sub matches; write '<iss>/<sub>' (or '{value}/*' for any sub)")
        elif sub_kind == "exact" and sub == "":
            out.warn(where, f"{value!r} ends with '/': it matches only tokens whose sub is empty; write "
                            f"'{value}*' for any sub")
        elif any(kind != "any" and "*" in text for kind, text in ((iss_kind, iss), (sub_kind, sub))):
            out.warn(where, f"a '*' inside {value!r} is matched literally: {name} values take one leading or "
                            "one trailing '*' (iss/sub split at the last '/', generator.go requestPrincipalGenerator)")


# --------------------------------------------------------------------------------------------------
# meshConfig.extensionProviders of the ext_authz kinds
# (ValidateMeshConfig -> validateExtensionProvider, pkg/config/validation/agent/extensionprovider.go@1.30.3, which
# istioctl and istiod apply to a mesh config; then what istiod does with each provider when it builds CUSTOM
# filters, processExtensionProvider / buildExtAuthzHTTP, pilot/pkg/security/authz/builder/extauthz.go@1.30.3)

EXT_AUTHZ_KINDS = {"envoyExtAuthzHttp": "http", "envoyExtAuthzGrpc": "grpc"}
EXT_AUTHZ_HEADER_LISTS = ("includeRequestHeadersInCheck", "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
                          "headersToDownstreamOnAllow")
# envoy.type.v3.StatusCode (api/envoy/type/v3/http_status.proto): the values statusOnError may name
# (validateExtensionProviderEnvoyExtAuthzStatusOnError looks the code up in StatusCode_name, 0 "Empty" included).
ENVOY_STATUS_CODES = frozenset({
    0, 100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401, 402,
    403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426, 428, 429,
    431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})
_ISTIO_DNS_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")  # labels.IsDNS1123Label (case-insensitive)
_ISTIO_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_INVALID_PROVIDER = ("istiod treats this provider as invalid: every CUSTOM policy naming it denies the requests "
                     "its rules match with 403 RBAC: access denied")


def _dns1123_labels_problem(domain: str) -> str | None:
    """agent.ValidateDNS1123Labels: the TLD is not all-numeric, every label a DNS-1123 label (a trailing '.' ok)."""
    parts = domain.split(".")
    if re.fullmatch(r"[+-]?[0-9]+", parts[-1]):
        return f"domain name {domain!r} invalid (top level domain {parts[-1]!r} cannot be all-numeric)"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None
        if len(label) > 63 or not _ISTIO_DNS_LABEL.fullmatch(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


def _service_problem(service: str) -> str | None:
    """validateExtensionProviderService: `<fqdn>` or an IP, or `<namespace>/<hostname>`
    (ValidateNamespaceSlashWildcardHostname(service, false, false))."""
    if service == "":
        return "service must not be empty"
    if "/" not in service:
        fqdn = ("domain name too long (max 255)" if len(service) > 255 else _dns1123_labels_problem(service))
        if fqdn is not None and isinstance(_parse_addr(service), str):
            return f"invalid service fmt {service}: {service} is not a valid IP"
        return None
    namespace, _, host = service.partition("/")
    problems = []
    if not namespace or not host:
        problems.append("config namespace and dnsName in host entry cannot be empty")
    if namespace not in ("*", ".", "~") and not (len(namespace) <= 63 and _ISTIO_DNS_LABEL.fullmatch(namespace)):
        problems.append(f"invalid namespace value {namespace!r} in sidecar")
    if host != "*" and "." not in host:
        problems.append("short names (non FQDN) are not allowed")
    if len(host) > 255 or not host:
        problems.append(f"domain name {host!r} invalid")
    else:
        first, _, rest = host.partition(".")
        if len(first) > 63 or not _ISTIO_WILDCARD_LABEL.fullmatch(first):
            problems.append(f"domain name {host!r} invalid (label {first!r} invalid)")
        elif rest:
            problem = _dns1123_labels_problem(rest)
            if problem:
                problems.append(problem)
    if "*" in host and len(host) != 1 and not host.startswith("*."):
        problems.append(f"partial wildcard {host!r} not allowed")
    return "; ".join(problems) or None


def _provider_name_problem(name: str) -> str | None:
    """validateProviderName (builder/extauthz.go@1.30.0+)."""
    if len(name) > 63:
        return f"provider name too long (max 63 characters): {len(name)}"
    for i, ch in enumerate(name):
        if "a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-":
            continue
        if "A" <= ch <= "Z":
            return f"uppercase letters not allowed (use lowercase): character {ch!r} at position {i}"
        return f"invalid character {ch!r} at position {i} (only lowercase letters, digits, and hyphens allowed)"
    if name.startswith("-") or name.endswith("-"):
        return "provider name cannot start or end with hyphen"
    return None


def provider_defects(provider: ExtensionProvider, version: IstioVersion) -> list[str]:
    """Why istiod at `version` treats an extension provider the loader accepted as invalid (processExtensionProvider,
    buildExtAuthzHTTP), so that CUSTOM policies naming it deny what their rules match; empty when it does not.
    (The service istiod cannot find, LookupCluster, depends on the workloads: Scenario.provider_workload.)"""
    out = []
    problem = _provider_name_problem(provider.name) if _Features.of(version).provider_name_check else None
    if problem:
        out.append(f"invalid provider name {provider.name!r}: {problem}")
    for list_name, values in (("includeRequestHeadersInCheck", provider.include_request_headers_in_check),
                              ("headersToUpstreamOnAllow", provider.headers_to_upstream_on_allow),
                              ("headersToDownstreamOnDeny", provider.headers_to_downstream_on_deny),
                              ("headersToDownstreamOnAllow", provider.headers_to_downstream_on_allow)):
        if "*" in values:
            out.append(f"a single wildcard (\"*\") in {list_name}")
    return out


def validate_extension_provider(doc: Mapping[Any, Any], version: IstioVersion) -> list[Finding]:
    """Check one `meshConfig.extensionProviders` entry of an ext_authz kind the way Istio `version` does.

    Errors: what ValidateMeshConfig rejects (`istioctl install` and istiod refuse the mesh config): an empty
    name, a port outside 1..65535, a malformed service, an unknown statusOnError, a pathPrefix without a
    leading '/', a malformed timeout. Warnings: what Istio accepts but turns into a broken provider, so that the
    CUSTOM policies naming it deny (processExtensionProvider / buildExtAuthzHTTP): a name that is not a
    lowercase DNS-1123 label (1.30+), a lone "*" in a header list. Field paths are relative to the entry
    (`name`, `envoyExtAuthzHttp.port`). Types and unknown fields are the scenario schema's business.

    (Research note correction, istio-authn-custom-gateways.md §3.1: the DNS-1123 name rule and the lone-"*" rule
    are not mesh config validation but istiod's reading of the provider; Istio accepts the mesh config.)
    """
    f = _Features.of(version)
    out = _Out(f)
    name = _get(doc, "name")
    if isinstance(name, str):
        if name == "":
            out.error("name", "empty extension provider name")
        elif f.provider_name_check:
            problem = _provider_name_problem(name)
            if problem:
                out.warn("name", f"invalid provider name {name!r}: {problem}; {_INVALID_PROVIDER} (Istio {f.version}, "
                                 "validateProviderName)")
    for field_name, kind in EXT_AUTHZ_KINDS.items():
        config = _get(doc, field_name)
        if not isinstance(config, Mapping):
            continue
        port = _get(config, "port")
        if isinstance(port, int) and not isinstance(port, bool) and not 1 <= port <= 65535:
            out.error(f"{field_name}.port", f"port number {port} must be in the range 1..65535")
        elif port is None:
            out.error(f"{field_name}.port", "port number 0 must be in the range 1..65535 (port is required)")
        service = _get(config, "service")
        if isinstance(service, str) or service is None:
            problem = _service_problem(service or "")
            if problem:
                out.error(f"{field_name}.service", problem)
        status = _get(config, "statusOnError")
        if isinstance(status, str) and status != "":
            code = _small_int(status.lstrip("+-")) if re.fullmatch(r"[+-]?[0-9]+", status) else None
            if code is None:
                out.error(f"{field_name}.statusOnError",
                          f"invalid statusOnError value {status}: strconv.ParseInt: parsing {status!r}: invalid syntax")
            elif status.startswith("-") or code not in ENVOY_STATUS_CODES:
                out.error(f"{field_name}.statusOnError",
                          f"unsupported statusOnError value {status}: must be an HTTP status Envoy knows "
                          "(envoy.type.v3.StatusCode), e.g. 403, 500, 503")
            elif code == 0:
                out.unsupported(f"{field_name}.statusOnError",
                                "statusOnError 0 passes Istio's validation but Envoy refuses HttpStatus code 0 "
                                "(not_in: 0), so the proxies reject the configuration: not supported")
        timeout = _get(config, "timeout")
        if isinstance(timeout, str):
            parsed = _go_duration(timeout)
            if isinstance(parsed, str):
                out.error(f"{field_name}.timeout", f"bad Duration: time: {parsed}")
        if kind != "http":
            continue
        prefix = _get(config, "pathPrefix")
        if isinstance(prefix, str) and prefix != "" and not prefix.startswith("/"):
            out.error(f"{field_name}.pathPrefix", f"pathPrefix should begin with `/` but found {prefix!r}")
        for list_name in (*EXT_AUTHZ_HEADER_LISTS, "includeHeadersInCheck"):
            for k, value in _strings(_get(config, list_name)):
                if value == "*":
                    out.warn(_item(f"{field_name}.{list_name}", k),
                             f"a single wildcard (\"*\") is not supported, change it to either prefix or suffix "
                             f"match: {list_name[0].upper()}{list_name[1:]}; {_INVALID_PROVIDER} (buildExtAuthzHTTP)")
    return out.result()


# --------------------------------------------------------------------------------------------------
# PeerAuthentication (ValidatePeerAuthentication, validation.go:1710)


def _check_peer_authentication(spec: Mapping[Any, Any], out: _Out) -> None:
    f = out.f
    _check_selector(spec, out)
    selector = _get(spec, "selector")
    empty_selector = not isinstance(selector, Mapping) or _label_count(selector) == 0
    ports = _get(spec, "portLevelMtls")
    if isinstance(ports, Mapping):
        entries = [(k, v) for k, v in _pairs(ports) if v is not None]
        if not entries:  # validation.go:1725; CRD minProperties 1 (1.23+)
            out.error("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")
        if empty_selector and (entries or f.cel):  # validation.go:1719; CEL "portLevelMtls requires selector"
            out.error("spec.portLevelMtls", "port level mTLS needs a selector with labels: a mesh- or "
                                            "namespace-wide PeerAuthentication cannot have port level mTLS")
        for key, _ in entries:
            text = _key_text(key)
            path = _entry("spec.portLevelMtls", key)
            port = _small_int(text)
            if isinstance(key, bool) or not _CANONICAL_UINT.fullmatch(text) or port is None or port > 0xFFFFFFFF:
                out.error(path, f"port {text!r} must be a port number (the key is decoded as uint32)")
            elif f.cel and not 1 <= port <= 65535:  # validation.go:1730, CEL (1.23+)
                out.error(path, "port must be in range 1..65535")
            elif not f.cel and port == 0:  # 1.22: only 0 is rejected
                out.error(path, "port cannot be 0")
    # DISABLE and portLevelMtls are modelled (engine/mtls.py; the local mesh's plaintext-only chains, per-port
    # modes and ztunnel's converted DENYs): nothing here beyond Istio's own rules.
