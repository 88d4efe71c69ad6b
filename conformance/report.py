"""Truth tables for people: the console (rich) and plain text for failure messages.

Rendering only: the tables are built by truthtable.py, filled by the engine and the targets.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from conformance.runner import StepResult
from conformance.truthtable import Row, TruthTable

LEGEND = ("allowed = the app answered; denied-l7 = 403 RBAC: access denied; denied-l4 = connection reset/closed; "
          "denied-upstream = 503 from a proxy whose upstream was refused")


def probe_label(row: Row) -> str:
    p = row.probe
    hdrs = " ".join(f"{k}:{v}" for k, v in p.request.headers)
    return (f"{p.source.ref} → {p.destination.ref}:{p.port.number}"
            + (f" {p.request.method} {p.request.path}" if p.port.protocol == "HTTP" else " tcp")
            + (f" [{hdrs}]" if hdrs else ""))


def render_prediction(table: TruthTable, out: TextIO) -> None:
    t = Table(title=f"{table.scenario.name} · step {table.step.name} · {table.mode} · Istio {table.version}",
              title_justify="left")
    for col in ("#", "probe", "expected", "predicted", "layer", "decided by"):
        t.add_column(col)
    for row in table:
        d = row.predicted
        explicit = row.expectation.verdict(table.mode)
        mismatch = explicit is not None and explicit != d.verdict
        expected = explicit or "auto"
        t.add_row(
            str(row.expectation.index),
            probe_label(row),
            f"[bold red]{expected}[/]" if mismatch else expected,
            f"{d.verdict} ({d.outcome})",
            d.layer or "-",
            _decided_by(row),
        )
    Console(file=out, width=160, force_terminal=False, color_system=None).print(t)


def _decided_by(row: Row) -> str:
    d = row.predicted
    if d.policy and d.rule is not None:
        return f"{d.policy} rule {d.rule} ({d.reason})"
    if d.policy:
        return f"{d.policy} ({d.reason})"
    return d.reason


def _cell_observed(row: Row) -> str:
    last = row.last
    return last.outcome if last is not None else "-"


def render_failure(result: StepResult, repro: str) -> str:
    """Expected and observed truth tables side by side, differing cells marked, then per failing
    probe its evidence, the proxy's record, the engine's explanation and a command to reproduce it."""
    from conformance.engine import explain, state_for_step

    table = result.table
    lines = [f"{table.scenario.name} · step {table.step.name} · {table.mode} · Istio {table.version}: "
             f"{len(result.failing())} of {len(table.rows)} probes did not conform", ""]
    width = max((len(probe_label(r)) for r in table), default=10)
    lines.append(f"    {'probe':<{width}}  {'expected':<16}  {'observed':<16}  obs")
    failing = {id(row) for row, _ in result.failing()}
    for row in table:
        rec = result.record(row)
        mark = "✗" if id(row) in failing else " "
        expected = table.expected_outcome(row)
        lines.append(f"  {mark} {probe_label(row):<{width}}  {expected:<16}  {_cell_observed(row):<16}  "
                     f"{len(rec.observations)}")
    lines.append("")
    state = state_for_step(table.scenario, table.step, table.addresses)
    for row, rec in result.failing():
        judgement = rec.last
        lines.append(f"✗ expect[{row.expectation.index}] {probe_label(row)}")
        if judgement is not None:
            lines.append(f"    {judgement.category}: {judgement.message}")
        last = row.last
        if last is not None:
            ev = last.evidence
            lines.append(f"    evidence: curl exit {ev.exit_code}, HTTP {ev.status}, {ev.seconds * 1000:.1f} ms, "
                         f"body {ev.body[:120]!r}" + (f", stderr {ev.stderr.strip()[:160]!r}" if ev.stderr.strip()
                                                     else ""))
            if ev.command:
                lines.append(f"    command: {ev.command}")
            if last.proof is not None:
                lines.append(f"    proxy record ({last.proof.proxy}): {last.proof.line.strip()[:300]}")
        d = row.predicted
        lines.append(f"    engine: {d.verdict} ({d.outcome}) at {d.layer or '-'}, decided by {_decided_by(row)}")
        for line in explain(state, row.probe, table.mode, table.version).trace[1:]:
            lines.append(f"      {line}")
        lines.append("")
    lines.append(f"reproduce: {repro}")
    return "\n".join(lines)


def render_summary(results: list[StepResult], tw: Any) -> None:
    """The compact truth table per scenario, mode and step, after the run, with a legend."""
    write = tw.line
    for result in results:
        table = result.table
        status = "PASS" if result.passed else "FAIL"
        gap = sum(rec.stale_allowed for rec in result.convergence.records)
        write(f"{status} {table.scenario.name} [{table.mode}] {table.step.name}: barrier "
              f"{result.applied.seconds * 1000:.0f} ms, converged in {result.convergence.rounds} round(s)"
              + (f", ENFORCEMENT GAP: {gap} stale allowed observation(s)" if gap else ""))
        for row in table:
            rec = result.record(row)
            ok = rec.last is not None and rec.last.passed
            write(f"  {'✓' if ok else '✗'} {probe_label(row):<60} expected {table.expected_outcome(row):<15} "
                  f"observed {_cell_observed(row)}")
    write(f"legend: {LEGEND}")
