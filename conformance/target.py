"""The one narrow interface every target implements: the local Envoy mesh, kind, an existing cluster.

Like httpx's transports, a target knows how to do four things and nothing else: bring up a scenario's
workloads in one mode, put a complete set of policies in force, run probes, tear down. Everything above
it (predictions, convergence, assertions, reports) is written once, against this interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from conformance.model import Manifest, Mode, Probe, Scenario
from conformance.probe import Observation


@dataclass(frozen=True)
class Applied:
    """What a target reports after putting a set of policies in force.

    `seconds` runs from the request to the moment the target has a real signal that the enforcing
    proxies hold the new configuration (Envoy's acknowledgement counters locally, the policy names in
    the proxies' config on clusters): the propagation barrier.
    """

    seconds: float
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    # time.monotonic() when the barrier passed, if the target knows it more precisely than "when apply()
    # returned": the enforcement-gap loop (gap.py) counts observations after this instant as stale.
    acknowledged_at: float | None = None


class MeshSession(Protocol):
    """A running mesh for one scenario in one mode; a context manager that tears everything down.

    Optional: a class attribute `probes_during_apply = True` says probe() may be called from another
    thread while apply() runs; the runner then measures the enforcement gap (conformance/gap.py).
    """

    mode: Mode
    addresses: Mapping[str, str]  # "ns/name" of every workload and waypoint -> its address

    def apply(self, policies: Sequence[Manifest]) -> Applied:
        """Make exactly `policies` be in force (create, update, delete), then wait for the barrier."""
        ...

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Run the probes (in parallel where the target can) and return one observation each, in order."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> MeshSession: ...

    def __exit__(self, *exc: object) -> None: ...


class Target(Protocol):
    """A place where scenarios run.

    Optional: `concurrency: int` (how many scenarios may run side by side, default 1) and
    `runs_alone(scenario, step) -> bool` (from this step through its close, a scenario must not overlap any other's
    step): the scheduler (schedule.py) runs scenarios ahead in worker threads where `concurrency` > 1.
    """

    name: str

    def unavailable(self, mode: Mode) -> str | None:
        """Why this target cannot run `mode` here (missing tool, mode not built yet), or None."""
        ...

    def start(self, scenario: Scenario, mode: Mode) -> MeshSession:
        """Bring up the scenario's workloads in `mode`, with no policies in force."""
        ...
