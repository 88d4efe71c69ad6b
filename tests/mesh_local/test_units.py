"""The local target's pure parts, without Envoy: ports, certificates, curl commands, log records."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.mesh.local.addresses import OUTBOUND_BASE, build_port_map
from conformance.mesh.local.curl import CURL_MISSING, CurlRequest
from conformance.mesh.local.logs import LogRecord, deciding_record, parse_policy_id, proof_from
from conformance.mesh.local.mesh import LocalTarget
from conformance.mesh.local.pki import CertificateAuthority
from conformance.probe import (
    CURL_WRITE_OUT,
    DENY_POLICY,
    NO_ALLOW_MATCHED,
    PROBE_HEADER,
    PROXY_ALLOWED,
    STRICT_MTLS,
    evidence_from_curl,
)


def test_port_map_keeps_bindable_ports_and_remaps_the_rest_consistently() -> None:
    m = build_port_map([80, 443, 8080, 15001, 20080, 9000], outbound_count=4)
    assert m[8080] == 8080 and m[9000] == 9000 and m[20080] == 20080
    assert m[80] == 20081  # 20080 is a scenario port itself
    assert m[443] == 20443
    assert m[15001] not in range(15000, OUTBOUND_BASE + 4) and m[15001] >= 1024
    assert len(set(m.values())) == len(m)
    assert build_port_map([80, 8080], 2) == build_port_map([8080, 80], 2)


def test_certificates_carry_the_spiffe_identity_and_keys_are_private(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "cluster.local")
    leaf = ca.issue("frontend", "default", "frontend-sa")
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/frontend-sa"
    ]
    assert stat.S_IMODE(os.stat(leaf.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "pki").st_mode) == 0o700


def test_curl_command_keeps_the_scenario_host_and_port() -> None:
    # a scenario's own x-request-id is just a header; the suite's probe id is its own header, and a
    # scenario's attempt to set that one never reaches curl (validation refuses it first)
    headers = (("x-team", "a"), ("x-request-id", "fixed"), ("X-Authz-Conformance-Probe", "forged"))
    req = CurlRequest("backend.default", 80, "/a/../b", "POST", headers, "127.1.2.3", 15100, probe_id="p1")
    argv = req.argv("curl", 2, 6)
    assert argv[-1] == "http://backend.default/a/../b"
    assert "--path-as-is" in argv and "--interface" not in argv
    assert argv[argv.index("--connect-to") + 1] == "backend.default:80:127.1.2.3:15100"
    assert argv[argv.index("-X") + 1] == "POST"
    assert "x-request-id: fixed" in argv and "x-team: a" in argv
    assert f"{PROBE_HEADER}: p1" in argv and not any("forged" in a for a in argv)
    out = CurlRequest("backend.default", 8080, "/", "GET", (), "127.1.2.4", 8080, interface="127.1.2.9")
    argv = out.argv("curl", 2, 6)
    assert argv[-1] == "http://backend.default:8080/"
    assert argv[argv.index("--interface") + 1] == "127.1.2.9"


def test_write_out_is_split_from_the_body() -> None:
    stdout = "default/backend responding\n{}\n" + CURL_WRITE_OUT.replace("%{http_code}", "200").replace(
        "%{local_ip}", "127.0.0.1").replace("%{local_port}", "5000")
    ev = evidence_from_curl(0, stdout, "", 0.01, "curl ...")
    assert ev.status == 200 and ev.body == "default/backend responding\n{}\n"
    failed = evidence_from_curl(56, CURL_WRITE_OUT.replace("%{http_code}", "000"), "curl: (56) reset", 0.0, "")
    assert failed.status == 0 and failed.body == ""


def test_policy_ids_and_proofs_from_records() -> None:
    assert parse_policy_id("ns[default]-policy[deny-all]-rule[2]") == ("default/deny-all", 2)
    assert parse_policy_id("none") == (None, None)
    denied = LogRecord({"type": "DownstreamEnd", "method": "GET", "code": 403,
                        "details": "rbac_access_denied_matched_policy[ns[a]-policy[b]-rule[0]]"}, "line1")
    conn = LogRecord({"type": "NotSet"}, "line2")
    assert deciding_record([conn, denied]) == (denied, None)
    proof = proof_from(denied, "sidecar", "a/x")
    assert (proof.kind, proof.policy, proof.rule, proof.line) == (DENY_POLICY, "a/b", 0, "line1")
    assert (proof.proxy, proof.layer, proof.serves) == ("sidecar:a/x", "sidecar", "a/x")
    none = LogRecord({"type": "DownstreamEnd", "method": "GET", "code": 403,
                      "details": "rbac_access_denied_matched_policy[none]"}, "line3")
    assert proof_from(none, "waypoint", "a/w").kind == NO_ALLOW_MATCHED
    strict = LogRecord({"type": "NotSet", "flags": "NR", "details": "filter_chain_not_found"}, "raw")
    p = proof_from(strict, "sidecar", "a/x")
    assert p.denied and p.kind == STRICT_MTLS and p.policy is None
    ztunnel_strict = LogRecord({"type": "NotSet", "term": "rbac_access_denied_matched_policy"
                                "[ns[istio-system]-policy[istio_converted_static_strict]-rule[0]]"}, "zt")
    assert proof_from(ztunnel_strict, "ztunnel", "a/x").kind == STRICT_MTLS
    allowed = LogRecord({"type": "DownstreamEnd", "method": "GET", "code": 200, "http_rbac": {
        "allow_enforced_effective_policy_id": "ns[a]-policy[ok]-rule[1]", "allow_enforced_engine_result": "allowed",
    }}, "l")
    ok = proof_from(allowed, "sidecar", "a/x")
    assert (ok.denied, ok.kind, ok.policy) == (False, PROXY_ALLOWED, "a/ok")


def test_one_deciding_record_or_none() -> None:
    """Exactly one record decides a probe at a proxy: two denials, or two stream records of one request,
    are no proof (issue 9: a record credited to the wrong probe)."""
    deny = {"type": "DownstreamEnd", "method": "GET", "code": 403, "start": "1.5", "direct": "127.1.0.1:4000",
            "details": "rbac_access_denied_matched_policy[ns[a]-policy[b]-rule[0]]"}
    other = {**deny, "start": "1.7"}
    assert deciding_record([LogRecord(deny, "1"), LogRecord(other, "2")])[0] is None
    assert "2 denial records" in (deciding_record([LogRecord(deny, "1"), LogRecord(other, "2")])[1] or "")
    # one event written by two loggers of the proxy (listener and filter) is one record
    assert deciding_record([LogRecord(deny, "1"), LogRecord({**deny, "type": "NotSet"}, "2")])[1] is None
    stream = {"type": "DownstreamEnd", "method": "GET", "code": 200}
    assert deciding_record([LogRecord(stream, "1"), LogRecord(stream, "2")])[0] is None
    assert deciding_record([]) == (None, None)


def test_unavailable_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no curl on it
    assert LocalTarget().unavailable("sidecar") == CURL_MISSING
    assert "apt-get install curl" in CURL_MISSING


def test_a_reused_upstream_port_proves_only_the_connection_inside_its_lifetime(tmp_path: Path) -> None:
    """The kernel may hand the source sidecar's freed upstream port to the next connection of a batch:
    the enforcer's record is tied to a probe only within the lifetime of the source's own record of it
    (issue 9: a record credited to the wrong probe; found by the differential test as "2 denial records")."""
    import json

    from conformance.mesh.local.curl import CurlResult
    from conformance.mesh.local.logs import AccessLog
    from conformance.mesh.local.mesh import LocalMeshSession, _Planned
    from conformance.model import MeshConfig, Port, Probe, Request, Scenario, Workload
    from conformance.probe import Evidence

    src = Workload("web", "shop", "web", {"app": "web"})
    dst = Workload("api", "shop", "api", {"app": "api"}, (Port(9000, "TCP"),))
    world = Scenario("s", "", "s.yaml", ("sidecar",), MeshConfig(), (src, dst), (), ())
    session = LocalMeshSession(world, "sidecar", LocalTarget())
    deny = "rbac_access_denied_matched_policy[ns[shop]-policy[deny]-rule[0]]"
    lines = {
        src.ref: [  # curl A then curl B through web's sidecar: the same upstream port 50000 twice
            {"tag": "outbound api:9000", "direct": "127.9.0.1:40001", "upstream_local": "127.9.0.1:50000",
             "start": "100.000", "duration": "2"},
            {"tag": "outbound api:9000", "direct": "127.9.0.1:40002", "upstream_local": "127.9.0.1:50000",
             "start": "100.003", "duration": "4"},
        ],
        dst.ref: [
            {"tag": "inbound 9000", "direct": "127.9.0.1:50000", "start": "100.001", "duration": "1", "term": deny},
            {"tag": "inbound 9000", "direct": "127.9.0.1:50000", "start": "100.005", "duration": "1", "term": deny},
        ],
    }
    for ref, records in lines.items():
        path = tmp_path / f"{ref.replace('/', '_')}.log"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        session._logs[ref] = log = AccessLog(path)
        log.refresh()
    probe = Probe(src, dst, dst.ports[0], Request())
    plan = _Planned(probe, CurlRequest("api.shop", 9000, "/", "GET", (), "127.9.0.1", 15100, probe_id="x"))
    marks = {src.ref: 0, dst.ref: 0}
    found = []
    for local in ("127.9.0.1:40001", "127.9.0.1:40002"):  # both curls ran through the whole window
        result = CurlResult(Evidence(56, 0, ""), local, started=99.9, ended=100.2)
        found.append([r.get("start") for r in session._records_of(dst.ref, plan, result, marks)])
    assert found == [["100.001"], ["100.005"]]


def test_source_ports_start_at_a_random_place_and_lend_each_port_once_before_any_again() -> None:
    """Another process may have lent the first ports of the range on this address a moment ago (their TIME_WAIT
    would fail curl's bind), so each pool starts somewhere else; it still lends every port once, in order."""
    from conformance.mesh.local.curl import SourcePorts

    starts = {SourcePorts(low=1000, high=1999).take("127.1.0.1") for _ in range(20)}
    assert len(starts) > 1
    pool = SourcePorts(low=1000, high=1009, first=7)
    assert [pool.take("a") for _ in range(10)] == [1007, 1008, 1009, 1000, 1001, 1002, 1003, 1004, 1005, 1006]
    assert pool.take("a") is None  # every port lent and none given back


def test_source_ports_rest_past_time_wait_per_address() -> None:
    """curl's address is the key at L4 proxies: a port is lent again only after TIME_WAIT (issue 9: the
    kernel handed a reset port to the next curl of a batch, and two probes claimed each other's records)."""
    from conformance.mesh.local.curl import SourcePorts

    now = [0.0]
    ports = SourcePorts(low=20000, high=20003, rest=61.0, clock=lambda: now[0], first=0)
    taken = [ports.take("127.1.0.1", reserved={20001}) for _ in range(3)]
    assert taken == [20000, 20002, 20003]  # the reserved listener port is never lent
    assert ports.take("127.1.0.1", reserved={20001}) is None  # all resting or reserved: the kernel chooses
    assert ports.take("127.1.0.2") == 20000  # another address has its own ports
    for port in taken:
        ports.give_back("127.1.0.1", port)
    now[0] = 60.0
    assert ports.take("127.1.0.1", reserved={20001}) is None  # still within TIME_WAIT
    now[0] = 61.5
    assert ports.take("127.1.0.1", reserved={20001}) == 20000


def test_a_held_source_port_falls_back_to_the_kernels_choice() -> None:
    """A port still held on the block (an earlier process's connection) makes curl fail to bind (exit 45):
    the probe is run again with a port the kernel chooses, never reported as an error of the mesh."""
    import socket

    from conformance.mesh.local.curl import SourcePorts, curl_binary, run_curl_from_port

    curl = curl_binary()
    if curl is None:
        pytest.skip(CURL_MISSING)
    with socket.socket() as server, socket.socket() as holder:
        server.bind(("127.0.0.1", 0))
        server.listen()
        holder.bind(("127.0.0.1", 0))
        held = holder.getsockname()[1]
        ports = SourcePorts(low=held, high=held)
        port = server.getsockname()[1]
        request = CurlRequest("x.y", port, "/", "GET", (), "127.0.0.1", port, interface="127.0.0.1")
        result = run_curl_from_port(request, curl, 0.5, 0.5, ports=ports)
    assert result.local_address is not None and result.local_address != f"127.0.0.1:{held}"
    assert result.evidence.exit_code != 45


def test_no_listener_port_is_one_of_curls_source_ports() -> None:
    """A probe's connection in TIME_WAIT on a source port must never keep a later session's listener on
    the same loopback block from binding (found in CI: `cannot bind ...:20080: Address already in use`)."""
    from conformance.probe import SOURCE_PORT_RANGE

    m = build_port_map([80, 8080, 61000, 62000, 65535], outbound_count=4)
    low, high = SOURCE_PORT_RANGE
    assert m[8080] == 8080 and m[80] == 20080
    assert all(not low <= real <= high for real in m.values()), m
    assert low > 60999  # above Linux's default ephemeral range (ip_local_port_range 32768-60999)


def test_disable_on_the_ext_authz_provider_is_refused_in_sidecar_mode_only() -> None:
    # issue 12: Istio's proxies would call a DISABLE provider port in plaintext (auto-mTLS); the local mesh's
    # ext_authz clusters are mTLS only, so it refuses rather than approximates. Ambient applies no CUSTOM and a
    # waypoint reaches the provider over HBONE, whatever the mode.
    from dataclasses import replace

    from conformance.mesh.local.mesh import disabled_provider_port
    from conformance.model import Step, Workload
    from tests.mesh_local.world import FRONTEND, policy, scenario

    provider = replace(Workload("ext-authz", "ext-authz", "ext-authz", {"app": "ext-authz"}, FRONTEND.ports),
                       kind="ext-authz")
    off = policy("default", "istio-system", {"mtls": {"mode": "DISABLE"}}, kind="PeerAuthentication")
    elsewhere = policy("default", "default", {"mtls": {"mode": "DISABLE"}}, kind="PeerAuthentication")
    world = scenario(FRONTEND, provider)
    assert disabled_provider_port(replace(world, steps=(Step("s", (elsewhere,), ()),))) is None
    refused = replace(world, steps=(Step("s", (off,), ()),))
    reason = disabled_provider_port(refused)
    assert reason is not None and "ext-authz/ext-authz:8080" in reason and "step 's'" in reason
    assert LocalTarget().refusal(refused, "sidecar") is not None
    assert LocalTarget().refusal(refused, "ambient") is None


class _AllPortsDeque:
    """SourcePorts as it was (a deque of every port per address, built when the address is first seen): the
    reference the lazy one must lend exactly like."""

    def __init__(self, low: int, high: int, rest: float, clock: Callable[[], float]) -> None:
        from collections import deque

        self._range, self._rest, self._clock = range(low, high + 1), rest, clock
        self._free: dict[str, Any] = {}
        self._deque = deque

    def take(self, address: str, reserved: Container[int] = ()) -> int | None:
        free = self._free.setdefault(address, self._deque((0.0, p) for p in self._range))
        now = self._clock()
        for _ in range(len(free)):
            ready, port = free[0]
            if ready > now:
                return None
            free.popleft()
            if port not in reserved:
                return port
            free.append((ready, port))
        return None

    def give_back(self, address: str, port: int | None) -> None:
        if port is not None:
            self._free[address].append((self._clock() + self._rest, port))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["take", "give", "tick"]), st.sampled_from(["a", "b"]),
                          st.frozensets(st.integers(100, 107), max_size=3), st.floats(0, 40)), max_size=60))
