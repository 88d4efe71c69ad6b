"""Proof on clusters: the record matcher over recorded Envoy JSON access-log lines and ztunnel access lines.

The lines are shaped like the real ones: Envoy's from the accessLogFormat in clusters/istio/*.yaml, ztunnel's
from istio/ztunnel@1.30.3 src/proxy/metrics.rs (`access_log!`: target `access`, message "connection complete",
`src.addr`/`dst.addr` as ip:port, `dst.hbone_addr`, `direction`, `error`), each behind the kubelet's RFC 3339
nanosecond timestamp (read with timestamps=True).
"""

from __future__ import annotations

import json

from conformance.mesh.cluster.logs import (
    LogLine,
    RecordMatcher,
    Wanted,
    k8s_timestamp,
    parse_envoy_line,
    parse_ztunnel_line,
    split_log,
)
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import MeshConfig, Scenario, Workload
from conformance.probe import DENY_POLICY, NO_ALLOW_MATCHED, PROXY_ALLOWED, STRICT_MTLS, parse_policy_id

NSMAP = NamespaceMap.for_scenario(Scenario("s", "", "s", ("sidecar",), MeshConfig(), (
    Workload("accounts", "accounts", "accounts", {}), Workload("curl", "finance", "curl", {})), (), ()), "azq-")
T0 = 1_795_000_000.0  # a wall-clock instant: the exec of round 1 started here
SIDECAR = "azq-accounts/accounts-7f9"
ZTUNNEL = "istio-system/ztunnel-abcde"


def stamp(seconds: float) -> str:
    """The kubelet's timestamp for `seconds` since the epoch (nanoseconds, as RFC3339Nano prints them)."""
    from datetime import UTC, datetime

    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def envoy(at: float, **fields: object) -> str:
    base = {"time": "2026-11-23T10:00:00.100Z", "type": "DownstreamEnd", "method": "GET", "path": "/",
            "code": 200, "flags": "-", "details": "via_upstream", "term": None, "probe": None,
            "src": "10.244.0.7:41234", "local": "10.244.0.9:8080", "upstream_local": None}
    base.update(fields)
    return f"{stamp(at)} {json.dumps(base)}"


def ztunnel(at: float, error: str | None, src: str = "10.244.0.7:41234", dst: str = "10.244.0.9:8080",
            hbone: bool = True, direction: str | None = "inbound") -> str:
    level = "error" if error else "info"
    dst_fields = f"dst.addr=10.244.0.9:15008 dst.hbone_addr={dst}" if hbone else f"dst.addr={dst}"
    fields = (f'src.addr={src} src.workload="curl-5d8" src.namespace="azq-finance" '
              f'src.identity="spiffe://cluster.local/ns/azq-finance/sa/curl" {dst_fields} '
              f'dst.service="accounts.azq-accounts.svc.cluster.local" dst.workload="accounts-7f9" '
              f'dst.namespace="azq-accounts" ' + (f'direction="{direction}" ' if direction else "") +
              'bytes_sent=0 bytes_recv=0 duration="0ms"')
    if error:
        fields += f' error="{error}"'
    return f"{stamp(at)} 2026-11-23T10:00:00.200000Z\t{level}\taccess\tconnection complete\t{fields}"


def lines(source: str, *raw: str) -> dict[str, list[LogLine]]:
    return {source: split_log(source, "\n".join(raw))}


def http(key: int, probe_id: str, after: float = T0) -> Wanted:
    return Wanted(key, SIDECAR, "envoy", after, "sidecar:accounts/accounts", "sidecar", "accounts/accounts",
                  probe_id=probe_id, local_host="10.244.0.9")


def tcp(key: int, src: str, after: float = T0, via: str | None = None) -> Wanted:
    return Wanted(key, SIDECAR, "envoy", after, "sidecar:accounts/accounts", "sidecar", "accounts/accounts",
                  src=src, via=via, local_host="10.244.0.9", dst="10.244.0.9:9000")


