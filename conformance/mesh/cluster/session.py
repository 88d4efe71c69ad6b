"""One scenario in one mode on a cluster: deploy, apply, probe, prove, tear down (a `MeshSession`).

Shared by the kind target and the existing-cluster target: both hand it a `ClusterContext` (a kube
client for one context, istioctl, the run's namespace prefix, the mode's enrollment labels). What it
does, in order:

1. `start`: map the scenario's namespaces (naming.py), refuse what a shared cluster must not get
   (root-namespace policies, mesh-wide PeerAuthentication) unless allowed, render the workloads
   (manifests/render.py), server-side apply them, wait for rollouts, ambient enrollment and waypoints,
   the scenario's CUSTOM providers added to the mesh config and waited for in istiod (meshconfig.py),
   then a canary probe to every destination port, so a broken mesh fails here, plainly, and never
   later as a "denial". With ingress gateways, two more pre-start refusals (skips): a gateway that would run with
   another `gatewayTopology.numTrustedProxies` than the scenario's (the cluster's mesh default against the pod's
   annotation, `_check_gateway_topology`, before anything is applied), and a path to the gateway's Service that
   translates the client's address when the scenario's verdicts use it (the gateway's record of the canary,
   `_check_client_address`);
2. `apply`: the step's policies, with `${ip:...}` and `${jwks:...}` filled (the run's own issuer keys,
   conformance/tokens.py) and namespaces mapped, validated as Istio would, server-side applied;
   removed ones deleted; then the propagation barrier (barrier.py) and
   `istioctl analyze` of the scenario's namespaces (warnings are raised as `IstioAnalyzeWarning`,
   attached to Allure when it is installed, and kept in `analysis`);
3. `probe`: one exec per source pod (execprobe.py), in parallel, each with its own API client, every
   curl carrying the suite's own probe header (probe.PROBE_HEADER) and reporting its local address, and
   a probe's JWT, minted for it, where its `request.jwt` says (tokens.carry);
   outcomes by the shared classifier; then, for each denial, first whether its enforcing proxy is alive
   and the same one as when the step started (else the observation's `problem`: infrastructure, never
   a verdict), then exactly one record of it in that proxy's log, written after its exec started, found
   by one `RecordMatcher` for the whole session (logs.py). An unreadable log (after bounded retries) is
   a `problem` too, unless the user passed --accept-unconfirmed-denials: then the denial is
   `unconfirmed` and the reason is kept in `ClusterSession.unconfirmed` for the summary.
   A probe to an ingress gateway (issue 12) goes to the gateway's Service with the probe's Host and
   X-Forwarded-For headers; it is allowed when the app of the route's destination answered, and its
   denial is proved where it was made, as engine/path.py `ingress_route` lays the path out: by the
   gateway's own access-log record of the probe, by the record of the route's sidecar or of the service's
   waypoint (istio.io/ingress-use-waypoint) when the gateway only passed their answer on, or by the
   destination ztunnel's rejection of the gateway's (or the waypoint's) HBONE connection (logs.py);
4. `close`: first every object it applied outside its own namespaces (root-namespace policies, which
   are never renamed: a mesh-wide STRICT PeerAuthentication left behind would make the next scenario on
   the same cluster deny its plaintext clients), then the propagation barrier until the proxies no
   longer hold them, then its providers out of the mesh config, then the namespaces it created. It
   runs after a failure too (start() calls it, the
   plugin's teardown and the existing-cluster target's close call it; pytest runs teardowns after a
   KeyboardInterrupt as well: _pytest/main.py `wrap_session` -> `pytest_sessionfinish` ->
   `SetupState.teardown_exact`), and a Ctrl-C during cleanup still deletes everything before the
   interrupt goes on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from conformance import notices, pilotenv
from conformance.errors import TargetError, TargetUnavailable
from conformance.exclusion import quiet_mesh
from conformance.mesh.cluster import barrier, istioctl, meshconfig
from conformance.mesh.cluster.execprobe import CurlCall, build_script, exec_timeout, new_nonce, parse_output
from conformance.mesh.cluster.istioctl import AnalyzeMessage, Kubeconfig
from conformance.mesh.cluster.kube import Kube, PodInfo
from conformance.mesh.cluster.logs import (
    LogLine,
    Match,
    Onward,
    RecordMatcher,
    Wanted,
    host_of,
    join_addr,
    parse_envoy_line,
    split_log,
)
from conformance.mesh.cluster.manifests.render import (
    CURL_CONTAINER,
    PROXY_CONFIG_ANNOTATION,
    WORKLOAD_LABEL,
    RenderSettings,
    data_plane,
    deployed_waypoints,
    render_workloads,
)
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import (
    ADDRESS_PLACEHOLDER,
    ALLOWED,
    DENIAL_FORMS,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L7,
    DENIED_UPSTREAM,
    INGRESS_USE_WAYPOINT,
    Manifest,
    Mode,
    Probe,
    Request,
    Scenario,
    Workload,
)
from conformance.names import GATEWAY_NAME_LABEL
from conformance.probe import Observation, SourcePorts, classify
from conformance.target import Applied
from conformance.tokens import IssuerKeys, carry
from conformance.validation import has_errors, validate_manifest
from conformance.versions import IstioVersion

PROXY_CONTAINER = "istio-proxy"
# The ztunnel DaemonSet's container (istio/istio manifests/charts/ztunnel/templates/daemonset.yaml).
ZTUNNEL_CONTAINER = "istio-proxy"
LOG_ATTEMPTS = 3  # reads of one proxy log before it counts as unreadable (tenacity, exponential backoff)
ISTIO_NAMESPACE = "istio-system"
WAYPOINT_POD_LABEL = GATEWAY_NAME_LABEL
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
POLICY_API = {"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"}
# The outcomes an HTTP-aware proxy answers itself (its RBAC's 403, the JWT filter's 401, ext_authz's denial): each
# has the probe's own header in its record
HTTP_DENIALS = (DENIED_L7, DENIED_AUTHN, DENIED_CUSTOM)
# the ext-authz sample's HTTP check answers 200 to a request carrying this (extauthz_server.py)
EXT_AUTHZ_ALLOW = (("x-ext-authz", "allow"),)


class IstioAnalyzeWarning(UserWarning):
    """`istioctl analyze` reported something about a step's configuration: shown, never dropped."""


class BarrierWarning(UserWarning):
    """A step's policies did not show up in every enforcing proxy before the barrier's deadline."""


@dataclass(frozen=True)
class Timeouts:
    rollout: float = 240.0
    canary: float = 90.0
    barrier: float = 30.0
    connect: float = 2.0
    probe: float = 5.0
    analyze: float = 60.0
    # istiod loading a changed mesh config: kubelet refreshes the mounted ConfigMap within its sync period
    # (1 min by default, plus its cache TTL), then istiod reloads the file
    mesh_config: float = 180.0
    # How long to keep reading logs for a denial's record after the exec: pilot-agent starts Envoy with
    # --file-flush-interval-msec 1000 (istio/istio pkg/envoy/proxy.go, ProxyConfig.fileFlushInterval), so
    # a sidecar's or waypoint's record can take a second to reach the log.
    proof_grace: float = 3.0


@dataclass
class ClusterContext:
    """What a target hands a session: where, with what, and under which rules."""

    kube: Kube
    kubeconfig: Kubeconfig
    istioctl: str | None
    version: IstioVersion
    curl_image: str
    app_image: str
    prefix: str
    enrollment: Mapping[str, str]
    root_namespace: str = ISTIO_NAMESPACE
    trust_domain: str = "cluster.local"
    allow_mesh_wide: bool = True
    keep_namespaces: bool = False
    # The session closes `kube` with itself: targets give each session its own client when sessions run
    # side by side (schedule.py), since a Kube is not thread-safe (kube.py).
    owns_kube: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    observations_out: Path | None = None
    target_name: str = "cluster"
    run_command: Callable[..., istioctl.Result] = istioctl.run
    # Scenarios side by side (schedule.py): the root-namespace policies ("ns/name") the cluster had before the
    # run; a step's barrier then also waits until its proxies hold no other root-namespace policy (one another
    # scenario withdrew). None: not checked (one scenario at a time).
    root_baseline: frozenset[str] | None = None
    # --accept-unconfirmed-denials: an unreadable proxy log makes a denial "unconfirmed", not a failure
    accept_unconfirmed: bool = False
    # A revisioned control plane's revision (existing clusters without a default one): mode mixed's sidecar
    # namespaces are enrolled with `istio.io/rev` then (render.enrollment_labels)
    revision: str | None = None
    # Where the session may add its CUSTOM providers to the mesh config (meshconfig.py); None: it may not (an
    # existing cluster without --allow-mesh-config-update), and a scenario with providers is refused.
    mesh_config: meshconfig.MeshConfigAccess | None = None
    # Where the session may *read* istiod's mesh config, never write it: an ingress gateway's default
    # gatewayTopology (`_check_gateway_topology`); None: `mesh_config`'s, or not read. An existing cluster gives it
    # always, since someone else's mesh config may set what the suite's kind installs never set.
    mesh_config_source: meshconfig.MeshConfigAccess | None = None
    wall_clock: Callable[[], float] = time.time  # compared with the kubelet's log timestamps
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class ProbeRun:
    """How one probe was run: its curl call (the probe id header), curl's local address, the source pod,
    and the wall-clock instant its exec started (no record written before it can be this probe's)."""

    call: CurlCall
    local_address: str | None
    pod: PodInfo
    started: float


