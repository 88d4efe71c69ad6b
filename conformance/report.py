"""Truth tables and evidence for people: the console (rich), failure text, JUnit, Allure attachments.

Rendering only: the tables are built by truthtable.py, filled by the engine and the targets, judged by
verdicts.py. Every report a user reads comes from here, so the console, a failure message, an Allure
attachment and `authz-conformance repro` say the same thing in the same words:
- `render_summary`: the compact truth table per scenario (rows: step and probe; columns: modes), with
  a legend, printed at the end of a run;
- `render_failure`: expected and observed side by side with the differing cells marked, then per
  failing probe its evidence, the deciding policy as the proxy named it next to the engine's, the
  engine's reasoning and the command that reproduces it;
- `evidence_text`, `html_truth_table`, `convergence_text`, `policies_yaml`: the Allure attachments.
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conformance.converge import Convergence, ProbeRecord
from conformance.engine import Decision
from conformance.engine.decide import ALLOW_MATCHED, ALLOW_UNMATCHED, DENY_MATCHED, NO_ALLOW, NO_POLICY, STRICT_MTLS
from conformance.model import (
    ALLOWED,
    DENIAL_FORMS,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    ERROR,
    TIMEOUT,
)
from conformance.probe import DENY_POLICY, NO_ALLOW_MATCHED, Observation, Proof
from conformance.probe import STRICT_MTLS as PROOF_STRICT
from conformance.runner import StepResult
from conformance.truthtable import Row, TruthTable
from conformance.verdicts import UNPROVEN, Judgement

LEGEND = ("allowed = the app answered; denied-l7 = 403 RBAC: access denied; denied-l4 = connection reset/closed; "
          "denied-upstream = 503 from a proxy whose upstream was refused; denied-authn = 401 (or 403 for a wrong "
          "audience) from the JWT filter; denied-custom = the external authorizer's denial")

# The compact table's cell codes, one per outcome form (DESIGN.md §2).
CODES = {ALLOWED: "A", DENIED_L7: "L7", DENIED_L4: "L4", DENIED_UPSTREAM: "UP", DENIED_AUTHN: "JWT",
         DENIED_CUSTOM: "EXT", TIMEOUT: "T/O", ERROR: "ERR", "denied": "D"}
COMPACT_LEGEND = (
    "legend: ✓ observed as expected · ✗ observed≠expected · A allowed (the app answered) · L7 403 RBAC: access "
    "denied · L4 reset / closed, no response · UP 503, upstream refused · JWT 401 from the JWT filter · EXT denied "
    "by the external authorizer · D any denial · T/O timeout · ERR error",
    "        ? a denial the enforcing proxy did not record · ~ denial unconfirmed (accepted only because the run "
    "opted in) · ! the scenario and the engine disagree · k/n: k of n observations wrong · gap×N: a probe that "
    "must be denied was seen allowed N times after the barrier",
)


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
            Text(probe_label(row)),  # Text: a header `[k:v]` in a label is not rich markup
            f"[bold red]{expected}[/]" if mismatch else expected,
            f"{d.verdict} ({d.outcome})",
            d.layer or "-",
            Text(_decided_by(row)),
        )
    Console(file=out, width=160, force_terminal=False, color_system=None).print(t)


def _decided_by(row: Row) -> str:
    return engine_decision(row.predicted)


# --- deciding policies: the proxy's word next to the engine's -------------------------------------


def engine_decision(d: Decision) -> str:
    """What the engine says decided a probe, in the words `proxy_decision` uses for the proxy."""
    if d.policy and d.rule is not None:
        text = f"{d.policy} rule {d.rule} ({d.reason})"
    elif d.policy:
        text = f"{d.policy} ({d.reason})"
    elif d.reason == ALLOW_UNMATCHED:
        text = "no ALLOW policy matched (allow-unmatched)"
    else:
        text = d.reason
    if len(d.candidates) > 1:
        text += f"; any of {', '.join(d.candidates)} may be named"
    return text


def proxy_decision(proof: Proof | None) -> str:
    """What the enforcing proxy's own log says decided a probe ('-' when there is no record)."""
    if proof is None:
        return "-"
    if proof.kind == DENY_POLICY:
        return f"{proof.policy}" + (f" rule {proof.rule}" if proof.rule is not None else "")
    if proof.kind == PROOF_STRICT:
        return "PeerAuthentication STRICT (plaintext rejected)"
    if proof.kind == NO_ALLOW_MATCHED:
        return "no ALLOW policy matched ([none])"
    if proof.policy:
        return f"allowed by {proof.policy}" + (f" rule {proof.rule}" if proof.rule is not None else "")
    return "allowed (no policy decided)"


