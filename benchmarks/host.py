"""What every benchmark prints beside its figures: the machine and its load (figures are only comparable on the same
machine under similar load; this one is shared, so the load says how much of it a run had)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def machine() -> str:
    """CPU model, the cores this process may use (of all), Linux and Python."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_model()}, nproc {usable} (of {os.cpu_count()}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())
