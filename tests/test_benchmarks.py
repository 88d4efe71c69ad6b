"""The benchmark scripts run and print what they promise (issue 14): a smoke test on a small input, never a timing.

Speed is measured by running the benchmarks on demand (README "Figures"); here only their shape is checked, so a
refactoring that breaks a benchmark fails the tests instead of the next person who wants a figure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.mesh.local.mesh import LocalTarget

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_benchmark_prints_wall_time_floor_and_its_steps() -> None:
    reason = LocalTarget().unavailable("sidecar")
    if reason:
        pytest.skip(reason)
    done = subprocess.run([sys.executable, "benchmarks/suite.py", "policies/hosts.yaml", "--slowest", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "machine: " in out and "load average" in out
    assert "pytest: 6 passed" in out  # hosts.yaml: 3 steps × 2 modes, as the suite runs them
    assert "wall time, pytest policies/hosts.yaml (6 steps in 2 scenario runs)" in out
    assert "floor: Σ over steps" in out and "wall time / floor" in out
    failed = next(line for line in out.splitlines() if line.startswith("failed steps"))
    assert "  0 (exit 0)  " in failed and failed.endswith("met")
    assert out.count("policies/hosts.yaml::") == 2  # --slowest 2


def test_every_benchmark_script_has_its_usage() -> None:
    for script in ("engine.py", "mesh.py", "suite.py", "all.py", "proofs.py"):
        done = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr)