def _proxy_restarts(pod: PodInfo) -> int:
    return pod.restarts.get(PROXY_CONTAINER, 0)


def _with_match(obs: Observation, match: Match) -> Observation:
    """The observation with its record (or the note saying why it has none)."""
    if match.proof is None:
        return replace(obs, notes=(*obs.notes, match.note or "no record of this probe"))
    if not match.proof.denied:
        return replace(obs, proof=match.proof, notes=(
            *obs.notes, f"the enforcing proxy's record of this probe says it allowed it ({match.proof.proxy})"))
    return replace(obs, proof=match.proof)


def mesh_wide(manifest: Manifest, root_namespace: str) -> bool:
    """A policy that affects every workload of the mesh: anything in the root namespace."""
    return manifest.namespace == root_namespace


def check_shared_cluster(scenario: Scenario, root_namespace: str, allow: bool) -> None:
    """On a shared cluster, refuse root-namespace policies and mesh-wide PeerAuthentication (opt in)."""
    if allow:
        return
    for step in scenario.steps:
        for m in step.policies:
            if mesh_wide(m, root_namespace):
                what = "a mesh-wide PeerAuthentication" if m.kind == "PeerAuthentication" else \
                    f"a {m.kind} in the mesh root namespace"
                raise TargetError(f"{m.origin}: {m.ref} is {what} ({root_namespace}); on a shared cluster it "
                                  f"would affect every workload, not only this run's. Pass --allow-mesh-wide "
                                  "to allow it.")


