"""Envoy-side semantics: how a sidecar or waypoint matches a rule, following istiod's RBAC builder.

Sources: istio/istio@1.30.3 `pilot/pkg/security/authz/model/{model,generator}.go` (which attribute becomes
which Envoy matcher, `when` folded into every permission/principal), `matcher/{string,header}.go`, and
`trustdomain/bundle.go` (principals in the local trust domain or `cluster.local` are rewritten to the
mesh trust domain). Envoy's `authenticated` principal matcher needs a TLS peer, so identity fields never
match plaintext and their `not` forms always do (research note §3.3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conformance.engine.combine import every, some
from conformance.engine.matchers import (
    envoy_header,
    envoy_regex,
    envoy_string,
    ip_in,
    path_template,
    pattern_kind,
    quote_meta,
)
from conformance.engine.policy import Condition, Field, Rule
from conformance.versions import QUOTED_NAMESPACE_REGEX, QUOTED_SERVICE_ACCOUNT_REGEX, IstioVersion

SPIFFE = "spiffe://"

# HTTP-only attributes: on a TCP filter chain istiod's generators fail for them (`"%q is HTTP only"`),
# and model.go checkError drops the whole rule for ALLOW, only the attribute for DENY/AUDIT (and for CUSTOM,
# whose rules the builder generates as a DENY: builder.go build(customPolicies, RBAC_DENY)). The JWT ones are
# generator.go requestPrincipalGenerator / requestAudiencesGenerator / requestPresenterGenerator /
# requestClaimGenerator, each `if forTCP { return nil, fmt.Errorf("%q is HTTP only", key) }`.
HTTP_ONLY_FIELDS = frozenset({"hosts", "methods", "paths", "requestPrincipals"})

# Where the JWT filter puts the verified payload, and the RBAC metadata matchers read it
# (policy_applier.go@1.30.3 convertToEnvoyJwtConfig PayloadInMetadata; model/util.go MetadataValueMatcherForJWTClaim).
REQUEST_PRINCIPAL_KEY = "request.auth.principal"
REQUEST_AUDIENCES_KEY = "request.auth.audiences"
REQUEST_PRESENTER_KEY = "request.auth.presenter"
REQUEST_CLAIMS_PREFIX = "request.auth.claims"


def http_only_condition(key: str) -> bool:
    return key.startswith("request.headers") or key.startswith("request.auth.")


def claim_path(key: str) -> list[str] | None:
    """model/util.go extractNameInNestedBrackets on what follows `request.auth.claims`: `[a][b]` is the path
    [a, b]; a name holding `[` falls back to extractNameInBrackets (`[a[b]]` is the one claim `a[b]`); None
    where Istio's generator returns an error (the rule is then dropped for ALLOW, the condition for DENY)."""
    s = key[len(REQUEST_CLAIMS_PREFIX):]

    def end_bracket(begin: int) -> int:
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
        end = end_bracket(begin)
        if end == -1:
            if not (s.startswith("[") and s.endswith("]")):
                return None
            return [s[1:-1]]
        claims.append(s[begin + 1 : end])
        begin = end + 1
    return claims


def generatable(key: str) -> bool:
    """Whether istiod's generator can build a matcher for this `when` key at all (a claims key it cannot
    parse fails like an HTTP-only attribute on a TCP chain, model.go checkError)."""
    return not key.startswith(REQUEST_CLAIMS_PREFIX) or claim_path(key) is not None


@dataclass(frozen=True)
class Attributes:
    """What an Envoy RBAC filter can see of one request or connection."""

    principal: str | None  # URI SAN without `spiffe://`, None for plaintext
    source_ip: str
    destination_ip: str
    destination_port: int
    sni: str | None
    method: str | None = None  # None on a TCP chain
    path: str | None = None  # normalized, without the query
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names
    host: str | None = None
    # the payload the JWT filter verified, normalized (space-delimited claims as lists), as Envoy's dynamic
    # metadata `envoy.filters.http.jwt_authn` / `payload` holds it; None: no verified token
    payload: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    # what RBAC `remote_ip` matches (remoteIpBlocks, remote.ip): the HCM's remote address, from X-Forwarded-For by
    # Envoy's rule (xff.py) or the peer; None: the same as `source_ip` (no XFF, an ordinary connection)
    remote_ip: str | None = None

    uri: str | None = field(init=False, default=None, compare=False)  # `spiffe://` + principal

    def __post_init__(self) -> None:
        # computed once: every identity matcher reads it
        object.__setattr__(self, "uri", SPIFFE + self.principal if self.principal is not None else None)

    @classmethod
    def of(cls, principal: str | None, source_ip: str, destination_ip: str, destination_port: int, sni: str | None,
           method: str | None, path: str | None, headers: tuple[tuple[str, str], ...], host: str | None,
           remote_ip: str | None) -> Attributes:
        """The same object as the constructor (no payload) at a third of its cost: a frozen dataclass's __init__
        calls object.__setattr__ once per field, and the engine's fast path (fast.py) builds one per decision.
        tests/test_engine_fast.py checks that both give equal objects."""
        a = object.__new__(cls)
        a.__dict__.update(principal=principal, source_ip=source_ip, destination_ip=destination_ip,
                          destination_port=destination_port, sni=sni, method=method, path=path, headers=headers,
                          host=host, payload=None, remote_ip=remote_ip,
                          uri=SPIFFE + principal if principal is not None else None)
        return a

    def header(self, name: str) -> str | None:
        lname = name.lower()
        if lname == "host" or lname == ":authority":
            return self.host
        if lname == ":method":
            return self.method
        if lname == ":path":
            return self.path
        values = [v for k, v in self.headers if k == lname]
        return ",".join(values) if values else None


