"""The verdict engine: Istio's decision for one probe in one mode, and the reasons for it.

Pure: a function of the policies in force, the workloads and their addresses, the probe, the mode and
the Istio version. Policies are compiled once per state (like Cyclonus' matcher builder); `decide` is
then a cheap evaluation, and `explain` runs the same evaluation with a trace of every step.

The algorithm (API reference, authorization_policy.proto; concepts/security "implicit enablement"):
CUSTOM, then DENY, then ALLOW; no ALLOW policy → allow; an ALLOW policy matches → allow; else deny.
AUDIT never decides. Sidecars (builder.go: DENY filter before ALLOW filter), waypoints and ztunnel
(state.rs assert_rbac) all follow it; what differs is which policies each one sees and how it matches.

An Envoy proxy (sidecar inbound, waypoint) runs its HTTP filters in the order istiod builds them
(istio/istio@1.30.3 pilot/pkg/networking/core/listener_builder.go buildHTTPConnectionManager; waypoints:
listener_waypoint.go buildWaypointHTTPFilters): the CUSTOM pairs (shadow RBAC + ext_authz, custom.py), then
RequestAuthentication's JWT filter (jwt.py), then RBAC (AUDIT, DENY, ALLOW). On a TCP chain
(networkfilter.go buildCompleteNetworkFilters) CUSTOM (gRPC providers only) then RBAC; there is no JWT. ztunnel
has neither JWT nor CUSTOM.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from conformance import pilotenv
from conformance.engine import custom as ext
from conformance.engine import flags, jwt, xff
from conformance.engine.matchers import normalize_path
from conformance.engine.mtls import STATIC_STRICT, SidecarMtls, ZtunnelMtls, sidecar_mtls, ztunnel_mtls
from conformance.engine.path import (
    AMBIENT_TO_SIDECAR,
    AMBIENT_TO_WAYPOINT,
    INGRESS_TO_SIDECAR,
    INGRESS_TO_WAYPOINT,
    OUTSIDE_TO_SIDECAR,
    SIDECAR_TO_AMBIENT,
    SIDECAR_TO_SIDECAR,
    Route,
    ingress_route,
    route,
)
from conformance.engine.policy import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    compile_authorization_policy,
    compile_peer_authentication,
    compile_request_authentication,
)
from conformance.engine.proxy import HTTP_ONLY_FIELDS, Attributes, Check, EnvoySemantics, http_only_condition
from conformance.engine.scope import applies_at_waypoint, applies_to_gateway, applies_to_workload, scope_of
from conformance.engine.ztunnel import Connection, Translated, first_matching_rule, translate
from conformance.model import (
    ALLOWED,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    INGRESS_USE_WAYPOINT,
    DataPlane,
    Issuer,
    Manifest,
    MeshConfig,
    Mode,
    Probe,
    Verdict,
    Waypoint,
    Workload,
)
from conformance.versions import (
    DOT_SEGMENT_PARAMETERS,
    DRY_RUN_NOT_SENT_TO_ZTUNNEL,
    EXT_AUTHZ_PROVIDER_NAME_CHECK,
    SPACE_DELIMITED_CLAIMS,
    IstioVersion,
)

# Reasons, as codes (reports) and words (explain).
NO_POLICY = "no-policy"
DENY_MATCHED = "deny-matched"
ALLOW_MATCHED = "allow-matched"
ALLOW_UNMATCHED = "allow-unmatched"
NO_ALLOW = "no-allow-policy"
STRICT_MTLS = "strict-mtls"
# JWT and CUSTOM (issue 11): the contract with verdicts.EXPECTED_KIND and the targets' proof kinds.
JWT_REJECTED = "jwt-rejected"  # RequestAuthentication's JWT filter refused the token (Decision.detail: its message)
EXT_AUTHZ_DENIED = "ext-authz-denied"  # a CUSTOM policy matched and its provider denied (Decision.policy: it)
EXT_AUTHZ_ERROR = "ext-authz-error"  # ... and the provider failed or was unreachable, failOpen false


@dataclass(frozen=True)
class State:
    """Everything in force during one step: the scenario's world plus that step's policies."""

    mesh: MeshConfig
    workloads: tuple[Workload, ...]
    waypoints: tuple[Waypoint, ...]
    policies: tuple[Manifest, ...]  # addresses already filled in
    addresses: Mapping[str, str]
    issuers: tuple[Issuer, ...] = ()  # the JWT issuers the suite plays (their `iss`, for minted tokens)
    # mode mixed: each namespace's data plane (`spec.dataplanes`; unlisted: sidecar). Other modes ignore it.
    dataplanes: Mapping[str, DataPlane] = field(default_factory=dict)

    @cached_property
    def authorization_policies(self) -> tuple[AuthorizationPolicy, ...]:
        return tuple(compile_authorization_policy(m) for m in self.policies if m.kind == "AuthorizationPolicy")

    @cached_property
    def request_authentications(self) -> tuple[RequestAuthentication, ...]:
        return tuple(compile_request_authentication(m) for m in self.policies if m.kind == "RequestAuthentication")

    @cached_property
    def issuer_map(self) -> dict[str, Issuer]:
        return {i.name: i for i in self.issuers}

    @cached_property
    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        return tuple(compile_peer_authentication(m) for m in self.policies if m.kind == "PeerAuthentication")

    @cached_property
    def _compiled(self) -> dict[tuple[str, IstioVersion], _Compiled]:
        return {}

    def compiled(self, mode: Mode, version: IstioVersion) -> _Compiled:
        # The same mode and version objects come back call after call (a truth table, a run, a matrix): compare
        # them by identity before hashing a (mode, IstioVersion) key, which costs as much as a small decision.
        last = self._last
        if last[0] is mode and last[1] is version:
            return last[2]  # type: ignore[return-value]
        key = (mode, version)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = _Compiled(self, version, mode)
        self._last[:] = [mode, version, found]
        return found

    @cached_property
    def _last(self) -> list[object]:
        return [None, None, None]

    def waypoint_for(self, workload: Workload) -> Waypoint | None:
        return next((w for w in self.waypoints if w.namespace == workload.namespace), None)


@dataclass(frozen=True)
class Decision:
    """Istio's decision for one probe: verdict, where it was made, by what, and what a client sees."""

    verdict: Verdict
    # "allowed", or the denial form: "denied-l7", "denied-l4", "denied-upstream", "denied-authn", "denied-custom"
    outcome: str
    layer: str | None  # "sidecar" | "ztunnel" | "waypoint"; None when nothing enforces anything
    reason: str
    # "ns/name" of the deciding policy: the DENY or ALLOW that matched; the PeerAuthentication; the CUSTOM policy
    # whose rule sent the request to the provider (or, with a broken provider, whose rule denied); the
    # RequestAuthentication whose jwtRule's check became the JWT filter's reply
    policy: str | None = None
    rule: int | None = None
    # every policy of the deciding action that matched: ztunnel walks its policies in no defined order
    # (state.rs assert_rbac chains namespace, global and workload sets), so any of them may be the one named
    candidates: tuple[str, ...] = ()
    trace: tuple[str, ...] = field(default=(), compare=False)
    # the waypoint (`ns/name`) whose proxy decided, when a waypoint did; a sidecar or ztunnel decision is
    # always the destination's own proxy (the one a proof of it must come from)
    waypoint: str | None = None
    # for JWT_REJECTED: the JWT filter's message the proof must carry ("Jwt is expired"...), as Proof.detail;
    # None when the engine knows the token fails but not in which words (jwt.UNWORDED)
    detail: str | None = None
    # the workload (`ns/name`) whose sidecar or ztunnel decided when it is not the probe's destination: the route's
    # destination behind an ingress gateway (a gateway's own decision is the probe's destination's)
    at: str | None = None

    def enforcer(self, probe: Probe) -> str | None:
        """`layer:ns/name` of the proxy that makes this decision (None when no proxy is involved)."""
        if self.layer is None:
            return None
        if self.layer == "waypoint":
            return f"waypoint:{self.waypoint}"
        return f"{self.layer}:{self.at or probe.destination.ref}"


# -- compiled per state, version and data plane ------------------------------------------------------


@dataclass(frozen=True)
class _EnvoyPolicy:
    policy: AuthorizationPolicy
    rules_http: tuple[tuple[int, tuple[tuple[str, Check], ...]], ...]
    rules_tcp: tuple[tuple[int, tuple[tuple[str, Check], ...]], ...]


@dataclass(frozen=True)
class _EnvoyPlan:
    denies: tuple[_EnvoyPolicy, ...]
    allows: tuple[_EnvoyPolicy, ...]
    any_enforced: bool

    @cached_property
    def rules(self) -> dict[tuple[str, bool], tuple[_EnvoyRule, ...]]:
        """Per (action, TCP chain), every rule as Envoy holds it: keyed and sorted by policy id."""
        out: dict[tuple[str, bool], tuple[_EnvoyRule, ...]] = {}
        for action, eps in (("DENY", self.denies), ("ALLOW", self.allows)):
            for tcp in (False, True):
                flat = [_EnvoyRule(envoy_policy_id(ep.policy, index), ep, index, parts, ep.policy.ref)
                        for ep in eps for index, parts in (ep.rules_tcp if tcp else ep.rules_http)]
                out[(action, tcp)] = tuple(sorted(flat, key=lambda r: r.pid))
        return out


