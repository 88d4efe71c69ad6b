"""The upgrade job's verdict: the truth-table diff between a run at the older and at the newer Istio.

Input: the observation files both runs wrote (`pytest ... --observations-out FILE`, one JSON line per
probe observation, conformance/mesh/cluster/session.py) and the watcher's report written during the
upgrade (conformance/mesh/cluster/upgrade.py). Output (stdout, and Markdown for $GITHUB_STEP_SUMMARY):

- every probe whose final outcome differs between the two runs, each classified as
  * predicted: the verdict engine predicts that very change between the two releases (for example a
    dry-run policy in ambient before and after 1.25.2), so the upgrade does what Istio says it does;
  * regression: the engine predicts the same outcome at both releases, yet the cluster changed;
- every fail-open window seen during the upgrade (a probe that must be denied observed allowed);
- the upgrade procedure by its name (sidecar: istioctl revision canary; ambient: Istio's Helm procedure,
  revisioned istiod then istio-cni and ztunnel in place), and its availability: probes that must be
  allowed and were not, and the rounds that could not run while pods were deliberately replaced
  (disruptions: measured, never a failure).

Exit 1 on any regression or fail-open window. It lives outside the `conformance.mesh` package on
purpose: it needs the verdict engine, and the targets must never import it (the import contract).

    python clusters/tools/upgrade_report.py --before before.jsonl --after after.jsonl \\
        --from 1.29.6 --to 1.30.3 [--upgrade upgrade.json] [--markdown summary.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Key = tuple[str, str, int, str]  # scenario path, mode, step index, probe key (JSON)


@dataclass(frozen=True)
class Change:
    path: str
    scenario: str
    mode: str
    step: int
    probe: list[Any]
    before: str
    after: str
    predicted_before: str | None
    predicted_after: str | None

    @property
    def predicted(self) -> bool:
        """The engine predicts a change between the releases, and the cluster ended where it predicts."""
        return (self.predicted_before is not None and self.predicted_before != self.predicted_after
                and self.after == self.predicted_after)

    def describe(self) -> str:
        src, dst, port, method, path, headers = self.probe
        hdrs = "".join(f" -H '{k}: {v}'" for k, v in headers)
        return (f"{self.scenario} step {self.step} [{self.mode}] {src} → {dst}:{port} {method} {path}{hdrs}: "
                f"{self.before} → {self.after}")


def final_outcomes(lines: Iterable[str]) -> dict[Key, dict[str, Any]]:
    """The last observation of each probe (the one convergence ended on), per scenario/mode/step."""
    out: dict[Key, dict[str, Any]] = {}
    for line in lines:
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        key = (rec["path"], rec["mode"], int(rec["step"]), json.dumps(rec["probe"]))
        out[key] = rec
    return out


def predicted_outcome(path: str, mode: str, step: int, probe: list[Any], version: str) -> str | None:
    """The engine's predicted outcome form for this probe at `version` (None when it cannot tell)."""
    from conformance.errors import ConformanceError
    from conformance.scenario import load
    from conformance.truthtable import predict
    from conformance.versions import IstioVersion

    try:
        v = IstioVersion.parse(version)
        scenario = load(path, v)
        table = predict(scenario, scenario.steps[step], mode, v)  # type: ignore[arg-type]
    except (ConformanceError, IndexError, OSError):
        return None
    for row in table.rows:
        if json.loads(json.dumps(list(_jsonable(row.probe.key)))) == probe:
            return row.predicted.outcome
    return None


def _jsonable(key: tuple[Any, ...]) -> list[Any]:
    return [list(map(list, k)) if isinstance(k, tuple) else k for k in key]


def diff(before: dict[Key, dict[str, Any]], after: dict[Key, dict[str, Any]], old: str, new: str,
         predictor: Any = predicted_outcome) -> tuple[list[Change], list[Key], list[Key]]:
    """(changes, probes only before, probes only after)."""
    changes = []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        if a["outcome"] == b["outcome"]:
            continue
        path, mode, step, _ = key
        changes.append(Change(path, a["scenario"], mode, step, a["probe"], a["outcome"], b["outcome"],
                              predictor(path, mode, step, a["probe"], old),
                              predictor(path, mode, step, a["probe"], new)))
    return changes, sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())


def render(changes: Sequence[Change], only_before: Sequence[Key], only_after: Sequence[Key], old: str, new: str,
           upgrade: dict[str, Any] | None) -> tuple[str, bool]:
    predicted = [c for c in changes if c.predicted]
    regressions = [c for c in changes if not c.predicted]
    lines = [f"## Istio upgrade {old} → {new}", ""]
    lines.append(f"{len(changes)} probe(s) changed outcome: {len(predicted)} predicted by the engine, "
                 f"{len(regressions)} regression(s).")
    if regressions:
        lines += ["", "### Regressions (the engine predicts no such change)", ""]
        lines += [f"- {c.describe()} (engine: {c.predicted_before} at {old}, {c.predicted_after} at {new})"
                  for c in regressions]
    if predicted:
        lines += ["", "### Predicted changes", ""]
        lines += [f"- {c.describe()}" for c in predicted]
    if only_before or only_after:
        lines += ["", f"{len(only_before)} probe(s) ran only at {old}, {len(only_after)} only at {new} "
                      "(a skipped or failed step: see the runs' reports)."]
    fail_open = []
    if upgrade is not None:
        fail_open = list(upgrade.get("fail_open") or [])
        lines += ["", "### During the upgrade", ""]
        if upgrade.get("procedure"):
            lines += [f"Procedure ({upgrade.get('mode', '?')} mode): {upgrade['procedure']}.", ""]
        lines += [f"{upgrade.get('samples', 0)} observations in {upgrade.get('rounds', 0)} rounds; "
                  f"{len(fail_open)} fail-open window(s); {len(upgrade.get('unavailable') or [])} availability "
                  f"gap(s); {len(upgrade.get('errors') or [])} infrastructure error(s)."]
        lines += [f"- FAIL-OPEN {w['probe']}: allowed {w['count']}x between {w['first']}s and {w['last']}s"
                  for w in fail_open]
        lines += [f"- unavailable {w['probe']}: {', '.join(w['outcomes'])} {w['count']}x between {w['first']}s "
                  f"and {w['last']}s" for w in upgrade.get("unavailable") or []]
        lines += [f"- availability: no probe round ran during {d['phase']}: {d['rounds']} round(s) between "
                  f"{d['first']}s and {d['last']}s" for d in upgrade.get("disruptions") or []]
        lines += [f"- infrastructure: {e}" for e in upgrade.get("errors") or []]
    failed = bool(regressions or fail_open or (upgrade or {}).get("errors"))
    return "\n".join(lines) + "\n", failed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="truth-table diff of an Istio upgrade")
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--from", dest="old", required=True)
    p.add_argument("--to", dest="new", required=True)
    p.add_argument("--upgrade", type=Path, default=None, help="the watcher's report (upgrade.py --out)")
    p.add_argument("--markdown", type=Path, default=None, help="also append the report here")
    args = p.parse_args(argv)
    before = final_outcomes(args.before.read_text().splitlines())
    after = final_outcomes(args.after.read_text().splitlines())
    upgrade = json.loads(args.upgrade.read_text()) if args.upgrade and args.upgrade.exists() else None
    changes, only_before, only_after = diff(before, after, args.old, args.new)
    text, failed = render(changes, only_before, only_after, args.old, args.new, upgrade)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
