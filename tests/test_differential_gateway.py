"""Differential test through an ingress gateway: the engine and the real Envoy mesh agree on generated policies and
requests that enter the mesh at a gateway (issue 12), in every mode and in mode mixed.

Why a test of its own: a gateway probe crosses up to three enforcers that the engine (engine/path.py ingress_route,
engine/xff.py) and the local mesh (mesh/local/gateway.py) build independently: the gateway's own RBAC, whose
`remote_ip` comes from X-Forwarded-For with `numTrustedProxies`; then, with the gateway's identity and address and
the X-Forwarded-For it appended, the backend's sidecar, or its ztunnel (HBONE straight to the pod, bypassing the
waypoint), or the waypoint when the Service carries istio.io/ingress-use-waypoint. Worlds differ in
numTrustedProxies (a mesh-wide setting, so fixed per world); policies, Hosts (letter case, a port, wildcard routes)
and X-Forwarded-For values are drawn by hypothesis per example, with the generators and the comparison rule of
tests/test_differential.py. Examples: the `differential` profile (AUTHZ_DIFFERENTIAL_EXAMPLES), a third per world.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conformance.engine import decide, state_for_step
from conformance.engine.decide import probe_route
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import (
    INGRESS_USE_WAYPOINT,
    GatewayRoute,
    Manifest,
    MeshConfig,
    Mode,
    Probe,
    Request,
    Scenario,
    Step,
)
from tests.differential_world import (
    METHODS,
    PROBE_PATHS,
    ROOT,
    TD,
    XFF_VALUES,
    Pools,
    World,
    _wl,
    features,
    policy_set,
    probes,
)
from tests.test_differential import VERSION, _check_valid, _yaml, disagreement, routed_disagreements

GATEWAY = replace(
    _wl("istio-ingress/ingressgateway", 80, sa="istio-ingressgateway-service-account",
        labels={"app": "istio-ingressgateway", "istio": "ingressgateway", "tier": "edge"}, kind="ingress-gateway"),
    routes=(GatewayRoute("api.example.com", "shop/api", 8080), GatewayRoute("*.ledger.com", "bank/ledger", 8080),
            GatewayRoute("web.example.com", "shop/web", 80)),
)
WORKLOADS = (
    GATEWAY,
    _wl("shop/web", 80, labels={"app": "web", "tier": "front"}),
    _wl("shop/api", 8080, (9000, "TCP"), labels={"app": "api", "tier": "back"}),
    # its Service opts in to the waypoint for ingress traffic (the engine and the mesh read the same label)
    _wl("bank/ledger", 8080, sa="default", labels={"app": "ledger", "tier": "back", INGRESS_USE_WAYPOINT: "true"}),
    _wl("bank/teller", sa="default", labels={"app": "teller"}),
    _wl("legacy/outsider", mesh=False),
)
# numTrustedProxies 0: the gateway takes its peer; 2: the second X-Forwarded-For entry from the right
GATEWAY_WORLDS = tuple(World(f"gateway-xff{n}", WORKLOADS, waypoint_mode=True,
                             mesh=MeshConfig(ROOT, TD, num_trusted_proxies=n)) for n in (0, 2))
MIXED_PLANES = {"shop": "ambient", "bank": "waypoint", "legacy": "sidecar"}
MODES: tuple[Mode, ...] = ("sidecar", "ambient", "waypoint", "mixed")
# Hosts a client sends: each route's, in other letter cases, with a port (routing ignores it, `hosts` does not)
HOSTS = ["api.example.com", "API.Example.COM", "api.example.com:80", "a.ledger.com", "X.LEDGER.COM", "b.ledger.com:80",
         "web.example.com", "WEB.example.com:80"]
XFF = [*XFF_VALUES, "56.5.6.7, 72.9.5.6, 98.1.2.3", "72.9.5.6, 203.0.113.7"]


@dataclass(frozen=True)
class GatewayPools(Pools):
    """The differential pools plus the gateway's route hosts in the `hosts` a policy may name."""

    @property
    def hosts(self) -> list[str]:
        return sorted({*super().hosts, "api.example.com", "API.EXAMPLE.COM", "*.ledger.com", "a.ledger.com:80",
                       "web.example.com"})

    def remote_ip_blocks(self) -> st.SearchStrategy[str]:
        return st.one_of(super().remote_ip_blocks(), st.sampled_from(["72.9.5.6", "98.1.2.0/24", "56.5.6.7"]))


def scenario(world: World, mode: Mode, steps: tuple[Step, ...] = ()) -> Scenario:
    base = world.scenario(steps)
    if mode == "mixed":
        return replace(base, modes=("mixed",), dataplanes=MIXED_PLANES)
    return base


@st.composite
def gateway_probes(draw: st.DrawFn) -> tuple[Probe, ...]:
    """Requests from outside the mesh to the gateway: every Host of HOSTS once, with a random method, path and
    X-Forwarded-For (none in a third of them)."""
    outsider = next(w for w in WORKLOADS if not w.in_mesh)
    out = []
    for host in HOSTS:
        headers: list[tuple[str, str]] = [("host", host)]
        if draw(st.integers(0, 2)):
            headers.append((draw(st.sampled_from(["x-forwarded-for", "X-Forwarded-For"])), draw(st.sampled_from(XFF))))
        out.append(Probe(outsider, GATEWAY, GATEWAY.ports[0],
                         Request(draw(st.sampled_from(METHODS)), draw(st.sampled_from(PROBE_PATHS)), tuple(headers))))
    return tuple(out)