@dataclass(frozen=True)
class _EnvoyRule:
    pid: str
    ep: _EnvoyPolicy
    index: int
    parts: tuple[tuple[str, Check], ...]
    ref: str = ""  # the policy's "ns/name", kept here because the hot loop reads it

    @cached_property
    def checks(self) -> tuple[Check, ...]:
        """The parts without their labels, for the fast path's loop (fast.py), which reports no failed part."""
        return tuple(check for _, check in self.parts)


@dataclass(frozen=True)
class _ZtunnelPlan:
    denies: tuple[Translated, ...]
    allows: tuple[Translated, ...]
    any_enforced: bool
    notes: tuple[str, ...]


class _Compiled:
    def __init__(self, state: State, version: IstioVersion, mode: Mode | None = None):
        self.state = state
        self.version = version
        self.mode = mode  # which waypoints are deployed (PILOT_AUTO_ALLOW_WAYPOINT_POLICY reads it)
        self.envoy = EnvoySemantics(state.mesh.trust_domain, version)
        self._envoy: dict[str, _EnvoyPolicy] = {}
        self._ztunnel: dict[str, Translated] = {}
        self._per_workload: dict[str, tuple[AuthorizationPolicy, ...]] = {}
        self._plans: dict[str, _EnvoyPlan] = {}
        self._mtls: dict[tuple[str, int], SidecarMtls] = {}
        self._zmtls: dict[str, ZtunnelMtls] = {}
        self._zplans: dict[str, _ZtunnelPlan] = {}
        self._jwt: dict[str, tuple[jwt.Provider, ...]] = {}
        self._ras: dict[str, tuple[RequestAuthentication, ...]] = {}
        self._providers: dict[str, ext.ProviderView] = {}
        # fast.py's caches: destination ports compiled for the verdict-only path, and request views by identity
        self.fast_targets: dict[tuple[str, bool, int], Any] = {}
        self.fast_views: dict[int, tuple[Any, Any]] = {}

    def ras_for_workload(self, w: Workload) -> tuple[RequestAuthentication, ...]:
        """The RequestAuthentications a sidecar applies (authentication.go getConfigsForWorkload: the workload's
        namespace and the root namespace, ShouldAttachPolicy: selector subset, never targetRefs)."""
        found = self._ras.get(w.ref)
        if found is None:
            applies = applies_to_gateway if w.is_gateway else applies_to_workload
            found = self._ras[w.ref] = tuple(r for r in self.state.request_authentications
                                             if applies(r, w, self.state.mesh))
        return found

    def ras_at_waypoint(self, waypoint: Waypoint, service: Workload) -> tuple[RequestAuthentication, ...]:
        """The RequestAuthentications a waypoint applies for a service (listener_waypoint.go
        buildWaypointHTTPFilters: authn.NewBuilderForService; ShouldAttachPolicy: targetRefs only, selector
        RequestAuthentications ignored, TestL7JWT)."""
        return tuple(r for r in self.state.request_authentications
                     if applies_at_waypoint(r, waypoint, service, self.state.mesh, self.version))

    def jwt_providers(self, key: str, ras: Sequence[RequestAuthentication]) -> tuple[jwt.Provider, ...]:
        found = self._jwt.get(key)
        if found is None:
            found = self._jwt[key] = jwt.providers(ras, self.version.has(SPACE_DELIMITED_CLAIMS))
        return found

    def provider_view(self, name: str) -> ext.ProviderView:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = ext.resolve(
                name, self.state.mesh.extension_providers, self.state.workloads, self.version)
        return found

    def for_workload(self, w: Workload) -> tuple[AuthorizationPolicy, ...]:
        found = self._per_workload.get(w.ref)
        if found is None:
            applies = applies_to_gateway if w.is_gateway else applies_to_workload
            found = tuple(p for p in self.state.authorization_policies if applies(p, w, self.state.mesh))
            self._per_workload[w.ref] = found
        return found

    def envoy_policy(self, p: AuthorizationPolicy) -> _EnvoyPolicy:
        found = self._envoy.get(p.ref)
        if found is None:
            def build(for_tcp: bool) -> tuple[tuple[int, tuple[tuple[str, Check], ...]], ...]:
                out = []
                for rule in p.rules or ():
                    parts = self.envoy.rule_parts(rule, p.action, p.namespace, for_tcp)
                    if parts is not None:
                        out.append((rule.index, tuple(parts)))
                return tuple(out)

            found = self._envoy[p.ref] = _EnvoyPolicy(p, build(False), build(True))
        return found

    def envoy_plan(self, key: str, policies: Sequence[AuthorizationPolicy]) -> _EnvoyPlan:
        """The enforced DENY and ALLOW policies of one enforcement point, compiled, in order."""
        found = self._plans.get(key)
        if found is None:
            enforced = [p for p in policies if not p.dry_run]
            found = self._plans[key] = _EnvoyPlan(
                tuple(self.envoy_policy(p) for p in enforced if p.action == "DENY"),
                tuple(self.envoy_policy(p) for p in enforced if p.action == "ALLOW"),
                bool(enforced),
            )
        return found

    def sidecar_mtls(self, w: Workload, port: int) -> SidecarMtls:
        """The mTLS mode of `w`'s sidecar on `port` (mtls.py, ComposePeerAuthentication + portLevelMtls)."""
        found = self._mtls.get((w.ref, port))
        if found is None:
            found = self._mtls[(w.ref, port)] = sidecar_mtls(self.state.peer_authentications, w, self.state.mesh, port)
        return found

    def ztunnel_mtls(self, w: Workload) -> ZtunnelMtls:
        """The PeerAuthentication DENYs istiod sends `w`'s ztunnel (mtls.py, ambient authorization.go)."""
        found = self._zmtls.get(w.ref)
        if found is None:
            found = self._zmtls[w.ref] = ztunnel_mtls(self.state.peer_authentications, w, self.state.mesh)
        return found

    def ztunnel_plan(self, w: Workload, waypoint: Waypoint | None = None) -> _ZtunnelPlan:
        """What istiod sends the destination ztunnel of `w`, translated, split into DENY and ALLOW.

        ambient/authorization.go: only ALLOW and DENY reach ztunnel (CUSTOM and AUDIT get a status
        message); dry-run policies are not sent from 1.25.2 (#55414), and before that they were sent and
        enforced; from 1.29 AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY sends them marked dryRun, which
        ztunnel only logs. `waypoint`: the deployed waypoint `w` uses, whose synthetic ALLOW
        PILOT_AUTO_ALLOW_WAYPOINT_POLICY appends to `w`'s policies (flags.py)."""
        key = f"{w.ref}|{waypoint.ref if waypoint is not None else ''}"
        found = self._zplans.get(key)
        if found is not None:
            return found
        sends_dry_run = not self.version.has(DRY_RUN_NOT_SENT_TO_ZTUNNEL)  # istio/istio#55414
        # authorization.go@1.30.3 l.409: `dryRun && !features.EnableWdsDryRunAuthzPol` → not sent
        dry_run_flag = self.state.mesh.pilot_flag(pilotenv.AMBIENT_DRY_RUN)
        notes: list[str] = []
        enforced: list[Translated] = []
        for p in self.for_workload(w):
            if p.action not in ("ALLOW", "DENY"):
                notes.append(f"  {p.action} {p.ref}: ztunnel does not support the {p.action} action; not enforced.")
            elif p.dry_run and not sends_dry_run and dry_run_flag:
                # ztunnel src/state.rs@1.30.3 assert_rbac l.576-617: dry-run DENYs and ALLOWs are partitioned out and
                # only logged ("dry-run: deny policy match"); they neither deny nor count as ALLOW policies
                notes.append(f"  {p.action} {p.ref}: dry-run; AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is on, so "
                             "istiod sends it to ztunnel marked dryRun, and ztunnel only logs whether it matches "
                             "(\"dry-run: ... policy match\"): no effect on the verdict.")
            elif p.dry_run and not sends_dry_run:
                notes.append(f"  {p.action} {p.ref}: dry-run; istiod does not send dry-run policies to ztunnel "
                             "(Istio ≥ 1.25.2, AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY off): no effect.")
            else:
                if p.dry_run:
                    notes.append(f"  {p.action} {p.ref}: dry-run, but Istio < 1.25.2 sends it to ztunnel, which "
                                 "enforces it.")
                enforced.append(self.ztunnel_policy(p))
        if waypoint is not None and self.state.mesh.pilot_flag(pilotenv.AUTO_ALLOW_WAYPOINT):
            implicit = flags.implicit_waypoint_policy(waypoint, self.state.mesh)
            notes.append(f"  ALLOW {implicit.ref}: PILOT_AUTO_ALLOW_WAYPOINT_POLICY is on, so istiod adds this "
                         f"synthetic policy to {w.ref}, which uses waypoint {waypoint.ref} (ambient policies.go "
                         f"implicitWaypointPolicy): it allows {waypoint.identity(self.state.mesh.trust_domain)}.")
            enforced.append(self.ztunnel_policy(implicit))
        found = self._zplans[key] = _ZtunnelPlan(
            tuple(t for t in enforced if t.policy.action == "DENY"),
            tuple(t for t in enforced if t.policy.action == "ALLOW"),
            bool(enforced), tuple(notes))
        return found

    def ztunnel_policy(self, p: AuthorizationPolicy) -> Translated:
        found = self._ztunnel.get(p.ref)
        if found is None:
            found = self._ztunnel[p.ref] = translate(p)
        return found