def _engine_short(d: Decision) -> str:
    if d.reason in (DENY_MATCHED, ALLOW_MATCHED) and d.policy:
        prefix = "" if d.reason == DENY_MATCHED else "allowed by "
        return f"{prefix}{d.policy}" + (f" rule {d.rule}" if d.rule is not None else "")
    if d.reason == ALLOW_UNMATCHED:
        return "no ALLOW policy matched"
    if d.reason == STRICT_MTLS:
        return "PeerAuthentication STRICT"
    if d.reason in (NO_POLICY, NO_ALLOW):
        return "allowed (no policy decided)"
    return d.reason


# --- failure text and JUnit message --------------------------------------------------------------


def shown_observation(rec: ProbeRecord) -> tuple[Observation | None, Judgement | None]:
    """The observation a report shows for a probe: for a failing probe its last wrong one (a wrong
    observation is never hidden behind later right ones), else its last."""
    if not rec.passed:
        for obs, judgement in zip(reversed(rec.observations), reversed(rec.judgements), strict=True):
            if not judgement.passed:
                return obs, judgement
    return (rec.observations[-1], rec.judgements[-1]) if rec.observations else (None, None)


def cell_line(table: TruthTable, row: Row, rec: ProbeRecord) -> str:
    """One failing truth-table cell on one line: the JUnit message and the Allure message list these."""
    last, judgement = shown_observation(rec)
    said = judgement.message if judgement is not None else "never observed"
    if not said.startswith("expected"):
        said = f"expected {table.expected_outcome(row)}; {said}"
    if last is not None and last.outcome in DENIAL_FORMS and last.proof is not None:
        said += f" (proxy: {proxy_decision(last.proof)}; engine: {_engine_short(row.predicted)})"
    # short, for a JUnit message attribute (pytest keeps ~500 characters); the full sentences are in the
    # failure text (render_failure)
    if rec.judgements:
        n = len(rec.judgements)
        said += f" [{rec.flaky} wrong after a right one]" if rec.flaky else f" [{rec.wrong}/{n} wrong]"
    if table.disagrees(row):
        said += f" [≠ engine: {row.predicted.verdict}]"
    return f"✗ expect[{row.expectation.index}] {probe_label(row)} [{table.mode}]: {said}"


