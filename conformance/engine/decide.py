"""The verdict engine: Istio's decision for one probe in one mode, and the reasons for it.

Pure: a function of the policies in force, the workloads and their addresses, the probe, the mode and
the Istio version. Policies are compiled once per state (like Cyclonus' matcher builder); `decide` is
then a cheap evaluation, and `explain` runs the same evaluation with a trace of every step.

The algorithm (API reference, authorization_policy.proto; concepts/security "implicit enablement"):
CUSTOM, then DENY, then ALLOW; no ALLOW policy → allow; an ALLOW policy matches → allow; else deny.
AUDIT never decides. Sidecars (builder.go: DENY filter before ALLOW filter), waypoints and ztunnel
(state.rs assert_rbac) all follow it; what differs is which policies each one sees and how it matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from conformance.engine.matchers import normalize_path
from conformance.engine.policy import (
    AuthorizationPolicy,
    PeerAuthentication,
    compile_authorization_policy,
    compile_peer_authentication,
)
from conformance.engine.proxy import Attributes, Check, EnvoySemantics
from conformance.engine.scope import applies_at_waypoint, applies_to_workload, peer_authentication, scope_of
from conformance.engine.ztunnel import Connection, Translated, first_matching_rule, translate
from conformance.model import (
    ALLOWED,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    Manifest,
    MeshConfig,
    Mode,
    Probe,
    Verdict,
    Waypoint,
    Workload,
)
from conformance.versions import DOT_SEGMENT_PARAMETERS, DRY_RUN_NOT_SENT_TO_ZTUNNEL, IstioVersion

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

    @cached_property
    def authorization_policies(self) -> tuple[AuthorizationPolicy, ...]:
        return tuple(compile_authorization_policy(m) for m in self.policies if m.kind == "AuthorizationPolicy")

    @cached_property
    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        return tuple(compile_peer_authentication(m) for m in self.policies if m.kind == "PeerAuthentication")

    @cached_property
    def _compiled(self) -> dict[tuple[str, IstioVersion], _Compiled]:
        return {}

    def compiled(self, mode: Mode, version: IstioVersion) -> _Compiled:
        key = (mode, version)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = _Compiled(self, version)
        return found

    def waypoint_for(self, workload: Workload) -> Waypoint | None:
        return next((w for w in self.waypoints if w.namespace == workload.namespace), None)


@dataclass(frozen=True)
class Decision:
    """Istio's decision for one probe: verdict, where it was made, by what, and what a client sees."""

    verdict: Verdict
    outcome: str  # "allowed", or the denial form: "denied-l7", "denied-l4", "denied-upstream"
    layer: str | None  # "sidecar" | "ztunnel" | "waypoint"; None when nothing enforces anything
    reason: str
    policy: str | None = None  # "ns/name" of the deciding policy (DENY or ALLOW that matched; PeerAuthentication)
    rule: int | None = None
    # every policy of the deciding action that matched: ztunnel walks its policies in no defined order
    # (state.rs assert_rbac chains namespace, global and workload sets), so any of them may be the one named
    candidates: tuple[str, ...] = ()
    trace: tuple[str, ...] = field(default=(), compare=False)
    # the waypoint (`ns/name`) whose proxy decided, when a waypoint did; a sidecar or ztunnel decision is
    # always the destination's own proxy (the one a proof of it must come from)
    waypoint: str | None = None
    # for JWT_REJECTED: the JWT filter's message the proof must carry ("Jwt is expired"...), as Proof.detail
    detail: str | None = None

    def enforcer(self, probe: Probe) -> str | None:
        """`layer:ns/name` of the proxy that makes this decision (None when no proxy is involved)."""
        if self.layer is None:
            return None
        return f"{self.layer}:{self.waypoint if self.layer == 'waypoint' else probe.destination.ref}"


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


@dataclass(frozen=True)
class _ZtunnelPlan:
    denies: tuple[Translated, ...]
    allows: tuple[Translated, ...]
    any_enforced: bool
    notes: tuple[str, ...]


