"""`lint`'s output formats: the console, GitHub workflow annotations and SARIF 2.1.0.

Every finding is printed at the file:line:column of the field it concerns (conformance/positions.py), so an editor
jumps to it, GitHub shows it on the pull request's diff (`::warning file=...,line=...,col=...,title=...::...`,
the workflow-command syntax), and code scanning files it under its rule (SARIF: tool.driver.rules from the catalog,
results with ruleId, level, message and physicalLocation.region).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.lint import Finding
from conformance.lint_rules import RULES, rule
from conformance.positions import Position, locate

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "notice": "note"}


def position(f: Finding) -> Position | None:
    return locate(f.problem.location)


def context(f: Finding) -> str:
    """The words that say where, after the position: the step or document (which names the policy), the field, and
    the mode when the finding depends on it."""
    loc = f.problem.location
    parts = [p for p in (loc.where, f"field {loc.field}" if loc.field else "") if p]
    text = ": ".join(parts)
    if f.mode and f"in {f.mode} mode" not in f.problem.message:
        text += f" [{f.mode} mode]"
    return text


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def text_line(f: Finding) -> str:
    """`file:line:col: CODE severity: where: field F: message` (the file alone when it cannot be read as YAML)."""
    pos = position(f)
    head = str(pos) if pos else f.problem.location.file
    where = context(f)
    return _one_line(f"{head}: {f.code} {f.severity}: {where + ': ' if where else ''}{f.problem.message}")


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_line(f: Finding) -> str:
    """A workflow command (GitHub Actions "Setting a warning message"): level, file, line, col and title in the
    properties (`:` and `,` escaped there), the message as data; explanation lines folded into it."""
    pos = position(f)
    level = {"error": "error", "warning": "warning"}.get(f.severity, "notice")
    file, line, col = (pos.file, pos.line, pos.column) if pos else (f.problem.location.file, 1, 1)
    where = context(f)
    message = f"{where + ': ' if where else ''}{f.problem.message}"
    if f.explanation:
        message += "\n" + "\n".join(f.explanation)
    title = _escape_property(f"{f.code} {rule(f.code).name}")
    props = f"file={_escape_property(file)},line={line},col={col},title={title}"
    return f"::{level} {props}::{_escape_data(message)}"


def _uri(file: str) -> str:
    p = Path(file)
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd().resolve())
        except ValueError:
            return p.as_uri()
    return p.as_posix()


def sarif(findings: Sequence[Finding], version: str = "") -> dict[str, Any]:
    """One SARIF 2.1.0 log: one run, the whole catalog as the driver's rules (so code scanning can show each
    rule's help), one result per finding."""
    from conformance import __version__

    index = {r.code: i for i, r in enumerate(RULES)}
    rules = [{
        "id": r.code, "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.meaning},
        "help": {"text": f"{r.meaning}\nSource: {r.source}.\nFix: {r.fix}",
                 "markdown": f"{r.meaning}\n\nSource: {r.source}.\n\n**Fix:** {r.fix}"},
        "defaultConfiguration": {"level": _LEVEL.get(r.severity, "note")},
        "properties": {"mode": r.mode or "any", "tags": ["istio", "authorization"]},
    } for r in RULES]
    results = []
    for f in findings:
        pos = position(f)
        region = {"startLine": pos.line, "startColumn": pos.column} if pos else {"startLine": 1}
        where = context(f)
        message = f"{where + ': ' if where else ''}{f.problem.message}"
        if f.explanation:
            message += "\n" + "\n".join(f.explanation)
        result: dict[str, Any] = {
            "ruleId": f.code, "ruleIndex": index[f.code], "level": _LEVEL.get(f.severity, "note"),
            "message": {"text": message},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": _uri(pos.file if pos else f.problem.location.file)},
                "region": region}}],
        }
        props = {k: v for k, v in (("policy", f.policy), ("mode", f.mode)) if v}
        if props:
            result["properties"] = props
        results.append(result)
    driver: dict[str, Any] = {"name": "authz-conformance", "version": __version__,
                              "informationUri": "https://istio.io/latest/docs/reference/config/security/"
                                                "authorization-policy/",
                              "rules": rules}
    run: dict[str, Any] = {"tool": {"driver": driver}, "results": results}
    if version:
        run["properties"] = {"istioVersion": version}
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def sarif_text(findings: Sequence[Finding], version: str = "") -> str:
    return json.dumps(sarif(findings, version), indent=2) + "\n"