def test_source_ports_lend_exactly_as_the_all_ports_deque_did(ops: list[tuple[str, str, frozenset[int], float]],
                                                               ) -> None:
    from conformance.mesh.local.curl import SourcePorts

    now = [0.0]
    lazy = SourcePorts(low=100, high=107, rest=61.0, clock=lambda: now[0], first=0)
    reference = _AllPortsDeque(100, 107, 61.0, lambda: now[0])
    lent: dict[str, list[int]] = {"a": [], "b": []}
    for op, address, reserved, seconds in ops:
        if op == "take":
            got = lazy.take(address, reserved)
            assert got == reference.take(address, reserved)
            if got is not None:
                lent[address].append(got)
        elif op == "give" and lent[address]:
            port = lent[address].pop(0)
            lazy.give_back(address, port)
            reference.give_back(address, port)
        else:
            now[0] += seconds


def _tcp_chain(tmp_path: Path, inbound_starts: list[float],
               sources: tuple[tuple[str, float, int], ...] = (("127.0.0.2:62287", 1796435418.913040, 11),),
               curl: str = "127.0.0.2:62287") -> list[str]:
    """A sidecar TCP probe's proof chain as the mesh reads it: curl's connection in the client sidecar's log (its
    upstream address; `sources`: curl's address, START_TIME and duration of each connection that had the one
    upstream port), then the server sidecar's records of that address; returns those found for `curl`'s."""
    import json
    from types import SimpleNamespace

    from conformance.mesh.local.logs import AccessLog
    from conformance.mesh.local.mesh import LocalMeshSession
    from tests.mesh_local.world import BACKEND, FRONTEND

    upstream = "127.0.0.2:44520"
    src, dst = tmp_path / "src.log", tmp_path / "dst.log"
    src.write_text("".join(json.dumps({"tag": "outbound default/backend:9000", "direct": local,
                                       "upstream_local": upstream, "start": f"{start:.6f}", "duration": duration})
                           + "\n" for local, start, duration in sources))
    dst.write_text("".join(json.dumps({"tag": "inbound listener 9000", "direct": upstream, "start": f"{t:.6f}",
                                       "duration": 7, "term": f"record {i}"}) + "\n"
                           for i, t in enumerate(inbound_starts)))
    session = LocalMeshSession.__new__(LocalMeshSession)
    session._logs = {FRONTEND.ref: AccessLog(src), BACKEND.ref: AccessLog(dst)}
    for log in session._logs.values():
        log.refresh()
    plan = SimpleNamespace(probe=SimpleNamespace(source=FRONTEND), request=SimpleNamespace(probe_id="p"))
    first = min(start for _, start, _ in sources)  # the curl batch ran from 30 ms before the first connection
    result = SimpleNamespace(local_address=curl, started=first - 0.031, ended=first + 0.085)
    found = session._records_of(BACKEND.ref, plan, result, {FRONTEND.ref: 0, BACKEND.ref: 0})  # type: ignore[arg-type]
    return [r.get("term") for r in found]


