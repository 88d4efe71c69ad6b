"""Sidecar mode on the local target: real Envoy sidecars, real mTLS, real curl, proofs from the logs.

Each test states the complete policy set it needs (apply() is declarative), so the tests share one
mesh and still run in any order.
"""

from __future__ import annotations

import pytest

from conformance.mesh.local.envoy import EnvoyConfigRejected
from conformance.mesh.local.mesh import LocalMeshSession
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7
from tests.mesh_local.world import BACKEND, FRONTEND, OUTSIDER, ROGUE, echo, policy, probe, strict

ALLOW_FRONTEND = policy("allow-frontend", "default", {
    "selector": {"matchLabels": {"app": "backend"}},
    "action": "ALLOW",
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}]}],
})
DENY_ROGUE = policy("deny-rogue", "default", {
    "action": "DENY",
    "rules": [{"from": [{"source": {"namespaces": ["rogue"]}}]}],
})
DENY_ALL = policy("deny-all", "default", {"action": "DENY", "rules": [{}]})


def test_allowed_request_reaches_the_app_with_identity_and_host(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([])
    [obs] = sidecar_mesh.probe([probe(FRONTEND, BACKEND, 80, path="/api/v1/data?x=1")])
    assert obs.outcome == ALLOWED, obs
    seen = echo(obs.evidence.body)
    # Port 80 is remapped to a high port on loopback, but the client's view is the scenario's.
    assert seen["headers"]["host"] == "backend.default"
    assert seen["path"] == "/api/v1/data" and seen["query"] == "x=1"
    assert "URI=spiffe://cluster.local/ns/default/sa/frontend" in seen["headers"]["x-forwarded-client-cert"]
    assert seen["listener"].endswith(":20080")
    # The app sees the destination workload's own address as its peer, not 127.0.0.1.
    assert seen["source"].split(":")[0] == sidecar_mesh.addresses["default/backend"]
    assert obs.proof is not None and not obs.proof.denied


def test_deny_policy_gives_403_with_proof_naming_it(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([DENY_ROGUE])
    rogue, frontend = sidecar_mesh.probe([probe(ROGUE, BACKEND, 80), probe(FRONTEND, BACKEND, 80)])
    assert rogue.outcome == DENIED_L7, rogue
    assert rogue.evidence.body.strip() == "RBAC: access denied"
    assert rogue.proof is not None and rogue.proof.denied
    assert (rogue.proof.policy, rogue.proof.rule) == ("default/deny-rogue", 0)
    assert rogue.proof.proxy == "sidecar:default/backend"
    assert frontend.outcome == ALLOWED, frontend


def test_allow_without_match_is_proven_with_no_policy(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([ALLOW_FRONTEND])
    rogue, frontend = sidecar_mesh.probe([probe(ROGUE, BACKEND, 80), probe(FRONTEND, BACKEND, 80)])
    assert rogue.outcome == DENIED_L7
    assert rogue.proof is not None and rogue.proof.denied and rogue.proof.policy is None
    assert "rbac_access_denied_matched_policy[none]" in rogue.proof.line
    assert frontend.outcome == ALLOWED
    assert frontend.proof is not None and frontend.proof.policy == "default/allow-frontend"


def test_permissive_accepts_a_plaintext_client(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([])
    [obs] = sidecar_mesh.probe([probe(OUTSIDER, BACKEND, 80)])
    assert obs.outcome == ALLOWED, obs
    assert "x-forwarded-client-cert" not in echo(obs.evidence.body)["headers"]
    assert obs.proof is not None and '"chain":"inbound-plaintext"' in obs.proof.line


def test_strict_rejects_plaintext_with_a_reset(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([strict("default")])
    outsider, frontend = sidecar_mesh.probe([probe(OUTSIDER, BACKEND, 80), probe(FRONTEND, BACKEND, 80)])
    assert outsider.evidence.exit_code == 56, outsider
    assert outsider.outcome == DENIED_L4
    assert outsider.proof is not None and outsider.proof.denied and outsider.proof.policy is None
    assert outsider.proof.kind == "strict-mtls" and "filter_chain_not_found" in outsider.proof.line
    assert frontend.outcome == ALLOWED, frontend


def test_tcp_port_denial_closes_the_connection(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([DENY_ROGUE])
    rogue, frontend = sidecar_mesh.probe([probe(ROGUE, BACKEND, 9000), probe(FRONTEND, BACKEND, 9000)])
    assert rogue.evidence.exit_code == 52, rogue
    assert rogue.outcome == DENIED_L4
    assert rogue.proof is not None and rogue.proof.policy == "default/deny-rogue"
    assert '"term":"rbac_access_denied_matched_policy' in rogue.proof.line
    assert frontend.outcome == ALLOWED, frontend


def test_ip_blocks_see_each_workloads_own_address(sidecar_mesh: LocalMeshSession) -> None:
    allow_ips = policy("allow-ips", "default", {
        "selector": {"matchLabels": {"app": "backend"}},
        "rules": [{"from": [{"source": {"ipBlocks": ["${ip:default/frontend}", "${ip:legacy/outsider}"]}}]}],
    })
    sidecar_mesh.apply([allow_ips])
    frontend, rogue, outsider = sidecar_mesh.probe([
        probe(FRONTEND, BACKEND, 80), probe(ROGUE, BACKEND, 80), probe(OUTSIDER, BACKEND, 80),
    ])
    assert frontend.outcome == ALLOWED, frontend
    assert outsider.outcome == ALLOWED, outsider  # ipBlocks alone do not need mTLS
    assert rogue.outcome == DENIED_L7, rogue
    assert sidecar_mesh.addresses["rogue/rogue"] in (rogue.proof.line if rogue.proof else "")


def test_policy_change_is_enforced_on_the_very_next_probe(sidecar_mesh: LocalMeshSession) -> None:
    probes = [probe(FRONTEND, BACKEND, 80), probe(FRONTEND, BACKEND, 9000), probe(OUTSIDER, BACKEND, 80)]
    for _ in range(5):
        applied = sidecar_mesh.apply([DENY_ALL])
        assert applied.seconds < 2
        assert [o.outcome for o in sidecar_mesh.probe(probes)] == [DENIED_L7, DENIED_L4, DENIED_L7]
        applied = sidecar_mesh.apply([])
        assert applied.deleted == ("AuthorizationPolicy default/deny-all",)
        assert [o.outcome for o in sidecar_mesh.probe(probes)] == [ALLOWED, ALLOWED, ALLOWED]


def test_parallel_probes_with_mixed_identities_never_mix_decisions(sidecar_mesh: LocalMeshSession) -> None:
    sidecar_mesh.apply([ALLOW_FRONTEND])
    probes = [probe(FRONTEND if i % 2 else ROGUE, BACKEND, 80, path=f"/p{i}") for i in range(40)]
    observations = sidecar_mesh.probe(probes)
    for p, obs in zip(probes, observations, strict=True):
        assert obs.outcome == (ALLOWED if p.source is FRONTEND else DENIED_L7), (p.describe(), obs)
        assert obs.proof is not None, (p.describe(), obs.notes)
        if obs.outcome == ALLOWED:
            assert echo(obs.evidence.body)["path"] == p.request.path


def test_path_is_normalised_by_the_server_sidecar(sidecar_mesh: LocalMeshSession) -> None:
    deny_private = policy("deny-private", "default", {
        "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/private"]}}]}],
    })
    sidecar_mesh.apply([deny_private])
    dotted, escaped = sidecar_mesh.probe([
        probe(FRONTEND, BACKEND, 80, path="/public/../private"),
        probe(FRONTEND, BACKEND, 80, path="/public%2F..%2Fprivate"),
    ])
    assert dotted.outcome == DENIED_L7, dotted
    assert escaped.outcome == ALLOWED, escaped  # escaped slashes are kept (Istio's BASE normalization)


