"""Repository-local pytest settings only; the plugin itself loads through its pytest11 entry point."""

from __future__ import annotations

import os

try:
    from hypothesis import settings
except ImportError:  # the suite (`pytest policies`) runs without the test extras
    settings = None

if settings is not None:
    # CI prints what generated examples covered and never applies a per-example deadline on 2 cores.
    settings.register_profile("ci", deadline=None, print_blob=True)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
