"""The local target: a mesh of real Envoy processes with real mTLS on loopback (DESIGN.md §6).

`LocalTarget` implements `conformance.target.Target`; `LocalMeshSession` is one running mesh for one
scenario in one mode. This module only orchestrates: addresses (`addresses`), certificates (`pki`),
the apps (`app`, on the target's one host: `apphost`), Envoy config per role (`config`), the policy
compiler (`authz`), processes and acks (`envoy`, `lifetime`), curl (`curl`) and proofs (`logs`).

A session, start to end:
1. reap what killed runs left, take free loopback /24s (one per 126 workloads), make a private temp dir and
   a run marker;
2. one CA, one SPIFFE leaf per in-mesh workload; the JWT issuers' signing keys (tokens.py) when first needed;
3. every workload's ports bound on the target's app host (one process for all of the target's runs), each on
   the workload's own app address, and one ext-authz server process (extauthz_server.py: Istio's sample, HTTP
   and gRPC) for `kind: ext-authz` ones;
4. per in-mesh sidecar workload one Envoy; one Envoy for all the ambient workloads, the run's "ztunnel" (as one
   node's ztunnel serves every pod on it: each workload has its own listeners, certificate and access log in it);
   in waypoint mode one Envoy per waypoint; an ingress gateway's own Envoy; all started at once, ready when every
   admin /ready says LIVE
   and no initial listener was rejected; the listeners that never change live in the bootstrap, the
   policy-bearing ones in the LDS the run's xDS server sends (xds.py);
5. a canary probe to every destination port, so a broken mesh fails here, plainly, and not later as
   a policy "denial" (a client proxy has outbound plumbing only for the destinations its probes use:
   the scenario's, the canary's, and any other one a probe first needs, added then);
6. `apply()`: fill `${jwks:<issuer>}` with the run's JWKS, compile the complete policy set per workload
   (CUSTOM pairs, the JWT filter, RBAC: `authz`, `authn`, `extauthz`), rewrite only the listeners that
   changed, return once every affected Envoy has acknowledged them (the propagation barrier);
7. `probe()`: the round's probes as one curl process, one transfer, source port and connection per probe (each
   probe's JWT minted for it and carried where its spec says),
   classified from curl's output, each denial backed by the enforcing proxy's access-log record (RBAC,
   the JWT filter's message, ext_authz naming the CUSTOM policy);
8. `close()`: everything stopped, the run's app listeners released, every file removed (also from atexit,
   SIGTERM and SIGHUP).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from conformance import pilotenv
from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.local import authn, config, gateway, lifetime
from conformance.mesh.local.addresses import (
    ADMIN_PORT,
    AddressBlock,
    Layout,
    acquire_block,
    plan_layout,
    slash24s_for,
)
from conformance.mesh.local.apphost import AppHost
from conformance.mesh.local.curl import (
    CURL_MISSING,
    CurlRequest,
    CurlResult,
    curl_binary,
    new_probe_id,
    run_curl_batch,
)
from conformance.mesh.local.envoy import EnvoyProcess, envoy_binary, update_clusters, update_listeners, wait_ready
from conformance.mesh.local.extauthz import service_index
from conformance.mesh.local.logs import AccessLog, LogRecord, deciding_record, names_allowing_policy, proof_from
from conformance.mesh.local.pki import CertificateAuthority
from conformance.mesh.local.rbac import go_parse_bool
from conformance.mesh.local.xds import XdsServer
from conformance.model import (
    ALLOWED,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    ERROR,
    INGRESS_USE_WAYPOINT,
    Manifest,
    Mode,
    Port,
    Probe,
    Request,
    Scenario,
    Workload,
)
from conformance.names import GATEWAY_NAME_LABEL
from conformance.probe import (
    EXT_AUTHZ_DENIED,
    EXT_AUTHZ_ERROR,
    JWT_REJECTED,
    Observation,
    Proof,
    classify,
    names_workload,
)
from conformance.target import Applied
from conformance.tokens import IssuerKeys, carry
from conformance.versions import IstioVersion

_EXT_AUTHZ_SCRIPT = Path(__file__).with_name("extauthz_server.py")


# Seconds a round that may be judged waits for the records of its probes. Envoy writes each at once (ENVOY_FLAGS), and
# in a passing `pytest policies` no such round waits even 1.5 s (measured), so the wait only costs time when a record
# is missing. (It was raised from 2 s for a TCP denial "without proof" seen under load; the record had been there,
# outside the time window of its chain: `_upstream_records`.)
PROOF_WAIT = 5.0
PROOF_WAIT_DURING_APPLY = 0.25  # for a round begun during apply(), which is never judged (LocalMeshSession.probe)


def _with_proof(outcome: str, result: CurlResult, proof: Proof | None) -> str:
    """The outcome form where curl's output alone cannot tell it: an HTTP error answer that the enforcing
    proxy's record proves the JWT filter or ext_authz gave. An unreachable provider's denial is statusOnError
    (403 by default) with an empty body, which only the record (`ext_authz_error`) tells apart; a JWT status
    text is always recognised from curl's output already."""
    if proof is None or outcome != ERROR or result.evidence.exit_code != 0 or result.evidence.status in (0, 200):
        return outcome
    if proof.kind in (EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR) and not 200 <= result.evidence.status < 300:
        return DENIED_CUSTOM
    if proof.kind == JWT_REJECTED and result.evidence.status in (401, 403):
        return DENIED_AUTHN
    return outcome