def zt(key: int, *, src: str | None = None, pooled: frozenset[str] = frozenset(), after: float = T0,
       link: str | None = None) -> Wanted:
    return Wanted(key, ZTUNNEL, "ztunnel", after, "ztunnel:node-1", "ztunnel", "accounts/accounts", src=src,
                  pooled=pooled, dst="10.244.0.9:8080", link=link)


DENY_GET = "rbac_access_denied_matched_policy[ns[azq-accounts]-policy[deny-get]-rule[2]]"
EXPLICIT = "connection closed due to policy rejection: explicitly denied by: azq-accounts/deny-finance"
NONE_ALLOWED = "connection closed due to policy rejection: allow policies exist, but none allowed"


def test_kubelet_timestamps():
    assert k8s_timestamp(stamp(T0 + 0.25) + " x") == T0 + 0.25
    assert k8s_timestamp("2026-11-23T10:00:00+01:00 x") == k8s_timestamp("2026-11-23T09:00:00Z x")
    assert k8s_timestamp("no timestamp") is None
    assert split_log("p", "no timestamp here\n" + stamp(T0) + " {}") == [LogLine("p", T0, "{}", stamp(T0) + " {}")]


def test_policy_ids():
    assert parse_policy_id("ns[azq-accounts]-policy[deny-all]-rule[0]") == ("azq-accounts/deny-all", 0)
    assert parse_policy_id("none") == (None, None)


def test_sidecar_http_denial_is_matched_by_the_probe_header_and_mapped_back():
    logs = lines(SIDECAR, envoy(T0 + 0.1, probe="r1-0", code=200), envoy(T0 + 0.2, probe="r1-1", code=403,
                                                                         details=DENY_GET),
                 f"{stamp(T0 + 0.3)} some non-JSON line istio-proxy prints")
    found = RecordMatcher(NSMAP.scenario_ref).match([http(1, "r1-1")], logs, final=True)
    proof = found[1].proof
    assert proof is not None and proof.kind == DENY_POLICY and proof.denied
    assert (proof.policy, proof.rule, proof.proxy) == ("accounts/deny-get", 2, "sidecar:accounts/accounts")
    assert (proof.layer, proof.serves) == ("sidecar", "accounts/accounts")
    assert json.loads(proof.line)["probe"] == "r1-1"


def test_two_probes_sharing_a_scenario_x_request_id_get_their_own_records():
    # the scenario sets the same x-request-id on both; only the suite's own probe header keys records
    logs = lines(SIDECAR,
                 envoy(T0 + 0.1, probe="r1-0", code=403, details=DENY_GET, request_id="same"),
                 envoy(T0 + 0.2, probe="r1-1", code=403, details="rbac_access_denied_matched_policy[none]",
                       request_id="same"))
    found = RecordMatcher(NSMAP.scenario_ref).match([http(0, "r1-0"), http(1, "r1-1")], logs, final=True)
    assert found[0].proof is not None and found[0].proof.kind == DENY_POLICY
    assert found[1].proof is not None and found[1].proof.kind == NO_ALLOW_MATCHED and found[1].proof.policy is None


def test_a_previous_rounds_line_never_proves_a_later_probe():
    matcher = RecordMatcher(NSMAP.scenario_ref)  # one per session
    first = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.50:40000", hbone=False))
    assert matcher.match([zt(0, src="10.244.0.50:40000")], first, final=True)[0].proof is not None
    # round 2: curl happened to get the same local port again; the old line is still in the log
    again = matcher.match([zt(0, src="10.244.0.50:40000", after=T0 + 0.05)], first, final=True)[0]
    assert again.proof is None and "no record" in (again.note or "")


def test_a_line_from_before_the_exec_started_is_ignored():
    logs = lines(SIDECAR, envoy(T0 - 0.5, probe="r1-0", code=403, details=DENY_GET))
    matcher = RecordMatcher(NSMAP.scenario_ref)
    assert matcher.match([http(0, "r1-0")], logs, final=False) == {}  # not final: may still come
    found = matcher.match([http(0, "r1-0")], logs, final=True)[0]
    assert found.proof is None and found.note == "no record of this probe at sidecar:accounts/accounts"


