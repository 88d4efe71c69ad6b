"""The kind target (`--mesh kind`): a kind cluster per mode with Istio installed, made by the suite.

Built on `pytest_kind.KindCluster` (the library the project was specified with; GPL-3.0-or-later, an
optional dependency), reusing the options its plugin registers (`--cluster-name`, `--keep-cluster`,
`--kubeconfig`, `--kind-image`, `--kind-bin`), with three rules its own fixture does not follow
(research/kind-istio-practicals.md §1):

- it is always handed an existing kind binary (`--kind-bin`, else `kind` on PATH), so it never
  downloads its bundled kind v0.17.0; without one the target is unavailable, with that reason;
- the node image is pinned by digest (`--kind-image`, else clusters/versions.yaml) and the kind config
  comes from clusters/ (`--kind-config` to override);
- each cluster has its own kubeconfig file (`--kubeconfig`, else pytest-kind's
  `.pytest-kind/<name>/kubeconfig`): the user's ~/.kube/config is never touched.

One cluster per mode, named `<--cluster-name or authz>-<mode>-<istio version>` (so a kept cluster is
only reused for the same mode and release), created on first use and deleted when the session ends,
also after failures and Ctrl-C (the plugin closes the target in pytest_unconfigure; atexit and SIGTERM
too), unless `--keep-cluster`. Istio is installed with istioctl at `--istio-version` with the mode's
profile (`default` for sidecar, `ambient` for ambient and waypoint) and the overlay from clusters/istio;
the waypoint mode also gets the Gateway API CRDs of the release Istio was built with, from the copy
vendored in clusters/gateway-api/ (sha256 checked against clusters/versions.yaml; `--gateway-api-crds`
to override; nothing is downloaded). Readiness is waited on real conditions: the rollouts
of CoreDNS, istiod, ztunnel and istio-cni-node.

Time budget of one CI job (one mode x one Istio release x one shard, 4-vCPU runner; estimates to be
replaced by the figures the workflow prints in its step timings). The same figures, as numbers, are
the cost model of the run plan (plan.py `Costs`), which sizes the e2e shards and their timeouts:

    runner setup + pip install + tool download      ~1.5 min
    kind create (node image pull included)          ~1-1.5 min
    istioctl install + rollouts (image pulls)       ~1.5-2 min
    per scenario: namespaces, pods, canary          ~20-40 s (image pulls only the first time)
    per step: apply + barrier (1-3 s) + analyze (~2 s) + probes (>= 3 rounds x ~1 s)   ~8-15 s
    teardown (kind delete)                          ~10 s
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conformance import pilotenv
from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.cluster import availability, istioctl
from conformance.mesh.cluster.istioctl import ISTIO_NAMESPACE, Kubeconfig
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.matrix import Matrix, load
from conformance.mesh.cluster.meshconfig import MeshConfigAccess, istiod_selector, mesh_configmap_name
from conformance.mesh.cluster.naming import SessionPrefixes, mesh_wide_policies, not_built_for_clusters
from conformance.mesh.cluster.options import ClusterSettings
from conformance.mesh.cluster.session import ClusterContext, ClusterSession, Timeouts
from conformance.model import Mode, Scenario, Step
from conformance.versions import IstioVersion

DEFAULT_BASE_NAME = "authz"
PilotEnv = tuple[tuple[str, str], ...]  # pilotenv.normalized: the flags not at Istio's default


def cluster_name(base: str | None, mode: Mode, version: str, pilot_env: Sequence[tuple[str, str]] = ()) -> str:
    """`authz-ambient-1-30-3`: kind names must be DNS-like (`^[a-z0-9.-]+$`), one per mode and release, and one
    per istiod feature-flag setting (`pilotenv.normalized`: a short hash suffix when any flag is not Istio's
    default), since the flags are istiod's environment, set at install."""
    suffix = ""
    if pilot_env:
        digest = hashlib.sha256(";".join(f"{k}={v}" for k, v in pilot_env).encode()).hexdigest()[:6]
        suffix = f"-env{digest}"
    name = f"{base or DEFAULT_BASE_NAME}-{mode}-{version.replace('.', '-')}{suffix}".lower()
    if len(name) > 50:  # leaves room for kind's `-control-plane` container suffix within 63
        raise TargetUnavailable(f"kind cluster name {name!r} is too long; give a shorter --cluster-name")
    return name