class ClusterSession:
    """A `MeshSession` on a Kubernetes cluster with Istio (see the module docstring).

    `probes_during_apply`: probe() may run in another thread while apply() does (every exec has its own
    API client, logs are read through their own), so the runner measures the enforcement gap (gap.py)
    against `Applied.acknowledged_at`, the instant the barrier saw the step in every enforcing proxy.
    """

    probes_during_apply = True

    def __init__(self, scenario: Scenario, mode: Mode, ctx: ClusterContext):
        self.scenario = scenario
        self.mode = mode
        self.ctx = ctx
        self.nsmap = NamespaceMap.for_scenario(scenario, ctx.prefix)
        self.addresses: dict[str, str] = {}
        # Reasons of the denials passed as "unconfirmed" (only with --accept-unconfirmed-denials): the
        # summary reports every one, so a weakened run says how weak it was.
        self.unconfirmed: list[str] = []
        # curl's source port per source pod, never two alike within TIME_WAIT (probe.SourcePorts)
        self._source_ports = SourcePorts()
        self._matcher = RecordMatcher(self.nsmap.scenario_ref)  # one per session: a log line proves one probe
        self._baseline: dict[str, tuple[str, int]] = {}
        self._probe_lock = threading.Lock()
        self.analysis: list[tuple[int, list[AnalyzeMessage]]] = []
        self.barriers: list[barrier.BarrierResult] = []
        self.notes: list[str] = []
        self._pods: dict[str, PodInfo] = {}  # scenario ref -> the workload's pod
        self._waypoint_pods: list[PodInfo] = []
        self._ztunnels: dict[str, PodInfo] = {}  # node -> ztunnel pod
        self._applied: dict[tuple[str, str, str], Manifest] = {}
        # Objects applied (or being applied) outside the session's own namespaces: deleting the namespaces
        # does not remove them, so close() must. Recorded *before* the API call, so an apply cut off by a
        # failure or a Ctrl-C is still cleaned up (deleting something that never arrived is a harmless 404).
        self._outside: dict[tuple[str, str, str], Manifest] = {}
        self.cleanup: list[barrier.BarrierResult] = []  # close()'s barrier: the outside objects gone from proxies
        self._namespaces: list[str] = []
        self._keys = IssuerKeys(scenario.issuers)  # the run's issuer keys: JWKS into policies, tokens into curl
        # The session's CUSTOM providers in the mesh config: name -> kind (what the barrier's CUSTOM forms need),
        # recorded before the write, so a cut-off write is taken back at close() too
        self._providers: dict[str, str] = {}
        self._grpc_ports = scenario.grpc_check_ports()
        self._step = -1
        self._closed = False
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one write to the cluster at a time versus close()

    # -- data planes ----------------------------------------------------------------------------
    def _plane(self, namespace: str) -> str:
        """The data plane of a scenario namespace: the mode, or in mode mixed `spec.dataplanes` (render.py)."""
        return data_plane(self.scenario, self.mode, namespace)

    def _captured(self, w: Workload) -> bool:
        """An in-mesh workload whose namespace runs ambient (with or without a waypoint): ztunnel captures it. Never an
        ingress gateway: istio-cni skips injected pods (render.py)."""
        return w.in_mesh and not w.is_gateway and self._plane(w.namespace) in ("ambient", "waypoint")

    def _backend(self, probe: Probe) -> tuple[Workload, int, str | None]:
        """A gateway probe's route destination, its port, and the waypoint the gateway sends it through (only with
        istio.io/ingress-use-waypoint on a waypoint namespace's service: engine/path.py ingress_route), or None."""
        route = probe.destination.route_for(probe.authority)
        backend = next((w for w in self.scenario.workloads if route is not None and w.ref == route.to), None)
        if route is None or backend is None:  # the loader refuses such probes (no route: the gateway's 404)
            raise TargetError(f"{probe.describe()}: the gateway has no route for Host {probe.authority!r}")
        waypoint = None
        # the Service's istio.io/ingress-use-waypoint, read with strconv.ParseBool (serviceregistry/ambient/
        # services.go@1.30 l.771-788); the target reads it itself: the engine is an independent implementation
        use = backend.labels.get(INGRESS_USE_WAYPOINT)
        if self._plane(backend.namespace) == "waypoint" and use is not None and pilotenv.parse_bool(use) is True:
            waypoint = self._waypoint_for(backend)
        return backend, route.port, waypoint

    def _answering(self, probe: Probe) -> str:
        """The workload whose app answers an allowed probe: a gateway's route destination, else the destination."""
        return self._backend(probe)[0].ref if probe.destination.is_gateway else probe.destination.ref

    @property
    def _waypoints(self) -> list[Any]:
        return deployed_waypoints(self.scenario, self.mode)

    # -- lifecycle ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write to the cluster, never after close() began: a closed session makes nothing more."""
        with self._write_lock:
            if self._closed:
                raise TargetError(f"{self.scenario.name} [{self.mode}]: the session was closed (the run is "
                                  "stopping); nothing more is applied")
            yield

    def __enter__(self) -> ClusterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def namespace_map(self) -> list[tuple[str, str]]:
        return self.nsmap.table()

    def start(self) -> ClusterSession:
        ctx, scenario = self.ctx, self.scenario
        mesh = scenario.mesh
        if mesh.root_namespace != ctx.root_namespace:
            raise TargetError(f"{scenario.path}: the scenario's mesh root namespace is {mesh.root_namespace}, the "
                              f"cluster's is {ctx.root_namespace}: it cannot run there")
        if mesh.trust_domain != ctx.trust_domain:
            raise TargetError(f"{scenario.path}: the scenario's trust domain is {mesh.trust_domain}, the cluster's "
                              f"is {ctx.trust_domain}: identities would not match")
        check_shared_cluster(scenario, ctx.root_namespace, ctx.allow_mesh_wide)
        if scenario.mesh.extension_providers:
            self._mesh_config_writer()  # refused before anything is written when the target may not change it
        for step in scenario.steps:
            self.nsmap.check_consistent(scenario, step.policies)
        self.notes.append(f"namespaces: {self.nsmap.describe()}")
        docs = render_workloads(scenario, self.nsmap, RenderSettings(
            self.mode, ctx.curl_image, ctx.app_image, ctx.prefix.rstrip("-"), ctx.enrollment, ctx.revision))
        self._check_gateway_topology(docs)  # a skip, before anything is applied
        self._namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
        try:
            for doc in docs:
                with self._writing():
                    ctx.kube.apply(doc)
            self._add_providers()
            self._wait_ready()
            self._discover()
            self._check_addresses()
            self._wait_providers()
            with quiet_mesh():  # another scenario's mesh-wide policy must not answer for this mesh (schedule.py)
                self._canary()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete what the session made: outside objects first (and wait until no proxy holds them), then
        its namespaces. Idempotent. A KeyboardInterrupt during cleanup is held until everything was deleted,
        then re-raised: an interrupted run must not leave a mesh-wide policy behind for the next one."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[str] = []
        interrupted: BaseException | None = self._await_write_in_flight(errors)
        try:
            self._withdraw_outside(errors)
        except KeyboardInterrupt as exc:
            interrupted = interrupted or exc
        try:
            self._remove_providers(errors)
        except KeyboardInterrupt as exc:
            interrupted = interrupted or exc
        if not self.ctx.keep_namespaces:
            for ns in self._namespaces:
                if not self.nsmap.prefix or not ns.startswith(self.nsmap.prefix) or ns == self.ctx.root_namespace:
                    # only what this run named: never the root namespace, never one it did not create
                    errors.append(f"namespace {ns} was not deleted: it does not carry this run's prefix "
                                  f"{self.nsmap.prefix!r}")
                    continue
                try:
                    self.ctx.kube.delete("v1", "Namespace", ns)
                except TargetError as exc:
                    errors.append(str(exc))
                except KeyboardInterrupt as exc:
                    interrupted = interrupted or exc
        if self.ctx.owns_kube:
            self.ctx.kube.close()
        if errors:
            notices.warn("cluster cleanup incomplete: " + "; ".join(errors), RuntimeWarning)
        if interrupted is not None:
            raise interrupted

    def _await_write_in_flight(self, errors: list[str], limit: float = 35.0) -> BaseException | None:
        """Wait for a write another thread is in (a scheduler worker the run stopped waiting for) to finish;
        it then refuses the next one (`_writing`), so nothing is created behind the cleanup's back. A Ctrl-C or
        SIGTERM meanwhile is held, like the rest of close() holds it (review finding: it used to escape before
        anything was deleted, and the session counted as closed). Past `limit` (a request's own timeout and
        then some) the cleanup goes on without it; returns the held interrupt, if any."""
        interrupted: BaseException | None = None
        deadline = time.monotonic() + limit
        while True:
            try:
                if self._write_lock.acquire(timeout=0.5):
                    self._write_lock.release()
                    return interrupted
            except KeyboardInterrupt as exc:
                interrupted = interrupted or exc
            if time.monotonic() >= deadline:
                errors.append(f"a write to the cluster from another thread did not finish within {limit:.0f} s; "
                              "the cleanup went on without waiting for it")
                return interrupted

    def _withdraw_outside(self, errors: list[str]) -> None:
        """Delete every object applied outside the session's namespaces, then wait (the apply barrier) until
        the enforcing proxies no longer hold them.

        Also with --keep-namespaces: kept namespaces only hold this scenario's objects, but a policy left in
        the root namespace changes every later scenario's results. A Ctrl-C while deleting is held until the
        remaining deletes were sent (each is one short request); one during the barrier skips the wait.
        """
        removed: list[Manifest] = []
        interrupted: KeyboardInterrupt | None = None
        for key, m in list(self._outside.items()):
            try:
                self.ctx.kube.delete(m.api_version, m.kind, m.name, m.namespace)
            except TargetError as exc:
                errors.append(str(exc))
                continue
            except KeyboardInterrupt as exc:
                interrupted = exc
                continue
            removed.append(m)
            self._outside.pop(key, None)
            self._applied.pop(key, None)
        if interrupted is not None:
            raise interrupted
        if not removed:
            return
        unseen = [m.ref for m in removed if not barrier.observable(m)]
        if unseen:
            self.notes.append(f"cleanup: {', '.join(unseen)} deleted; no proxy configuration names such a policy, "
                              "so its removal could not be waited for")
        if not self._pods:  # start() failed before the pods were found: no proxy to ask
            self.notes.append("cleanup: " + ", ".join(m.ref for m in removed) + " deleted; no proxy to wait for")
            return
        try:
            result = self._barrier([], removed)
        except Exception as exc:  # cleanup goes on; the reason is reported (a warning), never swallowed
            errors.append(f"waiting for the proxies to drop {', '.join(m.ref for m in removed)} failed: {exc}")
            return
        self.cleanup.append(result)
        if not result.reached:
            errors.append(f"after {result.seconds:.1f} s some proxies still held deleted policies: "
                          + "; ".join(result.pending[:6]))

    def _own(self, namespace: str) -> bool:
        """Whether `namespace` is one the session created (and so deletes, with everything in it)."""
        return namespace in self._namespaces

    # -- the mesh config's providers (meshconfig.py) -------------------------------------------------
    def _mesh_config_writer(self) -> meshconfig.MeshConfigWriter:
        access = self.ctx.mesh_config
        if access is None:
            raise TargetError(f"{self.scenario.path}: the scenario defines meshConfig.extensionProviders, which this "
                              "target may not add to the cluster's mesh config")
        kube = self.ctx.kube
        return meshconfig.MeshConfigWriter(access, lambda ns, name: kube.get("v1", "ConfigMap", name, ns),
                                           kube.replace)

    def _add_providers(self) -> None:
        providers = self.scenario.mesh.extension_providers
        if not providers:
            return
        writer = self._mesh_config_writer()
        entries = meshconfig.session_providers(providers, self.nsmap)
        with self._writing():
            self._providers = {self.nsmap.provider_name(p.name): p.kind for p in providers}
            changed = writer.add(entries)
        self.notes.append(f"mesh config: extension providers {', '.join(sorted(self._providers))} added to "
                          f"{', '.join(changed) or '(no ConfigMap)'}")

    def _wait_providers(self) -> None:
        """Until every ready istiod of the revision serves the session's providers (`/debug/mesh`)."""
        access = self.ctx.mesh_config
        if not self._providers or access is None:
            return
        from conformance.mesh.cluster.kube import poll_until

        kube, wanted = self.ctx.kube, set(self._providers)

        def check() -> tuple[bool, str]:
            pods = [p for p in kube.pods(access.namespace, access.istiod_selector) if p.ready and not p.deleting]
            if not pods:
                return False, f"no ready istiod pod ({access.istiod_selector})"
            lacking = []
            for pod in pods:
                try:
                    answer = kube.proxy_get(pod.namespace, pod.name, meshconfig.ISTIOD_DEBUG_PORT,
                                            meshconfig.DEBUG_MESH_PATH)
                except TargetError as exc:
                    return False, str(exc)
                active = meshconfig.active_provider_names(answer)
                if not wanted <= active:
                    lacking.append(f"{pod.name} lacks {', '.join(sorted(wanted - active))}")
            return not lacking, "; ".join(lacking)

        waited = poll_until(check, self.ctx.timeouts.mesh_config, "istiod loading the extension providers")
        self.notes.append(f"mesh config: istiod serves the providers after {waited:.1f} s")

    def _remove_providers(self, errors: list[str]) -> None:
        if not self._providers:
            return
        try:
            self._mesh_config_writer().remove(list(self._providers))
        except TargetError as exc:
            errors.append(f"the extension providers {', '.join(sorted(self._providers))} could not be taken out of "
                          f"the mesh config: {exc}")
            return
        self._providers = {}

    # -- readiness ------------------------------------------------------------------------------
    def _wait_ready(self) -> None:
        kube, t = self.ctx.kube, self.ctx.timeouts
        deadline = time.monotonic() + t.rollout
        for w in self.scenario.workloads:
            ns = self.nsmap.cluster_namespace(w.namespace)
            kube.wait_rollout("Deployment", w.name, ns, timeout=max(1.0, deadline - time.monotonic()))
        for wp in self._waypoints:
            ns = self.nsmap.cluster_namespace(wp.namespace)
            self._wait_gateway(wp.name, ns, max(1.0, deadline - time.monotonic()))
            kube.wait_rollout("Deployment", wp.name, ns, timeout=max(1.0, deadline - time.monotonic()))

    def _wait_gateway(self, name: str, namespace: str, timeout: float) -> None:
        from conformance.mesh.cluster.kube import poll_until

        def check() -> tuple[bool, str]:
            gw = self.ctx.kube.get("gateway.networking.k8s.io/v1", "Gateway", name, namespace)
            conds = ((gw or {}).get("status") or {}).get("conditions") or []
            ok = any(c.get("type") == "Programmed" and c.get("status") == "True" for c in conds)
            return ok, "Programmed is not True yet"

        poll_until(check, timeout, f"waypoint Gateway {namespace}/{name}")

    def refresh_pods(self) -> None:
        """Find the pods again (after a restart, e.g. during an upgrade)."""
        self._discover()

    def _discover(self) -> None:
        """Find each workload's pod (and waypoint and ztunnel pods); check ambient enrollment."""
        # New maps are built aside and swapped in at the end (one assignment each), so a thread reading
        # them while pods are refreshed (the upgrade watcher) never sees one half filled.
        kube = self.ctx.kube
        pods_by_ref: dict[str, Any] = {}
        waypoint_pods: list[Any] = []
        ztunnels: dict[str, Any] = {}
        addresses = dict(self.addresses)
        for w in self.scenario.workloads:
            ns = self.nsmap.cluster_namespace(w.namespace)
            pods = [p for p in kube.pods(ns, f"{WORKLOAD_LABEL}={w.name}") if not p.deleting and p.ready]
            if len(pods) != 1:
                raise TargetError(f"workload {w.ref}: expected one ready pod in {ns}, found {len(pods)}")
            pods_by_ref[w.ref] = pods[0]
            addresses[w.ref] = pods[0].ip
        for wp in self._waypoints:
            ns = self.nsmap.cluster_namespace(wp.namespace)
            pods = [p for p in kube.pods(ns, f"{WAYPOINT_POD_LABEL}={wp.name}") if p.ready and not p.deleting]
            if not pods:
                raise TargetError(f"waypoint {wp.ref}: no ready pod in {ns}")
            waypoint_pods += pods
            addresses[wp.ref] = pods[0].ip
        self._pods, self._waypoint_pods, self.addresses = pods_by_ref, waypoint_pods, addresses
        if any(self._captured(w) for w in self.scenario.workloads):
            self._check_ambient_enrollment()
            for z in kube.pods(None, "app=ztunnel"):
                if z.ready and not z.deleting:
                    ztunnels[z.node] = z
        self._ztunnels = ztunnels
        self._snapshot()

    def _check_addresses(self) -> None:
        """Refuse (a skip) a cluster that gave a workload an address inside a literal address block the scenario's
        policies name (`ipBlocks`, `remoteIpBlocks`, their `not` forms, `source.ip`, `remote.ip`; `${ip:...}` values
        are filled from the pods and never count). The written verdicts assume no workload is there (on the local
        mesh every one is on loopback; kind gives pods 10.244.0.0/16): a gateway falling back to its peer, for one,
        would then match where the scenario says it does not. The cluster cannot move a pod, so it cannot
        reproduce those verdicts."""
        blocks = literal_blocks(self.scenario)
        for ref, address in sorted(self.addresses.items()):
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            for block, where in blocks:
                if ip.version == block.version and ip in block:
                    raise TargetUnavailable(
                        f"{self.scenario.name}: this cluster gave {ref} the address {address}, inside {block} which "
                        f"{where} names; the scenario's verdicts assume no workload there, and a cluster cannot "
                        "choose its pods' addresses")

    def _check_gateway_topology(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Refuse (a skip), before anything is applied, a scenario whose ingress gateway would run with another
        `gatewayTopology.numTrustedProxies` than its `mesh.numTrustedProxies`: the gateway would take `remote_ip` from
        another X-Forwarded-For entry than the verdicts assume (docs/ingress-gateways.md §1.2).

        What the gateway runs with is the mesh config's `defaultConfig` with the pod's `proxy.istio.io/config` merged
        over it (meshconfig.effective_trusted_proxies cites Istio's merge). render.py writes the scenario's value in
        that annotation, 0 included, and an annotation's gatewayTopology replaces the mesh's whole, so this holds on
        any cluster; the check reads the mesh config anyway, so a rendering that stops setting it, or a cluster
        default it would not override, is a skip naming both values and never a run judging another topology. On
        kind the suite's own install sets no default (tests/cluster/test_istioctl.py asserts it)."""
        gateways = [w for w in self.scenario.workloads if w.is_gateway]
        access = self.ctx.mesh_config_source or self.ctx.mesh_config
        if not gateways or access is None:
            return
        wanted = self.scenario.mesh.num_trusted_proxies
        pods = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d.get("kind") == "Deployment"}
        for name in access.configmaps:
            where = f"ConfigMap {access.namespace}/{name}"
            cm = self.ctx.kube.get("v1", "ConfigMap", name, access.namespace)
            # no ConfigMap: istiod runs on Istio's defaults, which set no gatewayTopology (mesh.go DefaultProxyConfig)
            text = str(((cm or {}).get("data") or {}).get(meshconfig.MESH_KEY) or "")
            try:
                default = meshconfig.default_trusted_proxies(text)
            except TargetError as exc:
                raise TargetError(f"{self.scenario.name}: {where}: {exc}") from exc
            for w in gateways:
                pod = pods.get((self.nsmap.cluster_namespace(w.namespace), w.name)) or {}
                template = (pod.get("spec") or {}).get("template") or {}
                annotation = ((template.get("metadata") or {}).get("annotations") or {}).get(PROXY_CONFIG_ANNOTATION)
                try:
                    effective = meshconfig.effective_trusted_proxies(text, annotation)
                except TargetError as exc:
                    raise TargetError(f"{self.scenario.name}: {w.ref}: {exc}") from exc
                if effective != wanted:
                    raise TargetUnavailable(
                        f"{self.scenario.name}: its ingress gateway {w.ref} would run with gatewayTopology."
                        f"numTrustedProxies {effective} (found: {where} defaultConfig sets {default}; the pod's "
                        f"{PROXY_CONFIG_ANNOTATION} is {annotation or 'not set'}), and the scenario wants "
                        f"{wanted}: the gateway would read the client's address (remote.ip, remoteIpBlocks) from "
                        "another X-Forwarded-For entry than its verdicts assume")
            if default != wanted:
                self.notes.append(f"mesh config: {where} sets defaultConfig.gatewayTopology.numTrustedProxies "
                                  f"{default}; the scenario's gateways replace it with {wanted} "
                                  f"({PROXY_CONFIG_ANNOTATION})")

    def _check_client_address(self, probes: Sequence[Probe], runs: Mapping[int, ProbeRun]) -> None:
        """After a good canary: did each ingress gateway see the client pod's own address? Its access-log record of
        the canary says (`src`, %DOWNSTREAM_REMOTE_ADDRESS% in clusters/istio/*.yaml: the canary sends no
        X-Forwarded-For, so that is the connection's peer, Envoy's direct remote address, whatever numTrustedProxies
        says: docs/ingress-gateways.md §1.2, conn_manager_utility.cc l.143-145).

        `ipBlocks` and `source.ip` at the gateway are that peer, `remoteIpBlocks` / `remote.ip` fall back to it, and
        the address the gateway appends to X-Forwarded-For (what a sidecar's `remote.ip` behind it reads) is it too
        (§1, §1.2). The scenario's `${ip:<ns>/<name>}` values are the pods' addresses, so when the path to the
        gateway's Service translates the source (kube-proxy masquerade, a CNI or load balancer doing SNAT), verdicts
        using the client's address cannot be reproduced here: a skip naming both addresses. A scenario whose policies
        name no such address runs (a note says what was seen): its literal blocks hold neither the pod's address
        (`_check_addresses`) nor, checked here, the translated one, so every comparison comes out the same. A
        missing record is the target's fault (a TargetError) only when the scenario depends on the address."""
        at_gateway = [i for i, p in enumerate(probes) if p.destination.is_gateway and i in runs]
        if not at_gateway:
            return
        clients = {e.probe.source.ref for step in self.scenario.steps for e in step.expectations
                   if e.probe.destination.is_gateway} | {probes[i].source.ref for i in at_gateway}
        uses = client_address_uses(self.scenario, clients)
        blocks = literal_blocks(self.scenario)
        seen = self._canary_peers([(i, probes[i], runs[i]) for i in at_gateway])
        for i in at_gateway:
            probe, run = probes[i], runs[i]
            peer = seen.get(i)
            what = f"the ingress gateway {probe.destination.ref}"
            if peer is None:
                text = (f"{what} has no access-log record of the canary from {probe.source.ref} (the record's 'src' "
                        "is what says whether client addresses reach it unchanged)")
                if uses or blocks:
                    raise TargetError(f"{self.scenario.name}: {text}, and the scenario's policies use client "
                                      f"addresses ({'; '.join([*uses, *(w for _, w in blocks)][:3])})")
                self.notes.append(f"client address: {text}; the scenario's policies use no address, so it runs")
                continue
            if peer == run.pod.ip:
                self.notes.append(f"client address: {what} saw {probe.source.ref} from its own address {peer}")
                continue
            why = (f"{what} saw the canary from {probe.source.ref} (pod address {run.pod.ip}) come from {peer}: the "
                   "path to the gateway's Service translates the client's source address (kube-proxy masquerade, "
                   "or a CNI or load balancer doing SNAT)")
            inside = [where for block, where in blocks if _contains(block, peer)]
            if uses or inside:
                reasons = [f"{where} names the client's pod address" for where in uses] + \
                          [f"{where} holds {peer}" for where in inside]
                raise TargetUnavailable(f"{self.scenario.name}: {why}, and the scenario's verdicts depend on the "
                                        f"client's address: {'; '.join(reasons[:4])}")
            self.notes.append(f"client address: {why}; the scenario's policies do not use the client's address, so "
                              "it runs")

    def _canary_peers(self, runs: Sequence[tuple[int, Probe, ProbeRun]]) -> dict[int, str]:
        """The peer address (host) in the gateway's record of each canary probe (key: the probe's index), read until
        every record is there or the proof grace ends (pilot-agent flushes access logs every second,
        Timeouts.proof_grace); an unreadable log leaves its probes out."""
        wanted = {i: (self._pods[probe.destination.ref], run.call.probe_id, run.started) for i, probe, run in runs}
        found: dict[int, str] = {}
        deadline = time.monotonic() + self.ctx.timeouts.proof_grace
        while True:
            for pod in {id(p): p for p, _, _ in wanted.values()}.values():
                since = min(t for p, _, t in wanted.values() if p is pod)
                try:
                    text = self._read_log(pod, PROXY_CONTAINER,
                                          math.ceil(max(0.0, self.ctx.wall_clock() - since)) + 2)
                except TargetError:
                    continue
                for line in split_log(f"{pod.namespace}/{pod.name}", text):
                    rec = parse_envoy_line(line.text)
                    if rec is None or host_of(rec.get("local")) != pod.ip:
                        continue
                    for key, (p, probe_id, started) in wanted.items():
                        if p is pod and line.time >= started and rec.get("probe") == probe_id and rec.get("src"):
                            found[key] = host_of(rec.get("src"))
            if len(found) == len(wanted) or time.monotonic() >= deadline:
                return found
            self.ctx.sleep(0.3)

    def _check_ambient_enrollment(self) -> None:
        """istio-cni marks enrolled pods `ambient.istio.io/redirection: enabled`: wait for it."""
        from conformance.mesh.cluster.kube import poll_until

        kube = self.ctx.kube
        pending = [w for w in self.scenario.workloads if self._captured(w)]

        def check() -> tuple[bool, str]:
            nonlocal pending
            still = []
            for w in pending:
                pod = kube.get("v1", "Pod", self._pods[w.ref].name, self._pods[w.ref].namespace) or {}
                ann = (pod.get("metadata") or {}).get("annotations") or {}
                if ann.get(AMBIENT_REDIRECTION) != "enabled":
                    still.append(w)
            pending = still
            return not still, "not enrolled: " + ", ".join(w.ref for w in still)

        poll_until(check, self.ctx.timeouts.rollout, "ambient enrollment")

    def _canary(self) -> None:
        """With no policy in force, every destination port must answer: else the mesh is broken."""
        servers = [w for w in self.scenario.workloads if w.ports]
        clients = [w for w in self.scenario.workloads if not w.is_gateway]  # a gateway pod has no curl
        sources = [w for w in clients if w.in_mesh] or clients
        if not servers or not sources:
            return
        source = sources[0]
        probes = [Probe(source, w, p) for w in servers if w.kind == "app" for p in w.ports]
        # each gateway route, from outside the mesh (its only clients), with a Host its vhost takes
        outside = next((w for w in clients if not w.in_mesh), None)
        probes += [Probe(outside, w, p, Request(headers=(("host", r.canary_host),)))
                   for w in servers if w.is_gateway and outside is not None for p in w.ports for r in w.routes]
        # an ext-authz workload's HTTP check ports answer an allowed check with 200 (its gRPC ones only gRPC)
        probes += [Probe(source, w, p, Request(headers=EXT_AUTHZ_ALLOW)) for w in servers if w.kind == "ext-authz"
                   for p in w.ports if (w.ref, p.number) not in self._grpc_ports]
        deadline = time.monotonic() + self.ctx.timeouts.canary

        def answered(probe: Probe, obs: Observation) -> bool:
            if probe.destination.kind == "ext-authz":
                return obs.evidence.exit_code == 0 and obs.evidence.status == 200
            return obs.outcome == ALLOWED

        while True:
            runs: dict[int, ProbeRun] = {}
            observations = self._run_probes(probes, prove=False, runs_out=runs)
            bad = [(p, o) for p, o in zip(probes, observations, strict=True) if not answered(p, o)]
            if not bad:
                self._check_client_address(probes, runs)
                return
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{p.describe()}: {o.outcome} (curl exit {o.evidence.exit_code}, "
                                   f"HTTP {o.evidence.status}, {o.evidence.stderr[:80]})" for p, o in bad[:5])
                raise TargetError(f"the mesh does not work: with no policy in force these probes were not "
                                  f"answered by their destination app: {detail}")
            time.sleep(max(0.1, min(2.0, deadline - time.monotonic())))

    # -- policies -------------------------------------------------------------------------------
    def cluster_policies(self, policies: Sequence[Manifest]) -> list[Manifest]:
        """The step's policies as applied: addresses filled, namespaces mapped, validated as Istio would."""
        out = []
        jwks = self._keys.all_jwks() if self.scenario.issuers else None
        for m in policies:
            mapped = self.nsmap.manifest(m.rendered(self.addresses, jwks))
            findings = validate_manifest(mapped.body, self.ctx.version)
            if has_errors(findings):
                text = "; ".join(str(f) for f in findings if getattr(f, "severity", "error") == "error")
                raise TargetError(f"{m.origin}: {m.ref} after namespace mapping is not valid Istio config: {text}")
            out.append(mapped)
        return out

    def apply(self, policies: Sequence[Manifest]) -> Applied:
        start = time.monotonic()
        self._step += 1
        self._refresh_baseline()
        if self._step == 0:
            notices.attach("namespace mapping (scenario → cluster)", self.nsmap.describe())
        kube = self.ctx.kube
        wanted = {m.key: m for m in self.cluster_policies(policies)}
        created, updated, deleted = [], [], []
        previous = dict(self._applied)
        for key, m in wanted.items():
            doc = dict(m.body)
            doc.setdefault("apiVersion", m.api_version)
            doc.setdefault("kind", m.kind)
            doc["metadata"] = {**dict(doc.get("metadata") or {}), "name": m.name, "namespace": m.namespace}
            with self._writing():
                if not self._own(m.namespace):
                    self._outside[key] = m  # before the request: a cut-off apply is cleaned up too
                kube.apply(doc)
            self._applied[key] = m
            (updated if key in previous else created).append(m.ref)
        removed = [m for key, m in previous.items() if key not in wanted]
        for m in removed:
            kube.delete(m.api_version, m.kind, m.name, m.namespace)
            self._applied.pop(m.key, None)
            self._outside.pop(m.key, None)
            deleted.append(m.ref)
        # istioctl analyze reads the cluster's configuration, not the proxies': it runs beside the barrier (one
        # process per namespace, all at once), so a step waits for the longer of the two, not their sum.
        with ThreadPoolExecutor(max_workers=max(1, len(self._namespaces)),
                                thread_name_prefix="authz-analyze") as pool:
            analyses = [pool.submit(self._analyze_namespace, ns) for ns in self._namespaces] \
                if self.ctx.istioctl else []
            barrier_start = time.monotonic()
            result = self._barrier(list(wanted.values()), removed)
            analysed = [f.result() for f in analyses]
        self.barriers.append(result)
        acknowledged_at = barrier_start + result.seconds if result.reached else None
        if not result.reached:
            notices.warn(f"step {self._step}: after {result.seconds:.1f} s the policies had not reached every "
                         f"enforcing proxy: {'; '.join(result.pending[:6])}", BarrierWarning)
        if self.ctx.istioctl:
            self._report_analysis(analysed)
        seconds = (acknowledged_at if acknowledged_at is not None else time.monotonic()) - start
        return Applied(seconds=seconds, created=tuple(created), updated=tuple(updated), deleted=tuple(deleted),
                       acknowledged_at=acknowledged_at)

    def _refresh_baseline(self) -> None:
        """A proxy dead or restarted *during* this step is the fault; before it, the step starts afresh."""
        known = self._all_pods()
        current: dict[str, PodInfo] = {}
        for ns in sorted({p.namespace for p in known}):
            current.update({f"{p.namespace}/{p.name}": p for p in self.ctx.kube.pods(ns, None)})
        for pod in known:
            ref = current.get(f"{pod.namespace}/{pod.name}", pod)
            self._baseline[f"{pod.namespace}/{pod.name}"] = (ref.uid, _proxy_restarts(ref))

    def _proxies(self) -> tuple[list[barrier.Proxy], frozenset[str]]:
        """The enforcing proxies of the scenario's servers: the sidecar of a server in a sidecar namespace, the
        ztunnel of the node of a captured one (ambient and waypoint namespaces), and the waypoints; with the
        cluster namespaces whose policies ztunnel enforces."""
        proxies: list[barrier.Proxy] = []
        ambient_ns = frozenset(self.nsmap.cluster_namespace(w.namespace) for w in self.scenario.workloads
                               if self._captured(w))
        servers = [w for w in self.scenario.workloads if w.ports and w.in_mesh]
        # A workload whose pod is not known (a discovery cut off by a failure, then close()) has no proxy to ask.
        servers = [w for w in servers if w.ref in self._pods]
        for w in servers:
            if not self._captured(w):
                pod = self._pods[w.ref]
                proxies.append(barrier.Proxy("gateway" if w.is_gateway else "sidecar", pod.name, pod.namespace,
                                             pod.labels, http=any(p.protocol == "HTTP" for p in w.ports)))
        nodes = {self._pods[w.ref].node for w in servers if self._captured(w)}
        for node in sorted(nodes):
            z = self._ztunnels.get(node)
            if z is not None:
                proxies.append(barrier.Proxy("ztunnel", z.name, z.namespace))
        for pod in self._waypoint_pods:
            gateway = pod.labels.get(WAYPOINT_POD_LABEL, "")
            proxies.append(barrier.Proxy("waypoint", pod.name, pod.namespace, gateway=gateway,
                                         serves_namespaces=frozenset({pod.namespace})))
        return proxies, ambient_ns

    def _barrier(self, in_force: list[Manifest], removed: list[Manifest]) -> barrier.BarrierResult:
        proxies, ambient_ns = self._proxies()
        expected = barrier.expectations(proxies, in_force, removed, self.ctx.root_namespace, ambient_ns,
                                        self.ctx.root_baseline, self._providers)
        if not expected:
            return barrier.BarrierResult(0.0, True)
        return barrier.wait(expected, self._read_proxy, timeout=self.ctx.timeouts.barrier)

    def _read_proxy(self, proxy: barrier.Proxy) -> set[str] | None:
        try:
            if proxy.kind == "ztunnel":
                if not self.ctx.istioctl:
                    return None
                argv = istioctl.ztunnel_policies_argv(self.ctx.istioctl, self.ctx.kubeconfig, proxy.name,
                                                      proxy.namespace)
                out = self.ctx.run_command(argv, 30.0)
                return barrier.ztunnel_policies(json.loads(out.stdout or "[]"))
            result = self.ctx.kube.exec(proxy.namespace, proxy.name, PROXY_CONTAINER,
                                        ["pilot-agent", "request", "GET", "config_dump?resource=dynamic_listeners"],
                                        timeout=30.0)
            if result.returncode != 0:
                return None
            return barrier.active_policy_ids(result.stdout)
        except (TargetError, ValueError):
            return None

    def _analyze_namespace(self, ns: str) -> tuple[str, list[AnalyzeMessage] | TargetError]:
        """`istioctl analyze -n ns` (runs in a helper thread: it returns, the caller reports)."""
        assert self.ctx.istioctl
        argv = istioctl.analyze_argv(self.ctx.istioctl, self.ctx.kubeconfig, ns)
        try:
            result = self.ctx.run_command(argv, self.ctx.timeouts.analyze, ok=istioctl.ANALYZE_OK)
        except TargetError as exc:
            return ns, exc
        return ns, istioctl.parse_analyze(result.stdout)

    def _report_analysis(self, analysed: Sequence[tuple[str, list[AnalyzeMessage] | TargetError]]) -> None:
        messages: list[AnalyzeMessage] = []
        for ns, found in analysed:
            if isinstance(found, TargetError):
                notices.warn(f"istioctl analyze -n {ns} failed: {found}", IstioAnalyzeWarning)
            else:
                messages += found
        self.analysis.append((self._step, messages))
        for m in messages:
            if m.level in ("Error", "Warning"):
                notices.warn(f"istioctl analyze, step {self._step}: {m}", IstioAnalyzeWarning)
        notices.attach(f"istioctl analyze (step {self._step})",
                       "\n".join(str(m) for m in messages) or "No validation issues found.")

    # -- probes ---------------------------------------------------------------------------------
    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        # One round at a time: the proof of pooled ztunnel connections counts a round's records (logs.py).
        with self._probe_lock:
            observations = self._run_probes(probes, prove=True)
        self._record(probes, observations)
        return observations

    def _request(self, probe: Probe) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """The probe's URL, method and headers: Host values mapped to the cluster's namespaces, and its JWT,
        minted now by the run's issuer key, where its `request.jwt` says (a header or a query parameter)."""
        request = probe.request
        path, headers = request.path, request.headers
        if request.jwt is not None:
            path, headers = carry(request, self._keys.mint(request.jwt))
        ns = self.nsmap.cluster_namespace(probe.destination.namespace)
        port = "" if probe.port.number == 80 else f":{probe.port.number}"
        path = path if path.startswith("/") else "/" + path
        return (f"http://{probe.destination.name}.{ns}{port}{path}", request.method,
                tuple((k, self.nsmap.host_value(v) if k.lower() == "host" else v) for k, v in headers))

    def _run_probes(self, probes: Sequence[Probe], prove: bool,
                    runs_out: dict[int, ProbeRun] | None = None) -> list[Observation]:
        """Every probe run from its source pod (one exec per source), classified; with `prove`, each denial gets its
        record (`_prove`). `runs_out` receives how each probe was run (the canary reads the gateway's records)."""
        by_source: dict[str, list[int]] = {}
        for i, p in enumerate(probes):
            by_source.setdefault(p.source.ref, []).append(i)
        results: list[Observation | None] = [None] * len(probes)
        runs: dict[int, ProbeRun] = {}
        t = self.ctx.timeouts

        def run_source(ref: str, indices: list[int]) -> list[tuple[int, Observation, ProbeRun]]:
            pod = self._pods[ref]
            nonce = new_nonce()
            ports = [self._source_ports.take(ref) for _ in indices]
            calls = [CurlCall(f"{nonce}-{i}", *self._request(probes[i]), port)
                     for i, port in zip(indices, ports, strict=True)]
            script = build_script(calls, nonce, t.connect, t.probe)
            timeout = exec_timeout(len(calls), t.connect, t.probe)
            started = self.ctx.wall_clock()  # the kubelet's log timestamps are compared with this
            try:
                result = self.ctx.kube.exec(pod.namespace, pod.name, CURL_CONTAINER, ["sh", "-c", script], timeout)
            finally:
                for port in ports:
                    self._source_ports.give_back(ref, port)
            if result.returncode != 0:
                raise TargetError(f"probe script in {pod.namespace}/{pod.name} exited {result.returncode}: "
                                  f"{result.stderr.strip()[:300]}")
            parsed = parse_output(result.stdout, nonce, len(calls))
            out = []
            for i, call, res in zip(indices, calls, parsed, strict=True):
                probe = probes[i]
                evidence = res.evidence(f"kubectl exec -n {pod.namespace} {pod.name} -c {CURL_CONTAINER} -- "
                                        + call.describe(t.connect, t.probe))
                outcome = classify(evidence, self.nsmap.cluster_ref(self._answering(probe)))
                out.append((i, Observation(outcome, evidence), ProbeRun(call, res.local_address, pod, started)))
            return out

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(by_source)))) as pool:
            futures = [pool.submit(run_source, ref, idx) for ref, idx in by_source.items()]
            for fut in futures:
                for i, obs, run in fut.result():
                    results[i] = obs
                    runs[i] = run
        observations = [o for o in results if o is not None]
        if len(observations) != len(probes):
            raise TargetError("probe results lost")
        if runs_out is not None:
            runs_out.update(runs)
        if prove:
            observations = self._prove(probes, observations, runs)
        return observations

    # -- proof ----------------------------------------------------------------------------------
    def _prove(self, probes: Sequence[Probe], observations: list[Observation], runs: Mapping[int, ProbeRun]
               ) -> list[Observation]:
        """Every denial gets its enforcing proxy's record, or says why it has none (logs.py, issue 9).

        Before any record: a missing, dead or restarted enforcing proxy is the observation's `problem`
        (an infrastructure failure, never a policy verdict). Then one `Wanted` per denial, the logs read
        (retried) until every denial has its record or the grace period is over.
        """
        out = list(observations)
        health: dict[str, str | None] = {}
        for i, obs in enumerate(out):
            if obs.outcome != ALLOWED:
                try:
                    problem = self._proxy_problem(probes[i], obs.outcome, health)
                except TargetError as exc:
                    problem = f"the enforcing proxy's state could not be read: {exc}"
                if problem:
                    out[i] = replace(obs, problem=problem)
        wanted: list[Wanted] = []
        for i, obs in enumerate(out):
            if obs.outcome not in DENIAL_FORMS or obs.problem:
                continue
            w = self._wanted(i, probes[i], obs.outcome, runs[i])
            if isinstance(w, str):
                out[i] = replace(obs, notes=(*obs.notes, w))
            else:
                wanted.append(w)
        if not wanted:
            return out
        deadline = time.monotonic() + self.ctx.timeouts.proof_grace
        pending = wanted
        while pending:
            final = time.monotonic() >= deadline
            logs, unreadable = self._read_logs(pending)
            reasons = {w.key: next((unreadable[log] for log in w.logs if log in unreadable), None) for w in pending}
            readable = [w for w in pending if reasons[w.key] is None]
            for w in pending:
                reason = reasons[w.key]
                if reason:
                    out[w.key] = self._unreadable(probes[w.key], out[w.key], reason)
            for key, match in self._matcher.match(readable, logs, final).items():
                out[key] = _with_match(out[key], match)
            done = {w.key for w in pending if reasons[w.key]}
            done |= {w.key for w in readable if out[w.key].proof is not None or len(out[w.key].notes) >
                     len(observations[w.key].notes)}
            pending = [w for w in pending if w.key not in done]
            if final:
                break
            if pending:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return out

    def _unreadable(self, probe: Probe, obs: Observation, reason: str) -> Observation:
        """An unreadable log is the target's fault: a problem, or, only with the user's opt-in, unconfirmed."""
        text = f"the enforcing proxy's log could not be read: {reason}"
        if self.ctx.accept_unconfirmed:
            with self._lock:
                self.unconfirmed.append(f"step {self._step}, {probe.describe()}: {text}")
            return replace(obs, unconfirmed=text)
        return replace(obs, problem=text)

    def _log_sources(self, log: str) -> list[PodInfo]:
        """The pods behind a log name: one pod, or every replica of a waypoint (`waypoint:<ns>/<name>`)."""
        if log.startswith("waypoint:"):
            ref = log.partition(":")[2]
            return [p for p in self._waypoint_pods if self._waypoint_ref(p) == ref]
        return [p for p in self._all_pods() if f"{p.namespace}/{p.name}" == log]

    def _all_pods(self) -> list[PodInfo]:
        return [*self._pods.values(), *self._waypoint_pods, *self._ztunnels.values()]

    def _read_logs(self, wanted: Sequence[Wanted]) -> tuple[dict[str, list[LogLine]], dict[str, str]]:
        """Each log the wanted records are in, read once (since the earliest exec start, kubelet timestamps)."""
        since: dict[str, float] = {}
        for w in wanted:
            for log in w.logs:
                since[log] = min(since.get(log, w.after), w.after)
        logs: dict[str, list[LogLine]] = {}
        unreadable: dict[str, str] = {}
        now = self.ctx.wall_clock()
        for log, after in since.items():
            pods = self._log_sources(log)
            if not pods:
                unreadable[log] = f"no pod for {log}"
                continue
            lines: list[LogLine] = []
            try:
                for pod in pods:
                    container = PROXY_CONTAINER if pod in self._pods.values() or pod in self._waypoint_pods \
                        else ZTUNNEL_CONTAINER
                    text = self._read_log(pod, container, math.ceil(max(0.0, now - after)) + 2)
                    lines += split_log(log, text)
            except TargetError as exc:
                unreadable[log] = str(exc)
                continue
            logs[log] = lines
        return logs, unreadable

    def _read_log(self, pod: PodInfo, container: str, since_seconds: int) -> str:
        """One log read, retried (bounded) before anyone concludes it is unreadable."""
        retrying = Retrying(stop=stop_after_attempt(LOG_ATTEMPTS), wait=wait_exponential(multiplier=0.2, max=2.0),
                            retry=retry_if_exception_type(TargetError), sleep=self.ctx.sleep, reraise=True)
        return str(retrying(self.ctx.kube.logs, pod.namespace, pod.name, container, since_seconds=since_seconds))

    def _waypoint_ref(self, pod: PodInfo) -> str:
        return f"{self.nsmap.scenario_namespace(pod.namespace)}/{pod.labels.get(WAYPOINT_POD_LABEL, pod.name)}"

    def _waypoint_for(self, dest: Workload) -> str | None:
        """The deployed waypoint serving `dest`'s namespace (render.py: the first one of the namespace), if any."""
        return next((wp.ref for wp in self._waypoints if wp.namespace == dest.namespace), None)

    def _wanted(self, key: int, probe: Probe, outcome: str, run: ProbeRun) -> Wanted | str:
        """Which log holds this denial's record and how to recognise it; a note when no proxy can hold one."""
        dest, source = probe.destination, probe.source
        if not dest.in_mesh:
            return "the destination is not in the mesh: no proxy of it can have decided this"
        if dest.is_gateway:
            return self._wanted_at_gateway(key, probe, outcome, run)
        dst_pod = self._pods[dest.ref]
        dst = join_addr(dst_pod.ip, probe.port.number)
        curl_addr = run.local_address
        if not self._captured(dest):  # a sidecar decides (sidecar mode, or a sidecar namespace of mode mixed)
            if self._captured(source) and outcome not in HTTP_DENIALS:
                # mode mixed, ambient client: ztunnel tunnels into the sidecar's HBONE port and the sidecar decides
                # on an internal chain (listener_inbound.go buildInboundHBONEListeners); which address its record
                # of the inner connection carries is not established here, so such a denial is not proved
                return ("a connection denial by a sidecar of a captured (ambient) client's HBONE tunnel: the record "
                        "matcher does not tie that record to its probe yet")
            sidecar = Wanted(key, f"{dst_pod.namespace}/{dst_pod.name}", "envoy", run.started, f"sidecar:{dest.ref}",
                             "sidecar", dest.ref, dst=dst, local_host=dst_pod.ip)
            if outcome in HTTP_DENIALS:  # the probe's own header: exact (its inner HBONE chain included)
                return replace(sidecar, probe_id=run.call.probe_id,
                               local_host=None if self._captured(source) else dst_pod.ip)
            if curl_addr is None:
                return "curl reported no local address for this connection: its record cannot be found"
            # a client sidecar opens its own connection: the destination sees that one's address
            via = f"{run.pod.namespace}/{run.pod.name}" if source.in_mesh else None
            return replace(sidecar, src=curl_addr, via=via)
        if outcome in HTTP_DENIALS:
            # a sidecar client sends HBONE straight to the pod, around the waypoint (endpoint_builder.go@1.30.3
            # l.742-752), so only a captured client's request meets it
            waypoint = self._waypoint_for(dest) if self._captured(source) else None
            if waypoint is None:
                return "a 403 in ambient mode without a waypoint: no proxy here answers that way"
            return Wanted(key, f"waypoint:{waypoint}", "envoy", run.started, f"waypoint:{waypoint}", "waypoint",
                          waypoint, probe_id=run.call.probe_id)
        ztunnel = self._ztunnels.get(dst_pod.node)
        if ztunnel is None:
            return f"no ztunnel on node {dst_pod.node}"
        at_ztunnel = Wanted(key, f"{ztunnel.namespace}/{ztunnel.name}", "ztunnel", run.started,
                            f"ztunnel:{dst_pod.node}", "ztunnel", dest.ref, dst=dst)
        if outcome == DENIED_UPSTREAM and self._waypoint_for(dest) and self._captured(source):
            # the destination's ztunnel refused the waypoint's HBONE connection (the 503 at the client)
            return replace(at_ztunnel, pooled=frozenset(p.ip for p in self._waypoint_pods))
        if source.in_mesh and not self._captured(source):
            # mode mixed, a sidecar client: its sidecar's own HBONE connection to the pod (endpoint_builder.go@1.30.3
            # tunnel branch) reaches the destination ztunnel from the client pod's address; counted per round
            return replace(at_ztunnel, pooled=frozenset({run.pod.ip}))
        if source.in_mesh:
            # HBONE: the destination's record is keyed by the pooled connection; the source ztunnel's own
            # record of curl's connection (src.addr = curl's address) ties each probe to one refusal
            source_ztunnel = self._ztunnels.get(run.pod.node)
            link = f"{source_ztunnel.namespace}/{source_ztunnel.name}" if source_ztunnel and curl_addr else None
            return replace(at_ztunnel, pooled=frozenset({run.pod.ip}), src=curl_addr, link=link)
        if curl_addr is None:
            return "curl reported no local address for this connection: its record cannot be found"
        return replace(at_ztunnel, src=curl_addr)

    def _wanted_at_gateway(self, key: int, probe: Probe, outcome: str, run: ProbeRun) -> Wanted | str:
        """Where the record of a denied gateway probe is (engine/path.py ingress_route, logs.py): the gateway's own
        record by the probe header, handing on to the route's sidecar or the service's waypoint when the gateway
        only passed their answer on; a 503 is the destination ztunnel refusing the gateway's HBONE connection (or
        the waypoint's), counted per round for that pooled source."""
        gateway = probe.destination
        gw_pod = self._pods[gateway.ref]
        backend, port, waypoint = self._backend(probe)
        b_pod = self._pods[backend.ref]
        plane = self._plane(backend.namespace)
        if outcome in HTTP_DENIALS:
            onward = None
            if plane == "sidecar":
                onward = Onward(f"{b_pod.namespace}/{b_pod.name}", f"sidecar:{backend.ref}", "sidecar", backend.ref,
                                local_host=b_pod.ip)
            elif waypoint is not None:
                onward = Onward(f"waypoint:{waypoint}", f"waypoint:{waypoint}", "waypoint", waypoint)
            return Wanted(key, f"{gw_pod.namespace}/{gw_pod.name}", "envoy", run.started, f"gateway:{gateway.ref}",
                          "gateway", gateway.ref, probe_id=run.call.probe_id, local_host=gw_pod.ip, onward=onward)
        if outcome == DENIED_UPSTREAM and plane != "sidecar":
            ztunnel = self._ztunnels.get(b_pod.node)
            if ztunnel is None:
                return f"no ztunnel on node {b_pod.node}"
            sources = frozenset(p.ip for p in self._waypoint_pods if self._waypoint_ref(p) == waypoint) \
                if waypoint is not None else frozenset({gw_pod.ip})
            return Wanted(key, f"{ztunnel.namespace}/{ztunnel.name}", "ztunnel", run.started, f"ztunnel:{b_pod.node}",
                          "ztunnel", backend.ref, dst=join_addr(b_pod.ip, port), pooled=sources)
        return (f"{outcome} from the ingress gateway {gateway.ref}: no proxy on its path to {backend.ref} ({plane}) "
                "answers that way")

    # -- proxy health ---------------------------------------------------------------------------
    def _snapshot(self) -> None:
        """Remember each enforcing proxy's pod and restart count: a later change means it died meanwhile."""
        self._baseline = {f"{p.namespace}/{p.name}": (p.uid, _proxy_restarts(p)) for p in self._all_pods()}

    def _proxy_problem(self, probe: Probe, outcome: str, cache: dict[str, str | None]) -> str | None:
        """Why the proxy that should have decided this probe cannot have (missing, dead, restarted), or None."""
        dest = probe.destination
        if not dest.in_mesh:
            return None
        if dest.is_gateway:
            # the gateway, then the enforcer behind it on the probe's path (the one _wanted_at_gateway reads)
            backend, _, waypoint = self._backend(probe)
            problem = self._envoy_problem(dest, cache, f"the ingress gateway {dest.ref}")
            if problem is not None:
                return problem
            if not self._captured(backend):
                return self._envoy_problem(backend, cache, f"the sidecar of {backend.ref}")
            if waypoint is not None and (problem := self._waypoint_problem(waypoint, cache)):
                return problem
            return None if outcome in HTTP_DENIALS else self._ztunnel_problem(self._pods[backend.ref].node, cache)
        if not self._captured(dest):
            return self._envoy_problem(dest, cache, f"the sidecar of {dest.ref}")
        problem = None
        if outcome in (*HTTP_DENIALS, DENIED_UPSTREAM):
            waypoint = self._waypoint_for(dest)
            if waypoint is not None:
                problem = self._waypoint_problem(waypoint, cache)
        return problem or self._ztunnel_problem(self._pods[dest.ref].node, cache)

    def _envoy_problem(self, w: Workload, cache: dict[str, str | None], what: str) -> str | None:
        """Why `w`'s own Envoy (its sidecar, or an ingress gateway's proxy) cannot have decided: gone, not running,
        restarted since the step started; None when it is the one the step started with."""
        pod = self._pods[w.ref]
        key = f"envoy {pod.namespace}/{pod.name}"
        if key not in cache:
            current = [p for p in self.ctx.kube.pods(pod.namespace, f"{WORKLOAD_LABEL}={w.name}") if p.name == pod.name]
            cache[key] = self._dead(current[0] if current else None, pod, PROXY_CONTAINER, what)
        return cache[key]

    def _ztunnel_problem(self, node: str, cache: dict[str, str | None]) -> str | None:
        key = f"ztunnel {node}"
        if key not in cache:
            known = self._ztunnels.get(node)
            if known is None:
                cache[key] = f"no ztunnel pod on node {node}: nothing enforces L4 policy there"
            else:
                current = [z for z in self.ctx.kube.pods(known.namespace, "app=ztunnel") if z.name == known.name]
                cache[key] = self._dead(current[0] if current else None, known, ZTUNNEL_CONTAINER,
                                        f"ztunnel on node {node}")
        return cache[key]

    def _waypoint_problem(self, waypoint: str, cache: dict[str, str | None]) -> str | None:
        key = f"waypoint {waypoint}"
        if key not in cache:
            ns, _, name = waypoint.partition("/")
            pods = [p for p in self.ctx.kube.pods(self.nsmap.cluster_namespace(ns), f"{WAYPOINT_POD_LABEL}={name}")
                    if p.ready and not p.deleting]
            cache[key] = None if pods else f"the waypoint {waypoint} has no ready pod"
        return cache[key]

    def _dead(self, current: PodInfo | None, known: PodInfo, container: str, what: str) -> str | None:
        if current is None or current.deleting:
            return f"{what} is gone (pod {known.namespace}/{known.name})"
        if container not in current.running:
            return f"{what} is not running (container {container} of {known.namespace}/{known.name})"
        uid, restarts = self._baseline.get(f"{known.namespace}/{known.name}", (current.uid, _proxy_restarts(current)))
        if current.uid != uid or _proxy_restarts(current) > restarts:
            return (f"{what} restarted since the step started (pod {known.namespace}/{known.name}): its log and "
                    "configuration of this step are gone")
        return None

    # -- records --------------------------------------------------------------------------------
    def _record(self, probes: Sequence[Probe], observations: Sequence[Observation]) -> None:
        path = self.ctx.observations_out
        if path is None:
            return
        lines = []
        for probe, obs in zip(probes, observations, strict=True):
            lines.append(json.dumps({
                "target": self.ctx.target_name, "istio": str(self.ctx.version), "scenario": self.scenario.name,
                "path": self.scenario.path, "mode": self.mode, "step": self._step,
                "probe": list(_jsonable(probe.key)), "outcome": obs.outcome,
                "proof": obs.proof.policy if obs.proof else None, "denial_proved": obs.confirmed_denial,
                "proof_kind": obs.proof.kind if obs.proof else None, "problem": obs.problem,
                "unconfirmed": obs.unconfirmed,
                "time": time.time(),
            }, sort_keys=True))
        with self._lock, open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")