class _Compiled:
    def __init__(self, state: State, version: IstioVersion):
        self.state = state
        self.version = version
        self.envoy = EnvoySemantics(state.mesh.trust_domain, version)
        self._envoy: dict[str, _EnvoyPolicy] = {}
        self._ztunnel: dict[str, Translated] = {}
        self._per_workload: dict[str, tuple[AuthorizationPolicy, ...]] = {}
        self._plans: dict[str, _EnvoyPlan] = {}
        self._mtls: dict[str, tuple[str, PeerAuthentication | None]] = {}
        self._zplans: dict[str, _ZtunnelPlan] = {}

    def for_workload(self, w: Workload) -> tuple[AuthorizationPolicy, ...]:
        found = self._per_workload.get(w.ref)
        if found is None:
            found = tuple(p for p in self.state.authorization_policies if applies_to_workload(p, w, self.state.mesh))
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

    def peer_authentication(self, w: Workload) -> tuple[str, PeerAuthentication | None]:
        found = self._mtls.get(w.ref)
        if found is None:
            found = self._mtls[w.ref] = peer_authentication(self.state.peer_authentications, w, self.state.mesh)
        return found

    def ztunnel_plan(self, w: Workload) -> _ZtunnelPlan:
        """What istiod sends the destination ztunnel of `w`, translated, split into DENY and ALLOW.

        ambient/authorization.go: only ALLOW and DENY reach ztunnel (CUSTOM and AUDIT get a status
        message); dry-run policies are not sent from 1.25.2 (#55414; 1.29 adds an opt-in, off by
        default), and before that they were sent and enforced."""
        found = self._zplans.get(w.ref)
        if found is not None:
            return found
        sends_dry_run = not self.version.has(DRY_RUN_NOT_SENT_TO_ZTUNNEL)  # istio/istio#55414
        notes: list[str] = []
        enforced: list[Translated] = []
        for p in self.for_workload(w):
            if p.action not in ("ALLOW", "DENY"):
                notes.append(f"  {p.action} {p.ref}: ztunnel does not support the {p.action} action; not enforced.")
            elif p.dry_run and not sends_dry_run:
                notes.append(f"  {p.action} {p.ref}: dry-run; istiod does not send dry-run policies to ztunnel "
                             "(Istio ≥ 1.25.2): no effect.")
            else:
                if p.dry_run:
                    notes.append(f"  {p.action} {p.ref}: dry-run, but Istio < 1.25.2 sends it to ztunnel, which "
                                 "enforces it.")
                enforced.append(self.ztunnel_policy(p))
        found = self._zplans[w.ref] = _ZtunnelPlan(
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
    """Istio's decision for `probe` in `mode` at `version`."""
    return _decide(state, probe, mode, version, _Trace(False))


def explain(state: State, probe: Probe, mode: Mode, version: IstioVersion) -> Decision:
    """The same decision, with `trace` holding the reasoning step by step."""
    return _decide(state, probe, mode, version, _Trace(True))


def _decide(state: State, probe: Probe, mode: Mode, version: IstioVersion, trace: _Trace) -> Decision:
    c = state.compiled(mode, version)
    src = probe.source
    td = state.mesh.trust_domain
    trace.on and trace(f"Istio {version}, {mode} mode: {probe.describe()} ({probe.port.protocol} port)")
    if src.in_mesh:
        trace.on and trace(f"The source is in the mesh: it connects with mTLS as {src.identity(td)}.")
    else:
        trace.on and trace("The source is not in the mesh: it sends plaintext and has no identity, so no positive "
              "principal, namespace or serviceAccount can match it (their not-forms do).")
    if mode == "sidecar":
        result = _sidecar(c, probe, trace)
    elif mode == "ambient":
        result = _ambient_ztunnel(c, probe, trace, via=None)
    else:
        result = _waypoint_mode(c, probe, trace)
    return replace(result, trace=tuple(trace.lines)) if trace.on else result


def _attributes(state: State, probe: Probe, identity: str | None, source_ip: str, http: bool,
                version: IstioVersion, sidecar_sni: bool = True, client_sidecar: bool = False) -> Attributes:
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
        headers=tuple((k.lower(), v) for k, v in r.headers if k.lower() != "host") if http else (),
        host=probe.authority if http else None,
    )


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


def _sidecar(c: _Compiled, probe: Probe, trace: _Trace) -> Decision:
    state, src, dst = c.state, probe.source, probe.destination
    mode, pa = c.peer_authentication(dst)
    trace.on and trace(f"The destination's sidecar enforces. PeerAuthentication mode: {mode}"
          f"{f' (from {pa.ref})' if pa else ' (default)'}.")
    if not src.in_mesh and mode == "STRICT":
        trace.on and trace("  STRICT accepts only mTLS: the plaintext connection finds no filter chain and is reset "
              "(curl exit 56; Envoy logs filter_chain_not_found).")
        return Decision("deny", DENIED_L4, "sidecar", STRICT_MTLS, pa.ref if pa else None)
    tcp = probe.port.protocol == "TCP"
    attrs = _attributes(state, probe, src.identity(state.mesh.trust_domain) if src.in_mesh else None,
                        state.addresses.get(src.ref, ""), http=not tcp, version=c.version, client_sidecar=src.in_mesh)
    if tcp:
        trace.on and trace("  Port is TCP: the network RBAC filter decides per connection; HTTP-only attributes drop "
              "ALLOW rules and are ignored in DENY rules (a denied connection is closed: curl exit 52).")
    _trace_path(probe, attrs, c.version, trace)
    return _envoy_layer(c, f"sidecar:{dst.ref}", c.for_workload(dst), attrs, tcp, "sidecar",
                        DENIED_L4 if tcp else DENIED_L7, trace)