def test_a_server_record_stamped_before_the_clients_is_still_its_connections(tmp_path: Path) -> None:
    # two Envoys read the clock at different points of a connection's setup: sidecar TCP denials under load had the
    # server's START_TIME up to 1.3 ms before the client's, and no proof (LocalMeshSession._upstream_records)
    assert _tcp_chain(tmp_path, [1796435418.912760]) == ["record 0"]
    assert _tcp_chain(tmp_path, [1796435418.913040 - 0.0013]) == ["record 0"]


def test_a_later_connection_on_the_same_upstream_port_is_not_this_ones(tmp_path: Path) -> None:
    # the client's connection lasted 11 ms; the kernel may hand its port to a connection 30 ms later
    assert _tcp_chain(tmp_path, [1796435418.912760, 1796435418.954]) == ["record 0"]


def test_an_early_stamped_record_is_not_taken_from_the_connection_that_had_the_port_before(tmp_path: Path) -> None:
    # A (curl :1) had upstream port 44520 from 100.000 for 2 ms, then B (curl :2) from 100.0035, stamped late by its
    # client: B's record (100.0032) is before B's own start but after A's lifetime, and A's (100.001) is A's
    sources = (("127.0.0.2:1", 100.000, 2), ("127.0.0.2:2", 100.0035, 4))
    records = [100.001, 100.0032]
    assert _tcp_chain(tmp_path, records, sources, "127.0.0.2:1") == ["record 0"]
    assert _tcp_chain(tmp_path, records, sources, "127.0.0.2:2") == ["record 1"]
    # two records no other connection accounts for: no single record, so no proof (never the wrong one)
    assert _tcp_chain(tmp_path, [100.0032, 100.0034], sources, "127.0.0.2:2") == ["record 0", "record 1"]