def test_two_records_for_one_probe_leave_it_unproven():
    logs = lines(SIDECAR, envoy(T0 + 0.1, probe="r1-0", code=403, details=DENY_GET),
                 envoy(T0 + 0.2, probe="r1-0", code=403, details=DENY_GET))
    found = RecordMatcher(NSMAP.scenario_ref).match([http(0, "r1-0")], logs, final=False)[0]
    assert found.proof is None and "2 records" in (found.note or "")


def test_the_clients_own_outbound_record_is_not_the_decision():
    # the destination pod's sidecar also logs its own calls as a client (local = a service VIP)
    logs = lines(SIDECAR, envoy(T0 + 0.1, probe="r1-0", code=403, details="via_upstream", local="10.96.0.5:8080"),
                 envoy(T0 + 0.1, probe="r1-0", code=403, details=DENY_GET))
    found = RecordMatcher(NSMAP.scenario_ref).match([http(0, "r1-0")], logs, final=True)[0]
    assert found.proof is not None and found.proof.policy == "accounts/deny-get"


def test_a_strict_sidecar_refusing_plaintext_is_a_strict_rejection():
    # istiod's listener access log for NR (accesslog.go), Envoy's filter_chain_not_found; src = curl's own address
    nr = envoy(T0 + 0.1, type="DownstreamEnd", method=None, path=None, code=0, flags="NR",
               details="filter_chain_not_found", src="10.244.0.50:40000")
    found = RecordMatcher(NSMAP.scenario_ref).match([tcp(0, "10.244.0.50:40000")], lines(SIDECAR, nr), final=True)
    assert found[0].proof is not None and found[0].proof.kind == STRICT_MTLS


def test_tcp_denial_through_the_client_sidecar_is_found_by_its_upstream_socket():
    client = "azq-finance/curl-5d8"
    logs = {
        **lines(client, envoy(T0 + 0.1, method=None, code=0, src="10.244.0.7:41234", local="10.96.0.9:9000",
                              upstream="10.244.0.9:9000", upstream_local="10.244.0.7:52000"),
                # the same local port towards another destination at the same time: not this probe's
                envoy(T0 + 0.1, method=None, code=0, src="10.244.0.7:41234", local="10.96.0.8:9000",
                      upstream="10.244.0.8:9000", upstream_local="10.244.0.7:51999")),
        **lines(SIDECAR, envoy(T0 + 0.1, method=None, code=0, details=None, src="10.244.0.7:51999",
                               local="10.244.0.9:9000", term="rbac_access_denied_matched_policy[none]"),
                envoy(T0 + 0.1, method=None, code=0, details=None, src="10.244.0.7:52000", local="10.244.0.9:9000",
                      term="rbac_access_denied_matched_policy[ns[azq-accounts]-policy[tcp-deny]-rule[0]]")),
    }
    found = RecordMatcher(NSMAP.scenario_ref).match([tcp(0, "10.244.0.7:41234", via=client)], logs, final=True)
    assert found[0].proof is not None and found[0].proof.policy == "accounts/tcp-deny"


def test_ztunnel_explicit_denial_and_static_strict():
    matcher = RecordMatcher(NSMAP.scenario_ref)
    logs = lines(ZTUNNEL, ztunnel(T0 + 0.1, None, src="10.244.0.50:1"),
                 ztunnel(T0 + 0.2, EXPLICIT, src="10.244.0.50:40000", hbone=False),
                 ztunnel(T0 + 0.3, "connection closed due to policy rejection: explicitly denied by: "
                                   "istio-system/istio_converted_static_strict", src="10.244.0.50:40001", hbone=False))
    record = parse_ztunnel_line(logs[ZTUNNEL][1].raw)
    assert record is not None and record.level == "error" and record.message == "connection complete"
    assert record.fields["src.identity"] == "spiffe://cluster.local/ns/azq-finance/sa/curl"
    found = matcher.match([zt(0, src="10.244.0.50:40000"), zt(1, src="10.244.0.50:40001")], logs, final=True)
    deny, strict = found[0].proof, found[1].proof
    assert deny is not None and deny.kind == DENY_POLICY
    assert (deny.policy, deny.layer) == ("accounts/deny-finance", "ztunnel")
    assert deny.serves == "accounts/accounts" and deny.proxy == "ztunnel:node-1"
    assert strict is not None and strict.kind == STRICT_MTLS and strict.policy is None


