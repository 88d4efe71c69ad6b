"""The suite's wall time against its own floor: `pytest policies` on the local mesh, timed (run on demand).

    python benchmarks/suite.py [PATH ...] [--local-concurrency N] [--repeats R]

Issue 14's goal: `pytest policies` (and a held-out suite of about 220 items) in ≤ 25 s on this 2-core machine, with
every check intact. The floor is computed from the run's own steps: each step must at least put its policies in
force and be probed once after the acknowledgement, so the floor is the sum over steps of the propagation barrier
(`Applied.seconds`) and the probe rounds after it (`Convergence.seconds`), as the run itself measured them. That is
the work that cannot be skipped when steps run one after another; running scenarios side by side can go below it,
so the ratio wall / floor says how much of the wall time is anything else (mesh start-up, the enforcement-gap
loop, collection, reporting) or, below 1, how much the concurrency overlapped.

The run is pytest itself (in a subprocess, exactly as a user runs it) with a tiny plugin that writes each step's
figures to a JSON file; nothing of the suite is bypassed. Machine, core count and load average (before and after)
are printed with the figures: they are only comparable on the same machine under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host  # benchmarks/host.py: a script's own directory is on sys.path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 25.0

# The plugin the measured run loads (`-p`): each step's barrier and probing time, from the results the suite keeps.
_PLUGIN = '''
import json, os
from conformance.items import results_key

def pytest_sessionfinish(session, exitstatus):
    out = []
    for item, result in session.config.stash.get(results_key, []):
        out.append({"id": item.nodeid, "barrier": result.applied.seconds, "probing": result.convergence.seconds,
                    "rounds": result.convergence.rounds, "passed": result.passed})
    with open(os.environ["AUTHZ_SUITE_FIGURES"], "w") as fh:
        json.dump({"steps": out, "exitstatus": int(exitstatus)}, fh)
'''


def run_once(paths: list[str], concurrency: int | None) -> tuple[float, dict[str, object]]:
    """One `pytest PATHS` run: its wall time and the figures the plugin wrote."""
    with tempfile.TemporaryDirectory(prefix="authz-suite-bench-") as tmp:
        plugin_dir = Path(tmp)
        (plugin_dir / "suite_figures.py").write_text(_PLUGIN)
        figures = plugin_dir / "figures.json"
        env = {**os.environ, "AUTHZ_SUITE_FIGURES": str(figures),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", "-p", "suite_figures",
                "--truth-tables", "none"]
        if concurrency is not None:
            argv += ["--local-concurrency", str(concurrency)]
        start = time.monotonic()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        if not figures.exists():
            sys.exit(f"pytest wrote no figures (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        data = json.loads(figures.read_text())
        data["summary"] = (done.stdout.strip().splitlines() or ["?"])[-1]
        return wall, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["policies"], help="what pytest runs (default: policies)")
    parser.add_argument("--local-concurrency", type=int, default=None, metavar="N",
                        help="scenario runs side by side (default: the plugin's own default)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R", help="runs; the median wall time is shown")
    parser.add_argument("--slowest", type=int, default=5, metavar="K", help="list the K steps with the most "
                        "barrier + probing time (default 5)")
    args = parser.parse_args()
    load_before = host.load()
    walls, floors, last, unclean = [], [], {}, 0
    for _ in range(args.repeats):
        wall, data = run_once(args.paths, args.local_concurrency)
        steps = data["steps"]
        assert isinstance(steps, list)
        walls.append(wall)
        floors.append(sum(s["barrier"] + s["probing"] for s in steps))
        # a step that never ran (its scenario's start failed: a setup error) has no figures: the exit status says it
        unclean += any(not s["passed"] for s in steps) or data["exitstatus"] != 0
        last = data
    load_after = host.load()
    steps = last["steps"]
    assert isinstance(steps, list)
    wall, floor = statistics.median(walls), statistics.median(floors)
    runs = len({s["id"].rsplit("::", 1)[0] for s in steps})
    failed = sum(1 for s in steps if not s["passed"])
    clean = not unclean  # every run, not only the last one shown
    print(f"command: python benchmarks/suite.py {' '.join(args.paths)}"
          + (f" --local-concurrency {args.local_concurrency}" if args.local_concurrency else "")
          + (f" --repeats {args.repeats}" if args.repeats > 1 else ""))
    print(f"machine: {host.machine()}; load average {load_before} before, {load_after} after")
    print(f"pytest: {last['summary']}")
    rows = [
        (f"wall time, pytest {' '.join(args.paths)} ({len(steps)} steps in {runs} scenario runs"
         + (f", median of {len(walls)}" if len(walls) > 1 else "") + ")",
         f"{wall:.1f} s", f"≤ {GOAL_SECONDS:.0f} s", "met" if wall <= GOAL_SECONDS and clean else "NOT MET"),
        ("floor: Σ over steps of the barrier and the probe rounds after it (the run's own figures)",
         f"{floor:.1f} s", "-", "-"),
        ("wall time / floor", f"{wall / floor:.2f}×" if floor else "-", "-", "-"),
        ("median barrier per step", f"{statistics.median(s['barrier'] for s in steps) * 1000:.0f} ms", "-", "-"),
        ("median probing per step (rounds after the barrier)",
         f"{statistics.median(s['probing'] for s in steps) * 1000:.0f} ms", "-", "-"),
        ("failed steps (and pytest's exit status)", f"{failed} (exit {last['exitstatus']})", "0",
         "met" if clean else "NOT MET"),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>{vwidth}}  {'goal':<7}  result")
    for name, value, goal, result in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {goal:<7}  {result}")
    if args.slowest:
        print(f"slowest {args.slowest} steps (barrier + probing, rounds):")
        for s in sorted(steps, key=lambda s: -(s["barrier"] + s["probing"]))[: args.slowest]:
            print(f"  {(s['barrier'] + s['probing']) * 1000:7.0f} ms  {s['rounds']} round(s)  {s['id']}")


if __name__ == "__main__":
    main()