def default_concurrency() -> int:
    """Scenario runs side by side by default: two per core (a run mostly waits), at least two, at most eight."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def _authz() -> Any:
    """The policy compiler (`authz.py`), imported late: the target must say it is missing, not crash."""
    from conformance.mesh.local import authz

    return authz


class LocalTarget:
    """Runs scenarios on a mesh of Envoy processes on this machine's loopback: no root, no Docker.

    `version` is the Istio release to emulate (`--istio-version`; default: 1.30's newest modelled patch):
    the compiler generates what that release's istiod generated (release.py), and refuses, with the
    reason, a scenario whose policies need a behaviour of that release it cannot emulate.
    """

    name = "local"

    def __init__(self, *, connect_timeout: float = 2.0, max_time: float = 6.0, parallel: int | None = None,
                 startup_timeout: float = 30.0, canary: bool = True, keep_files: bool = False,
                 version: IstioVersion | str | None = None, concurrency: int | None = None):
        from conformance.mesh.local.release import Release

        self.release = Release.of(version)  # UsageError for a release the suite does not model
        # scenario runs side by side (items.start_scheduler): each session is a mesh of its own, in its own loopback
        # block, so nothing one run applies reaches another, and most of a step is waiting (Envoy's acknowledgement,
        # curl), which overlaps
        self.concurrency = concurrency if concurrency is not None else default_concurrency()
        self.connect_timeout = connect_timeout
        self.max_time = max_time
        self.parallel = parallel or max(4, 4 * (os.cpu_count() or 1))
        self.startup_timeout = startup_timeout
        self.canary = canary
        self.keep_files = keep_files
        self.apps = AppHost(startup_timeout)  # every run's workload apps (apphost.py), started on first use

    def close(self) -> None:
        """Stop what the target shares between its runs (the app host); each run closes its own mesh."""
        self.apps.close()

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs_alone(self, scenario: Scenario, step: object) -> bool:
        """Never: a local session's policies reach only its own Envoys (its own addresses, its own files), so even
        a mesh-wide policy of one run cannot be seen by another (the cluster targets' reason to run alone)."""
        return False

    def unavailable(self, mode: Mode, scenario: Scenario | None = None) -> str | None:
        """Why this machine cannot run `mode` locally (missing curl or Envoy, mode not built), or why it
        refuses `scenario` at this release (`refusal`), or None."""
        if not sys.platform.startswith("linux"):
            return "the local target needs Linux (the whole 127.0.0.0/8 on loopback, prctl)"
        if curl_binary() is None:
            return CURL_MISSING
        try:
            envoy_binary()
        except TargetUnavailable as exc:
            return str(exc)
        if importlib.util.find_spec("conformance.mesh.local.authz") is None:
            return "the local mesh's policy compiler (conformance/mesh/local/authz.py) is missing"
        return self.refusal(scenario, mode) if scenario is not None else None

    def refusal(self, scenario: Scenario, mode: Mode) -> str | None:
        """Why the local mesh will not run `scenario` in `mode` at its release, or None.

        A version-keyed behaviour the local mesh cannot emulate (authz.unemulated) must never become a
        silent run of another release's semantics: the scenario is refused, naming the release and the
        behaviour. Every step's policies are checked up front, so a refusal comes before anything runs
        (start raises TargetUnavailable, which errors.py defines as a reason to skip), never half-way.
        """
        policies = [m for step in scenario.steps for m in step.policies]
        reason = (_authz().unemulated(policies, mode, self.release) or _missing_packages(scenario)
                  or (disabled_provider_port(scenario) if mode in ("sidecar", "mixed") else None)
                  or (mixed_provider(scenario) if mode == "mixed" else None) or gateway_provider(scenario, mode))
        return f"{self.name} target: {reason}" if reason else None

    def start(self, scenario: Scenario, mode: Mode) -> LocalMeshSession:
        """A running mesh for `scenario` in `mode`; TargetUnavailable (a skip) when this machine cannot
        run it or the release's semantics cannot be emulated for it (`unavailable`)."""
        reason = self.unavailable(mode, scenario)
        if reason:
            raise TargetUnavailable(reason)
        session = LocalMeshSession(scenario, mode, self)
        try:
            session.start()
        except BaseException:
            session.close()
            raise
        return session


_DISABLED_PROVIDER = ("PeerAuthentication DISABLE on the ext-authz provider port {} (sidecar mode): Istio's "
                      "proxies would call it in plaintext (auto-mTLS), the local mesh's ext_authz clusters are mTLS "
                      "only (extauthz.py); not emulated")


def disabled_provider_port(scenario: Scenario) -> str | None:
    """Why a scenario's PeerAuthentications cannot be built for its ext-authz provider in sidecar mode, or None:
    a DISABLE port of the provider needs the ext_authz cluster in plaintext, which the local mesh does not build."""
    authz = _authz()
    for step in scenario.steps:
        for w in scenario.workloads:
            if w.kind != "ext-authz":
                continue
            for port in w.ports:
                if authz.peer_authentication_mode(step.policies, w, scenario.mesh, port.number) == "DISABLE":
                    return _DISABLED_PROVIDER.format(f"{w.ref}:{port.number}") + f" (step '{step.name}')"
    return None


def gateway_provider(scenario: Scenario, mode: Mode) -> str | None:
    """Why the local mesh cannot build the scenario's ingress gateway with its ext-authz providers, or None: the
    gateway calls a provider through its `outbound|<port>||<fqdn>` mTLS cluster (gateway.py), as a sidecar does,
    which reaches a provider only in a sidecar namespace; Istio's gateway would send HBONE to an ambient one
    (endpoint_builder.go@1.30 l.708-770: an ambient endpoint is tunnelled; docs/ingress-gateways.md §2)."""
    if not any(w.is_gateway for w in scenario.workloads):
        return None
    for w in scenario.workloads:
        plane = scenario.dataplane(w.namespace) if mode == "mixed" else mode
        if w.kind == "ext-authz" and w.in_mesh and plane != "sidecar":
            return (f"the ext-authz provider {w.ref} runs the {plane} data plane, and the local mesh's ingress gateway "
                    "reaches providers only by mTLS, not HBONE: not emulated")
    return None


def mixed_provider(scenario: Scenario) -> str | None:
    """Why mode mixed cannot be built for the scenario's ext-authz providers, or None: a sidecar calls a provider
    through its own mTLS cluster `outbound|<port>||<fqdn>` (extauthz.py), which the local mesh does not build as
    HBONE, so a provider in an ambient or waypoint namespace is refused while some namespace runs sidecars."""
    sidecars = any(w.in_mesh and scenario.dataplane(w.namespace) == "sidecar" for w in scenario.workloads)
    for w in scenario.workloads:
        if w.kind == "ext-authz" and w.in_mesh and scenario.dataplane(w.namespace) != "sidecar" and sidecars:
            return (f"mode mixed: the ext-authz provider {w.ref} runs the {scenario.dataplane(w.namespace)} data "
                    "plane, and the local mesh's sidecars reach providers only by mTLS, not HBONE: not emulated")
    return None


def _missing_packages(scenario: Scenario) -> str | None:
    """The Python packages the scenario's JWT and gRPC ext_authz parts need on this machine, when missing."""
    needs_jwt = bool(scenario.issuers) or any(
        e.probe.request.jwt is not None for step in scenario.steps for e in step.expectations)
    if needs_jwt and importlib.util.find_spec("jwt") is None:
        return "minting JWTs needs PyJWT (pip install 'pyjwt>=2.8')"
    if any(p.kind == "grpc" for p in scenario.mesh.extension_providers):
        for module, package in (("grpc", "grpcio"), ("envoy.service.auth.v3", "xds-protos")):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return f"the gRPC ext_authz provider needs {package} (pip install {package})"
    return None


@dataclass(frozen=True)
class _Planned:
    probe: Probe
    request: CurlRequest


class LocalMeshSession:
    """One running local mesh (see the module docstring for its life)."""

    # probe() may run while apply() does (they share no state): the runner measures the enforcement
    # gap with a probe loop beside apply() (conformance/gap.py).
    probes_during_apply = True
    # apply() returns once every changed Envoy acknowledged the new listeners: after that every
    # observation counts, and one wrong one fails the step (converge.py, strict judging).
    exact_barrier = True

    def __init__(self, scenario: Scenario, mode: Mode, target: LocalTarget):
        self.scenario = scenario
        self.mode: Mode = mode
        self.mesh = scenario.mesh
        self.target = target
        self.addresses: dict[str, str] = {}
        self.layout: Layout | None = None
        self.tmpdir: Path | None = None
        self.timings: dict[str, float] = {}
        self._policies: tuple[Manifest, ...] = ()
        self._envoys: dict[str, EnvoyProcess] = {}  # proxy ref -> its Envoy (the ztunnels' is shared: `_members`)
        self._logs: dict[str, AccessLog] = {}
        self._contexts: dict[str, config.ProxyContext] = {}
        self._static_listeners: dict[str, list[dict[str, Any]]] = {}  # in the bootstrap, never change
        self._static_routes: dict[str, frozenset[tuple[str, int]]] = {}  # a ztunnel's outbound in its bootstrap
        self._canary_batch: list[Probe] = []
        self._xds: XdsServer | None = None
        self._kind: dict[str, str] = {}  # proxy ref -> "sidecar" | "ztunnel" | "waypoint"
        self._served: dict[str, list[tuple[config.Peer, Port]]] = {}  # waypoint ref -> service ports
        self._gateway_routes: dict[str, list[gateway.Onward]] = {}  # gateway ref -> its routes' backends
        self._bound = False  # whether the app host holds listeners of this run
        self._block: AddressBlock | None = None
        self._marker: lifetime.RunMarker | None = None
        self._closed = False
        self._close_lock = threading.RLock()  # a signal handler may close while close() runs
        self._apply_lock = threading.Lock()
        # A probe round during which apply() changed listeners (it was changing them when the round began, or began
        # to while it ran) started before that apply's barrier, so it is never judged (gap.py: a round counts from
        # `Applied.acknowledged_at` on; a run's steps, and so its judged rounds and its applies, follow each other)
        self._applying = False
        self._applies = 0
        self._curl = curl_binary() or "curl"
        self._reserved: frozenset[int] = frozenset()
        self._keys = IssuerKeys(scenario.issuers)  # the issuers' signing keys, made when first needed
        self._services = service_index(scenario.workloads)  # LookupCluster's registry for CUSTOM providers
        self._ext_authz: subprocess.Popen[bytes] | None = None  # the ext-authz workloads' server
        self._grpc_ports: frozenset[tuple[str, int]] = frozenset()

    # --- context manager ----------------------------------------------------------------------------

    @property
    def _members(self) -> dict[EnvoyProcess, list[str]]:
        """Each Envoy once, with the proxy refs it serves, in start order (the run's ztunnel serves several)."""
        out: dict[EnvoyProcess, list[str]] = {}
        for ref, env in self._envoys.items():
            out.setdefault(env, []).append(ref)
        return out

    @property
    def _run_id(self) -> str:
        """This run's name at the target's app host: its temp dir's, unique while the run lives."""
        return self.tmpdir.name if self.tmpdir is not None else ""

    def __enter__(self) -> LocalMeshSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- start --------------------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        runtime = lifetime.runtime_dir()
        lifetime.reap_stale(runtime)
        workloads = self.scenario.workloads
        waypoints = tuple(w for w in self.scenario.waypoints if self._plane(w.namespace) == "waypoint")
        self._block = acquire_block(runtime, size=slash24s_for(len(workloads) + len(waypoints)))
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{lifetime.TEMP_PREFIX}{os.getpid()}-"))
        self._marker = lifetime.RunMarker(runtime, self.tmpdir, self._block.describe())
        lifetime.register(self)

        self.layout = layout = plan_layout(self._block, workloads, waypoints)
        self.addresses = dict(layout.address)
        # curl's source ports (curl.SourcePorts): none a listener of this run uses on the workloads' addresses
        self._reserved = frozenset({*layout.port_map, *layout.port_map.values(), *layout.outbound.values()})
        ca = CertificateAuthority(self.tmpdir / "pki", self.mesh.trust_domain)
        certs = {w.ref: ca.issue(w.ref.replace("/", "_"), w.namespace, w.service_account)
                 for w in workloads if w.in_mesh}
        certs.update({w.ref: ca.issue("waypoint_" + w.ref.replace("/", "_"), w.namespace, w.service_account)
                      for w in waypoints})
        peers = [
            config.Peer(w, layout.address[w.ref], layout.app_address[w.ref],
                        certs[w.ref].spiffe_id if w.in_mesh else None)
            for w in workloads
        ]
        waypoint_peers = {
            w.ref: config.Peer(
                Workload(w.name, w.namespace, w.service_account, {GATEWAY_NAME_LABEL: w.name}),
                layout.address[w.ref], layout.app_address[w.ref], certs[w.ref].spiffe_id,
            )
            for w in waypoints
        }
        # The ext-authz services the CUSTOM providers name (LookupCluster finds the workload's Service), and
        # which of their ports speak gRPC (the clusters to them HTTP/2).
        by_ref = {p.ref: p for p in peers}
        providers: dict[tuple[str, int], tuple[config.Peer, Port]] = {}
        grpc_ports: set[tuple[str, int]] = set()
        for provider in self.mesh.extension_providers:
            target = self.scenario.provider_workload(provider)
            port = target.port(provider.port) if target is not None else None
            if target is None or port is None:
                continue  # istiod's cluster would not exist either: ext_authz cannot reach it
            providers.setdefault((target.ref, port.number), (by_ref[target.ref], port))
            if provider.kind == "grpc":
                grpc_ports.add((target.ref, port.number))
        self._grpc_ports = frozenset(grpc_ports)
        # mode mixed: the ambient-captured peers, which sidecars reach by HBONE straight to the pod
        hbone_peers = frozenset(
            p.ref for p in peers if p.spiffe and not p.workload.is_gateway
            and self._plane(p.workload.namespace) != "sidecar") if self.mode == "mixed" else frozenset()
        # A waypoint serves every in-mesh service of its namespace (the first waypoint named there). A gateway is
        # neither captured by ztunnel nor served by a waypoint: its pod is injected, which istio-cni never hands to
        # ztunnel (cni/pkg/util/enablement_selector.go@1.30 l.76-80; docs/ingress-gateways.md §2).
        waypoint_for: dict[str, config.Peer] = {}
        for peer in peers:
            via = next((w for w in waypoints if w.namespace == peer.workload.namespace), None)
            if via is not None and peer.spiffe and peer.workload.ports and not peer.workload.is_gateway:
                waypoint_for[peer.ref] = waypoint_peers[via.ref]
                self._served.setdefault(via.ref, []).extend((peer, port) for port in peer.workload.ports)
        self.timings["pki"] = time.monotonic() - t0

        self._start_app(peers)  # the workload apps on the target's app host; the ext-authz server starting
        self._xds = XdsServer(self.tmpdir / "xds.sock")  # the run's private directory: no one else reaches it
        binary = envoy_binary()
        proxies = [p for p in peers if p.workload.in_mesh] + list(waypoint_peers.values())
        for peer in proxies:
            self._kind[peer.ref] = ("waypoint" if peer.ref in waypoint_peers else "gateway" if peer.workload.is_gateway
                                    else "sidecar" if self._plane(peer.workload.namespace) == "sidecar" else "ztunnel")
        self._canary_batch = self._canary_probes() if self.target.canary else []
        routes = self._initial_routes(self._canary_batch, providers)
        initial_clusters: dict[str, list[dict[str, Any]]] = {}
        # One Envoy for every ztunnel of the run, as one node's ztunnel serves all the ambient pods on it (istio.io
        # ambient/architecture/traffic-redirection: "a new logical proxy instance and listening port set dedicated to
        # the newly-added pod ... still running within the same process"): each workload
        # keeps its own listeners on its own address, its own certificate and its own access log, under names
        # scoped by its ref (`ProxyContext.scope`). It starts once every member is known (its bootstrap holds all
        # their outbound listeners); every other proxy starts as soon as its config is rendered.
        ztunnel: EnvoyProcess | None = None
        for peer in proxies:
            kind = self._kind[peer.ref]
            if kind == "ztunnel":
                if ztunnel is None:
                    ztunnel = EnvoyProcess("ztunnel", self.tmpdir / "envoy" / "ztunnel", peer.address, ADMIN_PORT,
                                           xds=self._xds, node_id="ztunnel~node")
                env, scope = ztunnel, f"{peer.ref}/"
                log_dir = self.tmpdir / "envoy" / f"ztunnel_{peer.ref.replace('/', '_')}"
                log_dir.mkdir(parents=True, exist_ok=True)
                log_path = log_dir / "access.log"
            else:
                directory = self.tmpdir / "envoy" / f"{kind}_{peer.ref.replace('/', '_')}"
                env = EnvoyProcess(f"{kind} {peer.ref}", directory, peer.address, ADMIN_PORT, xds=self._xds,
                                   node_id=f"{kind}~{peer.ref}")
                scope, log_path = "", env.access_log
            ctx = config.ProxyContext(peer, certs[peer.ref], ca.root, self.mesh, layout, peers, log_path,
                                      waypoint_for, self._grpc_ports, tuple(providers.values()), hbone_peers,
                                      routes.get(peer.ref), scope)
            self._contexts[peer.ref] = ctx
            self._envoys[peer.ref] = env
            self._logs[peer.ref] = AccessLog(log_path)
            self._static_routes[peer.ref] = ctx.outbound or frozenset()
            extra: dict[str, Any] = {}
            if kind == "sidecar":
                clusters = self._outbound_clusters(peer.ref)
                # outbound listeners are LDS, re-rendered with the policies: auto-mTLS follows PeerAuthentication
                self._static_listeners[peer.ref] = []
                if self.mode == "mixed":  # HBONE both ways (config.py, mode mixed)
                    self._static_listeners[peer.ref] = config.sidecar_hbone_static_listeners(ctx)
                    extra = config.waypoint_bootstrap()
            elif kind == "gateway":
                onward = self._onward(peer, by_ref, waypoint_for)
                self._gateway_routes[peer.ref] = onward
                clusters = gateway.gateway_clusters(ctx, onward)
                self._static_listeners[peer.ref] = gateway.gateway_static_listeners(ctx, onward)
                extra = config.waypoint_bootstrap()  # the internal listeners of the HBONE originations
            elif kind == "ztunnel":
                clusters = self._outbound_clusters(peer.ref)
                self._static_listeners[peer.ref] = config.ztunnel_outbound_listeners(ctx)
            else:
                served = self._served.get(peer.ref, [])
                clusters = config.waypoint_clusters(ctx, served)
                self._static_listeners[peer.ref] = config.waypoint_static_listeners(
                    ctx, served, layered=self.mesh.pilot_flag(pilotenv.LAYERED_WAYPOINT))
                extra = config.waypoint_bootstrap()
            initial_clusters[peer.ref] = clusters
            if env is not ztunnel:
                self._start_envoy(env, binary, extra)
        if ztunnel is not None:
            ztunnel.name = f"ztunnel (the node's, serving {len(self._members[ztunnel])} ambient workloads)"
            self._start_envoy(ztunnel, binary, {})
        # one marker write for all of them (a child missing from it is still found by its command line)
        self._marker.add_children([e.proc.pid for e in self._members if e.proc is not None])
        # Their first clusters and listeners go to the xDS server once every Envoy is starting: an Envoy waits on
        # its stream for them, so its own start-up (tens of ms of CPU each) overlaps this process's rendering
        for env, members in self._members.items():
            env.write_clusters([c for ref in members for c in initial_clusters[ref]])
            env.write_listeners([x for ref in members for x in self._listeners(ref, ())])
        self._wait_app()
        self.timings["app"] = time.monotonic() - t0
        wait_ready(list(self._members), self.target.startup_timeout)
        self.timings["envoys_ready"] = time.monotonic() - t0
        if self.target.canary:
            self._canary(self._canary_batch)
        self.timings["started"] = time.monotonic() - t0

    def _initial_routes(self, canary: Sequence[Probe], providers: Mapping[tuple[str, int], tuple[config.Peer, Port]],
                        ) -> dict[str, frozenset[tuple[str, int]]]:
        """The outbound plumbing each client proxy gets at start (`ProxyContext.outbound`): the destination
        ports of the scenario's own probes and of the canary from it, and at a sidecar every CUSTOM provider's
        port (istiod's ext_authz config names its `outbound|<port>||<fqdn>` cluster). A probe to any other
        destination gets its plumbing when it is first sent (`_ensure_routes`). Mode mixed keeps every peer's:
        its HBONE originations live in the bootstrap, which cannot grow later."""
        if self.mode == "mixed":
            return {}
        wanted: dict[str, set[tuple[str, int]]] = {
            ref: set() for ref, kind in self._kind.items() if kind in ("sidecar", "ztunnel")}
        probes = [e.probe for step in self.scenario.steps for e in step.expectations]
        for probe in [*probes, *canary]:
            if probe.source.ref in wanted:
                wanted[probe.source.ref].add((probe.destination.ref, probe.port.number))
        for ref, kind in self._kind.items():
            if kind == "sidecar":
                wanted[ref].update(providers)
        return {ref: frozenset(keys) for ref, keys in wanted.items()}

    def _start_envoy(self, env: EnvoyProcess, binary: Path, extra: dict[str, Any]) -> None:
        """Write `env`'s bootstrap (the static listeners of every workload it serves, plus `extra`) and start it."""
        runtime = self.target.release.runtime_layer()
        if runtime:  # the release's Envoy lacks a fix the local Envoy has (release.py)
            extra = {**extra, "layered_runtime": {"layers": [{"name": "istio-release", "static_layer": runtime}]}}
        static = [x for ref in self._members[env] for x in self._static_listeners[ref]]
        env.write_bootstrap(env.bootstrap(env.node_id, extra, static))
        env.start(binary)

    def _per_envoy(self, refs: Iterable[str], render: Callable[[str], list[dict[str, Any]]],
                   ) -> dict[EnvoyProcess, list[dict[str, Any]]]:
        """The resources of the Envoys serving `refs`: each gets those of every workload it serves (xDS state of
        the world: the shared ztunnel's LDS is all its workloads' listeners, whichever of them changed)."""
        members = self._members
        return {env: [x for ref in members[env] for x in render(ref)]
                for env in dict.fromkeys(self._envoys[ref] for ref in refs)}

    def _outbound_clusters(self, ref: str) -> list[dict[str, Any]]:
        """A sidecar's or ztunnel's clusters (CDS) for its context's outbound plumbing."""
        ctx = self._contexts[ref]
        if self._kind[ref] == "ztunnel":
            return config.ztunnel_clusters(ctx)
        clusters = config.sidecar_clusters(ctx)
        if self.mode == "mixed":
            clusters += config.sidecar_hbone_clusters(ctx)
        return clusters

    def _ensure_routes(self, probes: Sequence[Probe]) -> None:
        """Give each probe's source proxy the outbound plumbing for its destination port when it has none yet:
        new clusters first, acknowledged (CDS version in force, none warming), then the listeners rendered with
        the policies in force, acknowledged as a policy change is. Under the apply lock, so that the listeners
        are never rendered from one policy set while apply() writes another; a probe that needs no new
        plumbing never waits for it."""
        layout = self._require_layout()

        def missing() -> dict[str, set[tuple[str, int]]]:
            out: dict[str, set[tuple[str, int]]] = {}
            for p in probes:
                ctx = self._contexts.get(p.source.ref)
                key = (p.destination.ref, p.port.number)
                if (ctx is None or ctx.outbound is None or key in ctx.outbound
                        or p.destination.ref not in layout.address or p.destination.port(p.port.number) is None):
                    continue
                out.setdefault(p.source.ref, set()).add(key)
            return out

        if not missing():
            return
        with self._apply_lock:
            added = missing()  # again: another thread may have added them meanwhile
            before = {ref: self._contexts[ref] for ref in added}
            for ref, keys in added.items():
                ctx = self._contexts[ref]
                self._contexts[ref] = replace(ctx, outbound=(ctx.outbound or frozenset()) | keys)
            try:
                update_clusters(self._per_envoy(added, self._outbound_clusters))
                update_listeners(self._per_envoy(added, lambda ref: self._listeners(ref, self._policies)))
            except BaseException:
                self._contexts.update(before)  # not in force: the next probe that needs them tries again
                raise

    def _onward(self, me: config.Peer, by_ref: Mapping[str, config.Peer],
                waypoint_for: Mapping[str, config.Peer]) -> list[gateway.Onward]:
        """How gateway `me` reaches each route's backend, from the backend namespace's data plane: mTLS to a
        sidecar (or an out-of-mesh pod, plaintext), HBONE to an ambient pod, bypassing its waypoint unless the
        backend's Service carries istio.io/ingress-use-waypoint=true (gateway.py cites istiod)."""
        out = []
        for route in me.workload.routes:
            peer = by_ref.get(route.to)
            port = peer.workload.port(route.port) if peer is not None else None
            if peer is None or port is None:
                raise TargetError(f"gateway {me.ref}: route {route.host} names {route.to}:{route.port}, which this "
                                  "mesh does not serve")
            plane = self._plane(peer.workload.namespace)
            if not peer.spiffe or plane == "sidecar":
                out.append(gateway.Onward(route.host, peer, port, gateway.MTLS))
                continue
            via = waypoint_for.get(peer.ref)
            # the Service's label, read with strconv.ParseBool (serviceregistry/ambient/services.go@1.30 l.771-788)
            if via is not None and go_parse_bool(peer.workload.labels.get(INGRESS_USE_WAYPOINT)):
                out.append(gateway.Onward(route.host, peer, port, gateway.VIA_WAYPOINT, via))
            else:
                out.append(gateway.Onward(route.host, peer, port, gateway.HBONE))
        return out

    def _start_app(self, peers: Sequence[config.Peer]) -> None:
        """Every workload port's app, bound on the target's app host; the app of an out-of-mesh workload listens on the
        workload's own address (nothing stands in front of it), an in-mesh one on its app address."""
        assert self.tmpdir is not None and self.layout is not None and self._marker is not None
        def where(p: config.Peer, port: Port) -> dict[str, Any]:
            return {"ref": p.ref, "address": p.app_address if p.workload.in_mesh else p.address,
                    "port": self.layout.real(port.number)} if self.layout is not None else {}

        checks = [{**where(p, port), "protocol": "grpc" if (p.ref, port.number) in self._grpc_ports else "http"}
                  for p in peers if p.workload.kind == "ext-authz" for port in p.workload.ports]
        if checks:
            spec_path = self.tmpdir / "ext-authz.json"
            spec_path.write_text(json.dumps({"items": checks, "log": str(self.tmpdir / "ext-authz.log")}))
            with open(self.tmpdir / "ext-authz.stderr", "wb") as err:
                # -P: not this directory first on sys.path, whose envoy.py would shadow the `envoy` protos package
                self._ext_authz = lifetime.spawn([sys.executable, "-P", "-u", str(_EXT_AUTHZ_SCRIPT), str(spec_path)],
                                                 stdout=subprocess.PIPE, stderr=err)
            self._marker.add_child(self._ext_authz.pid)
        spec = [where(p, port) for p in peers if p.workload.kind == "app" for port in p.workload.ports]
        self.target.apps.bind(self._run_id, spec)
        self._bound = bool(spec)

    def _wait_app(self) -> None:
        """The ext-authz server says `ready` once every socket is bound; anything else is a start-up failure
        (the workload apps were bound by the target's app host before: `_start_app`)."""
        if self.tmpdir is None:
            return
        proc = self._ext_authz
        if proc is None:
            return
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self.target.startup_timeout)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            detail = (self.tmpdir / "ext-authz.stderr").read_text(errors="replace")[-2000:]
            raise TargetError(f"the ext-authz server did not start:\n{detail or '(no output)'}")

    def _canary_probes(self) -> list[Probe]:
        """With no policy in force every destination port must answer through the mesh: one probe to each,
        from a source the scenario already probes it from when there is one, else from the sources in turn,
        so that the canary adds at most one destination's plumbing to each client proxy
        (`ProxyContext.outbound`), not every destination's to one."""
        apps = [w for w in self.scenario.workloads if w.kind == "app"]
        sources = [w for w in apps if w.in_mesh] or list(apps)
        outside = next((w for w in apps if not w.in_mesh), None)
        probed: dict[tuple[str, int], Workload] = {}
        for step in self.scenario.steps:
            for e in step.expectations:
                if e.probe.source in sources and e.probe.source.ref != e.probe.destination.ref:
                    probed.setdefault((e.probe.destination.ref, e.probe.port.number), e.probe.source)
        probes = []
        turn = 0
        for dest in self.scenario.workloads:
            if dest.is_gateway:  # from outside the mesh, one probe per route's Host (a `*` in it made concrete)
                if outside is not None:
                    probes += [Probe(outside, dest, port, Request(headers=(("host", r.canary_host),)))
                               for port in dest.ports for r in dest.routes]
                continue
            others = [s for s in sources if s.ref != dest.ref] or sources[:1]
            if not others:
                continue
            for port in dest.ports:
                if dest.kind != "app" and (dest.ref, port.number) in self._grpc_ports:
                    continue  # gRPC check ports speak only gRPC
                src = probed.get((dest.ref, port.number))
                if src is None:
                    src = others[turn % len(others)]
                    turn += 1
                # an ext-authz check port answers an allowed check with 200
                request = Request() if dest.kind == "app" else Request(headers=(("x-ext-authz", "allow"),))
                probes.append(Probe(src, dest, port, request))
        return probes

    def _canary(self, probes: Sequence[Probe]) -> None:
        """Run the canary (`_canary_probes`). A failure here is an infrastructure error with the evidence,
        never a policy outcome later.

        Each destination is first asked once by a plain HTTP/1.1 request on a socket bound to the source's
        address, along the path curl would take (the source's outbound listener, or the destination itself
        from outside the mesh): curl costs ~6 ms of CPU to start, which for a 200-workload mesh's 320 ports
        was a third of its start-up. The canary proves reachability, not policy, and nothing it sees is ever a
        verdict; whatever does not answer so is probed with curl as before (three rounds), whose evidence a
        failure reports."""
        if not probes:
            return
        self._ensure_routes(probes)
        with ThreadPoolExecutor(max_workers=min(16, len(probes)), thread_name_prefix="authz-canary") as pool:
            answered_plain = list(pool.map(self._answers, probes))
        probes = [p for p, ok in zip(probes, answered_plain, strict=True) if not ok]
        if not probes:
            return

        def answered(probe: Probe, obs: Observation) -> bool:
            if probe.destination.kind == "ext-authz":
                return obs.evidence.exit_code == 0 and obs.evidence.status == 200
            return obs.outcome == ALLOWED

        failed: list[tuple[Probe, Observation]] = []
        probes = list(probes)
        for _attempt in range(3):
            observations = self.probe(probes)
            failed = [(p, o) for p, o in zip(probes, observations, strict=True) if not answered(p, o)]
            if not failed:
                return
            probes = [p for p, _ in failed]
        lines = [f"{p.describe()}: {o.outcome} (curl exit {o.evidence.exit_code}, status "
                 f"{o.evidence.status}) {o.evidence.stderr or o.evidence.body[:200]}" for p, o in failed]
        tails = "\n".join(f"--- {e.name}:\n{e.stderr_tail(5)}" for e in self._members if e.stderr_tail(5))
        raise TargetError("the local mesh started but some destinations are unreachable with no policy "
                          "in force:\n" + "\n".join(lines) + ("\n" + tails if tails else ""))

    def _answers(self, probe: Probe) -> bool:
        """Whether the canary's plain request (`_canary`) is answered by the workload that answers the probe
        (an ext-authz check port: with 200). Any error is False: curl then asks again, with evidence."""
        req = self._plan(probe).request
        host = next((v for k, v in req.headers if k.lower() == "host"),
                    req.url_host + ("" if req.port == 80 else f":{req.port}"))
        lines = [f"{req.method} {req.path or '/'} HTTP/1.1", f"Host: {host}", "Connection: close",
                 *(f"{k}: {v}" for k, v in req.headers if k.lower() != "host")]
        data = b""
        try:
            with socket.create_connection((req.connect_ip, req.connect_port), timeout=self.target.max_time,
                                          source_address=(req.interface or "", 0)) as sock:
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                while len(data) < 1 << 16 and (chunk := sock.recv(1 << 14)):
                    data += chunk
        except OSError:
            return False
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
            return False
        if probe.destination.kind == "ext-authz":
            return True
        return names_workload(body.decode(errors="replace"), self._answering(probe))

    # --- policies -----------------------------------------------------------------------------------

    def _listeners(self, ref: str, policies: Sequence[Manifest]) -> list[dict[str, Any]]:
        """The policy-bearing listeners of one proxy (its LDS) for a complete policy set."""
        authz = _authz()
        ctx = self._contexts[ref]
        workload = ctx.me.workload
        if self._kind[ref] == "waypoint":
            return self._waypoint_listeners(authz, ref, policies)
        if self._kind[ref] == "gateway":
            return self._gateway_listeners(authz, ref, policies)
        try:
            selected = authz.select_policies(policies, workload, self.mesh)
            listeners: list[dict[str, Any]] = []
            port_map = dict(ctx.layout.port_map)
            release = self.target.release
            if self._kind[ref] == "sidecar":
                jwt = authn.select_request_authentications(policies, workload, self.mesh)
                http = authz.sidecar_http_filters(selected, self.mesh, port_map, release,
                                                  request_authentications=jwt, services=self._services)
                tcp = authz.sidecar_tcp_filters(selected, self.mesh, port_map, release, services=self._services)
                for port in workload.ports:
                    filters = http if port.protocol == "HTTP" else tcp
                    mode = self._sidecar_mode(authz, policies, workload, port.number)
                    listeners.append(config.sidecar_inbound_listener(ctx, port, filters, mode))
                if self.mode == "mixed" and workload.ports:
                    # ambient clients' HBONE: the same policies with the principal from filter state, and the
                    # scenario's ports as they are (original_dst restores `<pod ip>:<port>` from the CONNECT)
                    same = {p: p for p in port_map}
                    hb_http = authz.sidecar_http_filters(selected, self.mesh, same, release,
                                                         request_authentications=jwt, services=self._services,
                                                         use_filter_state=True)
                    hb_tcp = authz.sidecar_tcp_filters(selected, self.mesh, same, release, services=self._services,
                                                       use_filter_state=True)
                    listeners += [config.sidecar_hbone_inner_listener(ctx, port, hb_http if port.protocol == "HTTP"
                                                                      else hb_tcp) for port in workload.ports]
                # the client side of auto-mTLS: plaintext to every in-mesh destination port whose mode is DISABLE
                plaintext = frozenset(
                    (peer.ref, port.number) for peer in ctx.peers if peer.spiffe for port in peer.workload.ports
                    if ctx.wants(peer, port) and self._sidecar_mode(authz, policies, peer.workload, port.number)
                    == "DISABLE")
                listeners += config.sidecar_outbound_listeners(ctx, plaintext)
            else:
                # the deployed waypoint this workload uses (PILOT_AUTO_ALLOW_WAYPOINT_POLICY's synthetic ALLOW)
                via = ctx.waypoint_for.get(ref)
                waypoint = next((w for w in self.scenario.waypoints if via is not None and w.ref == via.ref), None)
                if workload.ports:
                    filters = authz.ztunnel_filters(selected, self.mesh, ctx.me.address, release, waypoint)
                    listeners.append(config.ztunnel_hbone_listener(ctx, filters))
                # istiod's PeerAuthentication DENYs (the static strict one, converted port-level ones) match
                # only connections without a principal: on HBONE they never do, so only the plaintext
                # passthrough carries them, after the AuthorizationPolicy DENYs (ambient authorization.go)
                peer_authn = authz.ztunnel_peer_authentication(policies, workload, self.mesh)
                for port in workload.ports:
                    filters = authz.ztunnel_plaintext_filters(selected, self.mesh, ctx.me.address, port.number,
                                                              release, peer_authentication=peer_authn,
                                                              waypoint=waypoint)
                    listeners.append(config.ztunnel_plaintext_listener(ctx, port, filters))
                # outbound plumbing added after start (`_ensure_routes`): the bootstrap's cannot grow
                late = (ctx.outbound or frozenset()) - self._static_routes.get(ref, frozenset())
                if late:
                    listeners += config.ztunnel_outbound_listeners(ctx, only=late)
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"compiling the policies for {self._kind[ref]} {ref} failed: {exc}") from exc
        return listeners

    def _waypoint_listeners(self, authz: Any, ref: str, policies: Sequence[Manifest]) -> list[dict[str, Any]]:
        """A waypoint's listeners: static HBONE plumbing plus one policy-bearing internal listener per
        service port it serves, with the policies bound to it by targetRefs for that service."""
        ctx = self._contexts[ref]
        waypoint = next(w for w in self.scenario.waypoints if w.ref == ref)
        # The internal listener restores the original destination (`<service-ip>:<scenario port>`)
        # from the CONNECT authority, so `ports` rules compare scenario ports as they are.
        identity = {p: p for p in ctx.layout.port_map}
        listeners: list[dict[str, Any]] = []
        try:
            release = self.target.release
            for peer, port in self._served.get(ref, []):
                selected = authz.select_waypoint_policies(policies, waypoint, peer.workload, self.mesh, release)
                if port.protocol == "HTTP":
                    jwt = authn.select_waypoint_request_authentications(policies, waypoint, peer.workload, self.mesh,
                                                                        release)
                    filters = authz.waypoint_filters(selected, self.mesh, identity, release,
                                                     request_authentications=jwt, services=self._services)
                else:
                    filters = authz.waypoint_tcp_filters(selected, self.mesh, identity, release,
                                                         services=self._services)
                listeners.append(config.waypoint_inner_listener(ctx, peer, port, filters))
            if self.mesh.pilot_flag(pilotenv.LAYERED_WAYPOINT):
                # ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES: connect_terminate carries policies, so it is LDS
                layered = authz.select_waypoint_termination_policies(policies, waypoint, self.mesh, release)
                listeners.append(config.waypoint_terminate_listener(
                    ctx, self._served.get(ref, []), authz.waypoint_termination_filters(layered, self.mesh, release)))
        except Exception as exc:
            raise TargetError(f"compiling the policies for waypoint {ref} failed: {exc}") from exc
        return listeners

    def _gateway_listeners(self, authz: Any, ref: str, policies: Sequence[Manifest]) -> list[dict[str, Any]]:
        """An ingress gateway's listeners: per server port its policies (selector, namespace- and root-namespace
        ones, targetRefs to its Gateway: ShouldAttachPolicy as for any workload with labels) and its routes, the
        ones to a DISABLE sidecar port in plaintext (auto-mTLS, mtls_checker.go)."""
        ctx = self._contexts[ref]
        workload = ctx.me.workload
        try:
            selected = authz.select_policies(policies, workload, self.mesh)
            jwt = authn.select_request_authentications(policies, workload, self.mesh)
            filters = authz.gateway_http_filters(selected, self.mesh, dict(ctx.layout.port_map), self.target.release,
                                                 request_authentications=jwt, services=self._services)
            onward = self._gateway_routes[ref]
            plaintext = frozenset((o.peer.ref, o.port.number) for o in onward if o.way == gateway.MTLS
                                  and o.peer.spiffe and self._sidecar_mode(authz, policies, o.peer.workload,
                                                                           o.port.number) == "DISABLE")
            return [gateway.gateway_listener(ctx, port, filters, onward, plaintext, self.mesh.num_trusted_proxies)
                    for port in workload.ports]
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"compiling the policies for gateway {ref} failed: {exc}") from exc

    def _sidecar_mode(self, authz: Any, policies: Sequence[Manifest], workload: Workload, port: int) -> str:
        """The mTLS mode of `workload`'s sidecar on `port`; DISABLE on an ext-authz provider's port is refused
        (`disabled_provider_port`)."""
        mode = str(authz.peer_authentication_mode(policies, workload, self.mesh, port))
        if mode == "DISABLE" and workload.kind == "ext-authz":
            raise TargetError(_DISABLED_PROVIDER.format(f"{workload.ref}:{port}"))
        return mode

    def apply(self, policies: Sequence[Manifest]) -> Applied:
        """Make exactly `policies` be in force; returns once every changed proxy acknowledged it."""
        self._check_open()
        with self._apply_lock:
            start = time.monotonic()
            self._applying = True
            self._applies += 1
            try:
                jwks = self._keys.all_jwks() if self.scenario.issuers else None
                rendered = tuple(m.rendered(self.addresses, jwks) for m in policies)
                changes = self._per_envoy(self._envoys, lambda ref: self._listeners(ref, rendered))
                update_listeners(changes)
            finally:
                self._applying = False  # before `acknowledged` is read: a round started after it sees False
            acknowledged = time.monotonic()
            seconds = acknowledged - start
            before = {m.key: m.body for m in self._policies}
            after = {m.key: m.body for m in rendered}
            self._policies = rendered

        def name(key: tuple[str, str, str]) -> str:
            return f"{key[0]} {key[1]}/{key[2]}"

        return Applied(
            seconds=seconds,
            acknowledged_at=acknowledged,
            created=tuple(name(k) for k in after if k not in before),
            updated=tuple(name(k) for k in after if k in before and before[k] != after[k]),
            deleted=tuple(name(k) for k in before if k not in after),
        )

    # --- probes -------------------------------------------------------------------------------------

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Run every probe with real curl (in parallel), classify it, and attach the enforcing proxy's
        record of it. Results are in the order of `probes`."""
        self._check_open()
        if not probes:
            return []
        applying, applies = self._applying, self._applies  # read first: see __init__

        def unjudged() -> bool:
            return applying or self._applies != applies
        self._ensure_routes(probes)
        for log in self._logs.values():
            log.refresh()
        marks = {ref: len(log.records) for ref, log in self._logs.items()}
        plans = [self._plan(p) for p in probes]
        t = self.target
        results = run_curl_batch([p.request for p in plans], self._curl, t.connect_timeout, t.max_time,
                                 self._reserved, workers=t.parallel, workdir=self.tmpdir)
        # A round begun while listeners were being replaced may have connections the replacement closed (drain time
        # 0: a reset no proxy records as a decision); waiting the full time for records that never come cost the
        # suite seconds, and such a round is never judged: it only draws the enforcement gap (gap.py)
        proofs = self._find_proofs(plans, results, marks, unjudged)
        dead = self._dead_proxies()
        app_problem = self.target.apps.problem() if self._bound else None
        observations = []
        for plan, result, (proof, notes) in zip(plans, results, proofs, strict=True):
            outcome = _with_proof(classify(result.evidence, self._answering(plan.probe)), result, proof)
            on_path = [plan.probe.source.ref, *self._enforcers(plan.probe)]
            problem = "; ".join([*(dead[ref] for ref in dict.fromkeys(on_path) if ref in dead),
                                 *([app_problem] if app_problem else [])]) or None
            observations.append(Observation(outcome, result.evidence, proof, notes, problem=problem))
        return observations

    def _dead_proxies(self) -> dict[str, str]:
        """Proxies whose Envoy has exited: every probe through one is an infrastructure failure, whatever
        the client saw (a dead destination sidecar looks like a denial to its client)."""
        dead = {}
        for ref, env in self._envoys.items():
            code = env.proc.poll() if env.proc is not None else None
            if code is not None:
                tail = env.stderr_tail(3).strip().replace("\n", " | ")
                dead[ref] = (f"the {self._kind[ref]} of {ref} is not running (Envoy exited with {code})"
                             + (f": {tail}" if tail else ""))
        return dead

    def _plan(self, probe: Probe) -> _Planned:
        layout = self._require_layout()
        src, dst = probe.source, probe.destination
        for w in (src, dst):
            if w.ref not in layout.address:
                raise TargetError(f"probe {probe.describe()}: {w.ref} is not a workload of this mesh")
        if dst.port(probe.port.number) is None:
            raise TargetError(f"probe {probe.describe()}: {dst.ref} does not serve port {probe.port.number}")
        if src.in_mesh:
            # Through the source's own proxy: its outbound listener for this destination port.
            connect = (layout.address[src.ref], layout.outbound[(dst.ref, probe.port.number)])
        else:
            connect = (layout.address[dst.ref], layout.real(probe.port.number))
        # curl always binds the source workload's own address: out-of-mesh sources so that `ipBlocks`
        # see it, every source so that curl's address (the key at L4 proxies) belongs to this run alone.
        path, headers = probe.request.path, probe.request.headers
        if probe.request.jwt is not None:  # minted now, for this probe alone (tokens.py)
            path, headers = carry(probe.request, self._keys.mint(probe.request.jwt))
        request = CurlRequest(
            url_host=f"{dst.name}.{dst.namespace}", port=probe.port.number, path=path,
            method=probe.request.method, headers=headers, connect_ip=connect[0],
            connect_port=connect[1], interface=layout.address[src.ref], probe_id=new_probe_id(),
        )
        return _Planned(probe, request)

    def _plane(self, namespace: str) -> str:
        """The data plane of `namespace` in this session's mode (mode mixed: spec.dataplanes, unlisted sidecar)."""
        if self.mode == "mixed":
            return self.scenario.dataplane(namespace)
        return {"sidecar": "sidecar", "ambient": "ambient"}.get(self.mode, "waypoint")

    def _enforcers(self, probe: Probe) -> list[str]:
        """The proxies that may decide this probe, in the order the traffic meets them."""
        src, dst = probe.source, probe.destination
        if dst.is_gateway:
            onward = self._route(probe)
            if onward is None:
                return [dst.ref]  # no vhost: the gateway's own 404
            behind = ([onward.waypoint.ref] if onward.way == gateway.VIA_WAYPOINT and onward.waypoint is not None
                      else []) + ([onward.peer.ref] if onward.peer.spiffe else [])
            return [dst.ref, *behind]
        if not dst.in_mesh:
            return []
        ctx = self._contexts.get(dst.ref)
        via = ctx.waypoint_for.get(dst.ref) if ctx is not None else None
        # out-of-mesh clients bypass the waypoint (DESIGN.md §6), and so do sidecars (mode mixed,
        # endpoint_builder.go: "We intentionally do not take into account waypoints here")
        if via is not None and src.in_mesh and self._plane(src.namespace) != "sidecar":
            return [via.ref, dst.ref]
        return [dst.ref]

    def _route(self, probe: Probe) -> gateway.Onward | None:
        """The route gateway `probe.destination` takes for the probe's Host: Envoy's vhost choice, ignoring the
        port and the letter case (the scenario's model of it, `Workload.route_for`, names the route)."""
        found = probe.destination.route_for(probe.authority)
        return next((o for o in self._gateway_routes.get(probe.destination.ref, ()) if found is not None
                     and o.host == found.host), None)

    def _answering(self, probe: Probe) -> str:
        """The workload whose app answers an allowed probe: a gateway's route's backend, else the destination."""
        if probe.destination.is_gateway:
            onward = self._route(probe)
            return onward.peer.ref if onward is not None else probe.destination.ref
        return probe.destination.ref

    def _find_proofs(self, plans: Sequence[_Planned], results: Sequence[CurlResult],
                     marks: Mapping[str, int], unjudged: Callable[[], bool] = lambda: False,
                     ) -> list[tuple[Proof | None, tuple[str, ...]]]:
        """Find each probe's one deciding record at the enforcing proxy, waiting for the logs to be flushed.

        A record belongs to a probe by keys the suite made (curl.py): the probe's own header at HTTP-aware
        proxies, curl's address at L4 proxies (directly, in the HBONE CONNECT's client header, which
        waypoints pass on, or through the source proxy's record of the connection, whose upstream
        address is what the enforcing proxy sees), and only if the proxy saw it start while that curl
        ran. Zero records, or two that could each be the decision, is no proof (with a note saying so).
        It waits up to PROOF_WAIT for the records; up to PROOF_WAIT_DURING_APPLY when `unjudged()` says an apply()
        overlapped the round (probe(): such a round is never judged, and its resets may have no record at all).
        """
        found: dict[int, tuple[str, LogRecord]] = {}
        ambiguous: dict[int, str] = {}
        wanted = [
            i for i, (plan, res) in enumerate(zip(plans, results, strict=True))
            if self._enforcers(plan.probe) and res.connected
        ]
        begun = time.monotonic()
        final = False
        pause = 0.001
        while True:
            for log in self._logs.values():
                log.refresh()
            for i in wanted:
                if i not in found and i not in ambiguous:
                    hit, why = self._match(plans[i], results[i], marks, final)
                    if hit is not None:
                        found[i] = hit
                    elif why is not None:
                        ambiguous[i] = why
            if len(found) + len(ambiguous) == len(wanted) or final:
                break
            # one last pass takes the best record there is
            final = time.monotonic() - begun > (PROOF_WAIT_DURING_APPLY if unjudged() else PROOF_WAIT)
            if not final:
                # Envoy flushes each record at once (envoy.py ENVOY_FLAGS), so most are there on the first or second
                # look: poll closely at first, then back off (every look re-reads each log and re-matches every
                # probe still unproven: at a fixed 2 ms that was a visible share of the suite's CPU)
                time.sleep(pause)
                pause = min(pause * 2, 0.016)
        # One record proves one probe: a record two probes claim proves neither.
        owners: dict[tuple[str, int], list[int]] = {}
        for i, (ref, rec) in found.items():
            owners.setdefault((ref, id(rec)), []).append(i)
        for claimants in owners.values():
            if len(claimants) > 1:
                for i in claimants:
                    del found[i]
                    ambiguous[i] = f"the same record is claimed by {len(claimants)} probes"
        out: list[tuple[Proof | None, tuple[str, ...]]] = []
        for i, plan in enumerate(plans):
            enforcers = self._enforcers(plan.probe)
            if not enforcers:
                out.append((None, (f"{plan.probe.destination.ref} is out of the mesh: no proxy enforces "
                                   "policies there",)))
            elif i in found:
                ref, rec = found[i]
                out.append((proof_from(rec, self._kind[ref], ref), ()))
            elif i in ambiguous:
                out.append((None, (f"no single record of this probe: {ambiguous[i]}",)))
            elif not results[i].connected:
                out.append((None, ("curl never connected, so no proxy recorded this request",)))
            else:
                names = " or ".join(f"{self._kind[r]}:{r}" for r in enforcers)
                out.append((None, (f"no access-log record of this probe at {names}",)))
        return out

    def _records_of(self, ref: str, plan: _Planned, result: CurlResult,
                    marks: Mapping[str, int]) -> list[LogRecord]:
        src = plan.probe.source
        log = self._logs[ref]
        since = marks[ref]
        local = result.local_address
        # Envoy takes START_TIME when it accepts the connection or request, which is while curl runs; a
        # millisecond of slack covers the two clocks' rounding (both are the system's real-time clock).
        lo, hi = result.started - 0.001, result.ended + 0.001

        def during(rec: LogRecord) -> bool:
            t = rec.start
            return t is None or lo <= t <= hi

        # A source's own outbound records are never an enforcer's decision; they share the log with the
        # enforcer's inbound records when a workload calls its own service (then they would be found
        # first, by curl's address or the probe id, and hide the inbound denial).
        def inbound(found: Iterable[int], source_log: AccessLog = log) -> set[int]:
            return {i for i in found if not source_log.records[i].get("tag").startswith("outbound")
                    and during(source_log.records[i])}

        positions = inbound(log.lookup("probe", plan.request.probe_id, since))
        for name in ("direct", "client", "client_state"):
            positions |= inbound(log.lookup(name, local, since))
        if not positions and src.in_mesh and src.ref in self._logs:
            # Through the source proxy's record of curl's connection: its upstream address is what the
            # enforcing proxy saw, and that upstream connection began and ended within the source's
            # record. The kernel may give the same upstream port to a later connection of the batch once
            # this one is reset, so a record at the enforcer counts only inside that lifetime.
            source_log = self._logs[src.ref]
            for i in source_log.lookup("direct", local, marks[src.ref]):
                outbound = source_log.records[i]
                address = outbound.get("upstream_local")
                if address and during(outbound):
                    positions |= self._upstream_records(log, since, inbound, source_log, marks[src.ref], i)
        return [log.records[i] for i in sorted(positions)]

    @staticmethod
    def _upstream_records(log: AccessLog, since: int, inbound: Callable[[Iterable[int]], set[int]],
                          source_log: AccessLog, source_since: int, i: int) -> set[int]:
        """The enforcer's records (positions in `log`) of the upstream connection that the source's record `i` opened.

        They carry its upstream address, and started within its lifetime: the kernel may hand the port to a later
        connection of the batch once this one is reset, or have handed it to an earlier one. Both ends of the
        lifetime are the source proxy's clock readings, and the two Envoys read the clock at different points of
        the connection: under load the source's START_TIME was later than the enforcer's record of the connection it
        opened (18 of 18,000 sidecar TCP denials beside three `pytest policies` runs, each a denial without proof; with
        1 ms of slack still 1 of 6,000, by 1.3 ms: a fixed slack wide enough would swallow port reuse). So when no
        record starts within the lifetime, the one record of that address in the round that no other connection of
        the source on that port accounts for is its record; two such are ambiguous (no proof), never a wrong proof.
        """
        outbound = source_log.records[i]
        address, begin, end = outbound.get("upstream_local"), outbound.start, outbound.end
        candidates = inbound(log.lookup("direct", address, since))

        def before_end(t: float | None, stop: float | None) -> bool:
            return t is None or stop is None or t <= stop + 0.001  # %DURATION% is whole milliseconds: one more

        def within(t: float | None, start: float | None, stop: float | None) -> bool:
            return before_end(t, stop) and (t is None or start is None or start <= t)

        strict = {j for j in candidates if within(log.records[j].start, begin, end)}
        if strict:
            return strict
        others = [source_log.records[k] for k in source_log.lookup("upstream_local", address, source_since) if k != i]
        return {j for j in candidates if before_end(log.records[j].start, end)
                and not any(within(log.records[j].start, o.start, o.end) for o in others)}

    def _match(self, plan: _Planned, result: CurlResult, marks: Mapping[str, int],
               final: bool) -> tuple[tuple[str, LogRecord] | None, str | None]:
        """The deciding record: the first enforcer that denied; else, once every enforcer the request reached
        has logged it, the record of the last one whose record names the ALLOW policy that let it through (the
        last one when none does). That is the engine's rule for a path of several enforcing proxies: the later
        hop's decision, unless it had no policy at all and the earlier one had (engine/decide.py, the waypoint
        and gateway compositions). Taking the first hop's record, as this did, named the gateway's ALLOW where
        the engine names the backend sidecar's, when both matched one (found by the gateway differential test).
        The second element says why there is no single record, when that is final."""
        http = plan.probe.port.protocol == "HTTP"
        chosen: tuple[str, LogRecord] | None = None
        chosen_names = False
        for ref in self._enforcers(plan.probe):
            rec, why = deciding_record(self._records_of(ref, plan, result, marks))
            if why is not None:
                return None, f"{why} at {self._kind[ref]}:{ref}"  # more records never make it one
            if rec is None:
                # Not logged yet, or never reached (a waypoint that failed upstream still logs).
                return (chosen if final else None), None
            if rec.denies:
                return (ref, rec), None
            # An allowed HTTP request is proven by its stream record at an HTTP-aware proxy; wait for
            # it if only the connection record has been flushed so far.
            if http and self._kind[ref] != "ztunnel" and not rec.is_request and not final:
                return None, None
            names = names_allowing_policy(rec)
            if chosen is None or names or not chosen_names:
                chosen, chosen_names = (ref, rec), names
        return chosen, None

    # --- introspection for tests and reports --------------------------------------------------------

    def access_log(self, ref: str) -> list[dict[str, Any]]:
        """Every record the proxy of `ref` has logged so far (parsed JSON), oldest first."""
        log = self._logs[ref]
        log.refresh()
        return [dict(r.fields) for r in log.records]

    def pids(self) -> list[int]:
        procs = [e.proc for e in self._members if e.proc is not None]
        procs += [self._ext_authz] if self._ext_authz is not None else []
        return [p.pid for p in procs]

    def ext_authz_decisions(self) -> list[dict[str, Any]]:
        """Every decision the ext-authz server logged so far (JSON records), oldest first."""
        if self.tmpdir is None or not (self.tmpdir / "ext-authz.log").exists():
            return []
        lines = (self.tmpdir / "ext-authz.log").read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def _require_layout(self) -> Layout:
        if self.layout is None:
            raise TargetError("the local mesh is not started")
        return self.layout

    def _check_open(self) -> None:
        if self._closed:
            raise TargetError("this local mesh session is closed")

    # --- close --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and remove every file of this run; safe to call twice, from any path."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        procs = [e.proc for e in self._members if e.proc is not None]
        procs += [self._ext_authz] if self._ext_authz is not None else []
        lifetime.stop_processes(procs)
        if self._bound:  # before the block is released: no later run may find this run's apps on its addresses
            with contextlib.suppress(TargetError):
                self.target.apps.release(self._run_id)
        for env in self._members:
            env.close_admin()
        if self._xds is not None:
            self._xds.close()
        if self._ext_authz is not None and self._ext_authz.stdout is not None:
            with contextlib.suppress(OSError):
                self._ext_authz.stdout.close()
        if self.tmpdir is not None and not self.target.keep_files:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._marker is not None:
            self._marker.remove()
        if self._block is not None:
            self._block.release()
        lifetime.unregister(self)
