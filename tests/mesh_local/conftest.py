"""Fixtures for the local-mesh tests: one real mesh per test module and mode, always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from tests.mesh_local.world import WAYPOINT, scenario


def _session(mode: str) -> Iterator[LocalMeshSession]:
    with LocalTarget() as target:
        reason = target.unavailable(mode)  # type: ignore[arg-type]
        if reason:
            pytest.skip(reason)
        waypoints = (WAYPOINT,) if mode == "waypoint" else ()
        with target.start(scenario(waypoints=waypoints), mode) as session:  # type: ignore[arg-type]
            yield session


@pytest.fixture(scope="module")
def sidecar_mesh() -> Iterator[LocalMeshSession]:
    yield from _session("sidecar")


@pytest.fixture(scope="module")
def ambient_mesh() -> Iterator[LocalMeshSession]:
    yield from _session("ambient")


@pytest.fixture(scope="module")
def waypoint_mesh() -> Iterator[LocalMeshSession]:
    yield from _session("waypoint")
