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
    # tests/test_differential.py: examples per world (4 worlds: 220 in all, ~2 min on 2 cores). Each
    # example starts nothing (meshes are reused per world and mode) but applies policies to real Envoys
    # and runs a probe batch per mode, so no deadline; AUTHZ_DIFFERENTIAL_EXAMPLES=N runs more (or fewer).
    settings.register_profile(
        "differential", parent=settings.get_profile("ci" if os.environ.get("CI") else "dev"), deadline=None,
        max_examples=int(os.environ.get("AUTHZ_DIFFERENTIAL_EXAMPLES", "55")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )
    # ... and its JWT/CUSTOM world (one world, three modes; tokens minted per probe): ~1 min on 2 cores
    settings.register_profile(
        "differential-jwt", parent=settings.get_profile("differential"),
        max_examples=int(os.environ.get("AUTHZ_DIFFERENTIAL_JWT_EXAMPLES", "120")),
    )