def render_failure(result: StepResult, repro: Callable[[Row], str]) -> str:
    """Expected and observed truth tables side by side, differing cells marked, then per failing
    probe its evidence, the proxy's record, the engine's explanation and a command to reproduce it."""
    from conformance.engine import explain, state_for_step

    table = result.table
    failing = result.failing()
    lines = [f"{table.scenario.name} · step {table.step.name} · {table.mode} · Istio {table.version}: "
             f"{len(failing)} of {len(table.rows)} probe(s) did not conform", ""]
    width = max((len(probe_label(r)) for r in table), default=10)
    lines.append(f"    {'probe':<{width}}  {'expected':<16}  {'observed':<18}  obs")
    failing_ids = {id(row) for row, _ in failing}
    for row in table:
        rec = result.record(row)
        mark = "✗" if id(row) in failing_ids else " "
        expected = table.expected_outcome(row)
        shown, _ = shown_observation(rec)
        observed = shown.outcome if shown is not None else "-"
        lines.append(f"  {mark} {probe_label(row):<{width}}  {expected:<16}  "
                     f"{(observed + (' ✗' if mark == '✗' else '')):<18}  {len(rec.observations)}"
                     + ("  (scenario ≠ engine)" if table.disagrees(row) else ""))
    lines.append("")
    state = state_for_step(table.scenario, table.step, table.addresses)
    for row, rec in failing:
        last, judgement = shown_observation(rec)
        lines.append(f"✗ expect[{row.expectation.index}] {probe_label(row)}")
        if judgement is not None:
            lines.append(f"    {judgement.category}: {judgement.message}")
        if rec.judgements:
            lines.append(f"    judgements: {rec.verdict_line()} ({_runs(o.outcome for o in rec.observations)})")
        disagreement = table.disagreement(row)
        if disagreement:
            lines.append(f"    scenario ≠ engine: {disagreement}")
        if last is not None:
            ev = last.evidence
            lines.append(f"    evidence: curl exit {ev.exit_code}, HTTP {ev.status}, {ev.seconds * 1000:.1f} ms, "
                         f"body {ev.body[:120]!r}" + (f", stderr {ev.stderr.strip()[:160]!r}" if ev.stderr.strip()
                                                     else ""))
            if ev.command:
                lines.append(f"    command: {ev.command}")
            if last.proof is not None:
                lines.append(f"    proxy record ({last.proof.proxy}): {last.proof.line.strip()[:300]}")
            for note in last.notes:
                lines.append(f"    note: {note}")
        d = row.predicted
        lines.append(f"    deciding policy: proxy says {proxy_decision(last.proof if last else None)}; "
                     f"engine says {_engine_short(d)}")
        lines.append(f"    engine: {d.verdict} ({d.outcome}) at {d.layer or '-'}, decided by {engine_decision(d)}")
        for line in explain(state, row.probe, table.mode, table.version).trace[1:]:
            lines.append(f"      {line}")
        lines.append(f"    reproduce: {repro(row)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- evidence, for Allure steps and `authz-conformance repro` --------------------------------------


def evidence_text(table: TruthTable, row: Row, observation: Observation | None, judgement: Judgement | None,
                  repro: str | None = None, record: ProbeRecord | None = None) -> str:
    """Everything one probe observed, next to what the engine predicted, as plain text."""
    d = row.predicted
    lines = [f"probe expect[{row.expectation.index}]: {probe_label(row)}",
             f"expected: {table.expected(row)} → {table.expected_outcome(row)}"
             + ("" if row.expectation.verdict(table.mode) else " (auto: the engine's prediction)"),
             f"observed: {observation.outcome if observation else '-'}"]
    disagreement = table.disagreement(row)
    if disagreement:
        lines.append(f"scenario ≠ engine: {disagreement}")
    if record is not None:
        seq = _runs(o.outcome for o in record.observations)
        after = record.converged_after
        lines.append(f"observations: {len(record.observations)} ({seq}), {record.verdict_line()}"
                     + (f", matched after {after}" if after is not None and not record.exact else ""))
    if judgement is not None:
        verdict = "✓ conforms" if judgement.passed else f"✗ {judgement.category}"
        lines.append(f"result: {verdict}" + (f": {judgement.message}" if judgement.message else ""))
    if observation is not None:
        ev = observation.evidence
        lines += ["", "evidence",
                  f"  command:   {ev.command or '-'}",
                  f"  exit code: {ev.exit_code}",
                  f"  status:    {ev.status or '- (no response)'}",
                  f"  time:      {ev.seconds * 1000:.1f} ms",
                  "  body:      " + (_indent(ev.body.rstrip(), 13) if ev.body.strip() else "(empty)"),
                  "  stderr:    " + (_indent(ev.stderr.rstrip(), 13) if ev.stderr.strip() else "(empty)")]
        for note in observation.notes:
            lines.append(f"  note:      {note}")
    proof = observation.proof if observation is not None else None
    lines += ["", "deciding policy",
              f"  proxy ({proof.proxy if proof else 'no record'}): {proxy_decision(proof)}",
              f"  engine ({d.layer or 'nothing enforces'}): {engine_decision(d)}",
              f"  engine predicts: {d.verdict} ({d.outcome})"]
    if proof is not None:
        lines += ["", f"proxy log line ({proof.proxy})", f"  {proof.line.strip()}"]
    if repro:
        lines += ["", f"reproduce: {repro}"]
    return "\n".join(lines) + "\n"


def _indent(text: str, width: int) -> str:
    return text.replace("\n", "\n" + " " * width)


def _runs(outcomes: Iterable[str]) -> str:
    """`allowed ×2, denied-l4 ×3`: an observation sequence, run-length encoded."""
    out: list[list[Any]] = []
    for o in outcomes:
        if out and out[-1][0] == o:
            out[-1][1] += 1
        else:
            out.append([o, 1])
    return ", ".join(f"{o} ×{n}" if n > 1 else o for o, n in out) or "-"


def explanation_text(table: TruthTable, row: Row) -> str:
    """The engine's reasoning for one probe, as `authz-conformance explain` prints it."""
    from conformance.engine import explain, state_for_step
    from conformance.engine.decide import probe_route

    state = state_for_step(table.scenario, table.step, table.addresses)
    d = explain(state, row.probe, table.mode, table.version)
    head = f"[{table.mode}] {d.verdict.upper()} ({d.outcome}), decided by {engine_decision(d)}"
    explicit = row.expectation.verdict(table.mode)
    if explicit and explicit != d.verdict:
        head += f" — the scenario expects {explicit}"
    # the path, every hop and the one that decided (path.py), for every mode, not only where the trace says it
    route = probe_route(state, row.probe, table.mode, table.version)
    path = f"path ({route.crossing}): {route.describe()}; decided at {d.enforcer(row.probe) or 'no proxy'}"
    return "\n".join([head, f"  {path}", *(f"  {line}" for line in d.trace)]) + "\n"


def _required_text(conv: Convergence) -> str:
    """How many observations of each probe the step needed, in the words of its regime (converge.py)."""
    record = conv.records[0] if conv.records else None
    if record is None:
        return ""
    if record.exact:
        return f", {record.required} observation(s) of each probe after the barrier, every one counted"
    return f", {record.required} matching observations in a row required"


def convergence_text(result: StepResult) -> str:
    """The convergence record of a step: barrier, time to converge, observations per probe, gaps."""
    table, conv, applied = result.table, result.convergence, result.applied
    changes = [f"{what}: {', '.join(names)}" for what, names in
               (("created", applied.created), ("updated", applied.updated), ("deleted", applied.deleted)) if names]
    lines = [f"propagation barrier: {applied.seconds * 1000:.1f} ms" + (f" ({'; '.join(changes)})" if changes else ""),
             f"convergence: {'converged' if conv.converged else 'NOT converged'} after {conv.seconds:.3f} s, "
             f"{conv.rounds} round(s)" + _required_text(conv)]
    measured = getattr(result, "gap", None)  # gap.py's record, measured while the change landed
    if measured is not None and hasattr(measured, "describe"):
        lines.append(measured.describe())
    gaps = [(row, rec) for row, rec in zip(table.rows, conv.records, strict=True) if rec.stale_allowed]
    if gaps:
        lines.append("ENFORCEMENT GAP while converging: " + "; ".join(
            f"expect[{row.expectation.index}] allowed {rec.stale_allowed}× after the barrier, until "
            f"{rec.gap_seconds:.3f} s" for row, rec in gaps))
    else:
        lines.append("while converging: no probe that must be denied was observed allowed")
    lines.append("")
    width = max((len(probe_label(r)) for r in table), default=10)
    lines.append(f"{'#':>3}  {'probe':<{width}}  {'obs':>3}  {'matched after':>13}  outcomes")
    for row, rec in zip(table.rows, conv.records, strict=True):
        after = "-" if rec.converged_after is None else str(rec.converged_after)
        lines.append(f"{row.expectation.index:>3}  {probe_label(row):<{width}}  {len(rec.observations):>3}  "
                     f"{after:>13}  {_runs(o.outcome for o in rec.observations)}")
    return "\n".join(lines) + "\n"


def policies_yaml(result: StepResult) -> str:
    """The policies in force during the step, as applied (address placeholders filled), as YAML."""
    table = result.table
    docs = [dict(m.rendered(table.addresses).body) for m in table.step.policies]
    head = (f"# {table.scenario.name} · step {table.step.name} · {table.mode}: "
            f"{len(docs)} polic{'y' if len(docs) == 1 else 'ies'} in force\n")
    if not docs:
        return head + "# (none: every request is allowed unless something else rejects it)\n"
    return head + yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)


