"""Targets: where scenarios run. `local` is built in; `kind` and `cluster` live in `mesh/cluster`.

Everything above a target (runner, plugin, reports) sees only the interface in conformance/target.py.
"""

from __future__ import annotations

from typing import Any

from conformance.model import Mode
from conformance.target import Target


class NotBuiltTarget:
    """A target this version of the suite cannot run yet: every mode is a skip with the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def unavailable(self, mode: Mode) -> str | None:
        return self.reason

    def start(self, scenario: Any, mode: Mode) -> Any:
        raise NotImplementedError(self.reason)


def make_target(name: str, config: Any = None) -> Target:
    """The target named on the command line (`--mesh`), configured from pytest's options."""
    if name == "local":
        from conformance.mesh.local.mesh import LocalTarget

        return LocalTarget()
    return NotBuiltTarget(name, f"the {name} target is not built yet (issue 6: cluster targets)")