Check = Callable[[Attributes], bool]


class EnvoySemantics:
    """Compiles rules into checks for one mesh trust domain and Istio version."""

    def __init__(self, trust_domain: str, version: IstioVersion):
        self.trust_domain = trust_domain
        self.version = version
        # Regex metacharacters in namespaces and `*suffix` principals were inserted unescaped before
        # 1.28.7 / 1.29.3 / 1.30.0 (istio/istio#59992, releasenotes/notes/59992.yaml).
        self.quotes_namespaces = version.has(QUOTED_NAMESPACE_REGEX)
        # serviceAccounts quoting fixed in 1.27.9 / 1.28.6 / 1.29.2 (istio/istio#59700).
        self.quotes_service_accounts = version.has(QUOTED_SERVICE_ACCOUNT_REGEX)

    # -- trust domain ------------------------------------------------------------------------
    def migrate_principal(self, value: str) -> str:
        """bundle.go ReplaceTrustDomainAliases with no aliases configured: a principal whose trust
        domain is the mesh's, matches it by wildcard, or is the literal `cluster.local` is rewritten to
        the mesh trust domain; a `*` trust domain or a malformed principal is kept as written.
        """
        parts = value.split("/")
        if len(parts) != 5 or parts[0] == "*":
            return value
        td = parts[0]
        if td == self.trust_domain or td == "cluster.local" or _td_wildcard(td, self.trust_domain):
            if td.startswith("*") and self.trust_domain.endswith(td[1:]):
                return value  # replaceTrustDomains keeps a `*suffix` trust domain as written
            return "/".join([self.trust_domain, *parts[1:]])
        return value

    # -- single values ---------------------------------------------------------------------
    def principal_value(self, value: str) -> Check:
        """generator.go srcPrincipalGenerator: StringMatcherWithPrefix(value, "spiffe://")."""
        value = self.migrate_principal(value)
        if value.startswith("*") and value != "*" and not self.quotes_namespaces:
            match = envoy_regex(SPIFFE + ".*" + value[1:])  # pre-#59992: unquoted suffix
        elif pattern_kind(value) == "exact":
            # envoy_string's exact form, inlined: principals are the most common field and are matched on every
            # probe (a missing URI, None, equals no string)
            whole = SPIFFE + value
            return lambda a: a.uri == whole
        else:
            match = envoy_string(value, SPIFFE)
        return lambda a: a.uri is not None and match(a.uri)

    def namespace_value(self, value: str) -> Check:
        """generator.go srcNamespaceGenerator: regex `.*/ns/<ns>/.*`, `*` becomes `.*`."""
        parts = value.split("*")
        literal = ".*".join(quote_meta(p) if self.quotes_namespaces else p for p in parts)
        match = envoy_regex(f".*/ns/{literal}/.*")
        return lambda a: a.uri is not None and match(a.uri)

    def service_account_value(self, value: str, policy_namespace: str) -> Check:
        """generator.go serviceAccountRegex: `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`; a bare name
        takes the policy's namespace (Istio 1.25+)."""
        ns, sep, sa = value.partition("/")
        if not sep:
            ns, sa = policy_namespace, value
        q = quote_meta if self.quotes_service_accounts else (lambda s: s)
        match = envoy_regex(f"spiffe://.+/ns/{q(ns)}/(.+/|)sa/{q(sa)}(/.+)?")
        return lambda a: a.uri is not None and match(a.uri)

    def trust_domain_value(self, value: str) -> Check:
        """generator.go srcTrustDomainGenerator (1.30.2+): `*` any SPIFFE identity; a plain value is the
        prefix `spiffe://<td>/`; one `*` inside becomes `[^/]*` in a regex."""
        if value == "*":
            return lambda a: a.uri is not None and a.uri.startswith(SPIFFE)
        if "*" not in value:
            start = f"{SPIFFE}{value}/"
            return lambda a: a.uri is not None and a.uri.startswith(start)
        head, _, tail = value.partition("*")
        match = envoy_regex(f"spiffe://{quote_meta(head)}[^/]*{quote_meta(tail)}/.*")
        return lambda a: a.uri is not None and match(a.uri)

    def value_check(self, name: str, value: str, policy_namespace: str) -> Check:
        if name == "principals" or name == "source.principal":
            return self.principal_value(value)
        if name == "namespaces" or name == "source.namespace":
            return self.namespace_value(value)
        if name == "serviceAccounts" or name == "source.serviceAccount":
            return self.service_account_value(value, policy_namespace)
        if name == "trustDomains" or name == "source.trustDomain":
            return self.trust_domain_value(value)
        if name == "ipBlocks" or name == "source.ip":
            return lambda a: ip_in(value, a.source_ip)
        if name == "remoteIpBlocks" or name == "remote.ip":  # generator.go remoteIPGenerator → `remote_ip`
            return lambda a: ip_in(value, a.remote_ip if a.remote_ip is not None else a.source_ip)
        if name == "destination.ip":
            return lambda a: ip_in(value, a.destination_ip)
        if name == "ports" or name == "destination.port":
            port = int(value) if value.isdigit() else -1
            return lambda a: a.destination_port == port
        if name == "methods":
            m = envoy_header(value)
            return lambda a: m(a.method)
        if name == "hosts":
            h = envoy_header(value, ignore_case=True)
            return lambda a: h(a.host)
        if name == "paths":
            template = path_template(value)
            p = template or envoy_string(value)
            return lambda a: a.path is not None and p(a.path)
        if name == "connection.sni":
            s = envoy_string(value)
            return lambda a: s(a.sni or "")
        if name.startswith("request.headers["):
            header = name[len("request.headers[") : -1]
            hm = envoy_header(value)
            return lambda a: hm(a.header(header))
        if name == "requestPrincipals" or name == REQUEST_PRINCIPAL_KEY:
            rp = request_principal(value)
            return lambda a: a.payload is not None and rp(a.payload)
        if name == REQUEST_AUDIENCES_KEY:
            return _claim_check(["aud"], value)
        if name == REQUEST_PRESENTER_KEY:
            return _claim_check(["azp"], value)
        if name.startswith(REQUEST_CLAIMS_PREFIX):
            path = claim_path(name)
            if path is None:
                raise ValueError(f"attribute {name!r} cannot be generated")  # rule_parts never asks (generatable)
            return _claim_check(path, value)
        raise ValueError(f"attribute {name!r} is not modelled")

    def field_check(self, name: str, values: tuple[str, ...], not_values: tuple[str, ...], ns: str) -> Check:
        """Positive values ORed; `not` values: NOT(OR(...)); both ANDed (model.go rule.permission)."""
        pos = [self.value_check(name, v, ns) for v in values]
        neg = [self.value_check(name, v, ns) for v in not_values]
        if pos and neg:
            p, n = some(pos), some(neg)
            return lambda a: p(a) and not n(a)
        if pos:
            return some(pos)
        n = some(neg)
        return lambda a: not n(a)

    # -- rules ---------------------------------------------------------------------------------
    def rule_parts(self, rule: Rule, action: str, ns: str, for_tcp: bool) -> list[tuple[str, Check]] | None:
        """The rule as an AND of described checks, or None when istiod drops the rule.

        On a TCP chain an ALLOW rule using an HTTP-only attribute is dropped (narrower allow); a DENY
        or AUDIT rule loses just that attribute (wider deny): model.go checkError.
        """
        parts: list[tuple[str, Check]] = []

        def keep(name: str) -> bool:
            return generatable(name) and not (for_tcp and (name in HTTP_ONLY_FIELDS or http_only_condition(name)))

        def group(label: str, blocks: tuple[tuple[Field, ...], ...]) -> tuple[str, Check] | None:
            alternatives: list[Check] = []
            for fields in blocks:
                checks = []
                for f in fields:
                    if not keep(f.name):
                        if action == "ALLOW":
                            return None
                        continue
                    checks.append(self.field_check(f.name, f.values, f.not_values, ns))
                alternatives.append(every(checks))
            return label, some(alternatives)

        if rule.sources is not None:
            g = group("from", rule.sources)
            if g is None:
                return None
            parts.append(g)
        if rule.operations is not None:
            g = group("to", rule.operations)
            if g is None:
                return None
            parts.append(g)
        for i, cond in enumerate(rule.conditions):
            if not keep(cond.key):
                if action == "ALLOW":
                    return None
                continue
            parts.append((f"when[{i}]", self.condition_check(cond, ns)))
        return parts

    def condition_check(self, cond: Condition, ns: str) -> Check:
        return self.field_check(cond.key, cond.values, cond.not_values, ns)


