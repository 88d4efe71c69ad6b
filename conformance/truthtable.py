"""The truth table: one row per probe of a step in one mode, keyed by the whole probe.

It holds what was expected (the scenario's verdict, or the engine's when the scenario says `auto`),
what the engine predicted (verdict, outcome form, layer, deciding policy) and, once a target ran the
probes, what was observed. Prediction, probing and comparison fill it in different modules; reports
render it; nothing here decides or probes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from conformance.engine import Decision, State, decide
from conformance.model import ALLOWED, Expectation, Mode, Probe, Scenario, Step, Verdict
from conformance.probe import Observation
from conformance.versions import IstioVersion


@dataclass
class Row:
    expectation: Expectation
    predicted: Decision
    observed: list[Observation] = field(default_factory=list)
    converged_after: int | None = None  # observations until it matched N times in a row

    @property
    def probe(self) -> Probe:
        return self.expectation.probe

    @property
    def last(self) -> Observation | None:
        return self.observed[-1] if self.observed else None


@dataclass
class TruthTable:
    scenario: Scenario
    step: Step
    mode: Mode
    version: IstioVersion
    rows: list[Row]
    addresses: Mapping[str, str] = field(default_factory=dict)

    def expected(self, row: Row) -> Verdict:
        """The scenario's verdict for this mode, or the engine's prediction when it says auto."""
        return row.expectation.verdict(self.mode) or row.predicted.verdict

    def expected_outcome(self, row: Row) -> str:
        """The outcome form that passes: `allowed`, or the denial form the engine predicts for a deny.

        When the scenario's explicit verdict contradicts the engine, the engine has no denial form to
        offer for it; any denial form then passes on the target (lint reports the contradiction).
        """
        verdict = self.expected(row)
        if verdict == "allow":
            return ALLOWED
        return row.predicted.outcome if row.predicted.verdict == "deny" else "denied"

    def contradictions(self) -> Iterator[Row]:
        """Rows whose explicit verdict differs from the engine's prediction."""
        for row in self.rows:
            explicit = row.expectation.verdict(self.mode)
            if explicit is not None and explicit != row.predicted.verdict:
                yield row

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


def predict(scenario: Scenario, step: Step, mode: Mode, version: IstioVersion,
            addresses: Mapping[str, str] | None = None) -> TruthTable:
    from conformance.engine import state_for_step

    state: State = state_for_step(scenario, step, addresses)
    rows = [Row(e, decide(state, e.probe, mode, version)) for e in step.expectations]
    return TruthTable(scenario, step, mode, version, rows, dict(state.addresses))
