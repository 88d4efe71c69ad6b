"""Big meshes (issue 14): runs of several /24s, outbound plumbing added on first use, Envoy's rejections over xDS.

Why: a run bigger than 126 workloads takes consecutive /24s, each claimed on its own, and must never share
one with another run; a client proxy only has plumbing for the destinations it probes, so a probe to any
other one must still be answered (and denied) as before; and config now reaches Envoy over the run's xDS
server, whose NACK must still be an error naming the proxy with Envoy's own words.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.mesh.local.addresses import (
    AddressBlockUnavailable,
    acquire_block,
    plan_layout,
    slash24s_for,
)
from conformance.mesh.local.envoy import EnvoyConfigRejected, update_listeners
from conformance.mesh.local.mesh import LocalTarget
from conformance.model import DENIAL_FORMS
from tests.mesh_local.world import BACKEND, FRONTEND, OUTSIDER, policy, probe, scenario, wl


def _runtime(tmp_path: Path) -> Path:
    (tmp_path / "blocks").mkdir()
    return tmp_path


def test_a_run_of_200_takes_two_consecutive_slash24s_that_no_other_run_gets(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    assert (slash24s_for(1), slash24s_for(126), slash24s_for(127), slash24s_for(200)) == (1, 1, 2, 2)
    big = acquire_block(runtime, size=2)
    other = acquire_block(runtime, size=1)
    try:
        first, second = big.prefixes
        assert int(second.rsplit(".", 1)[1]) == int(first.rsplit(".", 1)[1]) + 1
        assert other.prefix not in big.prefixes  # each /24 has its own lock: held ones are skipped
        workloads = [wl(f"ns{i % 7}/w{i}", 8080) for i in range(200)]
        layout = plan_layout(big, workloads)
        addresses = list(layout.address.values()) + list(layout.app_address.values())
        assert len(set(addresses)) == 400
        assert {a.rsplit(".", 1)[0] for a in addresses} == set(big.prefixes)
        assert layout.address["ns0/w0"] == f"{first}.1" and layout.app_address["ns0/w0"] == f"{first}.129"
        assert layout.address["ns0/w126"] == f"{second}.1"  # the 127th starts the second /24
        with pytest.raises(AddressBlockUnavailable):
            plan_layout(other, workloads)  # 200 never squeezed into one /24
    finally:
        big.release()
        other.release()
    again = acquire_block(runtime, size=2)  # released: the same /24s are free again
    try:
        assert again.prefixes == big.prefixes
    finally:
        again.release()


def test_a_closed_connections_time_wait_does_not_take_a_slash24_but_a_listener_does() -> None:
    """Two `pytest policies` runs within a minute ran out of /24s: every admin connection Envoy had closed left a
    server-side TIME_WAIT on `<prefix>.1:15000`, and the free check's bind (without SO_REUSEADDR, unlike Envoy's
    own) took that for a listener. Only a listening socket may make a /24 unavailable."""
    import socket

    from conformance.mesh.local.addresses import ADMIN_PORT, _block_is_free

    prefix = "127.199.251"  # outside every user's range (127.1xx where xx is the uid % 100): no run uses it
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((f"{prefix}.1", ADMIN_PORT))
        server.listen()
        assert not _block_is_free(prefix)  # a listener: taken
        with socket.create_connection((f"{prefix}.1", ADMIN_PORT)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: its side goes to TIME_WAIT
            client.recv(1)
    assert _block_is_free(prefix)  # the listener is gone; the TIME_WAIT left behind does not count


@pytest.fixture
def target() -> LocalTarget:
    t = LocalTarget()
    reason = t.unavailable("sidecar")
    if reason:
        pytest.skip(reason)
    return t


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_a_probe_to_a_destination_without_plumbing_gets_it_and_is_decided(target: LocalTarget, mode: str) -> None:
    """The canary sends one probe per destination port, so the second client has no outbound plumbing for
    BACKEND's TCP port until it probes it: then it gets it, and the probe is answered, and denied with the
    enforcing proxy's record once a policy says so (the listeners added later follow the policies)."""
    other = wl("default/other")
    world = scenario(FRONTEND, BACKEND, other, OUTSIDER)
    with target.start(world, mode) as session:  # type: ignore[arg-type]
        ctx = session._contexts[other.ref]
        assert ctx.outbound is not None and (BACKEND.ref, 9000) not in ctx.outbound
        (obs,) = session.probe([probe(other, BACKEND, 9000)])
        assert obs.outcome == "allowed", obs
        assert (BACKEND.ref, 9000) in session._contexts[other.ref].outbound  # type: ignore[operator]
        deny = policy("deny-other", "default", {"selector": {"matchLabels": {"app": "backend"}}, "action": "DENY",
                                                "rules": [{"from": [{"source": {"principals": [
                                                    "cluster.local/ns/default/sa/other"]}}]}]})
        session.apply([deny])
        (obs,) = session.probe([probe(other, BACKEND, 80)])  # another port, added while the DENY is in force
        assert obs.outcome in DENIAL_FORMS and obs.proof is not None and obs.proof.denied, obs
        (obs,) = session.probe([probe(FRONTEND, BACKEND, 80)])
        assert obs.outcome == "allowed", obs


def test_a_listener_envoy_rejects_is_an_error_with_envoys_words(target: LocalTarget) -> None:
    with target.start(scenario(FRONTEND, BACKEND), "sidecar") as session:
        env = session._envoys[BACKEND.ref]
        listeners = session._listeners(BACKEND.ref, ())
        broken = [dict(listeners[0], address={"socket_address": {"address": "not-an-ip", "port_value": 1}})]
        with pytest.raises(EnvoyConfigRejected, match=f"Envoy for {env.name}.*not-an-ip"):
            update_listeners({env: broken})
        session.apply([])  # the previous listeners are still in force, and are resent on the next apply
        (obs,) = session.probe([probe(FRONTEND, BACKEND, 80)])
        assert obs.outcome == "allowed", obs
