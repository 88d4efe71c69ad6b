"""Differential test in mode mixed: the engine and the real Envoy mesh agree when namespaces run different data
planes (DESIGN.md §10), on generated policies and probes.

Why a test of its own: in mode mixed the *path* is what differs from the single-plane modes (a sidecar tunnelling
HBONE to an ambient pod and bypassing its waypoint, a sidecar terminating an ambient client's HBONE), and the
engine (engine/path.py) and the mesh (mesh/local/config.py, mode mixed) build it independently. A mesh is
started per world and data-plane assignment, so the assignments are fixed per pytest parameter: drawn at random
(seeded by AUTHZ_DIFFERENTIAL_DATAPLANES_SEED, default the world's name, so a failure reproduces) from the
assignments that put at least one namespace on sidecars and one on ambient capture, so that every crossing
occurs. Policies and probe batches are drawn by hypothesis per example, as in tests/test_differential.py, whose
comparison rule (`disagreement`) and generators this reuses. Examples: the `differential` profile
(AUTHZ_DIFFERENTIAL_EXAMPLES).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conformance.engine import state_for_step
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import DataPlane, Scenario, Step
from tests.differential_world import JWT_WORLDS, WORLDS, Pools, World, features, policy_set, probes
from tests.test_differential import _check_valid, _yaml, routed_disagreements

PLANES: tuple[DataPlane, ...] = ("sidecar", "ambient", "waypoint")
MIXED_WORLDS = [w for w in WORLDS if w.name in ("shop-bank", "team-teamb-ops", "corp-td")]


def assignments(world: World, count: int = 2) -> list[dict[str, DataPlane]]:
    """`count` random data-plane assignments of the world's in-mesh namespaces, each with a sidecar namespace and
    an ambient-captured one (every crossing then occurs between some pair), distinct."""
    namespaces = sorted({w.namespace for w in world.workloads if w.in_mesh})
    combos = itertools.product(PLANES, repeat=len(namespaces))
    candidates = [dict(zip(namespaces, planes, strict=True)) for planes in combos
                  if "sidecar" in planes and set(planes) - {"sidecar"}]
    rng = random.Random(os.environ.get("AUTHZ_DIFFERENTIAL_DATAPLANES_SEED", world.name))
    return rng.sample(candidates, min(count, len(candidates)))


# The JWT/CUSTOM world with its provider on sidecars (the local mesh's sidecars call providers by mTLS only,
# mesh.py mixed_provider): JWT and CUSTOM at a sidecar's HBONE chains, at a waypoint, and bypassed by sidecars.
JWT_PARAMS: list[tuple[World, dict[str, DataPlane]]] = [
    (JWT_WORLDS[0], {"app": "sidecar", "other": "ambient", "ext-authz": "sidecar"}),
    (JWT_WORLDS[0], {"app": "waypoint", "other": "sidecar", "ext-authz": "sidecar"}),
]
PARAMS = [(w, a) for w in MIXED_WORLDS for a in assignments(w)] + JWT_PARAMS


def _id(param: tuple[World, dict[str, DataPlane]]) -> str:
    world, planes = param
    return world.name + ":" + ",".join(f"{ns}={p}" for ns, p in planes.items())


def mixed_scenario(world: World, planes: dict[str, DataPlane], steps: tuple[Step, ...] = ()) -> Scenario:
    return replace(world.scenario(steps), modes=("mixed",), dataplanes=planes)


@pytest.fixture(params=PARAMS, ids=[_id(p) for p in PARAMS])
def mixed_mesh(request: pytest.FixtureRequest) -> Iterator[tuple[World, dict[str, DataPlane], LocalMeshSession]]:
    world, planes = request.param
    target = LocalTarget()
    scenario = mixed_scenario(world, planes)
    reason = target.unavailable("mixed", scenario)
    if reason:
        pytest.skip(reason)
    session = target.start(scenario, "mixed")
    try:
        yield world, planes, session
    finally:
        session.close()


@given(data=st.data())
@settings(settings.get_profile("differential"))
def test_engine_and_envoy_mesh_agree_in_mixed_mode(
    mixed_mesh: tuple[World, dict[str, DataPlane], LocalMeshSession], data: st.DataObject,
) -> None:
    world, planes, session = mixed_mesh
    policies = data.draw(policy_set(Pools(world)), label="policies")
    batch = data.draw(probes(world), label="probes")
    for label in sorted(features(policies, batch, world.root)):
        event(label)
    step = Step("generated", policies, ())
    scenario = mixed_scenario(world, planes, (step,))
    _check_valid(policies, session.addresses)
    session.apply(policies)
    observations = session.probe(batch)
    state = state_for_step(scenario, step, session.addresses)
    problems = routed_disagreements(state, batch, observations, "mixed")
    if problems:
        raise AssertionError(
            f"engine and mesh disagree on {len(problems)} observation(s) in world {world.name} with data planes "
            f"{planes}:\n" + "\n".join(problems) + "\npolicies:\n" + (_yaml(policies) or "(none)\n"))


def test_assignments_cover_both_sides_of_every_crossing() -> None:
    """Each world's assignments have a sidecar namespace and an ambient-captured one, and differ."""
    for world in MIXED_WORLDS:
        found = assignments(world)
        assert len({tuple(sorted(a.items())) for a in found}) == len(found) >= 2
        for a in found:
            assert "sidecar" in a.values() and set(a.values()) - {"sidecar"}