# --- HTML truth table (Allure attachment) ---------------------------------------------------------

_CSS = """
body{font:12px/1.4 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:6px;color:#1d2430}
h3{font-size:13px;margin:0 0 6px}
table{border-collapse:collapse}
th,td{border:1px solid #d0d7de;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f7;white-space:nowrap}
td.probe{font-family:ui-monospace,Menlo,Consolas,monospace;min-width:18em}
td.policy{min-width:12em}
td.ok{background:#e7f6ea}
td.diff,span.diff{background:#ffd7d5;color:#8a1010;font-weight:600}
span.disagree{background:#fff1c2;color:#7a4d00;font-weight:600;padding:0 3px}
td.observed,td.expected{white-space:nowrap}
tr.fail td.mark{color:#b42318;font-weight:700}
tr.pass td.mark{color:#1a7f37}
p.legend{color:#57606a;font-size:11px;max-width:1000px}
"""


def html_truth_table(result: StepResult) -> str:
    """Expected vs observed for one step, as a self-contained HTML page (Allure shows it in an iframe).

    A cell whose observation differs from the expectation is highlighted (`class="diff"`), and so is
    a deciding policy that the proxy named differently from the engine.
    """
    table = result.table
    e = html.escape
    failing = {id(row) for row, _ in result.failing()}
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>truth table</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h3>{e(table.scenario.name)} · step {e(table.step.name)} · {e(table.mode)} · Istio {e(str(table.version))}"
        f" — {len(failing)} of {len(table.rows)} probe(s) differ</h3>",
        "<table class='truth-table'><thead><tr><th></th><th>#</th><th>probe</th><th>expected</th><th>observed</th>"
        "<th>deciding policy: proxy / engine</th><th>obs</th></tr></thead><tbody>",
    ]
    for row in table:
        rec = result.record(row)
        bad = id(row) in failing
        last, _ = shown_observation(rec)
        proof = last.proof if last is not None else None
        proxy, engine = proxy_decision(proof), _engine_short(row.predicted)
        denial = last is not None and last.outcome in DENIAL_FORMS
        policy_differs = denial and proof is not None and proof.denied and proxy != engine
        proxy_html = f"<span class='diff'>{e(proxy)}</span>" if policy_differs else e(proxy)
        cls = "diff" if bad else "ok"
        out.append(
            f"<tr class='{'fail' if bad else 'pass'}' data-probe='{row.expectation.index}'>"
            f"<td class='mark'>{'✗' if bad else '✓'}</td><td>{row.expectation.index}</td>"
            f"<td class='probe'>{e(probe_label(row))}</td>"
            f"<td class='expected'>{e(table.expected(row))} · {e(table.expected_outcome(row))}"
            + (f" <span class='disagree' title='{e(table.disagreement(row) or '')}'>≠ engine</span>"
               if table.disagrees(row) else "") + "</td>"
            f"<td class='observed {cls}' data-differs='{str(bad).lower()}'>"
            f"{e(last.outcome if last is not None else '-')}</td>"
            f"<td class='policy'>{proxy_html} / {e(engine)}</td>"
            f"<td title='{e(_runs(o.outcome for o in rec.observations))}; {e(rec.verdict_line())}'>"
            f"{len(rec.observations)}</td></tr>")
    out.append("</tbody></table>")
    out.append(f"<p class='legend'>{e(LEGEND)}. A highlighted observed cell differs from the expectation; a "
               "highlighted deciding policy is one the proxy named differently from the engine; ≠ engine marks an "
               "expectation the verdict engine contradicts. obs: observations after the barrier (each one counts where "
               "the barrier is exact; elsewhere until N in a row, and any wrong one after a right one fails)."
               "</p></body></html>")
    return "\n".join(out)