# -- JWT attributes (generator.go@1.30.3 requestPrincipalGenerator, requestClaimGenerator; model/util.go) ---------

_ANY = envoy_regex(".+")  # generator.go matchAny: StringMatcherRegex(".+")


def _exact(v: str) -> Callable[[str], bool]:
    return lambda s: s == v


def _prefix(v: str) -> Callable[[str], bool]:
    return lambda s: s.startswith(v)


def _suffix(v: str) -> Callable[[str], bool]:
    return lambda s: s.endswith(v)


def request_principal(value: str) -> Callable[[Mapping[str, Any]], bool]:
    """requestPrincipalGenerator.extendedPrincipal for one value: split at the LAST `/` (an issuer may be a
    URL) into iss and sub, each matched on the payload's string claim of that name
    (MetadataStringMatcherForJWTClaim):

    `*` both `.+`; `*x/sub` iss suffix `x` (`*/sub`: iss `.+`), sub exact; `*sub` (no `/`) iss `.+`, sub suffix;
    `iss/x*` iss exact, sub prefix `x` (`iss/*`: sub `.+`); `iss*` (no `/`) iss prefix, sub `.+`; anything else
    both exact, a value without `/` meaning iss exact and sub exact "" (which no token with a `sub` matches).
    """
    idx = value.rfind("/")
    found = idx >= 0
    iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
    match_iss: Callable[[str], bool]
    match_sub: Callable[[str], bool]
    if value == "*":
        match_iss = match_sub = _ANY
    elif value.startswith("*"):
        if found:
            match_iss = _ANY if iss == "*" else _suffix(iss[1:])
            match_sub = _exact(sub)
        else:
            match_iss, match_sub = _ANY, _suffix(value[1:])
    elif value.endswith("*"):
        if found:
            match_iss = _exact(iss)
            match_sub = _ANY if sub == "*" else _prefix(sub[:-1])
        else:
            match_iss, match_sub = _prefix(value[:-1]), _ANY
    else:
        match_iss, match_sub = _exact(iss), _exact(sub)

    def check(payload: Mapping[str, Any]) -> bool:
        i, s = payload.get("iss"), payload.get("sub")
        return isinstance(i, str) and isinstance(s, str) and match_iss(i) and match_sub(s)

    return check