PARAMS = [(w, m) for w in GATEWAY_WORLDS for m in MODES]


@pytest.fixture(params=PARAMS, ids=[f"{w.name}:{m}" for w, m in PARAMS])
def gateway_mesh(request: pytest.FixtureRequest) -> Iterator[tuple[World, Mode, LocalMeshSession]]:
    world, mode = request.param
    target = LocalTarget()
    reason = target.unavailable(mode, scenario(world, mode))
    if reason:
        pytest.skip(reason)
    session = target.start(scenario(world, mode), mode)
    try:
        yield world, mode, session
    finally:
        session.close()


@given(data=st.data())
@settings(settings.get_profile("differential"), max_examples=max(1, settings.get_profile("differential").max_examples
                                                                   // 3))
def test_engine_and_envoy_mesh_agree_through_an_ingress_gateway(
    gateway_mesh: tuple[World, Mode, LocalMeshSession], data: st.DataObject,
) -> None:
    world, mode, session = gateway_mesh
    policies = data.draw(policy_set(GatewayPools(world)), label="policies")
    batch = data.draw(gateway_probes(), label="gateway probes") + data.draw(probes(world), label="probes")
    for label in sorted(features(policies, batch, world.root)):
        event(label)
    step = Step("generated", policies, ())
    _check_valid(policies, session.addresses)
    session.apply(policies)
    observations = session.probe(batch)
    state = state_for_step(scenario(world, mode, (step,)), step, session.addresses)
    problems = routed_disagreements(state, batch, observations, mode)
    if problems:
        raise AssertionError(
            f"engine and mesh disagree on {len(problems)} observation(s) in world {world.name}, mode {mode}:\n"
            + "\n".join(problems) + "\npolicies:\n" + (_yaml(policies) or "(none)\n"))


def test_the_gateway_world_takes_every_way_onward() -> None:
    """The world exercises each way a gateway reaches a backend: mTLS to a sidecar (sidecar mode), HBONE to the
    pod bypassing its waypoint (shop/api in waypoint mode), through the waypoint (bank/ledger, labelled)."""
    world = GATEWAY_WORLDS[0]
    crossings = set()
    for mode in MODES:
        step = Step("none", (), ())
        state = state_for_step(scenario(world, mode, (step,)), step, {})
        for host in HOSTS:
            probe = Probe(WORKLOADS[-1], GATEWAY, GATEWAY.ports[0], Request(headers=(("host", host),)))
            crossings.add(probe_route(state, probe, mode, VERSION).crossing)
    assert crossings == {"outside->gateway->sidecar", "outside->gateway->ambient", "outside->gateway->waypoint"}


def _policy(kind: str, name: str, namespace: str, spec: dict[str, object]) -> Manifest:
    api = "security.istio.io/v1"
    return Manifest(kind, api, name, namespace, {"apiVersion": api, "kind": kind,
                                                 "metadata": {"name": name, "namespace": namespace}, "spec": spec},
                    "test")


@pytest.mark.parametrize("mode", MODES)
def test_an_allow_at_the_gateway_and_one_at_the_backend_name_the_backends(mode: Mode) -> None:
    """Found by CI on this test's generated examples: a root-namespace ALLOW matched at the gateway and a
    namespace ALLOW at the backend's sidecar; the engine names the backend's (the later hop decides unless it has
    no policy: engine/decide.py), the local mesh named the gateway's record (mesh.py `_match` took the first hop)."""
    world = next(w for w in GATEWAY_WORLDS if w.name.endswith("2"))
    policies = (_policy("AuthorizationPolicy", "p0", "bank", {"rules": [{}]}),
                _policy("AuthorizationPolicy", "p1", world.root, {"rules": [{}]}),
                _policy("PeerAuthentication", "pa0", world.root, {"mtls": {"mode": "STRICT"}}))
    outsider = next(w for w in WORKLOADS if not w.in_mesh)
    batch = tuple(Probe(outsider, GATEWAY, GATEWAY.ports[0], Request("GET", "/", (("host", host),)))
                  for host in ("a.ledger.com", "X.LEDGER.COM", "b.ledger.com:80", "api.example.com"))
    with LocalTarget() as target:
        reason = target.unavailable(mode, scenario(world, mode))
        if reason:
            pytest.skip(reason)
        with target.start(scenario(world, mode), mode) as session:
            session.apply(policies)
            observations = session.probe(batch)
            step = Step("pinned", policies, ())
            state = state_for_step(scenario(world, mode, (step,)), step, session.addresses)
            problems = [(p.describe(), disagreement(decide(state, p, mode, VERSION), o, p))
                        for p, o in zip(batch, observations, strict=True)]
            assert [x for x in problems if x[1]] == []
    assert all(o.outcome == "allowed" for o in observations)
