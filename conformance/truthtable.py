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
        offer for it; any proven denial form then passes on the target, and every report says the two
        disagree (`disagreement`).
        """
        verdict = self.expected(row)
        if verdict == "allow":
            return ALLOWED
        return row.predicted.outcome if row.predicted.verdict == "deny" else "denied"

    def disagrees(self, row: Row) -> bool:
        """The scenario's explicit verdict differs from the engine's prediction (reports say so in the
        cell, the table, Allure and JUnit, whatever the target observed)."""
        explicit = row.expectation.verdict(self.mode)
        return explicit is not None and explicit != row.predicted.verdict

    def disagreement(self, row: Row) -> str | None:
        """One line saying how the scenario and the engine disagree on `row`, or None."""
        if not self.disagrees(row):
            return None
        d = row.predicted
        why = f"{d.reason}" + (f", {d.policy}" if d.policy else "")
        return (f"the scenario expects {row.expectation.verdict(self.mode)}, the engine predicts {d.verdict} "
                f"({why}) for Istio {self.version} {self.mode}")

    def contradictions(self) -> Iterator[Row]:
        """Rows whose explicit verdict differs from the engine's prediction."""
        return (row for row in self.rows if self.disagrees(row))

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


def predict(scenario: Scenario, step: Step, mode: Mode, version: IstioVersion,
            addresses: Mapping[str, str] | None = None) -> TruthTable:
    from conformance.engine import state_for_step

    state: State = state_for_step(scenario, step, addresses)
    rows = [Row(e, decide(state, e.probe, mode, version)) for e in step.expectations]
    return TruthTable(scenario, step, mode, version, rows, dict(state.addresses))
