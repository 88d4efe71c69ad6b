"""engine/state.py keeps the States it made: a step's prediction and the next step's "before" prediction share one.
Sharing must never hand a step another policy set's or another run's (addresses') State."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from conformance.engine import state_for_step
from conformance.scenario import load
from conformance.versions import IstioVersion

GOOD = Path(__file__).parent / "data" / "good.yaml"


def test_the_same_world_and_policies_share_one_state_and_nothing_else_does() -> None:
    scenario = load(GOOD, IstioVersion.parse(None))
    step = next(s for s in scenario.steps if s.policies)
    first = state_for_step(scenario, step)
    assert state_for_step(scenario, step) is first
    assert state_for_step(scenario, replace(step, name="renamed", expectations=())) is first  # same policies
    assert state_for_step(scenario, replace(step, policies=())) is not first
    other = {k: "127.9.9.9" for k in first.addresses}
    moved = state_for_step(scenario, step, other)  # another run's addresses
    assert moved is not first and set(moved.addresses.values()) == {"127.9.9.9"}
    again = load(GOOD, IstioVersion.parse(None))  # an equal scenario, another object: never mixed up
    assert state_for_step(again, next(s for s in again.steps if s.policies)) is not first
