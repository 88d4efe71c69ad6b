"""Envoy RBAC filters from AuthorizationPolicies, built the way istiod 1.30.3 builds them.

Why this exists: the local mesh enforces policies in real Envoy processes, so something has to turn
AuthorizationPolicies into Envoy RBAC config. To be worth anything as a check on the verdict engine
(`conformance.engine`), this must be an independent second implementation of Istio's semantics, so it
is a line-by-line port of istiod's own builder, never a reading of the engine (nothing here imports
it; an import-linter contract enforces that). Every rule cites the istiod function it ports, in
`istio/istio@1.30.3`:

- `pilot/pkg/security/authz/builder/builder.go`: one RBAC filter per action (AUDIT, DENY, ALLOW, in
  that order), dry-run policies into `shadow_rules`, never-match policy for `rules`-less policies;
- `pilot/pkg/security/authz/model/model.go`: rule → permissions / principals, `when` folding,
  field order, `checkError` (ALLOW rules with an ungeneratable attribute vanish, DENY/AUDIT rules
  lose only that value);
- `pilot/pkg/security/authz/model/generator.go`, `permission.go`, `principal.go`, `util.go`: the
  per-attribute Envoy matchers;
- `pilot/pkg/security/authz/matcher/*.go`: string, header, host, path, metadata matchers;
- `pilot/pkg/security/trustdomain/{bundle,util}.go`: `cluster.local` and alias rewriting.

What changed between the releases the suite models is read from a `Release` (release.py): the quoting
of `namespaces` and `*suffix` principals (istio/istio#59992) and of `serviceAccounts` (#59700). The
default is 1.30's newest modelled patch, whose istiod builds what 1.30.3 builds (the golden output's
release; docs/istio-versions.md).

The output is JSON-able dicts in Envoy's snake_case field names, with proto3-JSON conventions (an
enum at its default, ALLOW, and `ignore_case: false` are omitted), so that, after a camelCase →
snake_case conversion, it equals the golden protobuf-YAML istiod's tests keep.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.mesh.local.release import Release
from conformance.model import Manifest
from conformance.names import DRY_RUN_ANNOTATION

Json = dict[str, Any]

# filters.go / principal.go: the filter-state key waypoints (and HBONE-internal sidecar chains) match
# principals on, populated from %DOWNSTREAM_PEER_URI_SAN% at HBONE termination. The one home of this
# name: config.py sets it where the waypoint terminates HBONE and logs it.
PEER_PRINCIPAL_KEY = "io.istio.peer_principal"

HTTP_RBAC_FILTER = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
HTTP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"  # also config.py's
URI_TEMPLATE_TYPE = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"

# model.go constants.
RBAC_TCP_FILTER_STAT_PREFIX = "tcp."
RBAC_SHADOW_RULES_ALLOW_STAT_PREFIX = "istio_dry_run_allow_"
RBAC_SHADOW_RULES_DENY_STAT_PREFIX = "istio_dry_run_deny_"

# Not istiod's: our addition so that stats and dynamic metadata say which filter decided (the local
# mesh's access log reads `<prefix>enforced_effective_policy_id`). Envoy's network RBAC has no such
# field, so TCP filters keep istiod's shape.
RULES_STAT_PREFIX = {"LOG": "audit_", "DENY": "deny_", "ALLOW": "allow_"}

CLUSTER_LOCAL = "cluster.local"  # constants.DefaultClusterLocalDomain
SPIFFE_PREFIX = "spiffe://"  # spiffe.URIPrefix
JWT_FILTER = "envoy.filters.http.jwt_authn"  # filters.EnvoyJwtFilterName
JWT_PAYLOAD = "payload"  # filters.EnvoyJwtFilterPayload

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
# builder.go build(): AUDIT is emitted with Envoy's LOG action.
ENVOY_ACTION = {"AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}


class GenerationError(Exception):
    """An attribute istiod cannot turn into an Envoy matcher (HTTP-only on TCP, bad value, ...)."""


# ---------------------------------------------------------------------------------------------------
# Reading policies as written (the same accessors istiod gets from the generated proto types).


def go_parse_bool(value: str | None) -> bool:
    """Go's `strconv.ParseBool`, returning false on a parse error as istiod's callers do."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def is_dry_run(policy: Manifest) -> bool:
    """builder.go isDryRun / ambient authorization.go: the `istio.io/dry-run` annotation."""
    value = policy.annotations.get(DRY_RUN_ANNOTATION)
    return go_parse_bool(str(value)) if value is not None else False


def policy_action(policy: Manifest) -> str:
    """The action as written; an unset action is ALLOW (the proto enum's zero value)."""
    action = policy.spec.get("action")
    return str(action) if action else "ALLOW"