def test_ztunnel_none_allowed_is_no_allow_matched():
    logs = lines(ZTUNNEL, ztunnel(T0 + 0.1, NONE_ALLOWED, src="10.244.0.50:40000", hbone=False))
    proof = RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:40000")], logs, final=True)[0].proof
    assert proof is not None and proof.kind == NO_ALLOW_MATCHED and proof.policy is None


def test_ztunnel_pooled_hbone_records_are_counted_per_round():
    # in-mesh sources reach ztunnel over one pooled HBONE connection: src.addr's port is not curl's
    two = [zt(0, pooled=frozenset({"10.244.0.7"})), zt(1, pooled=frozenset({"10.244.0.7"}))]
    one_record = lines(ZTUNNEL, ztunnel(T0 + 0.1, NONE_ALLOWED, src="10.244.0.7:15008"))
    matcher = RecordMatcher(NSMAP.scenario_ref)
    assert matcher.match(two, one_record, final=False) == {}  # the second record may be on its way
    short = matcher.match(two, one_record, final=True)
    assert all(m.proof is None and "1 policy rejection(s)" in (m.note or "") for m in short.values())
    both = lines(ZTUNNEL, ztunnel(T0 + 1.1, NONE_ALLOWED, src="10.244.0.7:15008"),
                 ztunnel(T0 + 1.2, NONE_ALLOWED, src="10.244.0.7:15008"),
                 ztunnel(T0 + 1.3, NONE_ALLOWED, src="10.244.0.99:15008"))  # another source: not these probes'
    again = [zt(0, pooled=frozenset({"10.244.0.7"}), after=T0 + 1), zt(1, pooled=frozenset({"10.244.0.7"}),
                                                                        after=T0 + 1)]
    found = matcher.match(again, both, final=False)
    assert all(m.proof is not None and m.proof.kind == NO_ALLOW_MATCHED for m in found.values())


def test_ztunnel_record_must_match_source_and_destination_and_be_a_policy_decision():
    w = [zt(0, src="10.244.0.50:40000")]
    other_src = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.50:40001", hbone=False))
    assert RecordMatcher(NSMAP.scenario_ref).match(w, other_src, final=True)[0].proof is None
    other_dst = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.50:40000", dst="10.244.0.9:9000", hbone=False))
    assert RecordMatcher(NSMAP.scenario_ref).match(w, other_dst, final=True)[0].proof is None
    failed = lines(ZTUNNEL, ztunnel(T0 + 0.1, "connection failed: connection refused", src="10.244.0.50:40000",
                                    hbone=False))
    found = RecordMatcher(NSMAP.scenario_ref).match(w, failed, final=True)[0]
    assert found.proof is None and "no policy decision" in (found.note or "")
    allowed = lines(ZTUNNEL, ztunnel(T0 + 0.1, None, src="10.244.0.50:40000", hbone=False))
    said = RecordMatcher(NSMAP.scenario_ref).match(w, allowed, final=True)[0].proof
    assert said is not None and said.kind == PROXY_ALLOWED and not said.denied


def test_probes_sharing_a_connection_key_are_unproven():
    found = RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:40000"), zt(1, src="10.244.0.50:40000")],
                                                    {}, final=True)
    assert all(m.proof is None and "share the key" in (m.note or "") for m in found.values())


def test_ztunnel_json_format():
    line = json.dumps({"level": "error", "time": "2026-11-23T10:00:00Z", "scope": "access",
                       "message": "connection complete", "src.addr": "10.244.0.50:5000", "direction": "inbound",
                       "dst.addr": "10.244.0.9:8080", "error": EXPLICIT})
    logs = {ZTUNNEL: split_log(ZTUNNEL, f"{stamp(T0 + 0.1)} {line}")}
    proof = RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:5000")], logs, final=True)[0].proof
    assert proof is not None and proof.policy == "accounts/deny-finance"


def test_unparseable_lines_are_skipped():
    assert parse_envoy_line("{not json") is None
    assert parse_envoy_line("plain text") is None
    assert parse_ztunnel_line("2026-11-23T10:00:00Z\tinfo\tproxy\tstarted") is None


