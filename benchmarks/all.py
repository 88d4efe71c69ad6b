"""Every figure of issue 14 in one command: the engine, the local mesh and the suite, each with goal and result.

    python benchmarks/all.py [--quick]

Runs benchmarks/engine.py, benchmarks/mesh.py and benchmarks/suite.py one after another (never side by side: each
measures wall or CPU time on a shared machine) and prints their tables under one header saying the machine and
the load average before and after. `--quick` passes the scripts' own quick settings (fewer repetitions, the
engine's matrix extrapolated from 200 rows); the figures are then rougher, and say so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import host  # benchmarks/host.py: a script's own directory is on sys.path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (rougher figures)")
    args = parser.parse_args()
    scripts = [
        ("engine", [str(HERE / "engine.py"), *(["--repeats", "2", "--rows", "200"] if args.quick else [])]),
        ("local mesh", [str(HERE / "mesh.py"), *(["--quick"] if args.quick else [])]),
        ("suite", [str(HERE / "suite.py")]),
    ]
    print(f"benchmarks/all.py{' --quick' if args.quick else ''}: {host.machine()}; load average "
          f"{host.load()} (1 / 5 / 15 min) before")
    status = 0
    for name, argv in scripts:
        print(f"\n=== {name}: python {' '.join(Path(a).name if a.endswith('.py') else a for a in argv)}", flush=True)
        done = subprocess.run([sys.executable, *argv], cwd=HERE.parent, check=False)
        status = status or done.returncode
    print(f"\nload average {host.load()} after")
    sys.exit(status)


if __name__ == "__main__":
    main()
