"""Regression scenarios: every disagreement the differential test found, as a scenario run on the real mesh.

Why: tests/test_differential.py finds a disagreement once, on a random example; the scenario under
tests/data/regressions/ pins it for good, with the verdicts transcribed from the Istio source cited in its
description, and checks both sides: the engine must predict those verdicts (no lint contradiction), and
the local mesh must produce them with the proof the judging rule demands (form, proxy record, policy).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.mesh.local.mesh import LocalTarget
from conformance.runner import run_step
from conformance.scenario import load
from conformance.truthtable import predict
from conformance.versions import IstioVersion

VERSION = IstioVersion.parse(None)
FILES = sorted((Path(__file__).parent / "data" / "regressions").glob("*.yaml"))
CASES = [(path, mode) for path in FILES for mode in load(path, VERSION).modes]


@pytest.mark.parametrize(("path", "mode"), CASES, ids=[f"{p.stem}-{m}" for p, m in CASES])
def test_regression_scenario(path: Path, mode: str) -> None:
    scenario = load(path, VERSION)
    for step in scenario.steps:
        contradictions = list(predict(scenario, step, mode, VERSION).contradictions())  # type: ignore[arg-type]
        assert not contradictions, [(r.probe.describe(), r.predicted.reason) for r in contradictions]
    target = LocalTarget()
    reason = target.unavailable(mode)  # type: ignore[arg-type]
    if reason:
        pytest.skip(reason)
    with target.start(scenario, mode) as session:  # type: ignore[arg-type]
        for step in scenario.steps:
            result = run_step(session, scenario, step, VERSION, required=2, deadline=10.0)
            failing = [(row.probe.describe(), rec.last.message if rec.last else "no observation")
                       for row, rec in result.failing()]
            assert not failing, f"{step.name}: {failing}"