SOURCE_ZTUNNEL = "istio-system/ztunnel-fghij"  # the ztunnel of the client's node


def test_an_hbone_probe_is_tied_to_its_own_connection_by_the_source_ztunnels_record():
    """The destination's record has the pooled HBONE connection's port; the source ztunnel's outbound record
    has curl's (src.addr) and says the destination refused the CONNECT (401, inbound.rs)."""
    pooled = frozenset({"10.244.0.7"})
    wanted = [zt(0, pooled=pooled, src="10.244.0.7:41000", link=SOURCE_ZTUNNEL),
              zt(1, pooled=pooled, src="10.244.0.7:41001", link=SOURCE_ZTUNNEL)]
    refused = "http status: 401 Unauthorized"
    logs = {
        **lines(SOURCE_ZTUNNEL,
                ztunnel(T0 + 0.1, refused, src="10.244.0.7:41000", direction="outbound"),
                ztunnel(T0 + 0.1, refused, src="10.244.0.7:41001", direction="outbound")),
        **lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.7:15008"),
                ztunnel(T0 + 0.2, EXPLICIT, src="10.244.0.7:15008")),
    }
    matcher = RecordMatcher(NSMAP.scenario_ref)
    found = matcher.match(wanted, logs, final=False)
    assert [found[k].proof.policy for k in (0, 1)] == ["accounts/deny-finance"] * 2  # type: ignore[union-attr]
    # every line was used: the same logs prove nothing more
    again = matcher.match([zt(2, pooled=pooled, src="10.244.0.7:41000", link=SOURCE_ZTUNNEL)], logs, final=True)
    assert again[2].proof is None and "no record of this probe's connection" in (again[2].note or "")


def test_an_hbone_probe_whose_own_connection_was_not_refused_is_unproven():
    pooled = frozenset({"10.244.0.7"})
    logs = {
        **lines(SOURCE_ZTUNNEL, ztunnel(T0 + 0.1, "http status: 503 Service Unavailable", src="10.244.0.7:41000",
                                        direction="outbound")),
        **lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.7:15008")),  # another probe's? unknown
    }
    found = RecordMatcher(NSMAP.scenario_ref).match(
        [zt(0, pooled=pooled, src="10.244.0.7:41000", link=SOURCE_ZTUNNEL)], logs, final=True)
    assert found[0].proof is None and "503" in (found[0].note or "")


def test_a_pooled_probe_is_counted_only_from_its_own_exec():
    """Probes sharing a pooled key come from different execs (several waypoint pods, or several source pods
    behind one key): a rejection written before a probe's own exec started can never be that probe's, even
    when an earlier exec of the same group was already running then."""
    pooled = frozenset({"10.244.0.7", "10.244.0.8"})
    early, late = zt(0, pooled=pooled, after=T0), zt(1, pooled=pooled, after=T0 + 10)
    # both rejections were written before the second exec started: neither can be its record
    before = lines(ZTUNNEL, ztunnel(T0 + 1, NONE_ALLOWED, src="10.244.0.7:15008"),
                   ztunnel(T0 + 2, NONE_ALLOWED, src="10.244.0.8:15008"))
    matcher = RecordMatcher(NSMAP.scenario_ref)
    assert matcher.match([early, late], before, final=False) == {}  # the second one's may still be on its way
    found = matcher.match([early, late], before, final=True)
    assert all(m.proof is None for m in found.values()), found
    assert "started" in (found[1].note or "")
    # one before it and one after it: each probe has a record written after its own exec started
    spread = lines(ZTUNNEL, ztunnel(T0 + 21, NONE_ALLOWED, src="10.244.0.7:15008"),
                   ztunnel(T0 + 32, NONE_ALLOWED, src="10.244.0.8:15008"))
    again = [zt(0, pooled=pooled, after=T0 + 20), zt(1, pooled=pooled, after=T0 + 30)]
    proven = RecordMatcher(NSMAP.scenario_ref).match(again, spread, final=False)
    assert [proven[k].proof.kind for k in (0, 1)] == [NO_ALLOW_MATCHED] * 2  # type: ignore[union-attr]
    assert k8s_timestamp(spread[ZTUNNEL][1].raw) == T0 + 32 and "10.244.0.8" in proven[1].proof.line  # type: ignore[union-attr]