# --- the compact console truth table per scenario -------------------------------------------------


def _cell(table: TruthTable, row: Row, rec: ProbeRecord) -> tuple[str, bool]:
    last, judgement = shown_observation(rec)
    observed = CODES.get(last.outcome, last.outcome) if last is not None else "-"
    gap = f" gap×{rec.stale_allowed}" if rec.stale_allowed else ""
    disagrees = "!" if table.disagrees(row) else ""
    if rec.passed:
        unconfirmed = "~" if any(j.unconfirmed for j in rec.judgements) else ""
        return f"✓ {observed}{unconfirmed}{disagrees}{gap}", True
    expected = CODES.get(table.expected_outcome(row), table.expected_outcome(row))
    suffix = "?" if judgement is not None and judgement.category == UNPROVEN else ""
    wrong = f" {rec.wrong}/{len(rec.judgements)}" if len(rec.judgements) > 1 else ""
    return f"✗ {observed}{suffix}≠{expected}{disagrees}{wrong}{gap}", False


class ScenarioGroup:
    """One scenario's results in a run (every step and mode that ran), as the compact tables show them."""

    def __init__(self, name: str, version: str, results: list[StepResult]):
        self.name, self.version, self.results = name, version, results
        self.passed = all(r.passed for r in results)
        self.modes = list(dict.fromkeys(r.table.mode for r in results))
        self.steps = list(dict.fromkeys(r.table.step.name for r in results))
        self.by_key = {(r.table.step.name, r.table.mode): r for r in results}

    def rows(self) -> Iterable[tuple[str, int, Row, list[tuple[str, bool] | None]]]:
        """(step, row index, row, per mode its cell text and whether it passed, or None where it did not run)."""
        for step in self.steps:
            first = next(self.by_key[(step, m)] for m in self.modes if (step, m) in self.by_key)
            for i, row in enumerate(first.table.rows):
                cells: list[tuple[str, bool] | None] = []
                for m in self.modes:
                    ran = self.by_key.get((step, m))
                    cells.append(None if ran is None else
                                 _cell(ran.table, ran.table.rows[i], ran.convergence.records[i]))
                yield step, i, row, cells

    def failing(self) -> int:
        return sum(len(r.failing()) for r in self.results)

    def contradictions(self) -> list[str]:
        return [f"{r.table.step.name} expect[{row.expectation.index}] [{r.table.mode}]: scenario ≠ engine: "
                f"{r.table.disagreement(row)}" for r in self.results for row in r.table.contradictions()]


