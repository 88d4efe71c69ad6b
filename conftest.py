"""Repository-local pytest settings only; the plugin itself loads through its pytest11 entry point."""

from __future__ import annotations

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the suite (`pytest policies`) runs without the test extras
    settings = None

if settings is not None:
    # CI prints what generated examples covered and never applies a per-example deadline on 2 cores.
    settings.register_profile("ci", deadline=None, print_blob=True)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
    # tests/test_differential.py: each example starts nothing (meshes are reused) but applies policies
    # to real Envoys and runs a probe batch, ~0.5 s; the example count is set per world in the test.
    settings.register_profile(
        "differential", parent=settings.get_profile("ci" if os.environ.get("CI") else "dev"), deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )
