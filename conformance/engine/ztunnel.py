"""Ambient L4 semantics: istiod's translation for ztunnel, then ztunnel's own matching.

Translation, an explicit step: istio/istio@1.30.3 `pilot/pkg/serviceregistry/ambient/authorization.go`
(`convertAuthorizationPolicy`, `handleRule`): one `to` clause (a Match per operation, ports only), one
`from` clause (a Match per source: ipBlocks, namespaces, serviceAccounts, principals and negations),
one clause per `when` (L4 keys only: source.ip, source.namespace, source.principal, destination.ip,
destination.port). Any L7 attribute (hosts, methods, paths, any other `when` key) is left out of its
Match; an ALLOW rule with any L7 attribute is dropped whole; a DENY rule keeps what is left.

Matching: istio/ztunnel@1.30.3 `src/rbac.rs` `Authorization::matches`: a policy with no rules never
matches; a rule matches when all its clauses do; a clause with no Matches matches; otherwise it needs
one non-empty Match to match: **empty Matches are skipped**, so a clause left with only empty Matches
never matches, and a DENY rule whose only constraint was L7 is a no-op (istio/istio#61126). Principals
compare the peer identity without `spiffe://` and with no trust-domain rewriting (`// TODO: TDA`,
istio/ztunnel#1260); plaintext has no identity, so identity Matches fail and their negations hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

from conformance.engine.combine import every, some
from conformance.engine.matchers import ip_in, ztunnel_string
from conformance.engine.policy import AuthorizationPolicy, Field, Rule

L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})
L7_OPERATION_FIELDS = frozenset({"hosts", "methods", "paths"})
L7_SOURCE_FIELDS = frozenset({"requestPrincipals", "remoteIpBlocks"})


@dataclass
class Match:
    """ztunnel's RbacMatch (workload API `security.Match`)."""

    namespaces: list[str] = field(default_factory=list)
    not_namespaces: list[str] = field(default_factory=list)
    service_accounts: list[tuple[str, str]] = field(default_factory=list)
    not_service_accounts: list[tuple[str, str]] = field(default_factory=list)
    principals: list[str] = field(default_factory=list)
    not_principals: list[str] = field(default_factory=list)
    source_ips: list[str] = field(default_factory=list)
    not_source_ips: list[str] = field(default_factory=list)
    destination_ips: list[str] = field(default_factory=list)
    not_destination_ips: list[str] = field(default_factory=list)
    destination_ports: list[int] = field(default_factory=list)
    not_destination_ports: list[int] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)


T = TypeVar("T")
Clause = list[Match]
ZRule = list[Clause]


@dataclass(frozen=True)
class Translated:
    """What istiod sends ztunnel for one policy: its rules (Groups), and the L7 fields it left out."""

    policy: AuthorizationPolicy
    rules: tuple[tuple[ZRule, int], ...]  # (clauses, index of the rule in the policy as written)
    dropped_rules: tuple[int, ...]  # ALLOW rules dropped for L7 attributes
    l7_fields: tuple[str, ...]

    @cached_property
    def checks(self) -> tuple[tuple[ConnCheck, int], ...]:
        return tuple((compile_rule(clauses), index) for clauses, index in self.rules)


@dataclass(frozen=True)
class Connection:
    """What ztunnel knows of a connection: the peer identity (None for plaintext) and addresses."""

    identity: str | None  # "<td>/ns/<ns>/sa/<sa>"
    source_ip: str
    destination_ip: str
    destination_port: int

    def __post_init__(self) -> None:
        # rbac.rs Authorization::matches derives these once per connection
        parts = self.identity.split("/") if self.identity is not None else []
        ok = len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa"
        object.__setattr__(self, "namespace", parts[2] if ok else "")
        object.__setattr__(self, "service_account", parts[4] if ok else "")

    namespace: str = field(init=False, default="")
    service_account: str = field(init=False, default="")


def _ports(values: tuple[str, ...]) -> list[int]:
    # authorization.go stringToPort: unparsable or >65535 values are skipped
    return [int(v) for v in values if v.isdigit() and int(v) <= 65535]


def _ips(values: tuple[str, ...]) -> list[str]:
    return [v for v in values if v]


def _sas(values: tuple[str, ...], ns: str) -> list[tuple[str, str]]:
    # stringToServiceAccountMatch: `ns/sa`, or a bare name in the policy's namespace
    out = []
    for v in values:
        a, sep, b = v.partition("/")
        out.append((a, b) if sep else (ns, v))
    return out


def translate(policy: AuthorizationPolicy) -> Translated:
    """handleRule for every rule of an ALLOW or DENY policy (callers skip AUDIT and targetRefs)."""
    rules: list[tuple[ZRule, int]] = []
    dropped: list[int] = []
    l7: list[str] = []
    for rule in policy.rules or ():
        clauses, found = _handle_rule(rule, policy.namespace)
        l7.extend(found)
        if found and policy.action == "ALLOW":
            dropped.append(rule.index)  # "L7 policies never match for ALLOW"
            continue
        rules.append((clauses, rule.index))
    return Translated(policy, tuple(rules), tuple(dropped), tuple(dict.fromkeys(l7)))