def scenario_groups(results: Sequence[StepResult]) -> list[ScenarioGroup]:
    by_scenario: dict[tuple[str, str, str], list[StepResult]] = defaultdict(list)
    for r in results:
        by_scenario[(r.table.scenario.path, r.table.scenario.name, str(r.table.version))].append(r)
    return [ScenarioGroup(name, version, group) for (_path, name, version), group in by_scenario.items()]


def summary_tables(results: Sequence[StepResult], width: int = 120, color: bool = False,
                   only_failed: bool = False) -> str:
    """One compact truth table per scenario: a row per step and probe, a column per mode that ran."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None,
                      highlight=False, emoji=False)
    shown = 0
    for g in scenario_groups(results):
        name, version, passed, modes = g.name, g.version, g.passed, g.modes
        if only_failed and passed:
            continue
        shown += 1
        status = Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")
        title = Text.assemble(status, f" {name} · Istio {version}")
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=(0, 1))
        t.add_column("step", no_wrap=True)
        t.add_column("#", justify="right")
        t.add_column("probe", overflow="fold")
        for m in modes:
            t.add_column(m, no_wrap=True)
        for step, i, row, cells in g.rows():
            shown_cells = ["·" if c is None else Text(c[0], style="green" if c[1] else "bold red") for c in cells]
            # Text, not str: a probe's headers print as `[k:v]`, which rich would take for markup
            t.add_row(Text(step if i == 0 else ""), str(row.expectation.index), Text(probe_label(row)), *shown_cells)
        console.print(t)
        for line in g.contradictions():
            console.print(f"! {line}", soft_wrap=True, markup=False)
        console.print(_group_footer(g), soft_wrap=True, markup=False)
    if shown:
        for line in COMPACT_LEGEND:
            console.print(line, soft_wrap=True, markup=False)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def _group_footer(g: ScenarioGroup) -> str:
    gaps = sum(rec.stale_allowed for r in g.results for rec in r.convergence.records)
    gaps += sum(int(getattr(getattr(r, "gap", None), "stale_allowed", 0) or 0) for r in g.results)
    barrier = max((r.applied.seconds for r in g.results), default=0.0)
    return (f"{len(g.steps)} step(s) × {len(g.modes)} mode(s), {g.failing()} failing cell(s), "
            f"max barrier {barrier * 1000:.0f} ms"
            + (f", ENFORCEMENT GAP: {gaps} stale allowed observation(s)" if gaps else ""))


def _md(text: str) -> str:
    """A table cell's text for GitHub Markdown: pipes escaped, HTML and inline markup kept literal."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("`", "\\`").replace("*", "\\*") \
        .replace("_", "\\_").replace("[", "\\[")