def target_refs(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """policyattachment.go GetTargetRefs: `targetRefs`, or the legacy `targetRef` when that is empty."""
    refs = spec.get("targetRefs") or []
    if not refs and spec.get("targetRef"):
        refs = [spec["targetRef"]]
    return [r for r in refs if isinstance(r, Mapping)]


def strings(value: Any) -> list[str]:
    """A repeated string field; YAML may carry numbers (`ports: [80]`), which the proto reads as text."""
    if value is None:
        return []
    if isinstance(value, str | int | float):
        return [str(value)]
    return [str(v) for v in value]


def _section(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# ---------------------------------------------------------------------------------------------------
# Trust domains: pilot/pkg/security/trustdomain/bundle.go and util.go.


def _td_prefix_match(a: str, pattern: str) -> bool:
    """util.go prefixMatch."""
    return pattern.endswith("*") and a.startswith(pattern[:-1])


def _td_suffix_match(a: str, pattern: str) -> bool:
    """util.go suffixMatch."""
    return pattern.startswith("*") and a.endswith(pattern[1:])


def _td_string_match(a: str, candidates: Sequence[str]) -> bool:
    """util.go stringMatch: the pattern may be on either side."""
    return any(
        a == s or s == "*" or _td_prefix_match(a, s) or _td_prefix_match(s, a)
        or _td_suffix_match(a, s) or _td_suffix_match(s, a)
        for s in candidates
    )


@dataclass(frozen=True)
class TrustDomainBundle:
    """bundle.go Bundle: the local trust domain first, then its aliases.

    The local mesh has no aliases: `TrustDomainBundle.of(mesh.trust_domain)`. Aliases exist so that
    Istio's golden cases that configure them can be compared too.
    """

    trust_domains: tuple[str, ...] = ()

    @classmethod
    def of(cls, trust_domain: str, aliases: Sequence[str] = ()) -> TrustDomainBundle:
        """bundle.go NewBundle."""
        return cls((trust_domain, *aliases))

    def replace_trust_domain_aliases(self, principals: Sequence[str]) -> list[str]:
        """bundle.go ReplaceTrustDomainAliases.

        A principal whose trust domain is the local one, an alias, or the literal `cluster.local`
        becomes one principal per trust domain of the bundle; `*/ns/...` and malformed ones stay.
        """
        out: list[str] = []
        for principal in principals:
            parts = principal.split("/")
            if len(parts) != 5 or parts[0] == "*":  # isTrustDomainBeingEnforced
                out.append(principal)
                continue
            td = parts[0]
            if _td_string_match(td, self.trust_domains) or td == CLUSTER_LOCAL:
                out.extend(self._replace_trust_domains(principal, td))
            else:
                out.append(principal)
        return out

    def _replace_trust_domains(self, principal: str, td_from_principal: str) -> list[str]:
        """bundle.go replaceTrustDomains (a `*`-prefixed trust domain is kept as it is)."""
        out: list[str] = []
        for td in self.trust_domains:
            if _td_suffix_match(td, td_from_principal):
                new = principal
            else:
                new = td + "/" + "/".join(principal.split("/")[1:])  # replaceTrustDomainInPrincipal
            if new not in out:  # isKeyInList
                out.append(new)
        return out

    def expand_trust_domain_aliases(self, values: Sequence[str]) -> list[str]:
        """bundle.go ExpandTrustDomainAliases (for `trustDomains` / `source.trustDomain`)."""
        result: list[str] = []
        for v in values:
            result.extend(self.trust_domains if v in self.trust_domains else [v])
        return list(dict.fromkeys(result))  # slices.FilterDuplicates keeps the first occurrence


# ---------------------------------------------------------------------------------------------------
# Matchers: pilot/pkg/security/authz/matcher/{string,header,metadata,template}.go.

_GO_QUOTE_META = set("\\.+*?()|[]{}^$")


def quote_meta(text: str) -> str:
    """Go's `regexp.QuoteMeta` (which istiod uses; Python's re.escape quotes a different set)."""
    return "".join("\\" + c if c in _GO_QUOTE_META else c for c in text)


def string_matcher_regex(regex: str) -> Json:
    """string.go StringMatcherRegex."""
    return {"safe_regex": {"regex": regex}}


def _with_case(m: Json, ignore_case: bool) -> Json:
    if ignore_case:
        m["ignore_case"] = True
    return m


def string_matcher_prefix(prefix: str, ignore_case: bool = False) -> Json:
    """string.go StringMatcherPrefix."""
    return _with_case({"prefix": prefix}, ignore_case)


def string_matcher_suffix(suffix: str, ignore_case: bool = False) -> Json:
    """string.go StringMatcherSuffix."""
    return _with_case({"suffix": suffix}, ignore_case)


def string_matcher_exact(exact: str, ignore_case: bool = False) -> Json:
    """string.go StringMatcherExact."""
    return _with_case({"exact": exact}, ignore_case)


def string_matcher_with_prefix(v: str, prefix: str, quote: bool = True) -> Json:
    """string.go StringMatcherWithPrefix: `*` → `.+` (prefix ignored), `*x` → suffix or regex.

    `quote=False` is the form before istio/istio#59992 (1.28.7 / 1.29.3 / 1.30.0): the suffix went into
    the regex as written (`prefix + ".*" + strings.TrimPrefix(v, "*")`, string.go at 1.29.2), so a `.`
    in it matches any character.
    """
    if v == "*":
        return string_matcher_regex(".+")
    if v.startswith("*"):
        if prefix == "":
            return string_matcher_suffix(v[1:])
        return string_matcher_regex(prefix + ".*" + (quote_meta(v[1:]) if quote else v[1:]))
    if v.endswith("*"):
        return string_matcher_prefix(prefix + v[:-1])
    return string_matcher_exact(prefix + v)


def string_matcher(v: str) -> Json:
    """string.go StringMatcher."""
    return string_matcher_with_prefix(v, "")


def or_matcher(matchers: list[Json]) -> Json:
    """string.go OrMatcher: a single matcher is not wrapped."""
    if len(matchers) == 1:
        return matchers[0]
    return {"or_match": {"value_matchers": matchers}}


def string_or_matcher(values: Sequence[str]) -> Json:
    """string.go StringOrMatcher."""
    return or_matcher([{"string_match": string_matcher(v)} for v in values])


def _header_like(name: str, v: str, ignore_case: bool) -> Json:
    if v == "*":
        return {"name": name, "present_match": True}
    if v.startswith("*"):
        return {"name": name, "string_match": string_matcher_suffix(v[1:], ignore_case)}
    if v.endswith("*"):
        return {"name": name, "string_match": string_matcher_prefix(v[:-1], ignore_case)}
    return {"name": name, "string_match": string_matcher_exact(v, ignore_case)}


def header_matcher(name: str, v: str) -> Json:
    """header.go HeaderMatcher (`*` is presence; case-sensitive)."""
    return _header_like(name, v, False)


def host_matcher(name: str, v: str) -> Json:
    """header.go HostMatcher (case-insensitive)."""
    return _header_like(name, v, True)


def metadata_value_matcher(filter_name: str, key: str, value: Json) -> Json:
    """metadata.go MetadataValueMatcher."""
    return {"filter": filter_name, "path": [{"key": key}], "value": value}


def metadata_list_value_matcher(filter_name: str, keys: Sequence[str], value: Json, extended_jwt: bool) -> Json:
    """metadata.go MetadataListValueMatcher."""
    list_match = {"list_match": {"one_of": value}}
    out: Json = {"filter": filter_name, "path": [{"key": k} for k in keys]}
    out["value"] = {"or_match": {"value_matchers": [list_match, value]}} if extended_jwt else list_match
    return out


def metadata_string_matcher_for_jwt_claim(claim: str, m: Json) -> Json:
    """util.go MetadataStringMatcherForJWTClaim."""
    return {"filter": JWT_FILTER, "path": [{"key": JWT_PAYLOAD}, {"key": claim}], "value": {"string_match": m}}


def metadata_list_value_matcher_for_jwt_claims(claims: Sequence[str], value: Json) -> Json:
    """util.go MetadataListValueMatcherForJWTClaims."""
    return metadata_list_value_matcher(JWT_FILTER, [JWT_PAYLOAD, *claims], value, True)


def cidr_range(value: str) -> Json:
    """networking/util AddrStrToCidrRange: the address as written (not masked) and its prefix length."""
    if not value:
        raise GenerationError("empty address")
    try:
        if "/" in value:
            iface = ipaddress.ip_interface(value)
            return {"address_prefix": str(iface.ip), "prefix_len": iface.network.prefixlen}
        ip = ipaddress.ip_address(value)
    except ValueError as err:
        raise GenerationError(str(err)) from err
    return {"address_prefix": str(ip), "prefix_len": ip.max_prefixlen}


def convert_to_port(value: str) -> int:
    """util.go convertToPort."""
    if not value.isdigit() or int(value) > 65535:
        raise GenerationError(f"invalid port {value}")
    return int(value)


def _extract_name_in_brackets(s: str) -> str:
    """util.go extractNameInBrackets."""
    if not s.startswith("[") or not s.endswith("]"):
        raise GenerationError(f"expecting format [<NAME>], but found {s}")
    return s[1:-1]


def _extract_name_in_nested_brackets(s: str) -> list[str]:
    """util.go extractNameInNestedBrackets: `[a][b]` → [a, b]; otherwise one bracketed name."""

    def find_end_bracket(begin: int) -> int:
        if begin >= len(s) or s[begin] != "[":
            return -1
        for i in range(begin + 1, len(s)):
            if s[i] == "[":
                return -1
            if s[i] == "]":
                return i
        return -1

    claims: list[str] = []
    begin = 0
    while begin < len(s):
        end = find_end_bracket(begin)
        if end == -1:
            return [_extract_name_in_brackets(s)]
        claims.append(s[begin + 1:end])
        begin = end + 1
    return claims


# ---------------------------------------------------------------------------------------------------
# Envoy proto helpers: model/permission.go and model/principal.go.


def permission_any() -> Json:
    return {"any": True}


def permission_and(rules: list[Json]) -> Json:
    return {"and_rules": {"rules": rules}}


def permission_or(rules: list[Json]) -> Json:
    return {"or_rules": {"rules": rules}}


def permission_not(rule: Json) -> Json:
    return {"not_rule": rule}


def principal_any() -> Json:
    return {"any": True}


def principal_and(ids: list[Json]) -> Json:
    return {"and_ids": {"ids": ids}}


def principal_or(ids: list[Json]) -> Json:
    return {"or_ids": {"ids": ids}}


def principal_not(principal: Json) -> Json:
    return {"not_id": principal}


def principal_authenticated(name: Json, use_authenticated: bool) -> Json:
    """principal.go principalAuthenticated: the mTLS peer, or the waypoint's filter-state copy of it."""
    if use_authenticated:
        return {"authenticated": {"principal_name": name}}
    return {"filter_state": {"key": PEER_PRINCIPAL_KEY, "string_match": name}}


def rbac_policy_match_never() -> Json:
    """builder.go rbacPolicyMatchNever: what a policy without `rules` becomes."""
    return {"permissions": [{"not_rule": {"any": True}}], "principals": [{"not_id": {"any": True}}]}


# ---------------------------------------------------------------------------------------------------
# Generators: model/generator.go. Each raises GenerationError where istiod returns an error.


class Generator:
    """generator.go `generator`: one matcher per value."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        raise GenerationError("unimplemented")

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        raise GenerationError("unimplemented")


class ExtendedGenerator:
    """generator.go `extendedGenerator`: one matcher for the whole value list."""

    def extended_permission(self, key: str, values: Sequence[str], for_tcp: bool) -> Json | None:
        raise GenerationError("unimplemented")

    def extended_principal(self, key: str, values: Sequence[str], for_tcp: bool) -> Json | None:
        raise GenerationError("unimplemented")


def _http_only(key: str, for_tcp: bool) -> None:
    if for_tcp:
        raise GenerationError(f'"{key}" is HTTP only')


class DestIPGenerator(Generator):
    """generator.go destIPGenerator → `destination_ip`."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        return {"destination_ip": cidr_range(value)}


@dataclass
class DestPortGenerator(Generator):
    """generator.go destPortGenerator → `destination_port`.

    Not istiod's: `port_map` moves a scenario port (< 1024) to the port the local listener really
    binds, since `destination_port` is the listener's local port.
    """

    port_map: Mapping[int, int] = field(default_factory=dict)

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        port = convert_to_port(value)
        return {"destination_port": self.port_map.get(port, port)}


class ConnSNIGenerator(Generator):
    """generator.go connSNIGenerator → `requested_server_name`."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        return {"requested_server_name": string_matcher(value)}


class EnvoyFilterGenerator(ExtendedGenerator):
    """generator.go envoyFilterGenerator.extendedPermission: `experimental.envoy.filters.a.b[c]`."""

    def extended_permission(self, key: str, values: Sequence[str], for_tcp: bool) -> Json:
        parts = key.removeprefix("experimental.").removesuffix("]").split("[", 1)
        if len(parts) != 2:
            raise GenerationError(f"invalid key: {key}")
        matchers: list[Json] = []
        for value in values:
            if value.startswith("[") and value.endswith("]"):
                inner = {"string_match": string_matcher(value.strip("[]"))}
                matchers.append({"list_match": {"one_of": inner}})
            else:
                matchers.append({"string_match": string_matcher(value)})
        return {"metadata": metadata_value_matcher(parts[0], parts[1], or_matcher(matchers))}


class SrcIPGenerator(Generator):
    """generator.go srcIPGenerator → `direct_remote_ip` (ipBlocks, source.ip)."""

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        return {"direct_remote_ip": cidr_range(value)}


class RemoteIPGenerator(Generator):
    """generator.go remoteIPGenerator → `remote_ip` (remoteIpBlocks, remote.ip)."""

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        return {"remote_ip": cidr_range(value)}


@dataclass
class SrcNamespaceGenerator(Generator):
    """generator.go srcNamespaceGenerator: regex `.*/ns/<ns>/.*`, literal parts quoted, `*` → `.*`.

    `quote=False` is the form before istio/istio#59992 (1.28.7 / 1.29.3 / 1.30.0): `strings.Replace(value,
    "*", ".*", -1)` with nothing quoted (generator.go at 1.29.2 and 1.22.0), so `.` matches any character.
    """

    quote: bool = True

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        parts = value.split("*")
        regex_ns = ".*".join(quote_meta(part) if self.quote else part for part in parts)
        return principal_authenticated(string_matcher_regex(f".*/ns/{regex_ns}/.*"), use_authenticated)


def service_account_regex(default_namespace: str, value: str, quote: bool = True) -> str:
    """generator.go serviceAccountRegex: `<ns>/<sa>` or a bare `<sa>` in the policy's namespace.

    `quote=False` is the form before istio/istio#59700 (1.27.9 / 1.28.6 / 1.29.2): `fmt.Sprintf(...,
    ns, sa)` with both unquoted (generator.go at 1.25.0 ... 1.29.1).
    """
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = default_namespace, value
    if quote:
        ns, sa = quote_meta(ns), quote_meta(sa)
    return f"spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?"


@dataclass
class SrcServiceAccountGenerator(Generator):
    """generator.go srcServiceAccountGenerator (`quote`: see service_account_regex)."""

    policy_namespace: str
    quote: bool = True

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        regex = service_account_regex(self.policy_namespace, value, self.quote)
        return principal_authenticated(string_matcher_regex(regex), use_authenticated)


class SrcTrustDomainGenerator(Generator):
    """generator.go srcTrustDomainGenerator (`trustDomains` / `source.trustDomain`)."""

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        if value == "*":
            m = string_matcher_prefix(SPIFFE_PREFIX)
        elif "*" not in value:
            m = string_matcher_prefix(SPIFFE_PREFIX + value + "/")
        else:
            left, right = value.split("*", 1)
            m = string_matcher_regex(f"spiffe://{quote_meta(left)}[^/]*{quote_meta(right)}/.*")
        return principal_authenticated(m, use_authenticated)


@dataclass
class SrcPrincipalGenerator(Generator):
    """generator.go srcPrincipalGenerator: the value with `spiffe://` in front (`*` → `.+`).

    `quote=False`: a `*suffix` goes into the regex unquoted, as before istio/istio#59992 (see
    string_matcher_with_prefix).
    """

    quote: bool = True

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        return principal_authenticated(string_matcher_with_prefix(value, SPIFFE_PREFIX, self.quote),
                                       use_authenticated)


_MATCH_ANY = string_matcher_regex(".+")  # generator.go matchAny


class RequestPrincipalGenerator(ExtendedGenerator):
    """generator.go requestPrincipalGenerator: iss/sub split at the last `/`, jwt_authn metadata."""

    def extended_principal(self, key: str, values: Sequence[str], for_tcp: bool) -> Json | None:
        _http_only(key, for_tcp)
        ors: list[Json] = []
        for value in values:
            idx = value.rfind("/")
            found = idx >= 0
            iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
            if value == "*":
                match_iss, match_sub = _MATCH_ANY, _MATCH_ANY
            elif value.startswith("*"):
                if found:
                    match_iss = _MATCH_ANY if iss == "*" else string_matcher_suffix(iss.removeprefix("*"))
                    match_sub = string_matcher_exact(sub)
                else:
                    match_iss = _MATCH_ANY
                    match_sub = string_matcher_suffix(value.removeprefix("*"))
            elif value.endswith("*"):
                if found:
                    match_iss = string_matcher_exact(iss)
                    match_sub = _MATCH_ANY if sub == "*" else string_matcher_prefix(sub.removesuffix("*"))
                else:
                    match_iss = string_matcher_prefix(value.removesuffix("*"))
                    match_sub = _MATCH_ANY
            else:
                match_sub = string_matcher_exact(sub)
                match_iss = string_matcher_exact(iss)
            ors.append(principal_and([
                {"metadata": metadata_string_matcher_for_jwt_claim("iss", copy.deepcopy(match_iss))},
                {"metadata": metadata_string_matcher_for_jwt_claim("sub", copy.deepcopy(match_sub))},
            ]))
        if len(ors) == 1:
            return ors[0]
        return principal_or(ors) if ors else None


@dataclass
class _JwtListClaimGenerator(ExtendedGenerator):
    """generator.go requestAudiencesGenerator / requestPresenterGenerator (`aud` / `azp`)."""

    claim: str

    def extended_principal(self, key: str, values: Sequence[str], for_tcp: bool) -> Json | None:
        _http_only(key, for_tcp)
        return {"metadata": metadata_list_value_matcher_for_jwt_claims([self.claim], string_or_matcher(values))}


class RequestClaimGenerator(ExtendedGenerator):
    """generator.go requestClaimGenerator: `request.auth.claims[a][b]`."""

    def extended_principal(self, key: str, values: Sequence[str], for_tcp: bool) -> Json | None:
        _http_only(key, for_tcp)
        claims = _extract_name_in_nested_brackets(key.removeprefix(ATTR_REQUEST_CLAIMS))
        return {"metadata": metadata_list_value_matcher_for_jwt_claims(claims, string_or_matcher(values))}


class RequestHeaderGenerator(Generator):
    """generator.go requestHeaderGenerator: a principal-side `header` matcher."""

    def principal(self, key: str, value: str, for_tcp: bool, use_authenticated: bool) -> Json:
        _http_only(key, for_tcp)
        name = _extract_name_in_brackets(key.removeprefix(ATTR_REQUEST_HEADER))
        return {"header": header_matcher(name, value)}


class HostGenerator(Generator):
    """generator.go hostGenerator: `:authority`, case-insensitive."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        _http_only(key, for_tcp)
        return {"header": host_matcher(HOST_HEADER, value)}


