"""Proof of denial on clusters: the sidecar's, waypoint's or ztunnel's own record, read from pod logs.

A reset or a 503 can come from a broken certificate, a dead proxy or a wrong address as well as from
a policy, so a denial counts only with the enforcing proxy's record of it (DESIGN.md §2):

- Envoy (sidecar, waypoint): the JSON access log configured in clusters/istio/*.yaml, whose
  `details` (%RESPONSE_CODE_DETAILS%, HTTP RBAC) or `term` (%CONNECTION_TERMINATION_DETAILS%, network
  RBAC) reads `rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]-rule[<i>]]` (istiod's policy
  id, pilot/pkg/security/authz/builder/builder.go `policyName`), or `[none]` when ALLOW policies exist
  and none matched. Each HTTP record carries the probe's `x-authz-probe` id (`probe`), so it is matched
  to its probe exactly; TCP records are matched by the source pod's address and the port.
- ztunnel: its access line (src/proxy/metrics.rs `access_log!`, level error, message "connection
  complete") with `error="connection closed due to policy rejection: explicitly denied by: <ns>/<name>"`
  or `...: allow policies exist, but none allowed` (src/proxy.rs `AuthorizationRejectionError`),
  matched by source address and destination address:port (`dst.hbone_addr`, or `dst.addr`).

Policy names are the cluster's (prefixed namespaces); `to_scenario` maps them back, so a Proof names
the policy as the scenario wrote it, comparable with the engine's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.probe import Proof, parse_policy_id, rbac_denial

ZTUNNEL_REJECTION = "connection closed due to policy rejection: "
ZTUNNEL_EXPLICIT = "explicitly denied by: "
ZTUNNEL_NONE_ALLOWED = "allow policies exist, but none allowed"
_KV = re.compile(r'(?P<key>[A-Za-z_][\w.]*)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
_K8S_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) ")




def strip_k8s_timestamp(line: str) -> str:
    """Pod logs read with timestamps=True start with the kubelet's RFC 3339 time and a space."""
    m = _K8S_TS.match(line)
    return line[m.end():] if m else line


@dataclass(frozen=True)
class EnvoyRecord:
    fields: dict[str, Any]
    line: str

    def get(self, key: str) -> str:
        value = self.fields.get(key)
        return "" if value is None else str(value)

    @property
    def decision(self) -> str | None:
        for key in ("details", "term"):
            policy_id = rbac_denial(self.get(key))
            if policy_id is not None:
                return policy_id
        return None

    @property
    def source_ip(self) -> str:
        return _host(self.get("src"))

    @property
    def local_port(self) -> int | None:
        return _port(self.get("local"))


def parse_envoy_line(line: str) -> EnvoyRecord | None:
    """One JSON access-log line (anything else a proxy prints is not a record: None)."""
    text = strip_k8s_timestamp(line.strip())
    if not text.startswith("{"):
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    return EnvoyRecord(fields, text) if isinstance(fields, dict) else None


@dataclass(frozen=True)
class ZtunnelRecord:
    level: str
    message: str
    fields: dict[str, str]
    line: str

    @property
    def rejection(self) -> str | None:
        error = self.fields.get("error", "")
        return error[len(ZTUNNEL_REJECTION):] if error.startswith(ZTUNNEL_REJECTION) else None

    @property
    def source_ip(self) -> str:
        return _host(self.fields.get("src.addr", ""))

    @property
    def destination(self) -> str:
        """The destination workload address:port (the HBONE target when there is one)."""
        return self.fields.get("dst.hbone_addr") or self.fields.get("dst.addr", "")


def parse_ztunnel_line(line: str) -> ZtunnelRecord | None:
    """ztunnel's plain format: `<time>\\t<level>\\t<target>\\t<message>\\t<k=v ...>` (src/telemetry.rs)."""
    text = strip_k8s_timestamp(line.rstrip("\n"))
    parts = text.split("\t")
    if len(parts) < 5 or parts[2] != "access":
        if text.startswith("{"):
            return _ztunnel_json(text)
        return None
    fields = {}
    for m in _KV.finditer("\t".join(parts[4:])):
        value = m["value"]
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        fields[m["key"]] = value
    return ZtunnelRecord(parts[1], parts[3], fields, text)


def _ztunnel_json(text: str) -> ZtunnelRecord | None:
    """ztunnel with LOG_FORMAT=json writes the same fields as one JSON object per line."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("scope", data.get("target")) != "access":
        return None
    fields = {k: str(v) for k, v in data.items()}
    return ZtunnelRecord(str(data.get("level", "")), str(data.get("message", "")), fields, text)


def envoy_proof(record: EnvoyRecord, proxy: str, to_scenario: Callable[[str], str]) -> Proof | None:
    decision = record.decision
    if decision is None:
        return None
    policy, rule = parse_policy_id(decision)
    return Proof(proxy=proxy, denied=True, policy=to_scenario(policy) if policy else None, rule=rule,
                 line=record.line)


def ztunnel_proof(record: ZtunnelRecord, proxy: str, to_scenario: Callable[[str], str]) -> Proof | None:
    reason = record.rejection
    if reason is None:
        return None
    policy: str | None = None
    if reason.startswith(ZTUNNEL_EXPLICIT):
        policy = to_scenario(reason[len(ZTUNNEL_EXPLICIT):].strip())
    elif reason.strip() != ZTUNNEL_NONE_ALLOWED:
        return Proof(proxy=proxy, denied=True, policy=None, rule=None, line=record.line)
    return Proof(proxy=proxy, denied=True, policy=policy, rule=None, line=record.line)


def _host(addr: str) -> str:
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def _port(addr: str) -> int | None:
    tail = addr.rsplit(":", 1)[-1] if ":" in addr else ""
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class ProofQuery:
    """What a probe's denial record must match: its id (HTTP), or source and destination (L4)."""

    probe_id: str
    source_ips: frozenset[str]
    destination_ip: str | None
    port: int
    http: bool


@dataclass
class ProofFinder:
    """Matches probes to log records; each record proves at most one probe (no double counting)."""

    to_scenario: Callable[[str], str]
    used: set[str] = field(default_factory=set)

    def from_envoy(self, lines: Iterable[str], proxy: str, query: ProofQuery) -> Proof | None:
        fallback: tuple[str, Proof] | None = None
        for line in lines:
            record = parse_envoy_line(line)
            if record is None or record.line in self.used:
                continue
            proof = envoy_proof(record, proxy, self.to_scenario)
            if proof is None:
                continue
            if record.get("probe") == query.probe_id:
                self.used.add(record.line)
                return proof
            tcp_match = (not record.get("method") or record.get("method") == "-") and \
                record.source_ip in query.source_ips and record.local_port in (query.port, None)
            if tcp_match and fallback is None:
                fallback = (record.line, proof)
        if fallback is not None and not query.http:
            self.used.add(fallback[0])
            return fallback[1]
        return None

    def from_ztunnel(self, lines: Iterable[str], proxy: str, query: ProofQuery) -> Proof | None:
        for line in lines:
            record = parse_ztunnel_line(line)
            if record is None or record.line in self.used:
                continue
            proof = ztunnel_proof(record, proxy, self.to_scenario)
            if proof is None or record.source_ip not in query.source_ips:
                continue
            dst = record.destination
            if _port(dst) != query.port:
                continue
            if query.destination_ip and _host(dst) not in (query.destination_ip, ""):
                continue
            self.used.add(record.line)
            return replace(proof)
        return None
