"""Ambient mode on the local target: one "ztunnel" Envoy for every ambient workload, HBONE, L4 enforcement only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from conformance.mesh.local.mesh import LocalMeshSession
from conformance.model import ALLOWED, DENIED_L4
from tests.mesh_local.world import BACKEND, FRONTEND, OUTSIDER, ROGUE, echo, policy, probe, strict

DENY_ROGUE = policy("deny-rogue", "default", {
    "action": "DENY",
    "rules": [{"from": [{"source": {"namespaces": ["rogue"]}}]}],
})
# An L4 denial may surface as a reset (56) or as an empty reply (52): a race between curl's write and
# the proxy's close (research/envoy-waypoint.md pitfall 5); the proof is what makes it a denial.
L4_EXITS = (52, 56)


def test_allowed_through_hbone(ambient_mesh: LocalMeshSession) -> None:
    ambient_mesh.apply([])
    frontend, tcp = ambient_mesh.probe([probe(FRONTEND, BACKEND, 80), probe(FRONTEND, BACKEND, 9000)])
    assert frontend.outcome == ALLOWED, frontend
    assert tcp.outcome == ALLOWED, tcp
    assert echo(frontend.evidence.body)["headers"]["host"] == "backend.default"
    assert frontend.proof is not None and not frontend.proof.denied
    assert frontend.proof.proxy == "ztunnel:default/backend"


def test_deny_resets_the_connection_with_proof(ambient_mesh: LocalMeshSession) -> None:
    ambient_mesh.apply([DENY_ROGUE])
    rogue, frontend = ambient_mesh.probe([probe(ROGUE, BACKEND, 80), probe(FRONTEND, BACKEND, 80)])
    assert rogue.outcome == DENIED_L4, rogue
    assert rogue.evidence.exit_code in L4_EXITS
    assert rogue.proof is not None and rogue.proof.denied
    assert (rogue.proof.policy, rogue.proof.rule) == ("default/deny-rogue", 0)
    assert frontend.outcome == ALLOWED, frontend


def test_hbone_is_real(ambient_mesh: LocalMeshSession) -> None:
    """The destination ztunnel's own log shows an HTTP/2 CONNECT on :15008 for the workload's address
    and the scenario's port, over mTLS with the client's identity."""
    ambient_mesh.apply([])
    [obs] = ambient_mesh.probe([probe(FRONTEND, BACKEND, 80)])
    assert obs.outcome == ALLOWED
    backend_ip = ambient_mesh.addresses["default/backend"]
    connects = [
        r for r in ambient_mesh.access_log("default/backend")
        if r.get("method") == "CONNECT" and r.get("authority") == f"{backend_ip}:80"
    ]
    assert connects, "no CONNECT record at the destination ztunnel"
    last = connects[-1]
    assert last["protocol"] == "HTTP/2"
    assert last["local"] == f"{backend_ip}:15008"
    assert last["peer"] == "spiffe://cluster.local/ns/default/sa/frontend"
    assert last["direct"].split(":")[0] == ambient_mesh.addresses["default/frontend"]


def test_l7_allow_rules_are_dropped_by_ztunnel(ambient_mesh: LocalMeshSession) -> None:
    allow_get = policy("allow-get", "default", {
        "selector": {"matchLabels": {"app": "backend"}},
        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
    })
    ambient_mesh.apply([allow_get])
    [obs] = ambient_mesh.probe([probe(FRONTEND, BACKEND, 80)])
    assert obs.outcome == DENIED_L4, obs  # the only rule had an HTTP attribute: nothing is allowed
    assert obs.proof is not None and obs.proof.denied and obs.proof.policy is None


def test_plaintext_client_and_strict(ambient_mesh: LocalMeshSession) -> None:
    ambient_mesh.apply([])
    [plain] = ambient_mesh.probe([probe(OUTSIDER, BACKEND, 80)])
    assert plain.outcome == ALLOWED, plain
    ambient_mesh.apply([strict("default")])
    outsider, frontend = ambient_mesh.probe([probe(OUTSIDER, BACKEND, 80), probe(FRONTEND, BACKEND, 80)])
    assert outsider.outcome == DENIED_L4, outsider
    assert outsider.proof is not None and outsider.proof.denied and outsider.proof.policy is None
    assert outsider.proof.kind == "strict-mtls"
    assert frontend.outcome == ALLOWED, frontend


def test_ip_blocks_and_ports(ambient_mesh: LocalMeshSession) -> None:
    allow = policy("allow-frontend-ip-80", "default", {
        "selector": {"matchLabels": {"app": "backend"}},
        "rules": [{"from": [{"source": {"ipBlocks": ["${ip:default/frontend}"]}}],
                   "to": [{"operation": {"ports": ["80"]}}]}],
    })
    ambient_mesh.apply([allow])
    on_80, on_9000, rogue = ambient_mesh.probe([
        probe(FRONTEND, BACKEND, 80), probe(FRONTEND, BACKEND, 9000), probe(ROGUE, BACKEND, 80),
    ])
    assert on_80.outcome == ALLOWED, on_80
    assert on_9000.outcome == DENIED_L4, on_9000
    assert rogue.outcome == DENIED_L4, rogue


def test_policy_change_is_enforced_on_the_very_next_probe(ambient_mesh: LocalMeshSession) -> None:
    deny_all = policy("deny-all", "default", {"action": "DENY", "rules": [{}]})
    probes = [probe(FRONTEND, BACKEND, 80), probe(OUTSIDER, BACKEND, 9000)]
    for _ in range(5):
        ambient_mesh.apply([deny_all])
        assert [o.outcome for o in ambient_mesh.probe(probes)] == [DENIED_L4, DENIED_L4]
        ambient_mesh.apply([])
        assert [o.outcome for o in ambient_mesh.probe(probes)] == [ALLOWED, ALLOWED]


def test_port_level_exception_is_istiods_converted_deny(ambient_mesh: LocalMeshSession) -> None:
    # ambient authorization.go convertPeerAuthentication: STRICT with a DISABLE port becomes the DENY
    # converted_peer_authentication_backend (no principal AND not port 9000); its record proves a STRICT
    # rejection. In-mesh (HBONE) callers carry an identity and never match it.
    per_port = policy("backend", "default", {"selector": {"matchLabels": {"app": "backend"}},
                                             "mtls": {"mode": "STRICT"}, "portLevelMtls": {9000: {"mode": "DISABLE"}}},
                      kind="PeerAuthentication")
    ambient_mesh.apply([per_port])
    http, tcp, mesh_http = ambient_mesh.probe([probe(OUTSIDER, BACKEND, 80), probe(OUTSIDER, BACKEND, 9000),
                                               probe(FRONTEND, BACKEND, 80)])
    assert http.outcome == DENIED_L4, http
    assert http.proof is not None and http.proof.kind == "strict-mtls"
    assert "converted_peer_authentication_backend" in http.proof.line
    assert tcp.outcome == ALLOWED, tcp
    assert mesh_http.outcome == ALLOWED, mesh_http


def test_one_ztunnel_envoy_serves_every_ambient_workload(ambient_mesh: LocalMeshSession) -> None:
    """As one node's ztunnel serves every pod on it, one Envoy serves all three ambient workloads here (the
    out-of-mesh one has none), each on its own address with its own identity."""
    assert len(ambient_mesh.pids()) == 1
    in_mesh = [w.ref for w in ambient_mesh.scenario.workloads if w.in_mesh]
    assert {id(ambient_mesh._envoys[ref]) for ref in in_mesh} == {id(ambient_mesh._envoys[in_mesh[0]])}
    ambient_mesh.apply([])
    frontend, rogue = ambient_mesh.probe([probe(FRONTEND, BACKEND, 80), probe(ROGUE, BACKEND, 80)])
    assert frontend.outcome == rogue.outcome == ALLOWED
    peers = {r["peer"] for r in ambient_mesh.access_log(BACKEND.ref) if r.get("method") == "CONNECT"}
    assert {"spiffe://cluster.local/ns/default/sa/frontend", "spiffe://cluster.local/ns/rogue/sa/default"} <= peers


def _records_until(mesh: LocalMeshSession, ref: str, since: int, done: Callable[[list[dict]], bool]) -> list[dict]:
    """`ref`'s records after the first `since`, once `done` holds for them (a connection's record is written when it
    closes, which may be just after curl returns) or after 2 s."""
    deadline = time.monotonic() + 2.0
    while True:
        records = mesh.access_log(ref)[since:]
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


@pytest.mark.parametrize("denied", [True, False], ids=["denied", "allowed"])
def test_each_workload_keeps_its_own_ztunnel_record(ambient_mesh: LocalMeshSession, denied: bool) -> None:
    """The shared ztunnel Envoy still writes each workload's records to that workload's own log: the destination's
    record holds the decision (the proof), the source's only its outbound connection, a bystander's nothing."""
    ambient_mesh.apply([DENY_ROGUE] if denied else [])
    refs = [FRONTEND.ref, BACKEND.ref, ROGUE.ref]
    before = {ref: len(ambient_mesh.access_log(ref)) for ref in refs}
    [obs] = ambient_mesh.probe([probe(ROGUE, BACKEND, 9000)])
    assert obs.outcome == (DENIED_L4 if denied else ALLOWED), obs
    assert obs.proof is not None and obs.proof.proxy == f"ztunnel:{BACKEND.ref}" and obs.proof.denied == denied
    rogue_ip = ambient_mesh.addresses[ROGUE.ref]
    source = _records_until(ambient_mesh, ROGUE.ref, before[ROGUE.ref], bool)
    assert source and all(r["tag"] == f"outbound {BACKEND.ref}:9000" for r in source), source
    destination = ambient_mesh.access_log(BACKEND.ref)[before[BACKEND.ref]:]
    assert destination and not any(r["tag"].startswith("outbound") for r in destination)
    assert any(r.get("peer") == "spiffe://cluster.local/ns/rogue/sa/default"
               and str(r.get("direct")).startswith(rogue_ip + ":") for r in destination), destination
    bystander = ambient_mesh.access_log(FRONTEND.ref)[before[FRONTEND.ref]:]
    assert not any(rogue_ip in json.dumps(r) for r in bystander), bystander