class PathGenerator(Generator):
    """generator.go pathGenerator: `url_path`, or `uri_template` for `{*}` / `{**}` (template.go)."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        _http_only(key, for_tcp)
        if "{*}" in value or "{**}" in value:  # security.ContainsPathTemplate
            template = value.replace("{**}", "**").replace("{*}", "*")  # sanitizePathTemplate
            return {"uri_template": {
                "name": "uri-template",
                "typed_config": {"@type": URI_TEMPLATE_TYPE, "path_template": template},
            }}
        return {"url_path": {"path": string_matcher(value)}}


class MethodGenerator(Generator):
    """generator.go methodGenerator: `:method` header."""

    def permission(self, key: str, value: str, for_tcp: bool) -> Json:
        _http_only(key, for_tcp)
        return {"header": header_matcher(METHOD_HEADER, value)}


# ---------------------------------------------------------------------------------------------------
# The rule model: model/model.go.

ATTR_REQUEST_HEADER = "request.headers"
ATTR_SRC_IP = "source.ip"
ATTR_REMOTE_IP = "remote.ip"
ATTR_SRC_NAMESPACE = "source.namespace"
ATTR_SRC_SERVICE_ACCOUNT = "source.serviceAccount"
ATTR_SRC_TRUST_DOMAIN = "source.trustDomain"
ATTR_SRC_PRINCIPAL = "source.principal"
ATTR_REQUEST_PRINCIPAL = "request.auth.principal"
ATTR_REQUEST_AUDIENCES = "request.auth.audiences"
ATTR_REQUEST_PRESENTER = "request.auth.presenter"
ATTR_REQUEST_CLAIMS = "request.auth.claims"
ATTR_DEST_IP = "destination.ip"
ATTR_DEST_PORT = "destination.port"
ATTR_CONN_SNI = "connection.sni"
ATTR_ENVOY_FILTER = "experimental.envoy.filters."
METHOD_HEADER = ":method"
PATH_MATCHER = "path-matcher"
HOST_HEADER = ":authority"


@dataclass
class _Rule:
    """model.go `rule`: one attribute with its values and not-values.

    Mutable and shared between the principal lists of one rule on purpose: istiod's ruleList.copy()
    copies pointers, so MigrateTrustDomain rewrites a shared `when` entry once per `from` entry.
    """

    key: str
    values: list[str]
    not_values: list[str]
    g: Generator | None = None
    extended: ExtendedGenerator | None = None

    def _check(self, action: str, err: GenerationError) -> None:
        """model.go checkError: fatal for ALLOW (rule skipped), ignored for DENY and AUDIT."""
        if action == "ALLOW":
            raise err

    def permission(self, for_tcp: bool, action: str) -> list[Json]:
        """model.go rule.permission."""
        return self._generate(action, lambda g, v: g.permission(self.key, v, for_tcp),
                              lambda e, vs: e.extended_permission(self.key, vs, for_tcp),
                              permission_or, permission_not)

    def principal(self, for_tcp: bool, use_authenticated: bool, action: str) -> list[Json]:
        """model.go rule.principal."""
        return self._generate(action, lambda g, v: g.principal(self.key, v, for_tcp, use_authenticated),
                              lambda e, vs: e.extended_principal(self.key, vs, for_tcp),
                              principal_or, principal_not)

    def _generate(
        self,
        action: str,
        one: Callable[[Generator, str], Json],
        many: Callable[[ExtendedGenerator, Sequence[str]], Json | None],
        make_or: Callable[[list[Json]], Json],
        make_not: Callable[[Json], Json],
    ) -> list[Json]:
        out: list[Json] = []
        for values, negate in ((self.values, False), (self.not_values, True)):
            if self.extended is not None:
                if not values:
                    continue
                try:
                    p = many(self.extended, values)
                except GenerationError as err:
                    self._check(action, err)
                    p = None
                if p is not None:
                    out.append(make_not(p) if negate else p)
            else:
                assert self.g is not None
                ors: list[Json] = []
                for value in values:
                    try:
                        ors.append(one(self.g, value))
                    except GenerationError as err:
                        self._check(action, err)
                if ors:
                    out.append(make_not(make_or(ors)) if negate else make_or(ors))
        return out


@dataclass
class _RuleList:
    """model.go ruleList."""

    rules: list[_Rule] = field(default_factory=list)

    def copy(self) -> _RuleList:
        return _RuleList(list(self.rules))  # a new list of the same (shared) rule objects

    def insert_front(self, key: str, values: list[str], not_values: list[str],
                     g: Generator | None = None, extended: ExtendedGenerator | None = None) -> None:
        if values or not_values:
            self.rules.insert(0, _Rule(key, values, not_values, g, extended))

    def append_last(self, key: str, values: list[str], not_values: list[str],
                    g: Generator | None = None, extended: ExtendedGenerator | None = None) -> None:
        if values or not_values:
            self.rules.append(_Rule(key, values, not_values, g, extended))


@dataclass
class RuleModel:
    """model.go Model: one rule's permissions (one per `to`) and principals (one per `from`)."""

    permissions: list[_RuleList]
    principals: list[_RuleList]

    @classmethod
    def new(cls, policy_namespace: str, rule: Mapping[str, Any], port_map: Mapping[int, int],
            release: Release | None = None) -> RuleModel:
        """model.go New: `when` conditions are appended to every permission / principal.

        `release` picks the identity generators' quoting and the attributes istiod knows (release.py;
        default: the newest release).
        """
        release = release or Release.newest()
        namespaces = SrcNamespaceGenerator(release.quotes_namespaces)
        principals_g = SrcPrincipalGenerator(release.quotes_namespaces)
        service_accounts = SrcServiceAccountGenerator(policy_namespace, release.quotes_service_accounts)
        base_permission, base_principal = _RuleList(), _RuleList()
        for when in rule.get("when") or []:
            when = _section(when)
            k = str(when.get("key", ""))
            vals, nots = strings(when.get("values")), strings(when.get("notValues"))
            if k == ATTR_DEST_IP:
                base_permission.append_last(k, vals, nots, DestIPGenerator())
            elif k == ATTR_DEST_PORT:
                base_permission.append_last(k, vals, nots, DestPortGenerator(port_map))
            elif k == ATTR_CONN_SNI:
                base_permission.append_last(k, vals, nots, ConnSNIGenerator())
            elif k.startswith(ATTR_ENVOY_FILTER):
                base_permission.append_last(k, vals, nots, extended=EnvoyFilterGenerator())
            elif k == ATTR_SRC_IP:
                base_principal.append_last(k, vals, nots, SrcIPGenerator())
            elif k == ATTR_REMOTE_IP:
                base_principal.append_last(k, vals, nots, RemoteIPGenerator())
            elif k == ATTR_SRC_NAMESPACE:
                base_principal.append_last(k, vals, nots, namespaces)
            elif k == ATTR_SRC_TRUST_DOMAIN and release.rbac_trust_domains:
                base_principal.append_last(k, vals, nots, SrcTrustDomainGenerator())
            elif k == ATTR_SRC_SERVICE_ACCOUNT and release.service_accounts:
                base_principal.append_last(k, vals, nots, service_accounts)
            elif k == ATTR_SRC_PRINCIPAL:
                base_principal.append_last(k, vals, nots, principals_g)
            elif k == ATTR_REQUEST_PRINCIPAL:
                base_principal.append_last(k, vals, nots, extended=RequestPrincipalGenerator())
            elif k == ATTR_REQUEST_AUDIENCES:
                base_principal.append_last(k, vals, nots, extended=_JwtListClaimGenerator("aud"))
            elif k == ATTR_REQUEST_PRESENTER:
                base_principal.append_last(k, vals, nots, extended=_JwtListClaimGenerator("azp"))
            elif k.startswith(ATTR_REQUEST_HEADER):
                base_principal.append_last(k, vals, nots, RequestHeaderGenerator())
            elif k.startswith(ATTR_REQUEST_CLAIMS):
                base_principal.append_last(k, vals, nots, extended=RequestClaimGenerator())
            else:
                # Also source.trustDomain before 1.30.2 and source.serviceAccount before 1.25 (release.py).
                raise GenerationError(f"unknown attribute {k}")

        principals: list[_RuleList] = []
        for entry in rule.get("from") or []:
            merged = base_principal.copy()
            s = _section(_section(entry).get("source"))
            if s:
                merged.insert_front(ATTR_SRC_IP, strings(s.get("ipBlocks")), strings(s.get("notIpBlocks")),
                                    SrcIPGenerator())
                merged.insert_front(ATTR_REMOTE_IP, strings(s.get("remoteIpBlocks")),
                                    strings(s.get("notRemoteIpBlocks")), RemoteIPGenerator())
                merged.insert_front(ATTR_SRC_NAMESPACE, strings(s.get("namespaces")),
                                    strings(s.get("notNamespaces")), namespaces)
                if release.rbac_trust_domains:  # before 1.30.2 New ignores the fields (release.py)
                    merged.insert_front(ATTR_SRC_TRUST_DOMAIN, strings(s.get("trustDomains")),
                                        strings(s.get("notTrustDomains")), SrcTrustDomainGenerator())
                if release.service_accounts:  # not in the API before 1.25
                    merged.insert_front(ATTR_SRC_SERVICE_ACCOUNT, strings(s.get("serviceAccounts")),
                                        strings(s.get("notServiceAccounts")), service_accounts)
                merged.insert_front(ATTR_REQUEST_PRINCIPAL, strings(s.get("requestPrincipals")),
                                    strings(s.get("notRequestPrincipals")),
                                    extended=RequestPrincipalGenerator())
                merged.insert_front(ATTR_SRC_PRINCIPAL, strings(s.get("principals")),
                                    strings(s.get("notPrincipals")), principals_g)
            principals.append(merged)
        if not rule.get("from"):
            principals.append(base_principal)

        permissions: list[_RuleList] = []
        for entry in rule.get("to") or []:
            merged = base_permission.copy()
            o = _section(_section(entry).get("operation"))
            if o:
                merged.insert_front(ATTR_DEST_PORT, strings(o.get("ports")), strings(o.get("notPorts")),
                                    DestPortGenerator(port_map))
                merged.insert_front(PATH_MATCHER, strings(o.get("paths")), strings(o.get("notPaths")),
                                    PathGenerator())
                merged.insert_front(METHOD_HEADER, strings(o.get("methods")), strings(o.get("notMethods")),
                                    MethodGenerator())
                merged.insert_front(HOST_HEADER, strings(o.get("hosts")), strings(o.get("notHosts")),
                                    HostGenerator())
            permissions.append(merged)
        if not rule.get("to"):
            permissions.append(base_permission)
        return cls(permissions, principals)

    def migrate_trust_domain(self, bundle: TrustDomainBundle) -> None:
        """model.go MigrateTrustDomain (in place, once per principal list holding the rule)."""
        for rule_list in self.principals:
            for r in rule_list.rules:
                if r.key == ATTR_SRC_PRINCIPAL:
                    if r.values:
                        r.values = bundle.replace_trust_domain_aliases(r.values)
                    if r.not_values:
                        r.not_values = bundle.replace_trust_domain_aliases(r.not_values)
                elif r.key == ATTR_SRC_TRUST_DOMAIN:
                    if r.values:
                        r.values = bundle.expand_trust_domain_aliases(r.values)
                    if r.not_values:
                        r.not_values = bundle.expand_trust_domain_aliases(r.not_values)

    def generate(self, for_tcp: bool, use_authenticated: bool, action: str) -> Json:
        """model.go Generate: AND inside a permission / principal, `any` when it is empty."""
        permissions: list[Json] = []
        for rl in self.permissions:
            ands = [p for r in rl.rules for p in r.permission(for_tcp, action)]
            permissions.append(permission_and(ands or [permission_any()]))
        if not permissions:
            raise GenerationError("must have at least 1 permission")
        principals: list[Json] = []
        for rl in self.principals:
            ands = [p for r in rl.rules for p in r.principal(for_tcp, use_authenticated, action)]
            principals.append(principal_and(ands or [principal_any()]))
        if not principals:
            raise GenerationError("must have at least 1 principal")
        return {"permissions": permissions, "principals": principals}