def _handle_rule(rule: Rule, ns: str) -> tuple[ZRule, list[str]]:
    l7: list[str] = []
    clauses: ZRule = []
    if rule.operations is not None:
        matches = []
        for fields in rule.operations:
            m = Match()
            for f in fields:
                if f.name in L7_OPERATION_FIELDS:
                    l7.extend(_names(f))
                elif f.name == "ports":
                    m.destination_ports, m.not_destination_ports = _ports(f.values), _ports(f.not_values)
            matches.append(m)
        if matches:
            clauses.append(matches)
    if rule.sources is not None:
        matches = []
        for fields in rule.sources:
            m = Match()
            for f in fields:
                if f.name in L7_SOURCE_FIELDS:
                    l7.extend(_names(f))
                elif f.name == "ipBlocks":
                    m.source_ips, m.not_source_ips = _ips(f.values), _ips(f.not_values)
                elif f.name == "namespaces":
                    m.namespaces, m.not_namespaces = list(f.values), list(f.not_values)
                elif f.name == "serviceAccounts":
                    m.service_accounts, m.not_service_accounts = _sas(f.values, ns), _sas(f.not_values, ns)
                elif f.name == "principals":
                    m.principals, m.not_principals = list(f.values), list(f.not_values)
                # trustDomains (1.30.2+) is neither translated nor flagged as L7 by handleRule: a source
                # holding only trustDomains becomes an empty Match (research note §2.5)
            matches.append(m)
        if matches:
            clauses.append(matches)
    for cond in rule.conditions:
        if cond.key not in L4_WHEN_KEYS:
            l7.append(cond.key)
        m = Match()
        pos, neg = cond.values, cond.not_values
        if cond.key == "source.namespace":
            m.namespaces, m.not_namespaces = list(pos), list(neg)
        elif cond.key == "source.principal":
            m.principals, m.not_principals = list(pos), list(neg)
        elif cond.key == "source.ip":
            m.source_ips, m.not_source_ips = _ips(pos), _ips(neg)
        elif cond.key == "destination.port":
            m.destination_ports, m.not_destination_ports = _ports(pos), _ports(neg)
        elif cond.key == "destination.ip":
            m.destination_ips, m.not_destination_ips = _ips(pos), _ips(neg)
        clauses.append([m])
    return clauses, l7


def _names(f: Field) -> list[str]:
    """The field names as written (`methods`, `notMethods`) that a Field carries values for."""
    neg = "not" + f.name[0].upper() + f.name[1:]
    return [n for n, vs in ((f.name, f.values), (neg, f.not_values)) if vs]


ConnCheck = Callable[[Connection], bool]


def _either(pos: Sequence[T], neg: Sequence[T], pred: Callable[[T, Connection], bool]) -> ConnCheck | None:
    """rbac.rs matches_internal: (no positives or any positive) and (no negatives or none negative)."""
    if not pos and not neg:
        return None
    if len(pos) == 1 and not neg:  # the common case, kept cheap: the engine decides on a hot path
        (v,) = pos
        return lambda c: pred(v, c)

    def check(c: Connection) -> bool:
        if pos and not any(pred(v, c) for v in pos):
            return False
        return not (neg and any(pred(v, c) for v in neg))

    return check


def compile_match(m: Match) -> ConnCheck | None:
    """A Match as one check (None for an empty Match, which ztunnel skips); identity: StringMatch::
    matches_principal compares the identity without `spiffe://`, so plaintext (no identity) never matches."""
    if m.is_empty():
        return None
    checks = [c for c in (
        _either(m.destination_ips, m.not_destination_ips, lambda v, c: ip_in(v, c.destination_ip)),
        _either(m.source_ips, m.not_source_ips, lambda v, c: ip_in(v, c.source_ip)),
        _either(m.destination_ports, m.not_destination_ports, lambda v, c: v == c.destination_port),
        _either(m.service_accounts, m.not_service_accounts,
                lambda v, c: c.identity is not None and (c.namespace, c.service_account) == v),
        # the string matchers are built here, once, not looked up per connection
        _either([ztunnel_string(v) for v in m.principals], [ztunnel_string(v) for v in m.not_principals],
                lambda f, c: c.identity is not None and f(c.identity)),
        _either([ztunnel_string(v) for v in m.namespaces], [ztunnel_string(v) for v in m.not_namespaces],
                lambda f, c: f(c.namespace)),
    ) if c is not None]
    return every(checks)


def compile_rule(rule: ZRule) -> ConnCheck:
    """A rule matches when every clause does; a clause with no Matches matches; otherwise one of its
    non-empty Matches must match (empty ones are skipped: istio/ztunnel@1.30 src/rbac.rs Authorization::matches
    l.115, `if mg.is_empty() { continue }`)."""
    clauses: list[list[ConnCheck]] = []
    for clause in rule:
        if not clause:
            continue
        clauses.append([c for c in (compile_match(m) for m in clause) if c is not None])
    return every([some(matches) for matches in clauses])




def first_matching_rule(t: Translated, conn: Connection) -> int | None:
    """Index (as written) of the first rule that matches, or None. No rules: never matches."""
    for check, index in t.checks:
        if check(conn):
            return index
    return None


def unenforceable(t: Translated) -> bool:
    """True when no rule of a translated DENY can ever fire: every rule has a clause made only of
    empty Matches (the L7-only case istio/istio#61126 calls "will have no effect")."""
    return all(any(clause and all(m.is_empty() for m in clause) for clause in rule) for rule, _ in t.rules)
