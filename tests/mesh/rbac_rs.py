"""A direct evaluator of ztunnel's authorization objects: istio/ztunnel@1.30.3 `src/rbac.rs`, line by line.

Why it lives under tests/: the local mesh never evaluates policies in Python (real Envoy does, with the
RBAC config `conformance.mesh.local.ztunnel` builds); this port of rbac.rs `Authorization::matches`
and state.rs `assert_rbac` exists only so tests can check that Envoy config decides like ztunnel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conformance.mesh.local.rbac import SPIFFE_PREFIX
from conformance.mesh.local.ztunnel import Authorization, ServiceAccountMatch, StringMatch


@dataclass(frozen=True)
class Peer:
    """rbac.rs Connection: source and destination addresses, the peer's SPIFFE identity if mTLS."""

    source_ip: str
    destination_ip: str
    destination_port: int
    identity: str | None = None  # "spiffe://td/ns/x/sa/y"


def matches(authz: Authorization, conn: Peer) -> bool:
    """rbac.rs Authorization::matches."""
    full = conn.identity or ""
    parts = full.removeprefix(SPIFFE_PREFIX).split("/") if full.startswith(SPIFFE_PREFIX) else []
    parsed = parts if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None
    ns = parsed[2] if parsed else ""
    if not authz.groups:
        return False

    def principal_ok(s: StringMatch) -> bool:
        return full.startswith(SPIFFE_PREFIX) and s.matches(full.removeprefix(SPIFFE_PREFIX))

    def sa_ok(sa: ServiceAccountMatch) -> bool:
        return parsed is not None and parsed[2] == sa.namespace and parsed[4] == sa.service_account

    def internal(pos: Sequence[Any], neg: Sequence[Any], pred: Any) -> bool:
        pm = True if not pos else any(pred(p) for p in pos)
        nm = True if not neg else not any(pred(p) for p in neg)
        return pm and nm

    src, dst = ipaddress.ip_address(conn.source_ip), ipaddress.ip_address(conn.destination_ip)
    for group in authz.groups:
        rule_match = True
        for clause in group.rules:
            clause_match = not clause.matches
            for mg in clause.matches:
                if mg.is_empty():
                    continue
                if (internal(mg.destination_ips, mg.not_destination_ips, lambda a: dst in a.network)
                        and internal(mg.source_ips, mg.not_source_ips, lambda a: src in a.network)
                        and internal(mg.destination_ports, mg.not_destination_ports,
                                     lambda p: p == conn.destination_port)
                        and internal(mg.service_accounts, mg.not_service_accounts, sa_ok)
                        and internal(mg.principals, mg.not_principals, principal_ok)
                        and internal(mg.namespaces, mg.not_namespaces, lambda s: s.matches(ns))):
                    clause_match = True
                    break
            rule_match = rule_match and clause_match
            if not rule_match:
                break
        if rule_match:
            return True
    return False


def decide(authorizations: Sequence[Authorization], conn: Peer) -> tuple[bool, str | None]:
    """state.rs assert_rbac: (allowed, deciding policy `ns/name` or None)."""
    enforced = [a for a in authorizations if not a.dry_run]
    for a in enforced:
        if a.action == "DENY" and matches(a, conn):
            return False, a.ref
    allows = [a for a in enforced if a.action == "ALLOW"]
    if not allows:
        return True, None
    for a in allows:
        if matches(a, conn):
            return True, a.ref
    return False, None
