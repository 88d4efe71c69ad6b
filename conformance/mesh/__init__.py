"""Targets: where scenarios run. `local` is built in; `kind` and `cluster` live in `mesh/cluster`.

Everything above a target (runner, plugin, reports) sees only the interface in conformance/target.py.
"""

from __future__ import annotations

from typing import Any

from conformance.model import Mode
from conformance.target import Target
from conformance.versions import IstioVersion


class NotBuiltTarget:
    """A target this version of the suite cannot run yet: every mode is a skip with the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def unavailable(self, mode: Mode) -> str | None:
        return self.reason

    def start(self, scenario: Any, mode: Mode) -> Any:
        raise NotImplementedError(self.reason)


def make_target(name: str, config: Any = None, *, version: IstioVersion | str | None = None) -> Target:
    """The target named on the command line (`--mesh`), configured from pytest's options.

    `local` emulates the Istio release `version` names, or else the plugin's `--istio-version` (from
    `config`), or else the default release: the local mesh must compile what that release's istiod
    generated, never the newest semantics under an older version's name (release.py).

    `kind` and `cluster` are built from conformance/mesh/cluster; their settings come from the plugin's
    options, the cluster options (mesh/cluster/options.py) and pytest-kind's own options when it is
    installed. Whatever they lack here (Docker, kind, istioctl, pytest-kind, the kubernetes client, a
    context) they report through `unavailable()`, one reason naming all of it.
    """
    if name == "local":
        from conformance.mesh.local.mesh import LocalTarget

        if version is None and config is not None:
            version = config.getoption("istio_version", None)
        concurrency = config.getoption("local_concurrency", None) if config is not None else None
        return LocalTarget(version=version, concurrency=concurrency)
    if name in ("kind", "cluster"):
        from conformance.mesh.cluster.options import ClusterSettings

        # Without pytest's options (`repro --mesh kind`), the release asked for, not a fixed default.
        settings = (ClusterSettings.from_config(config) if config is not None
                    else ClusterSettings(str(version) if version is not None else "1.30"))
        if name == "kind":
            from conformance.mesh.cluster.kind import KindTarget

            return KindTarget(settings)
        from conformance.mesh.cluster.existing import ExistingClusterTarget

        return ExistingClusterTarget(settings)
    return NotBuiltTarget(name, f"unknown target {name!r}")
