"""Command-line options of the cluster targets (kind and existing clusters), added by the plugin.

pytest-kind, when installed, already registers `--cluster-name`, `--keep-cluster`, `--kubeconfig`,
`--kind-image`, `--kind-bin` and `--kind-kubectl-bin`; registering them again crashes pytest, so they are
never added here: `ClusterSettings.from_config` reads them with `config.getoption(..., default=None)`,
which also works when pytest-kind is absent (the kind target then says that it is missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.argtypes import positive_int

PYTEST_KIND_DEFAULT_NAME = "pytest-kind"  # pytest-kind's --cluster-name default: means "not given"
# Scenarios side by side on one cluster (schedule.py). Four on a 4-vCPU runner: a scenario's time is
# mostly waiting (pushes, acknowledgements, execs, log flushes), and plan.py's estimate assumes this many.
DEFAULT_CONCURRENCY = 4


_concurrency = positive_int("scenarios")


def add_cluster_options(group: Any, parser: Any) -> None:
    """Options for `--mesh kind` and `--mesh cluster` (issue 6)."""
    group.addoption("--istioctl", default=None, metavar="PATH",
                    help="istioctl binary for the cluster targets (default: istioctl-<version>, then istioctl, "
                         "on PATH); kind installs Istio with it, both targets run analyze and ztunnel-config")
    group.addoption("--kind-config", default=None, metavar="FILE",
                    help="kind cluster config for --mesh kind (default clusters/kind/cluster.yaml); the node "
                         "image is pytest-kind's --kind-image, or the digest pinned in clusters/versions.yaml")
    group.addoption("--allow-mesh-wide", action="store_true",
                    help="--mesh cluster: allow policies in the mesh root namespace and mesh-wide "
                         "PeerAuthentication, which affect every workload of a shared cluster (refused by default)")
    group.addoption("--allow-mesh-config-update", action="store_true",
                    help="--mesh cluster: let a scenario's CUSTOM extension providers be added to istiod's mesh "
                         "config ConfigMap for the scenario's run, and taken out after it (refused by default; "
                         "--mesh kind always may)")
    group.addoption("--namespace-prefix", default=None, metavar="PREFIX",
                    help="cluster targets: prefix of the namespaces a run creates (default: az + 6 random "
                         "characters + '-', fresh per scenario and mode); they are deleted afterwards")
    group.addoption("--keep-namespaces", action="store_true",
                    help="cluster targets: do not delete the namespaces a run created (for debugging)")
    group.addoption("--barrier-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="cluster targets: how long to wait for a step's policies to reach the enforcing "
                         "proxies before probing anyway (default 30; the wait is recorded either way)")
    group.addoption("--probe-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="cluster targets: curl --max-time per probe (connect timeout: 2 s; default 5)")
    group.addoption("--gateway-api-crds", default=None, metavar="FILE",
                    help="--mesh kind, waypoint mode: Gateway API CRDs to install (default: the release "
                         "clusters/versions.yaml pins for the Istio version, vendored in clusters/gateway-api/ and "
                         "sha256-checked)")
    group.addoption("--accept-unconfirmed-denials", action="store_true",
                    help="cluster targets: WEAKENS THE SUITE. When a denial's enforcing proxy log cannot be read "
                         "(after retries), pass the denial as 'unconfirmed' instead of failing the probe as an "
                         "infrastructure failure. Such a pass proves only that curl saw a reset/403/503, not that a "
                         "policy decided it (a dead proxy or a broken certificate look the same); every accepted "
                         "case is listed in the run's summary. Off by default")
    group.addoption("--cluster-concurrency", type=_concurrency, default=DEFAULT_CONCURRENCY, metavar="N",
                    help=f"cluster targets: scenarios run side by side on one cluster, each in its own prefixed "
                         f"namespaces (default {DEFAULT_CONCURRENCY}; 1 runs them one after another). A scenario "
                         "with a policy in the mesh root namespace always runs alone")
    group.addoption("--observations-out", default=None, metavar="FILE",
                    help="cluster targets: append every observation as a JSON line (the upgrade job diffs "
                         "two such files)")


@dataclass(frozen=True)
class ClusterSettings:
    """Everything the cluster targets read from the command line, in one place."""

    istio_version: str
    istioctl: str | None = None
    kind_config: Path | None = None
    allow_mesh_wide: bool = False
    allow_mesh_config_update: bool = False
    namespace_prefix: str | None = None
    keep_namespaces: bool = False
    barrier_timeout: float = 30.0
    probe_timeout: float = 5.0
    gateway_api_crds: Path | None = None
    observations_out: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    # The user's explicit opt-in to passing denials whose proof cannot be read (see the option's help).
    accept_unconfirmed_denials: bool = False
    kube_context: str | None = None
    # pytest-kind's own options (None when pytest-kind is not installed or the option was not given)
    cluster_name: str | None = None
    keep_cluster: bool = False
    kubeconfig: str | None = None
    kind_image: str | None = None
    kind_bin: str | None = None
    pytest_kind_options: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ClusterSettings:
        def opt(name: str, default: Any = None) -> Any:
            try:
                value = config.getoption(name, default=default)
            except (ValueError, AttributeError):
                return default
            return default if value is None else value

        def path(name: str) -> Path | None:
            value = opt(name)
            return Path(value) if value else None

        sentinel = object()
        try:
            has_kind_options = config.getoption("kind_bin", default=sentinel) is not sentinel
        except (ValueError, AttributeError):
            has_kind_options = False
        name = opt("cluster_name")
        return cls(
            istio_version=str(opt("istio_version", "1.30")),
            istioctl=opt("istioctl"),
            kind_config=path("kind_config"),
            allow_mesh_wide=bool(opt("allow_mesh_wide", False)),
            allow_mesh_config_update=bool(opt("allow_mesh_config_update", False)),
            namespace_prefix=opt("namespace_prefix"),
            keep_namespaces=bool(opt("keep_namespaces", False)),
            barrier_timeout=float(opt("barrier_timeout", 30.0)),
            probe_timeout=float(opt("probe_timeout", 5.0)),
            gateway_api_crds=path("gateway_api_crds"),
            observations_out=path("observations_out"),
            concurrency=int(opt("cluster_concurrency", DEFAULT_CONCURRENCY)),
            accept_unconfirmed_denials=bool(opt("accept_unconfirmed_denials", False)),
            kube_context=opt("kube_context"),
            cluster_name=None if name in (None, PYTEST_KIND_DEFAULT_NAME) else str(name),
            keep_cluster=bool(opt("keep_cluster", False)),
            kubeconfig=opt("kubeconfig"),
            kind_image=opt("kind_image"),
            kind_bin=opt("kind_bin"),
            pytest_kind_options=has_kind_options,
        )