def istiod_env(deployment: Mapping[str, Any] | None) -> dict[str, str]:
    """The environment of an istiod Deployment's discovery container (literal `value`s only), where the install
    put `values.pilot.env` (pilotenv.py reads the feature flags from it)."""
    containers = ((((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
    for c in containers or []:
        if c.get("name") == "discovery" or "/pilot:" in str(c.get("image", "")):
            return {str(e.get("name")): str(e.get("value")) for e in c.get("env") or []
                    if isinstance(e, Mapping) and "value" in e}
    return {}


def pilot_env_mismatch(scenario: Scenario, installed: Mapping[str, str], where: str) -> str | None:
    """Why `scenario` cannot run on an istiod whose environment is `installed`, or None: every modelled flag must
    have the value the scenario needs (its `mesh.pilotEnv`, else Istio's default), each mismatch named."""
    wanted = dict(pilotenv.normalized(scenario.mesh.pilot_env))
    have = dict(pilotenv.normalized(installed))
    wrong = [f"{f.name} is {have.get(f.name, str(f.default).lower())} there, the scenario needs "
             f"{wanted.get(f.name, str(f.default).lower())}" for f in pilotenv.FLAGS
             if wanted.get(f.name) != have.get(f.name)]
    if not wrong:
        return None
    return (f"{scenario.name} needs istiod feature flags {pilotenv.describe(scenario.mesh.pilot_env)}, but {where}: "
            + "; ".join(wrong) + " (istiod reads them from its environment at start; verdicts would be for other "
            "settings)")


def istiod_version(deployment: Mapping[str, Any] | None) -> str | None:
    """The Istio release an istiod Deployment runs, from its image tag (`pilot:1.30.3[-distroless]`)."""
    if not deployment:
        return None
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for c in containers:
        image = str(c.get("image", "")).split("@", 1)[0]
        if "/pilot:" in image or image.startswith("pilot:"):
            tag = image.rsplit(":", 1)[1]
            return tag.split("-", 1)[0]
    return None


@dataclass
class KindCluster:
    """A cluster this target made (or reuses), and what is installed in it."""

    name: str
    kubeconfig: Path
    handle: Any  # pytest_kind.KindCluster
    kube: Kube
    istio_ready: bool = False
    gateway_api: bool = False
    # What sessions read: a private copy of `kubeconfig`, made once the cluster is up. kind rewrites the
    # kubeconfig file in place (truncate, then write) whenever it creates or deletes a cluster, and one
    # `--kubeconfig` serves every mode, so a session reading the shared file while another mode's cluster
    # is made could read it half-written (review finding; kind v0.32.0 pkg/cluster/internal/kubeconfig).
    session_kubeconfig: Path | None = None

    @property
    def sessions_read(self) -> Path:
        return self.session_kubeconfig or self.kubeconfig

    @property
    def context(self) -> str:
        return f"kind-{self.name}"


class KindTarget:
    """`--mesh kind`: see the module docstring."""

    name = "kind"

    def __init__(self, settings: ClusterSettings, matrix: Matrix | None = None,
                 env: Mapping[str, str] | None = None, run: availability.Runner | None = None):
        self.settings = settings
        self._prefixes = SessionPrefixes(settings.namespace_prefix)
        self._matrix = matrix
        self._env = env
        self._run = run
        self._reasons: dict[Mode, str | None] = {}
        self._kind: str | None = None
        self._istioctl: str | None = None
        # one cluster per mode and istiod feature-flag setting (pilotenv.normalized): flags are set at install
        self._clusters: dict[tuple[Mode, PilotEnv], KindCluster] = {}
        self._creating = threading.Lock()
        self._private_dir: Path | None = None  # the sessions' kubeconfig copies, removed at close
        self._failed: dict[tuple[Mode, PilotEnv], TargetError] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._hooks_installed = False
        self._tools_missing: list[availability.Missing] | None = None

    @property
    def matrix(self) -> Matrix:
        if self._matrix is None:
            self._matrix = load()
        return self._matrix

    @property
    def version(self) -> str:
        return str(IstioVersion.parse(self.settings.istio_version))

    # -- Target ---------------------------------------------------------------------------------
    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    def runs_alone(self, scenario: Scenario, step: Step) -> bool:
        return bool(mesh_wide_policies(scenario, step))

    def unavailable(self, mode: Mode) -> str | None:
        if mode not in self._reasons:
            self._reasons[mode] = self._check(mode)
            if self._reasons[mode] is None:
                # Asked on the main thread before any scenario starts (items.py): the SIGTERM handler can only
                # be installed there, and clusters are created from the scheduler's worker threads.
                self._install_hooks()
        return self._reasons[mode]

    def _tools(self) -> list[availability.Missing]:
        """Docker, kind, istioctl, pytest-kind, kubernetes: checked once per session."""
        if self._tools_missing is None:
            kwargs: dict[str, Any] = {"env": self._env}
            if self._run is not None:
                kwargs["run"] = self._run
            missing, self._kind, self._istioctl = availability.kind_requirements(
                self.settings.kind_bin, self.settings.istioctl, self.version, **kwargs)
            if not self.settings.pytest_kind_options and availability.module_missing("pytest_kind", "") is None:
                missing.append(availability.Missing("pytest-kind's options",
                                                    "its plugin is disabled (-p no:pytest-kind)"))
            self._tools_missing = missing
        return list(self._tools_missing)

    def _check(self, mode: Mode) -> str | None:
        missing = self._tools()
        try:
            matrix = self.matrix
            matrix.release(self.version)
            if mode not in matrix.modes:
                missing.append(availability.Missing(f"install settings for the {mode} mode",
                                                    "clusters/versions.yaml, modes"))
        except TargetUnavailable as exc:
            missing.append(availability.Missing("a pinned Istio release", str(exc)))
        return availability.reason("kind", missing)

    def start(self, scenario: Scenario, mode: Mode) -> ClusterSession:
        reason = self.unavailable(mode)
        if reason:
            raise TargetError(reason)
        missing = not_built_for_clusters(scenario)
        if missing:
            raise TargetUnavailable(missing)
        cluster = self._cluster(mode, pilotenv.normalized(scenario.mesh.pilot_env))
        ctx = ClusterContext(
            kube=Kube(str(cluster.sessions_read), cluster.context), owns_kube=True,
            kubeconfig=Kubeconfig(str(cluster.sessions_read), cluster.context),
            istioctl=self._istioctl, version=IstioVersion.parse(self.version),
            curl_image=self.matrix.images["curl"], app_image=self.matrix.images["app"],
            prefix=self._prefixes.next(),
            enrollment=_enrollment(mode), allow_mesh_wide=True, keep_namespaces=self.settings.keep_namespaces,
            timeouts=Timeouts(barrier=self.settings.barrier_timeout, probe=self.settings.probe_timeout),
            observations_out=self.settings.observations_out,
            accept_unconfirmed=self.settings.accept_unconfirmed_denials, target_name="kind",
            # a cluster this run made has no root-namespace policy of its own (a kept one with leftovers is
            # reported by the barrier, which is right: they are in force)
            root_baseline=frozenset() if self.concurrency > 1 else None,
            # the cluster is the run's own: a scenario's CUSTOM providers go into its (revisionless) istiod's
            # mesh config for the scenario's run (meshconfig.py says why not at install)
            mesh_config=MeshConfigAccess(ISTIO_NAMESPACE, (mesh_configmap_name(None),), istiod_selector(None)),
        )
        return ClusterSession(scenario, mode, ctx).start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clusters = list(self._clusters.values())
        for cluster in clusters:  # the API clients first (their connection pools), kept cluster or not
            with contextlib.suppress(Exception):
                cluster.kube.close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        if self.settings.keep_cluster:
            return
        for cluster in clusters:
            with contextlib.suppress(Exception):
                cluster.handle.delete()

    # -- clusters -------------------------------------------------------------------------------
    def kind_cluster_args(self, mode: Mode, pilot_env: PilotEnv = ()) -> dict[str, Any]:
        """What `pytest_kind.KindCluster` is given for `mode` and istiod's flags (a pure function of the options)."""
        name = cluster_name(self.settings.cluster_name, mode, self.version, pilot_env)
        kubeconfig = Path(self.settings.kubeconfig) if self.settings.kubeconfig else \
            Path(".pytest-kind") / name / "kubeconfig"
        return {
            "name": name,
            "kubeconfig": kubeconfig,
            "image": self.settings.kind_image or self.matrix.node_image,
            "kind_path": Path(self._kind) if self._kind else None,
            "config_file": self.settings.kind_config or self.matrix.kind_config,
        }

    def _cluster(self, mode: Mode, pilot_env: PilotEnv = ()) -> KindCluster:
        """The mode's cluster with Istio installed, created on first use. Scenarios start side by side
        (schedule.py): one creation per mode at a time, and a failed creation is not retried by every
        scenario after it (each would spend minutes failing the same way)."""
        # One cluster made at a time, whatever its mode: kind writes the shared kubeconfig while it creates, and
        # the private copy sessions read is taken under this lock (KindCluster.session_kubeconfig).
        with self._creating:
            key = (mode, pilot_env)
            with self._lock:
                if key in self._failed:
                    raise TargetError(f"{self._failed[key]} (the {mode} cluster failed to come up earlier in "
                                      "this run)")
            try:
                return self._create(mode, pilot_env)
            except TargetError as exc:
                with self._lock:
                    self._failed[key] = exc
                raise

    def _create(self, mode: Mode, pilot_env: PilotEnv = ()) -> KindCluster:
        key = (mode, pilot_env)
        with self._lock:
            if key in self._clusters and self._clusters[key].istio_ready:
                return self._clusters[key]
        if self._kind is None:
            raise TargetError("kind binary not found")  # unavailable() said so already
        from pytest_kind import KindCluster as PytestKindCluster

        args = self.kind_cluster_args(mode, pilot_env)
        handle = PytestKindCluster(args["name"], kubeconfig=args["kubeconfig"], image=args["image"],
                                   kind_path=args["kind_path"])
        cluster = KindCluster(args["name"], args["kubeconfig"], handle,
                              Kube(str(args["kubeconfig"]), f"kind-{args['name']}"))
        with self._lock:
            self._clusters[key] = cluster  # registered first: Ctrl-C during create still deletes it
        self._install_hooks()
        try:
            handle.create(config_file=args["config_file"])
        except subprocess.CalledProcessError as exc:
            raise TargetError(f"kind create cluster {args['name']} failed (exit {exc.returncode})") from exc
        # A kept cluster from another working directory: make sure our kubeconfig file has its context.
        istioctl.run([str(self._kind), "export", "kubeconfig", "--name", args["name"],
                      "--kubeconfig", str(args["kubeconfig"])], timeout=60)
        cluster.session_kubeconfig = self._private_copy(cluster)
        self._install_istio(cluster, mode, pilot_env)
        return cluster

    def _private_copy(self, cluster: KindCluster) -> Path:
        """The kubeconfig as it is now, in a file of this run's own that nothing rewrites (sessions read it)."""
        with self._lock:
            if self._private_dir is None:
                self._private_dir = Path(tempfile.mkdtemp(prefix="authz-kubeconfig-"))
            path = self._private_dir / f"{cluster.name}.kubeconfig"
        try:
            shutil.copyfile(cluster.kubeconfig, path)
        except OSError as exc:
            raise TargetError(f"cannot read the kubeconfig of kind cluster {cluster.name} ({cluster.kubeconfig}): "
                              f"{exc}") from exc
        path.chmod(0o600)
        return path

    def _install_istio(self, cluster: KindCluster, mode: Mode, pilot_env: PilotEnv = ()) -> None:
        kube = cluster.kube
        install = self.matrix.modes[mode]
        kube.wait_rollout("Deployment", "coredns", "kube-system", timeout=180)
        deployment = kube.get("apps/v1", "Deployment", "istiod", ISTIO_NAMESPACE)
        present = istiod_version(deployment)
        if present == self.version and pilotenv.normalized(istiod_env(deployment)) != pilot_env:
            # a kept cluster installed with other flags: never run on them (its name carries the flags' hash, so
            # only a hand-made cluster of that name gets here)
            raise TargetError(f"kind cluster {cluster.name} runs istiod with "
                              f"{pilotenv.describe(istiod_env(deployment))}, not {pilotenv.describe(pilot_env)}; "
                              "delete it (kind delete cluster --name ...) or use another --cluster-name")
        if present != self.version:
            if present is not None:
                raise TargetError(f"kind cluster {cluster.name} already runs Istio {present}, not {self.version}; "
                                  "delete it (kind delete cluster --name ...) or use another --cluster-name")
            if not self._istioctl:
                raise TargetError("istioctl not found")
            argv = istioctl.install_argv(self._istioctl, Kubeconfig(str(cluster.kubeconfig), cluster.context),
                                         install.profile, install.overlay, pilot_env=pilot_env)
            istioctl.run(argv, timeout=600)
        kube.wait_rollout("Deployment", "istiod", ISTIO_NAMESPACE, timeout=300)
        if install.profile == "ambient":
            kube.wait_rollout("DaemonSet", "istio-cni-node", ISTIO_NAMESPACE, timeout=300)
            kube.wait_rollout("DaemonSet", "ztunnel", ISTIO_NAMESPACE, timeout=300)
        if install.gateway_api and not cluster.gateway_api:
            self._install_gateway_api(cluster)
            cluster.gateway_api = True
        cluster.istio_ready = True

    def gateway_api_crds(self) -> str:
        """The Gateway API CRDs to install: `--gateway-api-crds`, else the vendored copy pinned for this Istio
        release (its go.mod's sigs.k8s.io/gateway-api), refused unless its sha256 is the pinned one."""
        path = self.settings.gateway_api_crds
        if path is not None:
            return path.read_text()
        return self.matrix.gateway_api_for(self.version).read()

    def _install_gateway_api(self, cluster: KindCluster) -> None:
        names = apply_crds(cluster.kube, self.gateway_api_crds())
        cluster.kube.wait_crds_established(names, timeout=120)

    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        atexit.register(self.close)
        sigterm_interrupts()


def sigterm_interrupts() -> None:
    """SIGTERM (CI cancelling a step, `kill`) becomes a KeyboardInterrupt, so pytest's teardown and the targets'
    cleanup run as on Ctrl-C. Only from the main thread (signal.signal refuses others), and only where nobody
    installed a handler of their own."""
    with contextlib.suppress(ValueError):  # not the main thread
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _enrollment(mode: Mode) -> dict[str, str]:
    from conformance.mesh.cluster.manifests.render import enrollment_labels

    return enrollment_labels(mode)


def apply_crds(kube: Kube, text: str) -> list[str]:
    """Server-side apply every CRD of a multi-document YAML (server-side: Gateway API >= 1.4 needs it)."""
    names = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or not doc.get("kind"):
            continue
        kube.apply(doc)
        if doc["kind"] == "CustomResourceDefinition":
            names.append(doc["metadata"]["name"])
    kube.invalidate()
    time.sleep(0)  # discovery is refreshed lazily on the next resource lookup
    return names
