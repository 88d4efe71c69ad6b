"""Envoy-side semantics: how a sidecar or waypoint matches a rule, following istiod's RBAC builder.

Sources: istio/istio@1.30.3 `pilot/pkg/security/authz/model/{model,generator}.go` (which attribute becomes
which Envoy matcher, `when` folded into every permission/principal), `matcher/{string,header}.go`, and
`trustdomain/bundle.go` (principals in the local trust domain or `cluster.local` are rewritten to the
mesh trust domain). Envoy's `authenticated` principal matcher needs a TLS peer, so identity fields never
match plaintext and their `not` forms always do (research note §3.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from conformance.engine.matchers import (
    envoy_header,
    envoy_regex,
    envoy_string,
    ip_in,
    path_template,
    quote_meta,
)
from conformance.engine.policy import Condition, Field, Rule
from conformance.versions import QUOTED_NAMESPACE_REGEX, QUOTED_SERVICE_ACCOUNT_REGEX, IstioVersion

SPIFFE = "spiffe://"

# HTTP-only attributes: on a TCP filter chain istiod's generators fail for them (`"%q is HTTP only"`),
# and model.go checkError drops the whole rule for ALLOW, only the attribute for DENY/AUDIT.
HTTP_ONLY_FIELDS = frozenset({"hosts", "methods", "paths"})


def http_only_condition(key: str) -> bool:
    return key.startswith("request.headers")


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

    uri: str | None = field(init=False, default=None, compare=False)  # `spiffe://` + principal

    def __post_init__(self) -> None:
        # computed once: every identity matcher reads it
        object.__setattr__(self, "uri", SPIFFE + self.principal if self.principal is not None else None)

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
        raise ValueError(f"attribute {name!r} is not modelled")

    def field_check(self, name: str, values: tuple[str, ...], not_values: tuple[str, ...], ns: str) -> Check:
        """Positive values ORed; `not` values: NOT(OR(...)); both ANDed (model.go rule.permission)."""
        pos = [self.value_check(name, v, ns) for v in values]
        neg = [self.value_check(name, v, ns) for v in not_values]
        if pos and neg:
            p, n = _any(pos), _any(neg)
            return lambda a: p(a) and not n(a)
        if pos:
            return _any(pos)
        n = _any(neg)
        return lambda a: not n(a)

    # -- rules ---------------------------------------------------------------------------------
    def rule_parts(self, rule: Rule, action: str, ns: str, for_tcp: bool) -> list[tuple[str, Check]] | None:
        """The rule as an AND of described checks, or None when istiod drops the rule.

        On a TCP chain an ALLOW rule using an HTTP-only attribute is dropped (narrower allow); a DENY
        or AUDIT rule loses just that attribute (wider deny): model.go checkError.
        """
        parts: list[tuple[str, Check]] = []

        def keep(name: str) -> bool:
            return not (for_tcp and (name in HTTP_ONLY_FIELDS or http_only_condition(name)))

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
                alternatives.append(_all(checks))
            return label, _any(alternatives)

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


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda a: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        c1, c2 = checks
        return lambda a: c1(a) and c2(a)

    def every(a: Attributes) -> bool:  # a plain loop: faster than all() with a generator on this hot path
        for c in checks:  # noqa: SIM110
            if not c(a):
                return False
        return True

    return every


def _any(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        c1, c2 = checks
        return lambda a: c1(a) or c2(a)

    def some(a: Attributes) -> bool:
        for c in checks:  # noqa: SIM110
            if c(a):
                return True
        return False

    return some


def _td_wildcard(a: str, b: str) -> bool:
    """trustdomain/util.go stringMatch for one trust domain: equal, `*`, or prefix/suffix wildcards."""
    def pre(x: str, p: str) -> bool:
        return p.endswith("*") and x.startswith(p[:-1])

    def suf(x: str, p: str) -> bool:
        return p.startswith("*") and x.endswith(p[1:])

    return a == b or b == "*" or pre(a, b) or pre(b, a) or suf(a, b) or suf(b, a)
