"""Building the engine's State for a scenario step, with the addresses a target assigned."""

from __future__ import annotations

from collections.abc import Mapping

from conformance.engine.decide import State
from conformance.model import Scenario, Step, default_addresses


def state_for_step(scenario: Scenario, step: Step, addresses: Mapping[str, str] | None = None) -> State:
    """The policies of `step` in force over the scenario's world; `${ip:...}` placeholders filled with
    `addresses` (a target's real ones, or synthetic ones when only predicting)."""
    addrs = dict(addresses) if addresses is not None else default_addresses(scenario)
    return State(
        mesh=scenario.mesh,
        workloads=scenario.workloads,
        waypoints=scenario.waypoints,
        policies=tuple(m.rendered(addrs) for m in step.policies),
        addresses=addrs,
    )
