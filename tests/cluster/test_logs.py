"""Proof of denial from proxy logs: Envoy's JSON access log (sidecar, waypoint) and ztunnel's access
lines, normalised to probe.Proof with policy names mapped back to the scenario's namespaces."""

from __future__ import annotations

import json

from conformance.mesh.cluster.logs import (
    ProofFinder,
    ProofQuery,
    parse_envoy_line,
    parse_policy_id,
    parse_ztunnel_line,
)
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import MeshConfig, Scenario, Workload

NSMAP = NamespaceMap.for_scenario(Scenario("s", "", "s", ("sidecar",), MeshConfig(), (
    Workload("accounts", "accounts", "accounts", {}), Workload("curl", "finance", "curl", {})), (), ()), "azq-")
TS = "2026-11-23T10:00:00.123456789Z "


def envoy(**fields: object) -> str:
    base = {"time": "2026-11-23T10:00:00.100Z", "type": "DownstreamEnd", "method": "GET", "path": "/",
            "code": 200, "flags": "-", "details": "via_upstream", "term": None, "probe": None,
            "src": "10.244.0.7:41234", "local": "10.244.0.9:8080"}
    base.update(fields)
    return TS + json.dumps(base)


def ztunnel(error: str | None, src: str = "10.244.0.7:41234", dst: str = "10.244.0.9:8080") -> str:
    level = "error" if error else "info"
    fields = (f'src.addr={src} src.workload="curl-5d8" src.namespace="azq-finance" '
              f'src.identity="spiffe://cluster.local/ns/azq-finance/sa/curl" dst.addr=10.244.0.9:15008 '
              f'dst.hbone_addr={dst} dst.service="accounts.azq-accounts.svc.cluster.local" '
              f'dst.workload="accounts-7f9" dst.namespace="azq-accounts" direction="inbound" bytes_sent=0 '
              f'bytes_recv=0 duration="0ms"')
    if error:
        fields += f' error="{error}"'
    return f"{TS}2026-11-23T10:00:00.200000Z\t{level}\taccess\tconnection complete\t{fields}"


def query(http: bool = True, probe_id: str = "p-1") -> ProofQuery:
    return ProofQuery(probe_id, frozenset({"10.244.0.7"}), "10.244.0.9", 8080, http)


def test_policy_ids():
    assert parse_policy_id("ns[azq-accounts]-policy[deny-all]-rule[0]") == ("azq-accounts/deny-all", 0)
    assert parse_policy_id("none") == (None, None)


def test_sidecar_http_denial_is_matched_by_probe_id_and_mapped_back():
    lines = [
        envoy(probe="p-0", code=200),
        envoy(probe="p-1", code=403,
              details="rbac_access_denied_matched_policy[ns[azq-accounts]-policy[deny-get]-rule[2]]"),
        "2026-11-23T10:00:00Z some non-JSON line istio-proxy prints",
    ]
    proof = ProofFinder(NSMAP.scenario_ref).from_envoy(lines, "sidecar:accounts/accounts", query())
    assert proof is not None and proof.denied
    assert (proof.policy, proof.rule, proof.proxy) == ("accounts/deny-get", 2, "sidecar:accounts/accounts")
    assert json.loads(proof.line)["probe"] == "p-1"


def test_allow_policies_none_matched():
    lines = [envoy(probe="p-1", code=403, details="rbac_access_denied_matched_policy[none]")]
    proof = ProofFinder(NSMAP.scenario_ref).from_envoy(lines, "sidecar:x", query())
    assert proof is not None and proof.denied and proof.policy is None


def test_an_allowed_record_or_another_probe_proves_nothing():
    lines = [envoy(probe="p-1", code=200), envoy(probe="p-2", code=403,
                                                  details="rbac_access_denied_matched_policy[none]")]
    assert ProofFinder(NSMAP.scenario_ref).from_envoy(lines, "sidecar:x", query()) is None


def test_tcp_denial_by_network_rbac_is_matched_by_source_and_port():
    line = envoy(type="DownstreamEnd", method=None, path=None, code=0, details=None,
                 term="rbac_access_denied_matched_policy[ns[azq-accounts]-policy[tcp-deny]-rule[0]]")
    finder = ProofFinder(NSMAP.scenario_ref)
    proof = finder.from_envoy([line], "sidecar:x", query(http=False))
    assert proof is not None and proof.policy == "accounts/tcp-deny"
    # one record proves one probe: a second probe needs its own record
    assert finder.from_envoy([line], "sidecar:x", query(http=False)) is None
    # an HTTP probe is never proved by a connection-level record
    assert ProofFinder(NSMAP.scenario_ref).from_envoy([line], "sidecar:x", query(http=True)) is None


def test_ztunnel_explicit_denial():
    lines = [ztunnel(None), ztunnel("connection closed due to policy rejection: explicitly denied by: "
                                    "azq-accounts/deny-finance")]
    record = parse_ztunnel_line(lines[1])
    assert record is not None and record.level == "error" and record.message == "connection complete"
    assert record.fields["src.identity"] == "spiffe://cluster.local/ns/azq-finance/sa/curl"
    proof = ProofFinder(NSMAP.scenario_ref).from_ztunnel(lines, "ztunnel:node", query(http=False))
    assert proof is not None and proof.denied and proof.policy == "accounts/deny-finance"


def test_ztunnel_allow_policies_but_none_allowed():
    line = ztunnel("connection closed due to policy rejection: allow policies exist, but none allowed")
    proof = ProofFinder(NSMAP.scenario_ref).from_ztunnel([line], "ztunnel:n", query(http=False))
    assert proof is not None and proof.policy is None


def test_ztunnel_record_must_match_source_and_destination():
    deny = "connection closed due to policy rejection: explicitly denied by: azq-accounts/p"
    assert ProofFinder(NSMAP.scenario_ref).from_ztunnel([ztunnel(deny, src="10.244.0.99:1")], "z", query()) is None
    assert ProofFinder(NSMAP.scenario_ref).from_ztunnel([ztunnel(deny, dst="10.244.0.9:9000")], "z", query()) is None
    other_error = ztunnel("connection failed: connection refused")
    assert ProofFinder(NSMAP.scenario_ref).from_ztunnel([other_error], "z", query()) is None


def test_ztunnel_json_format():
    line = json.dumps({"level": "error", "time": "2026-11-23T10:00:00Z", "scope": "access",
                       "message": "connection complete", "src.addr": "10.244.0.7:5000",
                       "dst.hbone_addr": "10.244.0.9:8080",
                       "error": "connection closed due to policy rejection: explicitly denied by: azq-accounts/x"})
    proof = ProofFinder(NSMAP.scenario_ref).from_ztunnel([line], "z", query())
    assert proof is not None and proof.policy == "accounts/x"


def test_unparseable_lines_are_skipped():
    assert parse_envoy_line("{not json") is None
    assert parse_envoy_line("plain text") is None
    assert parse_ztunnel_line("2026-11-23T10:00:00Z\tinfo\tproxy\tstarted") is None