class _Trace:
    """Collects the reasoning when `explain` asks for it; costs nothing when it does not."""

    def __init__(self, on: bool):
        self.on = on
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        if self.on:
            self.lines.append(line)


# -- public API ---------------------------------------------------------------------------------------


def decide(state: State, probe: Probe, mode: Mode, version: IstioVersion) -> Decision:
    """Istio's decision for `probe` in `mode` at `version`: fast.py's verdict-only path where it covers the probe
    (the same decision without building an explanation; tests/test_engine_fast.py holds the two equal), else the
    traced evaluation with the trace off."""
    found = _fast.decide(state.compiled(mode, version), probe)
    return found if found is not None else _decide(state, probe, mode, version, _Trace(False))


def explain(state: State, probe: Probe, mode: Mode, version: IstioVersion) -> Decision:
    """The same decision, with `trace` holding the reasoning step by step."""
    return _decide(state, probe, mode, version, _Trace(True))


def _decide(state: State, probe: Probe, mode: Mode, version: IstioVersion, trace: _Trace) -> Decision:
    c = state.compiled(mode, version)
    src = probe.source
    td = state.mesh.trust_domain
    trace.on and trace(f"Istio {version}, {mode} mode: {probe.describe()} ({probe.port.protocol} port)")
    if src.in_mesh and trace.on:
        # the DISABLE exception concerns only a sidecar client sending to a sidecar whose port is DISABLE
        disabled = (mode in ("sidecar", "mixed") and not probe.destination.is_gateway
                    and c.sidecar_mtls(probe.destination, probe.port.number).mode == "DISABLE")
        trace(f"The source is in the mesh, as {src.identity(td)}: its proxy uses mTLS"
              + (" (at a sidecar, unless the destination port's PeerAuthentication mode is DISABLE)." if disabled
                 else "."))
    else:
        trace.on and trace("The source is not in the mesh: it sends plaintext and has no identity, so no positive "
              "principal, namespace or serviceAccount can match it (their not-forms do).")
    if probe.destination.is_gateway:
        result = _ingress(c, probe, mode, trace)
    elif mode == "sidecar":
        result = _sidecar(c, probe, trace)
    elif mode == "ambient":
        result = _ambient_ztunnel(c, probe, trace, via=None)
    elif mode == "waypoint":
        result = _waypoint_mode(c, probe, trace)
    else:
        result = _mixed(c, probe, trace)
    return replace(result, trace=tuple(trace.lines)) if trace.on else result


def probe_route(state: State, probe: Probe, mode: Mode, version: IstioVersion) -> Route:
    """The hops of `probe` in `mode` (path.py): which proxies it meets, what each sees, which may decide."""
    c = state.compiled(mode, version)
    dst = probe.destination
    if dst.is_gateway:
        return _ingress_route(c, probe, mode)
    disabled = c.sidecar_mtls(dst, probe.port.number).mode == "DISABLE"
    waypoint = state.waypoint_for(dst) if mode in ("waypoint", "mixed") else None
    return route(probe, mode, dict(state.dataplanes), state.mesh.trust_domain, waypoint, plaintext_port=disabled)


def _mixed(c: _Compiled, probe: Probe, trace: _Trace) -> Decision:
    """Mode mixed (DESIGN.md §10): the crossing of the two namespaces' data planes picks the enforcers (path.py
    cites istiod and ztunnel for each); each enforcer then decides exactly as in its own mode."""
    r = probe_route(c.state, probe, "mixed", c.version)
    if trace.on:
        src, dst = probe.source, probe.destination
        src_plane = r.source_plane if r.source_plane == "outside" else c.state.dataplanes.get(src.namespace, "sidecar")
        trace(f"Data planes: {src.namespace} {src_plane}"
              + (" (out of the mesh)" if r.source_plane == "outside" else "")
              + f", {dst.namespace} {r.destination_plane}. Path ({r.crossing}): {r.describe()}.")
        trace(f"  Why: {r.why}.")
        for hop in r.hops:
            sees = "" if hop.sees == "" else f"; sees {hop.sees or 'no identity (plaintext)'}"
            trace(f"  {hop.proxy} {hop.ref}: enforces {hop.enforces}{sees}.")
    if r.crossing in (SIDECAR_TO_SIDECAR, OUTSIDE_TO_SIDECAR):
        return _sidecar(c, probe, trace)
    if r.crossing == AMBIENT_TO_SIDECAR:
        return _sidecar_hbone(c, probe, trace)
    if r.crossing == AMBIENT_TO_WAYPOINT or (r.source_plane == "outside" and r.destination_plane == "waypoint"):
        return _waypoint_mode(c, probe, trace)
    if r.crossing == SIDECAR_TO_AMBIENT:
        return _ambient_ztunnel(c, probe, trace, via=None, client_sidecar=True)
    return _ambient_ztunnel(c, probe, trace, via=None)


def _sidecar_hbone(c: _Compiled, probe: Probe, trace: _Trace) -> Decision:
    """An ambient client's HBONE at a sidecar (path.py AMBIENT_TO_SIDECAR): the sidecar's own policies on its
    `main_internal` chains, which read the principal from filter state and are plaintext themselves
    (listener_inbound.go@1.30.3 buildInboundHBONEListeners L160-170), after connect_terminate required a client
    certificate (listener_waypoint.go buildConnectTerminateListener L326-331)."""
    state, src, dst = c.state, probe.source, probe.destination
    identity = src.identity(state.mesh.trust_domain)
    if trace.on:
        mtls = c.sidecar_mtls(dst, probe.port.number)
        trace(f"The destination's sidecar enforces, on its HBONE listener (port 15008): it sees {identity}.")
        if mtls.decided_by is not None:  # without a PeerAuthentication there is nothing that could have applied
            trace(f"  PeerAuthentication ({mtls.mode} on port {probe.port.number}, from {mtls.decided_by.ref}) is "
                  "not consulted: HBONE always carries a client certificate, and the internal chains are built "
                  "with mTLS mode DISABLE (listener_inbound.go L167-168), so neither STRICT refuses nor DISABLE "
                  "hides the identity.")
        here = c.for_workload(dst)
        if _reads(here, keys=_DIRECT_IP_KEYS, fields=_DIRECT_IP_FIELDS):
            trace(f"  `ipBlocks` and `source.ip` see the internal listener's address ({WAYPOINT_DIRECT_REMOTE}), as "
                  "at a waypoint (the same connect_terminate → main_internal hand-off): positive IP matches fail, "
                  "their not-forms hold.")
        if _reads(here, keys=_SNI_KEYS):
            trace("  There is no SNI (`connection.sni`) on the internal chains: a positive SNI match fails, its "
                  "not-form holds.")
        if _normalization_differs(probe.request.path):
            trace("  No client sidecar normalized the path first: only this sidecar's Envoy normalizes it.")
    tcp = probe.port.protocol == "TCP"
    attrs = _attributes(state, probe, identity, WAYPOINT_DIRECT_REMOTE, http=not tcp, version=c.version,
                        sidecar_sni=False, remote_peer=state.addresses.get(src.ref, ""))
    _trace_path(probe, attrs, c.version, trace)
    return _envoy_proxy(c, f"sidecar:{dst.ref}", c.for_workload(dst), c.ras_for_workload(dst), attrs, probe, tcp,
                        "sidecar", trace)


def _attributes(state: State, probe: Probe, identity: str | None, source_ip: str, http: bool,
                version: IstioVersion, sidecar_sni: bool = True, client_sidecar: bool = False,
                remote_peer: str | None = None) -> Attributes:
    """What the enforcing Envoy sees. `sidecar_sni`: the connection is the client sidecar's mTLS, whose SNI
    is Istio's outbound_.<port>_._.<svc>.<ns>.svc.cluster.local (plaintext has none). A waypoint's inner
    listener sees no SNI for the plaintext HTTP and TCP services modelled here: istiod enables the TLS
    inspector on `main_internal` only for ports of TLS services (listener_waypoint.go
    buildWaypointInternal, istio/istio#53588), so `connection.sni` there only ever matches the
    application's own TLS, which the suite does not model. The path is the one the enforcing Envoy matches
    (`_request_path`)."""
    dst = probe.destination
    r = probe.request
    return Attributes(
        principal=identity,
        source_ip=source_ip,
        destination_ip=state.addresses.get(dst.ref, ""),
        destination_port=probe.port.number,
        sni=(f"outbound_.{probe.port.number}_._.{dst.name}.{dst.namespace}.svc.cluster.local"
             if identity is not None and sidecar_sni else None),
        method=r.method if http else None,
        path=_request_path(r.path, version, client_sidecar) if http else None,
        headers=_visible_headers(jwt.carried_headers(r)) if http else (),
        host=probe.authority if http else None,
        # `remote_ip`: a sidecar's or waypoint's HCM (use_remote_address false, no trusted hops) takes the right-most
        # X-Forwarded-For entry when it is an IP, else the connection's remote address (xff.py): the peer, or at
        # an HBONE-terminating listener the client address original_dst restored (`remote_peer`)
        remote_ip=xff.remote_address(r.header(xff.XFF) if http else None,
                                     source_ip if remote_peer is None else remote_peer, use_remote_address=False),
    )