# ---------------------------------------------------------------------------------------------------
# The builder: builder/builder.go.


def policy_name(namespace: str, name: str, rule: int) -> str:
    """builder.go policyName (non-CUSTOM)."""
    return f"ns[{namespace}]-policy[{name}]-rule[{rule}]"


@dataclass
class BuiltRule:
    """builder.go builtRule: the enforced and the dry-run (shadow) RBAC of one action, `None` if unused."""

    action: str  # Envoy's: LOG, DENY, ALLOW
    rules: Json | None
    shadow_rules: Json | None


@dataclass(frozen=True)
class RbacBuilder:
    """builder.go Builder for the local (ALLOW / DENY / AUDIT) actions.

    `use_filter_state` is istiod's Option.UseFilterState (waypoints); `port_map` is ours (see
    DestPortGenerator); `stat_prefixes` adds our `rules_stat_prefix` to HTTP filters (off to compare
    with istiod's golden output); `release` is the Istio release whose generators are emulated.
    """

    bundle: TrustDomainBundle
    use_filter_state: bool = False
    port_map: Mapping[int, int] = field(default_factory=dict)
    stat_prefixes: bool = True
    release: Release = field(default_factory=Release.newest)

    def _partition(self, policies: Sequence[Manifest]) -> dict[str, list[Manifest]]:
        """authorization.go updateAuthorizationPoliciesResult: policies by action."""
        by_action: dict[str, list[Manifest]] = {a: [] for a in ACTIONS}
        for policy in policies:
            if policy.kind != "AuthorizationPolicy":
                continue
            action = policy_action(policy)
            # CUSTOM policies are the CUSTOM builder's (extauthz.py), as istiod keeps them apart
            # (AuthorizationPoliciesResult.Custom, authz.NewBuilder(authz.Custom, ...)).
            if action in by_action:
                by_action[action].append(policy)
        return by_action

    def build_http(self, policies: Sequence[Manifest]) -> list[Json]:
        """builder.go BuildHTTP: AUDIT, DENY, ALLOW filters, each only when it has policies."""
        return [self._http_filter(b) for b in self._build_all(policies, for_tcp=False)]

    def build_tcp(self, policies: Sequence[Manifest]) -> list[Json]:
        """builder.go BuildTCP."""
        return [self._tcp_filter(b) for b in self._build_all(policies, for_tcp=True)]

    def build_tcp_rules_as_http(self, policies: Sequence[Manifest]) -> list[Json]:
        """builder.go@1.30.3 BuildTCPRulesAsHTTPFilter: the TCP rules (HTTP-only attributes drop ALLOW rules and
        leave DENY rules) in HTTP RBAC filters (the waypoint's layered termination, listener_waypoint.go l.276)."""
        return [self._http_filter(b) for b in self._build_all(policies, for_tcp=True)]

    def _build_all(self, policies: Sequence[Manifest], for_tcp: bool) -> list[BuiltRule]:
        by_action = self._partition(policies)
        built = [self.build(by_action[a], ENVOY_ACTION[a], for_tcp) for a in ("AUDIT", "DENY", "ALLOW")]
        return [b for b in built if b is not None]

    def build(self, policies: Sequence[Manifest], action: str, for_tcp: bool) -> BuiltRule | None:
        """builder.go (Builder).build for one action."""
        if not policies:
            return None
        enforce: Json = {}
        shadow: Json = {}
        has_enforce = has_dry_run = False
        for policy in policies:
            if is_dry_run(policy):
                current, has_dry_run = shadow, True
            else:
                current, has_enforce = enforce, True
            rules = policy.spec.get("rules") or []
            for i, rule in enumerate(rules):
                name = policy_name(policy.namespace, policy.name, i)
                if rule is None:
                    continue  # "skipped nil rule"
                try:
                    m = RuleModel.new(policy.namespace, _section(rule), self.port_map, self.release)
                except GenerationError:
                    continue  # "skipped invalid rule"
                m.migrate_trust_domain(self.bundle)
                try:
                    generated = m.generate(for_tcp, not self.use_filter_state, action)
                except GenerationError:
                    continue  # "skipped rule ... on TCP filter chain"
                current[name] = generated
            if not rules:
                current[policy_name(policy.namespace, policy.name, 0)] = rbac_policy_match_never()
        return BuiltRule(
            action,
            _rbac(action, enforce) if has_enforce else None,
            _rbac(action, shadow) if has_dry_run else None,
        )

    def _http_filter(self, built: BuiltRule) -> Json:
        """builder.go buildHTTP (non-CUSTOM)."""
        config: Json = {"@type": HTTP_RBAC_TYPE}
        if built.rules is not None:
            config["rules"] = built.rules
        if built.shadow_rules is not None:
            config["shadow_rules"] = built.shadow_rules
        _set_shadow_prefix(config, built)
        if self.stat_prefixes:
            config["rules_stat_prefix"] = RULES_STAT_PREFIX[built.action]
        return {"name": HTTP_RBAC_FILTER, "typed_config": config}

    def _tcp_filter(self, built: BuiltRule) -> Json:
        """builder.go buildTCP (non-CUSTOM)."""
        config: Json = {"@type": NETWORK_RBAC_TYPE}
        if built.rules is not None:
            config["rules"] = built.rules
        config["stat_prefix"] = RBAC_TCP_FILTER_STAT_PREFIX
        if built.shadow_rules is not None:
            config["shadow_rules"] = built.shadow_rules
        _set_shadow_prefix(config, built)
        return {"name": NETWORK_RBAC_FILTER, "typed_config": config}


def _rbac(action: str, policies: Json) -> Json:
    """A config.rbac.v3.RBAC in proto3-JSON form: ALLOW and an empty map are omitted."""
    out: Json = {}
    if action != "ALLOW":
        out["action"] = action
    if policies:
        out["policies"] = policies
    return out


def _set_shadow_prefix(config: Json, built: BuiltRule) -> None:
    """builder.go shadowRuleStatPrefix, with its quirk: without dry-run policies the nil RBAC's action
    reads as ALLOW, so every filter (DENY ones too) carries `istio_dry_run_allow_`; LOG gets none."""
    action = built.action if built.shadow_rules is not None else "ALLOW"
    prefix = {"ALLOW": RBAC_SHADOW_RULES_ALLOW_STAT_PREFIX, "DENY": RBAC_SHADOW_RULES_DENY_STAT_PREFIX}.get(action)
    if prefix:
        config["shadow_rules_stat_prefix"] = prefix