_ADDRESS_FIELDS = ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
_ADDRESS_KEYS = ("source.ip", "remote.ip")


def _address_values(scenario: Scenario) -> Iterator[tuple[str, str]]:
    """Every string value of the scenario's AuthorizationPolicies' source and remote address fields (`ipBlocks`,
    `remoteIpBlocks`, their `not` forms, `when` on `source.ip` / `remote.ip`), with where it is written."""
    for step in scenario.steps:
        for m in step.policies:
            if m.kind != "AuthorizationPolicy" or not isinstance(m.spec, Mapping):
                continue
            for i, rule in enumerate(m.spec.get("rules") or []):
                if not isinstance(rule, Mapping):
                    continue
                found: list[tuple[Any, str]] = []
                for frm in rule.get("from") or []:
                    source = frm.get("source") if isinstance(frm, Mapping) else None
                    if isinstance(source, Mapping):
                        found += [(source.get(key), f"{m.ref} rule {i} {key} (step {step.name})")
                                  for key in _ADDRESS_FIELDS]
                for cond in rule.get("when") or []:
                    if isinstance(cond, Mapping) and cond.get("key") in _ADDRESS_KEYS:
                        found += [(cond.get(key), f"{m.ref} rule {i} when {cond['key']} (step {step.name})")
                                  for key in ("values", "notValues")]
                for values, where in found:
                    for v in values if isinstance(values, list) else []:
                        if isinstance(v, str):
                            yield v, where


def literal_blocks(scenario: Scenario) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    """Every literal address block (an address is a /32 or /128) of the scenario's AuthorizationPolicies' source and
    remote address fields, with where it is; `${ip:...}` values and unparsable ones (validation's business) are
    left out."""
    out: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for v, where in _address_values(scenario):
        if "${" in v:
            continue
        try:
            out.append((ipaddress.ip_network(v, strict=False), where))
        except ValueError:
            continue
    return out


def client_address_uses(scenario: Scenario, clients: set[str]) -> list[str]:
    """Where the scenario's AuthorizationPolicies name one of `clients`' addresses (`${ip:<ns>/<name>}`) in a source
    or remote address field (`ipBlocks`, `remoteIpBlocks`, their `not` forms, `source.ip`, `remote.ip`)."""
    out = [f"{where}: {v}" for v, where in _address_values(scenario)
           if any(m.group(1) in clients for m in ADDRESS_PLACEHOLDER.finditer(v))]
    return list(dict.fromkeys(out))


def _contains(block: ipaddress.IPv4Network | ipaddress.IPv6Network, address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == block.version and ip in block


def _jsonable(key: tuple[Any, ...]) -> list[Any]:
    return [list(map(list, k)) if isinstance(k, tuple) else k for k in key]