def _request_path(raw: str, version: IstioVersion, client_sidecar: bool) -> str:
    """The path the enforcing Envoy's RBAC filter matches: normalized (BASE) by that Envoy and, when the
    client has a sidecar, first by the client sidecar, which forwards the path it normalized (istiod
    builds every sidecar HCM, outbound too, with the mesh's normalization: listener_builder.go
    buildHTTPConnectionManager@1.30.3). Without the DOT_SEGMENT_PARAMETERS fix a second pass changes
    nothing; with it, `%2e%2e;x` becomes `..;x` in the first pass and `..` in the second."""
    fixed = version.has(DOT_SEGMENT_PARAMETERS)
    path = normalize_path(raw, fixed)
    return normalize_path(path, fixed) if client_sidecar else path


def _trace_path(probe: Probe, attrs: Attributes, version: IstioVersion, trace: _Trace) -> None:
    """Say how the path was normalized when the release decides it (a `.;x` / `..;x` segment)."""
    if not trace.on or attrs.path is None:
        return
    raw = probe.request.path
    if normalize_path(normalize_path(raw, True), True) == normalize_path(raw, False):
        return
    if version.has(DOT_SEGMENT_PARAMETERS):
        trace(f"  Path {raw!r} is matched as {attrs.path!r}: this release's Envoy cuts a `.;x` / `..;x` segment to "
              "`.` / `..` when it normalizes (Envoy CVE-2026-73551 fix, Istio 1.29.7 / 1.30.4; not in 1.31.0), and a "
              "client sidecar normalizes the path once before the server's Envoy does.")
    else:
        trace(f"  Path {raw!r} is matched as {attrs.path!r}: a `.;x` / `..;x` segment is an ordinary segment to Istio "
              f"{version}'s Envoy (the Envoy CVE-2026-73551 fix is in Istio 1.29.7 / 1.30.4, not in 1.31.0).")


# -- ztunnel ---------------------------------------------------------------------------------------


def _ambient_ztunnel(c: _Compiled, probe: Probe, trace: _Trace, via: Waypoint | None) -> Decision:
    """state.rs assert_rbac at the destination ztunnel: DENY (enforced), no ALLOW → allow, ALLOW match."""
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
        trace.on and trace("The destination's ztunnel enforces (L4 only, per connection).")
    denial = DENIED_UPSTREAM if via is not None and probe.port.protocol == "HTTP" else DENIED_L4
    mode, pa = c.peer_authentication(dst)
    if identity is None and mode == "STRICT":
        trace.on and trace(f"  PeerAuthentication STRICT (from {pa.ref if pa else '?'}): istiod sends ztunnel a "
                           "DENY of connections without a principal (istio_converted_static_strict) → the "
                           "plaintext connection is dropped.")
        return Decision("deny", denial, "ztunnel", STRICT_MTLS, pa.ref if pa else None)
    conn = Connection(identity, source_ip, state.addresses.get(dst.ref, ""), probe.port.number)
    plan = c.ztunnel_plan(dst)
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
                        version=c.version, sidecar_sni=False)
    trace.on and trace("  At the waypoint, `ipBlocks` and `source.ip` see no client address: istiod compiles them to "
                       "Envoy's direct_remote_ip (generator.go srcIPGenerator), and the waypoint's inner listener "
                       f"only restores the remote address, so the direct one stays {WAYPOINT_DIRECT_REMOTE} "
                       "(istio/istio#46982): positive IP matches fail there, their not-forms hold. Nor is "
                       "there an SNI (`connection.sni`): the waypoint inspects TLS only for TLS services "
                       "(listener_waypoint.go, istio/istio#53588).")
    _trace_path(probe, attrs, c.version, trace)
    bound = [p for p in state.authorization_policies
             if applies_at_waypoint(p, waypoint, dst, state.mesh, c.version)]
    at_waypoint = _envoy_layer(c, f"waypoint:{waypoint.ref}:{dst.ref}", bound, attrs, tcp, "waypoint",
                               DENIED_L4 if tcp else DENIED_L7, trace)
    at_waypoint = replace(at_waypoint, waypoint=waypoint.ref)
    if at_waypoint.verdict == "deny":
        return at_waypoint
    after = _ambient_ztunnel(c, probe, trace, via=waypoint)
    if after.verdict == "allow" and after.reason == NO_POLICY and at_waypoint.reason != NO_POLICY:
        return at_waypoint
    return after