def _visible_headers(
    headers: Sequence[tuple[str, jwt.Carried]] | Sequence[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """The request headers RBAC's `request.headers[...]` reads (Host is `hosts`): the probe's own, and the one
    its token rides in (the minted token shown as jwt.MINTED_TEXT)."""
    out = []
    for k, v in headers:
        if k != "host":
            out.append((k, v.text() if isinstance(v, jwt.Carried) else v))
    return tuple(out)


# -- Envoy layers (sidecar, waypoint) -------------------------------------------------------------------

# What `ipBlocks` / `source.ip` see at a waypoint. istiod compiles both to Envoy's `direct_remote_ip`
# (istio/istio@1.30.3 pilot/pkg/security/authz/model/generator.go srcIPGenerator → principalDirectRemoteIP).
# A waypoint terminates HBONE and hands the request to an internal listener (`main_internal`); its
# connect_authority filter (pilot/pkg/xds/filters/filters.go) passes the client address in filter state
# `envoy.filters.listener.original_dst.remote_ip`, which Envoy's original_dst listener filter applies
# with `setRemoteAddress` (envoy source/extensions/filters/listener/original_dst/original_dst.cc). That
# changes the remote address only: `ConnectionInfoSetterImpl` keeps the direct remote address it was
# created with (envoy source/common/network/socket_impl.h), the internal client address. So at a waypoint
# a positive IP match never holds and its not-form always does (istio/istio#46982, still so in 1.30.3;
# measured in Envoy 1.40 by tests/test_differential.py, regression tests/data/regressions/).
WAYPOINT_DIRECT_REMOTE = "envoy://internal_client_address/"

# The attributes explain's notes are about (issue 15: a note only for a probe whose policies read them): source
# fields by their positive name (policy.Field carries the not-form with it) and `when` keys.
_DIRECT_IP_FIELDS = frozenset({"ipBlocks"})  # generator.go srcIPGenerator: direct_remote_ip
_DIRECT_IP_KEYS = frozenset({"source.ip"})
_REMOTE_IP_FIELDS = frozenset({"remoteIpBlocks"})  # generator.go remoteIPGenerator: remote_ip
_REMOTE_IP_KEYS = frozenset({"remote.ip"})
_IP_FIELDS = _DIRECT_IP_FIELDS | _REMOTE_IP_FIELDS
_IP_KEYS = _DIRECT_IP_KEYS | _REMOTE_IP_KEYS
_SNI_KEYS = frozenset({"connection.sni"})


def _reads(policies: Iterable[AuthorizationPolicy], keys: Container[str] | Callable[[str], bool],
           fields: Container[str] = frozenset()) -> bool:
    """Whether some rule of `policies` names one of the source/operation `fields` or a `when` key in `keys` (a
    set, or a predicate). explain prints a note about how a proxy sees an attribute only when a policy at that
    proxy reads it: elsewhere the note says nothing about the probe (issue 15)."""
    has_key = keys if callable(keys) else keys.__contains__
    for p in policies:
        for rule in p.rules or ():
            for blocks in (rule.sources or (), rule.operations or ()):
                if any(f.name in fields for block in blocks for f in block):
                    return True
            if any(has_key(cond.key) for cond in rule.conditions):
                return True
    return False


def envoy_policy_id(p: AuthorizationPolicy, rule: int) -> str:
    """The name istiod gives a rule in Envoy's RBAC config (builder.go) and Envoy logs on a decision."""
    return f"ns[{p.namespace}]-policy[{p.name}]-rule[{rule}]"


def _envoy_layer(
    c: _Compiled, key: str, policies: Sequence[AuthorizationPolicy], attrs: Attributes, tcp: bool, layer: str,
    denial: str, trace: _Trace,
) -> Decision:
    """builder.go: DENY filter, then ALLOW filter; AUDIT is a LOG filter; dry-run goes to shadow rules.

    Each filter holds one Envoy policy per rule, in a map keyed by the policy id, and Envoy's RBAC engine
    walks that map in key order: when several rules match, the one Envoy names (and that this engine
    reports) is the smallest id, not the first policy written.
    """
    if trace.on:
        for p in policies:
            trace(f"  applies: {p.action} {p.ref} ({scope_of(p, c.state.mesh)}"
                  f"{', dry-run: shadow rules only, never enforced' if p.dry_run else ''})")
        if not policies:
            trace("  no AuthorizationPolicy applies here.")
    plan = c.envoy_plan(key, policies)
    if trace.on:
        for ep in plan.denies + plan.allows:
            _trace_policy_shape(ep, tcp, trace)
    denied = _envoy_decider(plan.rules[("DENY", tcp)], attrs, trace, every=True)
    if denied is not None:
        rule, matching = denied
        if trace.on:
            trace(f"  DENY {rule.ep.policy.ref} rule {rule.index} matches → denied. DENY is evaluated before ALLOW, "
                  "so no ALLOW policy can let this request through (API: authorization_policy.proto; builder.go puts "
                  "the DENY filter before the ALLOW filter).")
        return Decision("deny", denial, layer, DENY_MATCHED, rule.ep.policy.ref, rule.index, candidates=matching)
    if not plan.allows:
        trace.on and trace("  no ALLOW policy applies → allowed (deny-by-default only with an ALLOW policy present).")
        return Decision("allow", ALLOWED, layer, NO_ALLOW if plan.any_enforced else NO_POLICY)
    allowed = _envoy_decider(plan.rules[("ALLOW", tcp)], attrs, trace, every=False)
    if allowed is not None:
        rule, _ = allowed
        trace.on and trace(f"  ALLOW {rule.ep.policy.ref} rule {rule.index} matches → allowed.")
        return Decision("allow", ALLOWED, layer, ALLOW_MATCHED, rule.ep.policy.ref, rule.index)
    trace.on and trace("  ALLOW policies apply and none matches → denied (rbac_access_denied_matched_policy[none]).")
    return Decision("deny", denial, layer, ALLOW_UNMATCHED)


def _envoy_decider(
    rules: Sequence[_EnvoyRule], attrs: Attributes, trace: _Trace, every: bool
) -> tuple[_EnvoyRule, tuple[str, ...]] | None:
    """The first matching rule in policy-id order, which is the one Envoy names; with `every`, also
    every policy that has a matching rule (the candidates a proxy log may be compared with)."""
    first: _EnvoyRule | None = None
    matching: list[str] = []
    for rule in rules:
        if first is not None and (not every or rule.ref in matching):
            continue
        failed = None
        for label, check in rule.parts:
            if not check(attrs):
                failed = label
                break
        if failed is None:
            if trace.on and not rule.parts:
                trace(f"    {rule.ref} rule {rule.index}: empty rule, always matches.")
            first = first or rule
            matching.append(rule.ref)
            if not every:
                break
        elif trace.on:
            trace(f"    {rule.ep.policy.ref} rule {rule.index}: `{failed}` does not match.")
    return (first, tuple(matching)) if first is not None else None


def _trace_policy_shape(ep: _EnvoyPolicy, tcp: bool, trace: _Trace) -> None:
    p = ep.policy
    if not p.rules:
        trace(f"    {p.ref}: no rules → matches nothing"
              f"{' (an ALLOW with no rules allows nothing)' if p.action == 'ALLOW' else ''}.")
    kept = {i for i, _ in (ep.rules_tcp if tcp else ep.rules_http)}
    for rule in p.rules or ():
        if rule.index not in kept:
            trace(f"    {p.ref} rule {rule.index}: dropped on this TCP chain: it uses an HTTP-only attribute and "
                  "ALLOW rules that cannot be generated are skipped (model.go checkError).")


def _envoy_proxy(
    c: _Compiled, key: str, policies: Sequence[AuthorizationPolicy], ras: Sequence[RequestAuthentication],
    attrs: Attributes, probe: Probe, tcp: bool, layer: str, trace: _Trace,
) -> Decision:
    """One Envoy proxy's filters in istiod's order: CUSTOM (shadow RBAC + ext_authz), the JWT filter (HTTP only),
    then RBAC DENY and ALLOW (listener_builder.go@1.30.3 buildHTTPConnectionManager; networkfilter.go
    buildCompleteNetworkFilters for TCP)."""
    decided = _custom_step(c, key, policies, attrs, probe, tcp, layer, trace)
    if isinstance(decided, Decision):
        return decided
    attrs = decided
    if tcp:
        if trace.on and ras:
            trace(f"  RequestAuthentication ({', '.join(r.ref for r in ras)}) applies, but a TCP chain has no JWT "
                  "filter (it is an HTTP filter): nothing is checked and no request.auth attribute exists here.")
    else:
        checked = _jwt_step(c, key, ras, attrs, probe, layer, trace)
        if isinstance(checked, Decision):
            return checked
        attrs = checked
    trace.on and trace("  RBAC (AuthorizationPolicy DENY, then ALLOW):")
    return _envoy_layer(c, key, policies, attrs, tcp, layer, DENIED_L4 if tcp else DENIED_L7, trace)


def _custom_rules(
    c: _Compiled, policies: Sequence[AuthorizationPolicy], tcp: bool, prefix: str,
) -> tuple[_EnvoyRule, ...]:
    """The rules of CUSTOM policies as istiod generates them (as a DENY: builder.go build(customPolicies,
    RBAC_DENY)), in the order of the RBAC filter's policy map,
    `istio-ext-authz-[<provider>-]ns[..]-policy[..]-rule[i]` (policyName)."""
    rules = []
    for p in policies:
        ep = c.envoy_policy(p)
        for index, parts in (ep.rules_tcp if tcp else ep.rules_http):
            rules.append(_EnvoyRule(prefix + envoy_policy_id(p, index), ep, index, parts, p.ref))
    return tuple(sorted(rules, key=lambda r: r.pid))


def _custom_step(
    c: _Compiled, key: str, policies: Sequence[AuthorizationPolicy], attrs: Attributes, probe: Probe, tcp: bool,
    layer: str, trace: _Trace,
) -> Decision | Attributes:
    """builder.go@1.30.3 buildHTTP / buildTCP with IsCustomBuilder (custom.py): a Decision when CUSTOM decides,
    else what the JWT filter and RBAC see afterwards."""
    customs = [p for p in policies if p.action == "CUSTOM"]
    if not customs:
        return attrs
    enforced = [p for p in customs if not p.dry_run]
    if trace.on:
        trace("  CUSTOM (external authorization) comes first: " + ", ".join(
            f"{p.ref} (provider {p.provider!r}{', dry-run: not modelled, left out' if p.dry_run else ''})"
            for p in customs) + ".")
    names = sorted({p.provider or "" for p in enforced})
    if not names:
        return attrs
    per_provider = c.version.has(EXT_AUTHZ_PROVIDER_NAME_CHECK)  # istio/istio#58082: one filter pair per provider

    def prefix(name: str) -> str:
        return f"istio-ext-authz-{name}-" if per_provider else "istio-ext-authz-"

    def bad_deny(groups: Sequence[tuple[str, Sequence[AuthorizationPolicy]]], why: str) -> Decision | Attributes:
        return _bad_custom_deny(c, [(prefix(n), g) for n, g in groups], why, attrs, tcp, layer, trace)

    if len(names) > 1 and per_provider and c.state.mesh.pilot_flag(pilotenv.MULTIPLE_CUSTOM_PROVIDERS):
        trace.on and trace(f"    several providers ({', '.join(repr(n) for n in names)}) and "
                           "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is on: one shadow RBAC + ext_authz pair per "
                           "provider, in provider-name order, each enabled only by its own rules "
                           "(builder.go@1.30.3 buildHTTP l.365+, generateFilterMatcherForProvider): every provider "
                           "whose rules match must allow.")
        for name in names:
            trace.on and trace(f"    provider {name!r}:")
            group = [p for p in enforced if (p.provider or "") == name]
            decided = _one_provider(c, name, group, attrs, probe, tcp, layer, prefix(name), trace)
            if isinstance(decided, Decision):
                return decided
            attrs = decided
        return attrs
    if len(names) > 1:
        why = (f"several providers ({', '.join(repr(n) for n in names)}) on one proxy: without "
               "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (default false) istiod refuses them all"
               if per_provider else
               f"several providers ({', '.join(repr(n) for n in names)}) on one proxy: getExtAuthz allows one "
               "(Istio < 1.30)")
        groups = ([(n, [p for p in enforced if (p.provider or "") == n]) for n in names] if per_provider
                  else [("", enforced)])
        return bad_deny(groups, why)
    return _one_provider(c, names[0], enforced, attrs, probe, tcp, layer, prefix(names[0]), trace)


def _bad_custom_deny(
    c: _Compiled, groups: Sequence[tuple[str, Sequence[AuthorizationPolicy]]], why: str, attrs: Attributes, tcp: bool,
    layer: str, trace: _Trace,
) -> Decision | Attributes:
    """builder.go getBadCustomDenyRules: the CUSTOM rules of each (name prefix, policies) group as an enforcing DENY."""
    trace.on and trace(f"    {why}: istiod replaces the ext_authz filter by an RBAC filter that DENIES the "
                       "requests these rules match (getBadCustomDenyRules, `...-deny-due-to-bad-CUSTOM-action`), "
                       "whatever failOpen says.")
    for prefix, group in groups:
        found = _envoy_decider(_custom_rules(c, group, tcp, prefix), attrs, trace, every=True)
        if found is not None:
            rule, matching = found
            shown = "connection closed" if tcp else "403 RBAC: access denied"
            trace.on and trace(f"    CUSTOM {rule.ref} rule {rule.index} matches → denied ({shown}).")
            return Decision("deny", DENIED_L4 if tcp else DENIED_L7, layer, DENY_MATCHED, rule.ref, rule.index,
                            candidates=matching)
    trace.on and trace("    no CUSTOM rule matches this request → it goes on.")
    return attrs


def _one_provider(
    c: _Compiled, name: str, enforced: Sequence[AuthorizationPolicy], attrs: Attributes, probe: Probe, tcp: bool,
    layer: str, prefix: str, trace: _Trace,
) -> Decision | Attributes:
    """One provider's shadow RBAC + ext_authz pair (or istiod's deny when the provider is unusable): `prefix` starts
    its rules' names (`istio-ext-authz-[<provider>-]`)."""
    view = c.provider_view(name)
    if not view.usable:
        return _bad_custom_deny(c, [(prefix, enforced)], f"provider {name!r} is unusable "
                                f"({'; '.join(view.defects)})", attrs, tcp, layer, trace)
    provider = view.provider
    assert provider is not None
    if tcp and provider.kind == "http":
        trace.on and trace(f"    provider {name!r} is an HTTP ext_authz server: istiod builds no CUSTOM filter for a "
                           "TCP chain (\"ignored CUSTOM action with HTTP provider on TCP filter chain\"): not checked.")
        return attrs
    found = _envoy_decider(_custom_rules(c, enforced, tcp, prefix), attrs, trace, every=True)
    if found is None:
        trace.on and trace("    no CUSTOM rule matches: the shadow RBAC filter sets no `istio-ext-authz` policy id, so "
                           "ext_authz is not called (filter_enabled_metadata) and the request goes on.")
        return attrs
    rule, matching = found
    trace.on and trace(f"    CUSTOM {rule.ref} rule {rule.index} matches: ext_authz asks provider {name!r} "
                       f"({provider.kind}, {provider.service}:{provider.port}).")
    answer = ext.ask(view, probe, attrs.uri, tcp)
    trace.on and trace(f"    {answer.why}.")
    if answer.verdict == "allow":
        trace.on and trace("    the provider allows: the request goes on (a CUSTOM allow does not skip DENY or ALLOW).")
        if not answer.upstream:
            return attrs
        trace.on and trace("    Envoy adds the provider's response headers to the request: "
                           + ", ".join(f"{k}: {v}" for k, v in answer.upstream) + ".")
        added = {k for k, _ in answer.upstream}
        return replace(attrs, headers=tuple((k, v) for k, v in attrs.headers if k not in added) + answer.upstream)
    if answer.verdict == "deny":
        trace.on and trace("    → denied by the external authorizer"
                           + (" (the network ext_authz filter closes the connection)." if tcp else
                              ": the client gets its status and body (ext_authz_denied, flag UAEX)."))
        return Decision("deny", DENIED_L4 if tcp else DENIED_CUSTOM, layer, EXT_AUTHZ_DENIED, rule.ref, rule.index,
                        candidates=matching)
    if provider.fail_open:
        trace.on and trace("    the check failed and failOpen is true (failure_mode_allow): the request goes on.")
        return attrs
    trace.on and trace(f"    the check failed and failOpen is false: the client gets {ext.status_on_error(provider)} "
                       "with an empty body (statusOnError; ext_authz_error, flag UAEX).")
    return Decision("deny", DENIED_L4 if tcp else DENIED_CUSTOM, layer, EXT_AUTHZ_ERROR, rule.ref, rule.index,
                    candidates=matching)


def _jwt_step(
    c: _Compiled, key: str, ras: Sequence[RequestAuthentication], attrs: Attributes, probe: Probe, layer: str,
    trace: _Trace,
) -> Decision | Attributes:
    """The JWT filter (jwt.py): a Decision when it rejects the token, else what RBAC sees afterwards."""
    provs = c.jwt_providers(key, ras)
    token = probe.request.jwt
    if not provs:
        if trace.on and token is not None:
            trace(f"  No RequestAuthentication applies here: there is no JWT filter, the token "
                  f"({token.describe()}) is not checked, and no request.auth attribute is set.")
        return attrs
    outcome = jwt.authenticate(provs, probe.request, c.state.issuer_map)
    if trace.on:
        trace(f"  RequestAuthentication: the JWT filter checks tokens for {len(provs)} jwtRule(s) "
              "(policy_applier.go convertToEnvoyJwtConfig, sorted by issuer):")
        for p in provs:
            aud = f", audiences {list(p.rule.audiences)}" if p.rule.audiences else ""
            trace(f"    {p.name} from {p.ra.ref} jwtRules[{p.rule.index}]: issuer {p.rule.issuer!r}{aud}; "
                  f"looks in {p.describe_locations()}")
        if outcome.cors_preflight:
            trace("    a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method): bypass_cors_preflight "
                  "lets it through unchecked.")
        for r in outcome.results:
            if r.status == jwt.MISSED:
                trace(f"    {r.provider.name}: no token in its locations.")
            elif r.status.ok:
                trace(f"    {r.provider.name}: the token is valid.")
            else:
                words = r.status.message or "the token fails (in words that depend on the keys made at run time)"
                trace(f"    {r.provider.name}: {words}.")
    if outcome.rejected:
        status = outcome.status
        if trace.on:
            words = f"{status.http_status} `{status.message}`" if status.message else f"{status.http_status}"
            trace(f"  → rejected by the JWT filter: {words} (jwt_authn_access_denied). It runs before RBAC, so no "
                  "AuthorizationPolicy is consulted, not even an ALLOW that would let everyone in.")
        return Decision("deny", DENIED_AUTHN, layer, JWT_REJECTED, outcome.by.ra.ref if outcome.by else None,
                        detail=status.message)
    if trace.on:
        if outcome.payload is not None:
            p = outcome.payload
            trace(f"  The JWT filter accepts the token: RBAC sees request principal {p.get('iss')}/{p.get('sub')} and "
                  "its claims (space-delimited claims as lists).")
        elif not outcome.cors_preflight:
            trace("  No token in any location a jwtRule looks at: the JWT filter lets the request through "
                  "(allow_missing) with no request principal; only an AuthorizationPolicy can require one.")
    return replace(attrs, payload=outcome.payload, headers=_visible_headers(outcome.headers))


def _sidecar(c: _Compiled, probe: Probe, trace: _Trace) -> Decision:
    state, src, dst = c.state, probe.source, probe.destination
    mtls = c.sidecar_mtls(dst, probe.port.number)
    pa = mtls.decided_by
    if trace.on:
        origin = (f" (from {pa.ref}, its portLevelMtls entry for port {probe.port.number})" if mtls.port_level
                  else f" (from {pa.ref})" if pa else " (default)")
        trace(f"The destination's sidecar enforces. PeerAuthentication mode on port {probe.port.number}: "
              f"{mtls.mode}{origin}.")
    if not src.in_mesh and mtls.mode == "STRICT":
        trace.on and trace("  STRICT accepts only mTLS: the plaintext connection finds no filter chain and is reset "
              "(curl exit 56; Envoy logs filter_chain_not_found).")
        return Decision("deny", DENIED_L4, "sidecar", STRICT_MTLS, pa.ref if pa else None)
    identity = src.identity(state.mesh.trust_domain) if src.in_mesh else None
    if src.in_mesh and mtls.mode == "DISABLE":
        identity = None
        trace.on and trace("  DISABLE: the server has only a plaintext filter chain (filterchain_options.go "
                           "getFilterChainMatchOptions), and the client sidecar's auto-mTLS sends plaintext to a "
                           "DISABLE port (endpoints/mtls_checker.go checkMtlsEnabled; no DestinationRule). So the "
                           "request carries no peer certificate: no principal, namespace or serviceAccount can "
                           "match (their not-forms do), and there is no SNI.")
    tcp = probe.port.protocol == "TCP"
    attrs = _attributes(state, probe, identity, state.addresses.get(src.ref, ""), http=not tcp, version=c.version,
                        client_sidecar=src.in_mesh)
    if tcp and trace.on:
        trace("  Port is TCP: the network RBAC filter decides per connection (a denied connection is closed: curl "
              "exit 52).")
        if _reads(c.for_workload(dst), keys=http_only_condition, fields=HTTP_ONLY_FIELDS):
            trace("  HTTP-only attributes drop ALLOW rules and are ignored in DENY rules on this chain (model.go "
                  "checkError).")
    _trace_path(probe, attrs, c.version, trace)
    return _envoy_proxy(c, f"sidecar:{dst.ref}", c.for_workload(dst), c.ras_for_workload(dst), attrs, probe, tcp,
                        "sidecar", trace)


def _request_path(raw: str, version: IstioVersion, client_sidecar: bool) -> str:
    """The path the enforcing Envoy's RBAC filter matches: normalized (BASE) by that Envoy and, when the
    client has a sidecar, first by the client sidecar, which forwards the path it normalized (istiod
    builds every sidecar HCM, outbound too, with the mesh's normalization: listener_builder.go
    buildHTTPConnectionManager@1.30.3). Without the DOT_SEGMENT_PARAMETERS fix a second pass changes
    nothing; with it, `%2e%2e;x` becomes `..;x` in the first pass and `..` in the second."""
    fixed = version.has(DOT_SEGMENT_PARAMETERS)
    path = normalize_path(raw, fixed)
    return normalize_path(path, fixed) if client_sidecar else path


def _normalization_differs(raw: str) -> bool:
    """Whether the release or a second normalization pass can change how `raw` is matched (a `.;x` / `..;x`
    segment): only then does explain say how the path was normalized."""
    return normalize_path(normalize_path(raw, True), True) != normalize_path(raw, False)


def _trace_path(probe: Probe, attrs: Attributes, version: IstioVersion, trace: _Trace) -> None:
    """Say how the path was normalized when the release decides it (a `.;x` / `..;x` segment)."""
    if not trace.on or attrs.path is None:
        return
    raw = probe.request.path
    if not _normalization_differs(raw):
        return
    if version.has(DOT_SEGMENT_PARAMETERS):
        trace(f"  Path {raw!r} is matched as {attrs.path!r}: this release's Envoy cuts a `.;x` / `..;x` segment to "
              "`.` / `..` when it normalizes (Envoy CVE-2026-73551 fix, Istio 1.29.7 / 1.30.4; not in 1.31.0), and a "
              "client sidecar normalizes the path once before the server's Envoy does.")
    else:
        trace(f"  Path {raw!r} is matched as {attrs.path!r}: a `.;x` / `..;x` segment is an ordinary segment to Istio "
              f"{version}'s Envoy (the Envoy CVE-2026-73551 fix is in Istio 1.29.7 / 1.30.4, not in 1.31.0).")


# -- ztunnel ---------------------------------------------------------------------------------------


def _ambient_ztunnel(c: _Compiled, probe: Probe, trace: _Trace, via: Waypoint | None,
                     client_sidecar: bool = False) -> Decision:
    """state.rs assert_rbac at the destination ztunnel: DENY (enforced), no ALLOW → allow, ALLOW match.

    `client_sidecar`: the client is a sidecar sending HBONE with its own certificate (mode mixed, path.py
    SIDECAR_TO_AMBIENT): ztunnel sees the sidecar's identity and a refusal reaches the client as its sidecar's
    503, like a waypoint's."""
    state, src, dst = c.state, probe.source, probe.destination
    td = state.mesh.trust_domain
    if via is not None:
        identity, source_ip = via.identity(td), state.addresses.get(via.ref, "")
        trace.on and trace("The destination ztunnel enforces L4 policy on the waypoint's connection: the source "
                           f"it sees is the waypoint, {identity} (l4-policy docs; TestAuthorizationL4 allows the "
                           "waypoint SA).")
    else:
        identity = src.identity(td) if src.in_mesh else None
        source_ip = state.addresses.get(src.ref, "")
        trace.on and trace("The destination's ztunnel enforces (L4 only, per connection)."
                           + (f" The client's {'ingress gateway' if src.is_gateway else 'sidecar'} tunnels to it "
                              f"with its own certificate: ztunnel sees {identity}; a refusal resets the tunnel and "
                              f"the {'gateway' if src.is_gateway else 'sidecar'} answers the client 503 (an HTTP "
                              "port)." if client_sidecar else ""))
        if trace.on:
            for ra in c.ras_for_workload(dst):
                trace(f"  RequestAuthentication {ra.ref} selects {dst.ref}, but ztunnel has no JWT filter (nothing in "
                      "ambient/ or ztunnel's rbac.rs reads RequestAuthentication): the token is not checked.")
    denial = DENIED_UPSTREAM if (via is not None or client_sidecar) and probe.port.protocol == "HTTP" else DENIED_L4
    conn = Connection(identity, source_ip, state.addresses.get(dst.ref, ""), probe.port.number)
    plan = c.ztunnel_plan(dst, _serving_waypoint(c, dst, via))
    if trace.on:
        for line in plan.notes:
            trace(line)
        if not plan.any_enforced:
            trace("  no AuthorizationPolicy is enforced here.")
        for t in plan.denies + plan.allows:
            trace(f"  applies: {t.policy.action} {t.policy.ref} ({scope_of(t.policy, state.mesh)})")
            _trace_translation(t, trace)
    for t in plan.denies:
        index = first_matching_rule(t, conn)
        if index is not None:
            ref = t.policy.ref
            trace.on and trace(f"  DENY {ref} rule {index} matches → connection denied (ztunnel: explicitly denied "
                               f"by {ref}). DENY is evaluated before ALLOW (state.rs assert_rbac returns on the "
                               "first matching DENY), so no ALLOW policy can let it through.")
            matching = tuple(o.policy.ref for o in plan.denies if first_matching_rule(o, conn) is not None)
            return Decision("deny", denial, "ztunnel", DENY_MATCHED, ref, index, candidates=matching)
    strict = _ztunnel_peer_authentication(c, probe, identity is not None, trace)
    if strict is not None:
        return Decision("deny", denial, "ztunnel", STRICT_MTLS, strict or None)
    if not plan.allows:
        trace.on and trace("  no ALLOW policy → allowed.")
        return Decision("allow", ALLOWED, "ztunnel", NO_ALLOW if plan.any_enforced else NO_POLICY)
    for t in plan.allows:
        index = first_matching_rule(t, conn)
        if index is not None:
            trace.on and trace(f"  ALLOW {t.policy.ref} rule {index} matches → allowed.")
            return Decision("allow", ALLOWED, "ztunnel", ALLOW_MATCHED, t.policy.ref, index)
    trace.on and trace("  ALLOW policies exist, but none allowed → denied (ztunnel: allow policies exist, but "
                       "none allowed).")
    return Decision("deny", denial, "ztunnel", ALLOW_UNMATCHED)


def _ztunnel_peer_authentication(c: _Compiled, probe: Probe, has_identity: bool, trace: _Trace) -> str | None:
    """The PeerAuthentication DENYs at the destination ztunnel (mtls.py): the PeerAuthentication behind the one
    that denies this connection ("" when istiod's policy stands for none), or None.

    They come after every AuthorizationPolicy DENY: state.rs assert_rbac walks the namespace's policies, the
    global ones, then the workload's list, in which workloads.go buildWorkloadPolicies puts the selector
    AuthorizationPolicies (sorted) before the PeerAuthentication keys; the first DENY that matches is the
    one ztunnel names."""
    zm = c.ztunnel_mtls(probe.destination)
    if trace.on:
        for note in zm.notes:
            trace(f"  PeerAuthentication: {note}.")
        for p in zm.policies:
            by = f" for {p.source.ref}" if p.source is not None else ""
            trace(f"  PeerAuthentication{by}: istiod refers the workload to DENY {p.key} (ambient authorization.go), "
                  "which matches only connections without a peer identity"
                  + ("." if p.name == STATIC_STRICT else ", on the ports its rules name."))
    if has_identity or not zm.policies:
        if trace.on and zm.policies:
            trace("    the connection is HBONE (mTLS, with a peer identity): they do not match.")
        return None
    denying = zm.denying(False, probe.port.number)
    if denying is None:
        trace.on and trace(f"    port {probe.port.number} is not STRICT for them: the plaintext connection goes on.")
        return None
    trace.on and trace(f"  DENY {denying.key} matches the plaintext connection on port {probe.port.number} → "
                       f"dropped (ztunnel: explicitly denied by {denying.key}).")
    return denying.source.ref if denying.source is not None else ""


def _serving_waypoint(c: _Compiled, dst: Workload, via: Waypoint | None) -> Waypoint | None:
    """The deployed waypoint `dst` uses (whether or not this probe went through it): waypoint mode, or a `waypoint`
    namespace of mode mixed. None in ambient and sidecar modes, where no waypoint exists."""
    if via is not None:
        return via
    if c.mode == "waypoint" or (c.mode == "mixed" and getattr(c.state, "dataplanes", {}).get(dst.namespace)
                                == "waypoint"):
        return c.state.waypoint_for(dst) if dst.in_mesh else None
    return None


def _layered_termination(c: _Compiled, probe: Probe, waypoint: Waypoint, trace: _Trace) -> Decision | None:
    """ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES (flags.py): the RBAC filter on the waypoint's connect_terminate
    HCM, TCP rules over the HBONE CONNECT (listener_waypoint.go@1.30.3 l.276-281). It sees the client's certificate
    and its address (the direct peer of the HBONE connection), and the waypoint's own address and port 15008 as the
    destination. A denial is a 403 to the CONNECT: the client's ztunnel resets the connection (denied-l4)."""
    state = c.state
    policies = flags.termination_policies(state.authorization_policies, waypoint, state.mesh)
    trace.on and trace(f"ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES is on: at its HBONE termination, waypoint "
                       f"{waypoint.ref} first enforces, as L4 rules, the policies that select its own pod "
                       f"({', '.join(f'{k}={v}' for k, v in flags.waypoint_labels(waypoint).items())}; namespace- and "
                       "mesh-wide ones too) or target its Gateway (NewWaypointTerminationBuilder, "
                       "BuildTCPRulesAsHTTPFilter): HTTP attributes drop ALLOW rules and are ignored in DENY rules; "
                       f"the destination is the waypoint itself on port {flags.HBONE_PORT}.")
    if not policies:
        trace.on and trace("  no policy selects the waypoint: nothing is checked there.")
        return None
    attrs = Attributes(principal=probe.source.identity(state.mesh.trust_domain),
                       source_ip=state.addresses.get(probe.source.ref, ""),
                       destination_ip=state.addresses.get(waypoint.ref, ""), destination_port=flags.HBONE_PORT,
                       sni=None, method=None, path=None, headers=(), host=None)
    decided = _envoy_layer(c, f"termination:{waypoint.ref}", policies, attrs, True, "waypoint", DENIED_L4, trace)
    decided = replace(decided, waypoint=waypoint.ref)
    if decided.verdict == "deny":
        trace.on and trace("  → the CONNECT is refused with 403: the client's ztunnel closes the connection.")
        return decided
    return None


def _trace_translation(t: Translated, trace: _Trace) -> None:
    p = t.policy
    if t.dropped_rules:
        trace.on and trace(f"    ztunnel translation: ALLOW rules {list(t.dropped_rules)} use L7 attributes "
              f"({', '.join(t.l7_fields)}) and are dropped whole (more restrictive than written).")
    elif t.l7_fields and p.action == "DENY":
        trace.on and trace(f"    ztunnel translation: L7 attributes ({', '.join(t.l7_fields)}) are stripped; a "
                           "clause left "
              "with only empty matches never matches, so such a rule is a no-op at ztunnel (istio/istio#61126).")
    if not t.rules:
        trace.on and trace(f"    {p.ref}: no rules left → matches nothing.")


def _waypoint_mode(c: _Compiled, probe: Probe, trace: _Trace) -> Decision:
    state, src, dst = c.state, probe.source, probe.destination
    waypoint = state.waypoint_for(dst)
    if waypoint is None:
        trace.on and trace(f"No waypoint serves namespace {dst.namespace}: traffic goes ztunnel to ztunnel.")
        return _ambient_ztunnel(c, probe, trace, via=None)
    if not src.in_mesh:
        trace.on and trace("An out-of-mesh client is not captured by any ztunnel: its traffic reaches the destination "
              "pod directly and bypasses the waypoint; only the destination ztunnel enforces "
              "(research note §4.4: traffic that bypasses a waypoint is subject only to ztunnel policy).")
        return _ambient_ztunnel(c, probe, trace, via=None)
    trace.on and trace(f"Waypoint {waypoint.ref} serves {dst.ref}: it enforces policies bound by targetRefs "
          "(Gateway, Service, GatewayClass istio-waypoint); selector and namespace-wide policies are ignored there.")
    tcp = probe.port.protocol == "TCP"
    attrs = _attributes(state, probe, src.identity(state.mesh.trust_domain), WAYPOINT_DIRECT_REMOTE, http=not tcp,
                        version=c.version, sidecar_sni=False, remote_peer=state.addresses.get(src.ref, ""))
    bound = [p for p in state.authorization_policies
             if applies_at_waypoint(p, waypoint, dst, state.mesh, c.version)]
    if trace.on and _reads(bound, keys=_DIRECT_IP_KEYS, fields=_DIRECT_IP_FIELDS):
        trace("  At the waypoint, `ipBlocks` and `source.ip` see no client address: istiod compiles them to "
              "Envoy's direct_remote_ip (generator.go srcIPGenerator), and the waypoint's inner listener "
              f"only restores the remote address, so the direct one stays {WAYPOINT_DIRECT_REMOTE} "
              "(istio/istio#46982): positive IP matches fail there, their not-forms hold.")
    if trace.on and _reads(bound, keys=_SNI_KEYS):
        trace("  At the waypoint there is no SNI (`connection.sni`): the waypoint inspects TLS only for TLS services "
              "(listener_waypoint.go, istio/istio#53588): a positive SNI match fails there, its not-form holds.")
    _trace_path(probe, attrs, c.version, trace)
    if state.mesh.pilot_flag(pilotenv.LAYERED_WAYPOINT):
        refused = _layered_termination(c, probe, waypoint, trace)
        if refused is not None:
            return refused
    if trace.on:
        for ra in state.request_authentications:
            if applies_to_workload(ra, dst, state.mesh):
                trace(f"  RequestAuthentication {ra.ref} selects {dst.ref} by {scope_of(ra, state.mesh)}: a waypoint "
                      "ignores such RequestAuthentications (policyattachment.go ShouldAttachPolicy: waypoints use "
                      "targetRefs only; TestL7JWT), and ztunnel has no JWT filter: no effect.")
    at_waypoint = _envoy_proxy(c, f"waypoint:{waypoint.ref}:{dst.ref}", bound, c.ras_at_waypoint(waypoint, dst),
                               attrs, probe, tcp, "waypoint", trace)
    at_waypoint = replace(at_waypoint, waypoint=waypoint.ref)
    if at_waypoint.verdict == "deny":
        return at_waypoint
    after = _ambient_ztunnel(c, probe, trace, via=waypoint)
    if after.verdict == "allow" and after.reason == NO_POLICY and at_waypoint.reason != NO_POLICY:
        return at_waypoint
    return after


# -- ingress gateways ------------------------------------------------------------------------------------


def ingress_target(state: State, probe: Probe) -> tuple[Workload, Probe] | None:
    """The workload a gateway probe's Host routes to, and the request as the gateway sends it on: from the gateway
    (its identity), to that workload's port, with X-Forwarded-For as the gateway forwards it (its peer, the client,
    appended: conn_manager_utility.cc mutateRequestHeaders, skip_xff_append unset by istiod). None when the Host
    has no route (the loader refuses such probes: the gateway would answer 404)."""
    gateway = probe.destination
    found = gateway.route_for(probe.authority)
    backend = state_workload(state, found.to) if found is not None else None
    port = backend.port(found.port) if backend is not None and found is not None else None
    if backend is None or port is None:
        return None
    r = probe.request
    forwarded = xff.appended(r.header(xff.XFF), state.addresses.get(probe.source.ref, ""))
    headers = (*((k, v) for k, v in r.headers if k.lower() != xff.XFF), (xff.XFF, forwarded))
    return backend, Probe(gateway, backend, port, replace(r, headers=headers))


def state_workload(state: State, ref: str) -> Workload | None:
    return next((w for w in state.workloads if w.ref == ref), None)


def _backend_plane(state: State, backend: Workload, mode: Mode) -> DataPlane:
    if mode == "mixed":
        return state.dataplanes.get(backend.namespace, "sidecar")
    return "sidecar" if mode == "sidecar" else ("waypoint" if mode == "waypoint" else "ambient")


def uses_waypoint_for_ingress(backend: Workload) -> bool:
    """istio.io/ingress-use-waypoint on the backend's Service (a workload's labels stand for its Service's here),
    read with strconv.ParseBool; an unparsable value counts as false (serviceregistry/ambient/services.go@1.30
    l.271-290, l.771-788). The Namespace form of the label is not modelled."""
    value = backend.labels.get(INGRESS_USE_WAYPOINT)
    return value is not None and pilotenv.parse_bool(value) is True


def _ingress_route(c: _Compiled, probe: Probe, mode: Mode) -> Route:
    target = ingress_target(c.state, probe)
    assert target is not None, "the loader refuses gateway probes without a route"
    backend, _ = target
    plane = _backend_plane(c.state, backend, mode)
    waypoint = c.state.waypoint_for(backend) if plane == "waypoint" else None
    return ingress_route(probe, backend, plane, c.state.mesh.trust_domain, waypoint,
                         uses_waypoint_for_ingress(backend))


def _ingress(c: _Compiled, probe: Probe, mode: Mode, trace: _Trace) -> Decision:
    """A probe to an ingress gateway (docs/ingress-gateways.md §1, §2): the gateway's own Envoy decides first
    (listener_builder.go buildHTTPConnectionManager: CUSTOM, JWT, RBAC, as a sidecar's inbound HCM, principals from
    the TLS peer, none here: its clients are plaintext), with `remote_ip` from X-Forwarded-For and
    numTrustedProxies and `direct_remote_ip` the peer; then the route's destination decides as its data plane does,
    seeing the gateway's identity and address (path.py ingress_route)."""
    state, gateway = c.state, probe.destination
    target = ingress_target(state, probe)
    assert target is not None, "the loader refuses gateway probes without a route"
    backend, onward = target
    n = c.state.mesh.num_trusted_proxies
    peer = state.addresses.get(probe.source.ref, "")
    received = probe.request.header(xff.XFF)
    remote = xff.remote_address(received, peer, use_remote_address=True, trusted_hops=n)
    path = _ingress_route(c, probe, mode)
    if trace.on:
        with_port = ":" in probe.authority.rpartition("]")[2]  # `host:port` or `[v6]:port`
        trace(f"Ingress gateway {gateway.ref} ({gateway.identity(state.mesh.trust_domain)}): Host {probe.authority!r} "
              f"routes to {backend.ref}:{onward.port.number}"
              + (" (routing ignores the Host's port, gateway.go ignore_port_in_host_matching; policies' `hosts` do "
                 "not)" if with_port else "")
              + f". Path ({path.crossing}): {path.describe()}.")
        trace(f"  Why: {path.why}.")
    if trace.on and _reads(c.for_workload(gateway), keys=_IP_KEYS, fields=_IP_FIELDS):
        how = ("numTrustedProxies is 0: the gateway ignores X-Forwarded-For and `remote_ip` is its peer" if n == 0 else
               f"numTrustedProxies is {n}: `remote_ip` is entry {n} from the right of the X-Forwarded-For received "
               f"(getLastAddressFromXFF skipping {n - 1}), or the peer when there are fewer entries or that one is "
               "no IP")
        trace(f"  At the gateway (use_remote_address true, xff_num_trusted_hops {n}: gateway.go l.678-732): {how}; "
              f"X-Forwarded-For {received!r} → remoteIpBlocks / remote.ip see {remote}; ipBlocks / source.ip see the "
              f"peer, {peer} (direct_remote_ip). It appends the peer to X-Forwarded-For before its filters run.")
    fwd_xff = onward.request.header(xff.XFF)
    attrs = Attributes(
        principal=None, source_ip=peer, destination_ip=state.addresses.get(gateway.ref, ""),
        destination_port=probe.port.number, sni=None, method=probe.request.method,
        path=_request_path(probe.request.path, c.version, False),
        headers=_visible_headers(jwt.carried_headers(onward.request)), host=probe.authority, remote_ip=remote)
    at_gateway = _envoy_proxy(c, f"gateway:{gateway.ref}", c.for_workload(gateway), c.ras_for_workload(gateway),
                              attrs, probe, False, "gateway", trace)
    if at_gateway.verdict == "deny":
        return at_gateway
    plane = _backend_plane(state, backend, mode)
    if trace.on:
        behind = list(c.for_workload(backend))
        waypoint = state.waypoint_for(backend) if plane == "waypoint" else None
        if waypoint is not None:
            behind += [p for p in state.authorization_policies
                       if applies_at_waypoint(p, waypoint, backend, state.mesh, c.version)]
        forwarded = (f", X-Forwarded-For {fwd_xff!r}: at a sidecar or waypoint (use_remote_address false) "
                     "remoteIpBlocks see its right-most entry, the gateway's peer"
                     if _reads(behind, keys=_REMOTE_IP_KEYS, fields=_REMOTE_IP_FIELDS) else "")
        trace(f"The gateway sends the request on as {gateway.identity(state.mesh.trust_domain)} from "
              f"{state.addresses.get(gateway.ref, '')}{forwarded}. {backend.ref} runs the {plane} data plane.")
    if path.crossing == INGRESS_TO_SIDECAR:
        after = _sidecar(c, onward, trace)
    elif path.crossing == INGRESS_TO_WAYPOINT:
        after = _waypoint_mode(c, onward, trace)
    else:
        after = _ambient_ztunnel(c, onward, trace, via=None, client_sidecar=True)
    if after.layer != "waypoint":
        after = replace(after, at=backend.ref)
    if after.verdict == "allow" and after.reason == NO_POLICY and at_gateway.reason != NO_POLICY:
        return at_gateway
    return after


# The fast path imports this module's plans and deciders; imported last so that they exist when it loads.
from conformance.engine import fast as _fast  # noqa: E402
