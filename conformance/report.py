"""Truth tables for people: the console (rich) and plain text for failure messages.

Rendering only: the tables are built by truthtable.py, filled by the engine and the targets.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.table import Table

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