def test_a_ztunnel_line_without_a_direction_is_no_decision():
    """Every access event ztunnel 1.29.6 and 1.30.3 writes names its direction (src/proxy/metrics.rs: the
    "connection complete" record, "connection opened" and `log_early_deny` all set `direction`), so a line
    without one is not ztunnel's record of a connection it accepted: never an inbound decision."""
    no_direction = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.50:40000", hbone=False,
                                          direction=None))
    exact = RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:40000")], no_direction, final=True)[0]
    assert exact.proof is None and "no record" in (exact.note or "")
    pooled = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.7:15008", direction=None))
    counted = RecordMatcher(NSMAP.scenario_ref).match([zt(0, pooled=frozenset({"10.244.0.7"}))], pooled, final=True)
    assert counted[0].proof is None and "0 policy rejection(s)" in (counted[0].note or "")
    outbound = lines(ZTUNNEL, ztunnel(T0 + 0.1, EXPLICIT, src="10.244.0.50:40000", hbone=False,
                                      direction="outbound"))
    assert RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:40000")], outbound,
                                                   final=True)[0].proof is None


def test_jwt_and_ext_authz_denials_are_proved_by_the_filters_own_details():
    """Issue 11: the JWT filter's `jwt_authn_access_denied{...}` (envoy jwt_authn filter.cc) and ext_authz's
    `ext_authz_denied`, naming the CUSTOM policy from the shadow RBAC's dynamic metadata (the `http_rbac` field
    of clusters/istio/*.yaml), read as the local mesh reads them (probe.envoy_denial_proof), names mapped back."""
    from conformance.probe import EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR, EXT_AUTHZ_POLICY_KEY, JWT_REJECTED

    custom = "istio-ext-authz-azq-sample-ns[azq-accounts]-policy[ext-authz]-rule[0]"
    logs = lines(SIDECAR,
                 envoy(T0 + 0.1, probe="r1-0", code=401, details="jwt_authn_access_denied{Jwt_is_expired}"),
                 envoy(T0 + 0.2, probe="r1-1", code=403, details="ext_authz_denied",
                       http_rbac={EXT_AUTHZ_POLICY_KEY: custom, "istio_ext_authz_shadow_engine_result": "allowed"}),
                 envoy(T0 + 0.3, probe="r1-2", code=403, details="ext_authz_error",
                       http_rbac={EXT_AUTHZ_POLICY_KEY: custom}))
    found = RecordMatcher(NSMAP.scenario_ref).match([http(0, "r1-0"), http(1, "r1-1"), http(2, "r1-2")], logs,
                                                    final=True)
    jwt, denied, error = (found[k].proof for k in range(3))
    assert jwt is not None and (jwt.kind, jwt.detail, jwt.policy) == (JWT_REJECTED, "Jwt is expired", None)
    assert denied is not None and (denied.kind, denied.policy, denied.rule) == (EXT_AUTHZ_DENIED,
                                                                                "accounts/ext-authz", 0)
    assert error is not None and (error.kind, error.policy) == (EXT_AUTHZ_ERROR, "accounts/ext-authz")


def test_ztunnel_naming_a_converted_peer_authentication_is_a_strict_rejection():
    """Issue 12: istiod's `converted_peer_authentication_<name>` DENY (ambient authorization.go, port-level
    modes) is a STRICT rejection on that port, read by probe.proof_of_rbac as on the local mesh."""
    logs = lines(ZTUNNEL, ztunnel(T0 + 0.1, "connection closed due to policy rejection: explicitly denied by: "
                                            "azq-accounts/converted_peer_authentication_ports",
                                  src="10.244.0.50:40000", hbone=False))
    proof = RecordMatcher(NSMAP.scenario_ref).match([zt(0, src="10.244.0.50:40000")], logs, final=True)[0].proof
    assert proof is not None and proof.kind == STRICT_MTLS and proof.policy is None