def test_a_rejected_config_fails_naming_the_proxy_and_envoys_reason(
    sidecar_mesh: LocalMeshSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conformance.mesh.local import authz

    bogus = [{"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "no_such_field": 1,
    }}]
    monkeypatch.setattr(authz, "sidecar_http_filters", lambda *a, **k: bogus)
    with pytest.raises(EnvoyConfigRejected) as info:
        sidecar_mesh.apply([DENY_ALL])
    message = str(info.value)
    assert "sidecar default/" in message and "no_such_field" in message
    monkeypatch.undo()
    sidecar_mesh.apply([])  # the mesh recovers: the next apply rewrites what was rejected
    [obs] = sidecar_mesh.probe([probe(FRONTEND, BACKEND, 80)])
    assert obs.outcome == ALLOWED, obs


def test_disable_is_plaintext_end_to_end_and_hides_the_identity(sidecar_mesh: LocalMeshSession) -> None:
    # issue 12: DISABLE = the plaintext chain only (filterchain_options.go), and the client sidecar sends
    # plaintext to it (mtls_checker.go auto-mTLS): the server sees no certificate, so the ALLOW by principal
    # denies frontend; the out-of-mesh client gets the same plaintext chain.
    disable = policy("off", "default", {"mtls": {"mode": "DISABLE"}}, kind="PeerAuthentication")
    sidecar_mesh.apply([disable])
    frontend, outsider = sidecar_mesh.probe([probe(FRONTEND, BACKEND, 80), probe(OUTSIDER, BACKEND, 80)])
    assert frontend.outcome == ALLOWED, frontend
    assert "x-forwarded-client-cert" not in echo(frontend.evidence.body)["headers"]
    assert frontend.proof is not None and '"chain":"inbound-plaintext"' in frontend.proof.line
    assert outsider.outcome == ALLOWED, outsider
    sidecar_mesh.apply([disable, ALLOW_FRONTEND])
    [denied] = sidecar_mesh.probe([probe(FRONTEND, BACKEND, 80)])
    assert denied.outcome == DENIED_L7, denied
    assert denied.proof is not None and denied.proof.kind == "no-allow-matched"