def summary_markdown(results: Sequence[StepResult], skipped: Mapping[str, int] | None = None,
                     unconfirmed: Sequence[str] = ()) -> str:
    """The compact truth tables as GitHub Markdown, for a CI job summary ($GITHUB_STEP_SUMMARY, `--summary-markdown`):
    a verdict line, then per scenario (failing ones first, open) a table with a row per step and probe and a column
    per mode, the same cells as the terminal's, the scenario ≠ engine lines, and what did not run and why."""
    groups = scenario_groups(results)
    failing = [g for g in groups if not g.passed]
    cells = sum(len(r.table.rows) for r in results)
    lines = [f"## authz-conformance: {'FAIL' if failing or not results else 'PASS'}", "",
             f"{len(groups)} scenario(s), {len(results)} step run(s), {cells} probe cell(s); "
             f"{len(failing)} scenario(s) failing, {sum(g.failing() for g in groups)} failing cell(s)."]
    if not results:
        lines.append("\n**Nothing ran: no conformance result was produced.**")
    for g in sorted(groups, key=lambda g: g.passed):
        mark = "✅" if g.passed else "❌"
        lines += ["", f"<details{'' if g.passed else ' open'}><summary>{mark} {html.escape(g.name)} · Istio "
                  f"{html.escape(g.version)}: {html.escape(_group_footer(g))}</summary>", "",
                  "| step | # | probe | " + " | ".join(g.modes) + " |",
                  "|---|--:|---|" + "---|" * len(g.modes)]
        for step, i, row, row_cells in g.rows():
            shown = ["·" if c is None else (_md(c[0]) if c[1] else f"**{_md(c[0])}**") for c in row_cells]
            lines.append(f"| {_md(step) if i == 0 else ''} | {row.expectation.index} | {_md(probe_label(row))} | "
                         + " | ".join(shown) + " |")
        for line in g.contradictions():
            lines += ["", f"! {_md(line)}"]
        lines += ["", "</details>"]
    if unconfirmed:
        lines += ["", f"### {len(unconfirmed)} denial(s) passed WITHOUT the enforcing proxy's record", ""]
        lines += [f"- ~ {_md(u)}" for u in unconfirmed]
    if skipped:
        lines += ["", "### Not run on this target", ""]
        lines += [f"- {count} step(s) skipped: {_md(reason)}" for reason, count in skipped.items()]
    if groups:
        lines += ["", "<sub>" + " ".join(html.escape(line.strip()) for line in COMPACT_LEGEND) + "</sub>"]
    return "\n".join(lines) + "\n"


def render_summary(results: list[StepResult], tw: Any, only_failed: bool = False) -> None:
    """The compact truth table per scenario after the run, on pytest's terminal writer."""
    # A terminal gets its own width; a CI log (not a terminal) gets wide lines rather than folded probes.
    isatty = getattr(getattr(tw, "_file", None), "isatty", lambda: False)()
    width = getattr(tw, "fullwidth", 120) if isatty else 200
    text = summary_tables(results, width=width, color=bool(getattr(tw, "hasmarkup", False)), only_failed=only_failed)
    for line in text.rstrip("\n").split("\n"):
        tw.line(line)


def unconfirmed_denials(results: Sequence[StepResult]) -> list[str]:
    """One line per probe that passed without the enforcing proxy's record, because the run opted in to
    unconfirmed denials (clusters' --accept-unconfirmed-denials): the summary lists every one."""
    return [
        f"{r.table.scenario.name} [{r.table.mode}] step {r.table.step.name} expect[{row.expectation.index}] "
        f"{probe_label(row)}: " + next(j.message for j in rec.judgements if j.unconfirmed)
        for r in results for row, rec in zip(r.table.rows, r.convergence.records, strict=True)
        if any(j.unconfirmed for j in rec.judgements)
    ]
