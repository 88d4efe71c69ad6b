"""The existing-cluster target (`--mesh cluster --kube-context C`): Istio that is already there.

What it may and may not do on someone's cluster (DESIGN.md §7, issue 6):

- it detects what is installed: the istiod the default revision tag points to (its image tag is the
  Istio release), whether ambient is there (a ztunnel DaemonSet), whether waypoints can be made
  (ambient plus the Gateway API CRDs and the `istio-waypoint` GatewayClass), the mesh's trust domain
  and root namespace (the `istio` ConfigMap), and how namespaces join the mesh (`istio-injection` with
  a default revision, else `istio.io/rev`). No Istio: the target is unavailable and says so; a mode
  the cluster cannot run, or an Istio release other than `--istio-version`, is a skip with the reason
  (predictions for the wrong release would prove nothing);
- everything it creates lives in namespaces with a run-unique prefix (naming.py), mapped consistently
  inside policies, shown in reports, deleted afterwards;
- it refuses policies in the root namespace and mesh-wide PeerAuthentication unless `--allow-mesh-wide`,
  and a scenario's CUSTOM extension providers (which go into istiod's mesh config ConfigMap for the
  scenario's run, meshconfig.py) unless `--allow-mesh-config-update`;
  with it, a session deletes them at its close (session.py), and this target's `close` (the plugin calls
  it at the end of the run, `atexit` after a Ctrl-C that skipped the teardown) closes any session still
  open, so nothing the run applied outlives it on someone's cluster.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from conformance import pilotenv
from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.cluster import availability
from conformance.mesh.cluster.istioctl import ISTIO_NAMESPACE, Kubeconfig
from conformance.mesh.cluster.kind import istiod_env, istiod_version, pilot_env_mismatch, sigterm_interrupts
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import deployed_waypoints, enrollment_labels
from conformance.mesh.cluster.matrix import Matrix, load
from conformance.mesh.cluster.meshconfig import MeshConfigAccess, istiod_selector, mesh_configmap_name
from conformance.mesh.cluster.naming import SessionPrefixes, mesh_wide_policies, not_built_for_clusters
from conformance.mesh.cluster.options import ClusterSettings
from conformance.mesh.cluster.session import ClusterContext, ClusterSession, Timeouts
from conformance.model import Mode, Scenario, Step
from conformance.versions import IstioVersion

DEFAULT_TAG_WEBHOOK = "istio-revision-tag-default"
GATEWAY_CRD = "gateways.gateway.networking.k8s.io"


@dataclass(frozen=True)
class InstalledIstio:
    version: str
    revision: str  # "default" for a revisionless install
    default_injection: bool  # istio-injection=enabled works (a default revision or tag exists)
    ambient: bool
    waypoints: bool
    trust_domain: str
    root_namespace: str
    # the discovery container's environment of the istiod in use: the feature flags it runs with (pilotenv.py)
    pilot_env: Mapping[str, str] = field(default_factory=dict)

    def modes(self) -> tuple[Mode, ...]:
        out: list[Mode] = ["sidecar"]
        if self.ambient:
            out.append("ambient")
        if self.waypoints:
            out.append("waypoint")
        if self.ambient:
            # mixed: sidecar and ambient namespaces on one install; one with a waypoint needs `waypoint` too
            # (ClusterSession refuses such a scenario on a cluster without waypoints)
            out.append("mixed")
        return tuple(out)


def _rev(obj: Mapping[str, Any]) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get("istio.io/rev", "default")


def detect(kube: Kube) -> InstalledIstio:
    """What Istio the cluster runs; TargetUnavailable when there is none."""
    istiods = kube.list("apps/v1", "Deployment", ISTIO_NAMESPACE, "app=istiod")
    if not istiods:
        raise TargetUnavailable(f"no Istio control plane in this cluster (no istiod Deployment in {ISTIO_NAMESPACE}); "
                                "install Istio first, or use --mesh kind")
    tag = kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", DEFAULT_TAG_WEBHOOK)
    revisions = {_rev(d): d for d in istiods}
    if tag is not None:
        revision = _rev(tag)
    elif "default" in revisions:
        revision = "default"
    else:
        revision = sorted(revisions)[0]
    active = revisions.get(revision) or istiods[0]
    version = istiod_version(active)
    if version is None:
        raise TargetUnavailable("cannot tell the Istio release from the istiod image (not a pilot:<version> image)")
    # The DaemonSet's own labels: `app.kubernetes.io/name: ztunnel` plus the chart's istio.labels; `app: ztunnel`
    # is only on its pods (istio/istio@1.29.6 and @1.30.3 manifests/charts/ztunnel/templates/daemonset.yaml).
    ztunnels = kube.list("apps/v1", "DaemonSet", None, "app.kubernetes.io/name=ztunnel")
    gateway_crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", GATEWAY_CRD)
    waypoint_class = (kube.get("gateway.networking.k8s.io/v1", "GatewayClass", "istio-waypoint")
                      if gateway_crd is not None else None)
    mesh_cm = kube.get("v1", "ConfigMap", "istio" if revision == "default" else f"istio-{revision}", ISTIO_NAMESPACE)
    mesh = yaml.safe_load(((mesh_cm or {}).get("data") or {}).get("mesh") or "") or {}
    return InstalledIstio(
        version=version, revision=revision, default_injection=tag is not None or revision == "default",
        ambient=bool(ztunnels), waypoints=bool(ztunnels) and waypoint_class is not None,
        trust_domain=str(mesh.get("trustDomain") or "cluster.local"),
        root_namespace=str(mesh.get("rootNamespace") or ISTIO_NAMESPACE),
        pilot_env=istiod_env(active),
    )


class ExistingClusterTarget:
    """`--mesh cluster`: see the module docstring."""

    name = "cluster"

    def __init__(self, settings: ClusterSettings, matrix: Matrix | None = None,
                 env: Mapping[str, str] | None = None, kube: Kube | None = None):
        self.settings = settings
        self._prefixes = SessionPrefixes(settings.namespace_prefix)
        self._matrix = matrix
        self._env = env
        self._kube = kube
        self._istioctl: str | None = None
        self._installed: InstalledIstio | None = None
        self._problem: str | None = None
        self._checked = False
        self._root_baseline: frozenset[str] = frozenset()
        self._given_kube = kube is not None  # a client handed in (tests): every session uses it
        self._sessions: list[ClusterSession] = []  # started, maybe not closed yet: close() closes them
        self._hooked = False
        self._lock = threading.Lock()

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(self.settings.kubeconfig, self.settings.kube_context)
        return self._kube

    def _session_kube(self) -> Kube:
        """A client of the session's own: sessions run side by side (schedule.py) and a Kube is not
        thread-safe (kube.py); the session closes it."""
        if self._given_kube:
            return self.kube
        return Kube(self.settings.kubeconfig, self.settings.kube_context)

    def _check_once(self) -> None:
        if self._checked:
            return
        self._checked = True
        missing, self._istioctl = availability.existing_requirements(
            self.settings.istioctl, str(IstioVersion.parse(self.settings.istio_version)), self._env)
        if not self.settings.kube_context:
            missing.append(availability.Missing("--kube-context", "name the kubeconfig context of the cluster"))
        self._problem = availability.reason("cluster", missing)
        if self._problem:
            return
        try:
            self._installed = detect(self.kube)
            root = self._installed.root_namespace
            # the cluster's own mesh-wide policies, before this run applies any (ClusterContext.root_baseline)
            self._root_baseline = frozenset(
                f"{root}/{p['metadata']['name']}"
                for p in self.kube.list("security.istio.io/v1", "AuthorizationPolicy", root))
        except (TargetUnavailable, TargetError) as exc:
            self._problem = f"cluster target, context {self.settings.kube_context}: {exc}"

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    def runs_alone(self, scenario: Scenario, step: Step) -> bool:
        return bool(mesh_wide_policies(scenario, step))

    def unavailable(self, mode: Mode) -> str | None:
        self._check_once()
        if self._problem:
            return self._problem
        # asked on the main thread before anything starts (items.py): a `kill` must clean up like Ctrl-C, or a
        # mesh-wide policy could outlive the run on someone's cluster (review finding)
        sigterm_interrupts()
        installed = self._installed
        assert installed is not None
        wanted = str(IstioVersion.parse(self.settings.istio_version))
        if installed.version != wanted:
            return (f"the cluster runs Istio {installed.version} but --istio-version is {wanted}: predictions "
                    f"would be for another release (pass --istio-version {installed.version})")
        if mode not in installed.modes():
            why = {"ambient": "no ztunnel DaemonSet: Istio is not installed with the ambient profile",
                   "waypoint": "waypoints need ambient, the Gateway API CRDs and the istio-waypoint GatewayClass",
                   "mixed": "mode mixed needs ambient (ztunnel) beside sidecar injection"}
            return f"the cluster cannot run the {mode} mode: {why.get(mode, 'not installed')}"
        return None

    @property
    def matrix(self) -> Matrix:
        if self._matrix is None:
            self._matrix = load()
        return self._matrix

    def start(self, scenario: Scenario, mode: Mode) -> ClusterSession:
        reason = self.unavailable(mode)
        if reason:
            raise TargetError(reason)
        missing = not_built_for_clusters(scenario)
        if missing:
            raise TargetUnavailable(missing)
        installed = self._installed
        assert installed is not None
        # istiod's feature flags are its environment: the suite never restarts someone's istiod, so a scenario
        # written for other values is a skip naming each flag that differs (a run on them would judge other settings)
        mismatch = pilot_env_mismatch(scenario, installed.pilot_env,
                                      f"istiod ({ISTIO_NAMESPACE}, revision {installed.revision}) runs with "
                                      f"{pilotenv.describe(installed.pilot_env)}")
        if mismatch:
            raise TargetUnavailable(mismatch)
        if scenario.mesh.extension_providers and not self.settings.allow_mesh_config_update:
            names = ", ".join(p.name for p in scenario.mesh.extension_providers)
            raise TargetUnavailable(
                f"{scenario.name} defines meshConfig.extensionProviders ({names}) for its CUSTOM policies: on an "
                f"existing cluster the suite adds them to istiod's mesh config (ConfigMap {ISTIO_NAMESPACE}"
                f"/{mesh_configmap_name(installed.revision)}) for the scenario's run only with "
                "--allow-mesh-config-update")
        if mode == "mixed" and deployed_waypoints(scenario, mode) and not installed.waypoints:
            raise TargetUnavailable(f"{scenario.name} has `waypoint` namespaces in mode mixed, and this cluster "
                                    "cannot make waypoints (the Gateway API CRDs and the istio-waypoint GatewayClass)")
        revision = None if installed.default_injection else installed.revision
        ctx = ClusterContext(
            kube=self._session_kube(), owns_kube=not self._given_kube,
            kubeconfig=Kubeconfig(self.settings.kubeconfig, self.settings.kube_context),
            istioctl=self._istioctl, version=IstioVersion.parse(installed.version),
            curl_image=self.matrix.images["curl"], app_image=self.matrix.images["app"],
            prefix=self._prefixes.next(), enrollment=enrollment_labels(mode, revision), revision=revision,
            root_namespace=installed.root_namespace, trust_domain=installed.trust_domain,
            allow_mesh_wide=self.settings.allow_mesh_wide, keep_namespaces=self.settings.keep_namespaces,
            timeouts=Timeouts(barrier=self.settings.barrier_timeout, probe=self.settings.probe_timeout),
            observations_out=self.settings.observations_out,
            accept_unconfirmed=self.settings.accept_unconfirmed_denials, target_name="cluster",
            root_baseline=self._root_baseline if self.concurrency > 1 else None,
            mesh_config=MeshConfigAccess(ISTIO_NAMESPACE, (mesh_configmap_name(installed.revision),),
                                         istiod_selector(installed.revision))
            if self.settings.allow_mesh_config_update else None,
            # read only, always: a gateway's default gatewayTopology is this cluster's, not the suite's
            mesh_config_source=MeshConfigAccess(ISTIO_NAMESPACE, (mesh_configmap_name(installed.revision),),
                                                istiod_selector(installed.revision)),
        )
        session = ClusterSession(scenario, mode, ctx)
        with self._lock:  # sessions start side by side (schedule.py)
            self._sessions = [s for s in self._sessions if not s.closed] + [session]
            if not self._hooked:
                self._hooked = True
                atexit.register(self.close)
        return session.start()

    def close(self) -> None:
        """Close every session still open (each close is idempotent; one failing does not stop the others),
        then the API clients' connection pools."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        interrupted: KeyboardInterrupt | None = None
        for session in sessions:
            try:
                session.close()
            except KeyboardInterrupt as exc:  # held: every other session is still closed (review finding)
                interrupted = interrupted or exc
            except Exception:  # reported by the session's own warning; the others go on
                pass
        if self._kube is not None:
            self._kube.close()
        if interrupted is not None:
            raise interrupted
