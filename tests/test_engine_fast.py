"""The verdict-only fast path (conformance/engine/fast.py) and the traced path give the same Decision.

`decide` takes the fast path where it covers a probe; `explain` always takes the traced one, whose every step the
rest of the engine tests pin. So on generated worlds (the differential test's: tests/differential_world.py, with
PeerAuthentications, TCP ports, X-Forwarded-For and Host headers, odd paths, pilot flags, JWT and CUSTOM) in every
mode and at releases on both sides of the version-keyed changes, every probe's `decide` must equal its `explain`
(Decision equality leaves the trace out), and `decide_matrix` must equal `decide` cell by cell. No speed here:
that is benchmarks/engine.py's.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conformance.engine import decide, explain, state_for_step
from conformance.engine.fast import decide_matrix
from conformance.engine.proxy import Attributes
from conformance.errors import NotModelled
from conformance.model import Mode, Probe, Request, Step
from conformance.versions import IstioVersion
from tests.differential_world import JWT_WORLDS, WORLDS, Pools, World, policy_set, probes, request

ALL_WORLDS = WORLDS + JWT_WORLDS
VERSIONS = [IstioVersion.parse(v) for v in ("1.24", "1.25.1", "1.29", "1.30", "1.31")]
PLANES = ["sidecar", "ambient", "waypoint"]


def _state(world: World, policies: tuple, planes: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    step = Step("generated", policies, ())
    scenario = world.scenario((step,))
    if planes is not None:
        scenario = replace(scenario, modes=("mixed",), dataplanes=planes)
    try:
        return state_for_step(scenario, step)
    except NotModelled:
        assume(False)
        raise


def _modes(world: World) -> list[Mode]:
    return ["sidecar", "ambient", "waypoint"] if world.waypoint_mode else ["sidecar", "ambient"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_WORLDS).flatmap(lambda w: st.tuples(st.just(w), policy_set(Pools(w)), probes(w))),
       st.sampled_from(VERSIONS))
def test_decide_equals_explain_on_generated_worlds(drawn: tuple, version: IstioVersion) -> None:
    world, policies, batch = drawn
    state = _state(world, policies)
    for mode in _modes(world):
        for p in batch:
            fast, traced = decide(state, p, mode, version), explain(state, p, mode, version)
            assert fast == traced, f"[{mode} {version}] {p.describe()}: decide {fast} != explain {traced}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(WORLDS).flatmap(lambda w: st.tuples(
    st.just(w), policy_set(Pools(w)), probes(w),
    st.fixed_dictionaries({ns: st.sampled_from(PLANES) for ns in w.namespaces}))))
def test_decide_equals_explain_in_mode_mixed(drawn: tuple) -> None:
    world, policies, batch, planes = drawn
    state = _state(world, policies, planes)
    version = IstioVersion.parse("1.30")
    for p in batch:
        assert decide(state, p, "mixed", version) == explain(state, p, "mixed", version), p.describe()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(WORLDS).flatmap(lambda w: st.tuples(st.just(w), policy_set(Pools(w)))), request(),
       st.sampled_from(VERSIONS))
def test_decide_matrix_equals_decide_cell_by_cell(drawn: tuple, r: Request, version: IstioVersion) -> None:
    world, policies = drawn
    state = _state(world, policies)
    for mode in _modes(world):
        rows = list(decide_matrix(state, world.clients, world.servers, mode, version, r))
        assert [(dst, port) for dst, port, _ in rows] == [(w, p) for w in world.servers for p in w.ports]
        for dst, port, row in rows:
            assert len(row) == len(world.clients)
            for src, got in zip(world.clients, row, strict=True):
                p = Probe(src, dst, port, r)
                assert got == explain(state, p, mode, version), f"[{mode} {version}] {p.describe()}"


@given(st.one_of(st.none(), st.just("cluster.local/ns/a/sa/b")), st.sampled_from(["10.0.0.1", ""]),
       st.one_of(st.none(), st.just("GET")), st.one_of(st.none(), st.just("203.0.113.7")))
def test_attributes_of_is_the_constructor(principal: str | None, ip: str, method: str | None,
                                          remote: str | None) -> None:
    args = (principal, ip, "10.0.0.2", 8080, "sni" if principal else None, method, "/" if method else None,
            (("x-team", "a"),), "h" if method else None)
    fast, built = Attributes.of(*args, remote), Attributes(*args, remote_ip=remote)
    assert fast == built and fast.uri == built.uri and vars(fast) == vars(built)