def metadata_value(payload: Mapping[str, Any] | None, path: list[str]) -> Any:
    """Envoy's MetadataMatcher path walk over the payload struct: None where a key is missing or a step is not
    a struct (a list cannot be walked into)."""
    value: Any = payload
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def claim_matches(value: Any, match: Callable[[str], bool]) -> bool:
    """MetadataListValueMatcher(..., useExtendedJwt=true): or_match[list_match{one_of: V}, V], V a string
    matcher: a string claim that matches, or a list holding a string that does; numbers, booleans, maps and
    nested lists never match a string matcher."""
    if isinstance(value, str):
        return match(value)
    if isinstance(value, list):
        return any(isinstance(v, str) and match(v) for v in value)
    return False


def _claim_check(path: list[str], value: str) -> Check:
    """request.auth.audiences (`aud`), .presenter (`azp`) and .claims[a][b] (`a.b`): Istio's string forms
    (matcher.StringMatcher: exact, `x*` prefix, `*x` suffix, `*` `.+`) on the claim as a string or a list."""
    match = envoy_string(value)
    return lambda a: claim_matches(metadata_value(a.payload, path), match)


def _td_wildcard(a: str, b: str) -> bool:
    """trustdomain/util.go stringMatch for one trust domain: equal, `*`, or prefix/suffix wildcards."""
    def pre(x: str, p: str) -> bool:
        return p.endswith("*") and x.startswith(p[:-1])

    def suf(x: str, p: str) -> bool:
        return p.startswith("*") and x.endswith(p[1:])

    return a == b or b == "*" or pre(a, b) or pre(b, a) or suf(a, b) or suf(b, a)