def test_port_level_modes_pick_the_chains_per_port(sidecar_mesh: LocalMeshSession) -> None:
    # ComposePeerAuthentication: the workload policy's portLevelMtls entry overrides its mode on that port.
    per_port = policy("backend", "default", {"selector": {"matchLabels": {"app": "backend"}},
                                             "mtls": {"mode": "STRICT"}, "portLevelMtls": {9000: {"mode": "DISABLE"}}},
                      kind="PeerAuthentication")
    sidecar_mesh.apply([per_port])
    http, tcp, mesh_tcp = sidecar_mesh.probe([probe(OUTSIDER, BACKEND, 80), probe(OUTSIDER, BACKEND, 9000),
                                              probe(FRONTEND, BACKEND, 9000)])
    assert http.outcome == DENIED_L4 and http.proof is not None and http.proof.kind == "strict-mtls", http
    assert tcp.outcome == ALLOWED, tcp
    assert mesh_tcp.outcome == ALLOWED, mesh_tcp


def test_only_a_round_an_apply_overlapped_waits_briefly_for_its_proofs(sidecar_mesh: LocalMeshSession,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """mesh.py PROOF_WAIT_DURING_APPLY: a round that apply() overlapped began before that apply's barrier, so it is
    never judged (gap.py) and may give up on records early; every other round waits the full PROOF_WAIT."""
    import threading

    from conformance.mesh.local import mesh as mesh_module

    seen: list[bool] = []
    real = mesh_module.LocalMeshSession._find_proofs

    def spy(self, plans, results, marks, unjudged=lambda: False):  # type: ignore[no-untyped-def]
        seen.append(unjudged())
        return real(self, plans, results, marks, unjudged)

    monkeypatch.setattr(mesh_module.LocalMeshSession, "_find_proofs", spy)
    sidecar_mesh.apply([])
    sidecar_mesh.probe([probe(FRONTEND, BACKEND, 80)])  # no apply anywhere near: judged
    entered, release = threading.Event(), threading.Event()
    real_update = mesh_module.update_listeners

    def slow_update(changes):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10)
        return real_update(changes)

    monkeypatch.setattr(mesh_module, "update_listeners", slow_update)
    applying = threading.Thread(target=sidecar_mesh.apply, args=([DENY_ROGUE],))
    applying.start()
    assert entered.wait(10)
    began = threading.Event()
    real_routes = mesh_module.LocalMeshSession._ensure_routes

    def routes(self, probes):  # type: ignore[no-untyped-def]
        began.set()  # probe() has read whether an apply is under way
        return real_routes(self, probes)

    monkeypatch.setattr(mesh_module.LocalMeshSession, "_ensure_routes", routes)
    during = threading.Thread(target=sidecar_mesh.probe, args=([probe(ROGUE, BACKEND, 80)],))
    during.start()  # begins while apply() is changing listeners
    assert began.wait(10)
    release.set()
    applying.join(10)
    during.join(10)
    monkeypatch.setattr(mesh_module, "update_listeners", real_update)
    [after] = sidecar_mesh.probe([probe(ROGUE, BACKEND, 80)])  # after the barrier: judged, full wait
    assert seen == [False, True, False]
    assert after.outcome == DENIED_L7 and after.proof is not None
