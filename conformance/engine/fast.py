"""The verdict-only fast path: the same decision as decide.py's traced evaluation, without building an explanation.

Why it exists: `decide` is called for every cell of a truth table, for every probe of a run and for every probe of
`init`'s and `snapshot`'s all-pairs matrices (thousands of workloads, issue 14). The traced path re-derives per
probe what depends only on the destination (its PeerAuthentication mode, its compiled policies, the Decision
objects it can produce) and walks istiod's filter order with a trace test at every step. Here each destination
port is compiled once per state into a `_Target`; a probe then costs the source's attributes and the rule checks.

What it is not: a second semantics. Every rule, matcher and order comes from decide.py (the same `_Compiled`
plans, `_envoy_decider`, `first_matching_rule`, `_ztunnel_peer_authentication`); this module only skips the trace
and caches. It covers the common shapes (a sidecar without CUSTOM or JWT filter, the destination ztunnel without
a waypoint on the path) and returns None for everything else, which the traced path then decides.
tests/test_engine_fast.py checks on generated worlds that both paths give equal Decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from conformance.engine import jwt, xff

# By name from the module: the package's `decide` attribute is the function, not this module.
from conformance.engine.decide import (
    ALLOW_MATCHED,
    ALLOW_UNMATCHED,
    DENY_MATCHED,
    NO_ALLOW,
    NO_POLICY,
    STRICT_MTLS,
    Decision,
    State,
    _Compiled,
    _envoy_decider,
    _EnvoyRule,
    _request_path,
    _serving_waypoint,
    _Trace,
    _visible_headers,
    _ztunnel_peer_authentication,
)
from conformance.engine.decide import decide as _decide_probe
from conformance.engine.proxy import Attributes, Check
from conformance.engine.ztunnel import Connection, Translated, first_matching_rule
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, Mode, Port, Probe, Request, Workload
from conformance.versions import IstioVersion

# One (verdict, outcome, layer, reason, policy, rule, candidates): Decisions are immutable, so one object per
# distinct value is shared by every probe that gets it.
_Key = tuple[str, str, str | None, str, str | None, int | None, tuple[str, ...]]


@dataclass
class _Target:
    """One destination port as its enforcing proxy holds it, compiled once per state, mode and version."""

    kind: str  # "sidecar" | "ztunnel"
    dst: Workload
    port: Port
    dst_ip: str
    decisions: dict[_Key, Decision] = field(default_factory=dict)
    # sidecar
    strict: Decision | None = None  # what an out-of-mesh client gets on a STRICT port
    disabled: bool = False
    tcp: bool = False
    sni: str | None = None
    authority: str = ""  # Probe.authority without a Host header: `<name>.<namespace>[:<port>]` (curl omits 80)
    denies: tuple[_EnvoyRule, ...] = ()
    allows: tuple[_EnvoyRule, ...] = ()
    has_allow: bool = False
    any_enforced: bool = False
    # ztunnel
    zdenies: tuple[Translated, ...] = ()
    zallows: tuple[Translated, ...] = ()
    strict_policies: bool = False  # PeerAuthentication DENYs refer the workload to policies for plaintext

    def decision(self, verdict: str, outcome: str, layer: str | None, reason: str, policy: str | None = None,
                 rule: int | None = None, candidates: tuple[str, ...] = ()) -> Decision:
        key = (verdict, outcome, layer, reason, policy, rule, candidates)
        found = self.decisions.get(key)
        if found is None:
            found = self.decisions[key] = Decision(verdict, outcome, layer, reason, policy, rule,  # type: ignore[arg-type]
                                                     candidates=candidates)
        return found


_OFF = _Trace(False)


def target(c: _Compiled, dst: Workload, port: Port, source_in_mesh: bool) -> _Target | None:
    """The compiled destination port, or None when the traced path must decide (modes and filters not covered).

    `source_in_mesh` matters in waypoint mode only: an out-of-mesh client bypasses the waypoint (decide.py
    _waypoint_mode), so its destination ztunnel decides alone."""
    mode = c.mode
    if dst.is_gateway or mode == "mixed":
        return None
    if mode == "waypoint" and source_in_mesh and c.state.waypoint_for(dst) is not None:
        return None  # the waypoint decides first: the traced path
    key = (dst.ref, mode != "waypoint" or source_in_mesh, port.number)
    cache = c.fast_targets
    if key in cache:
        return cache[key]
    built = _build(c, dst, port, mode)
    cache[key] = built
    return built


def _build(c: _Compiled, dst: Workload, port: Port, mode: Mode | None) -> _Target | None:
    state = c.state
    dst_ip = state.addresses.get(dst.ref, "")
    if mode in ("ambient", "waypoint"):
        plan = c.ztunnel_plan(dst, _serving_waypoint(c, dst, None))
        return _Target("ztunnel", dst, port, dst_ip, zdenies=plan.denies, zallows=plan.allows,
                       any_enforced=plan.any_enforced, has_allow=bool(plan.allows),
                       strict_policies=bool(c.ztunnel_mtls(dst).policies))
    # sidecar mode (decide.py _sidecar, _envoy_proxy)
    key = f"sidecar:{dst.ref}"
    policies = c.for_workload(dst)
    if any(p.action == "CUSTOM" for p in policies):
        return None  # the shadow RBAC + ext_authz pairs: the traced path
    tcp = port.protocol == "TCP"
    if not tcp and c.jwt_providers(key, c.ras_for_workload(dst)):
        return None  # the JWT filter: the traced path
    mtls = c.sidecar_mtls(dst, port.number)
    plan = c.envoy_plan(key, policies)
    t = _Target("sidecar", dst, port, dst_ip, disabled=mtls.mode == "DISABLE", tcp=tcp,
                sni=f"outbound_.{port.number}_._.{dst.name}.{dst.namespace}.svc.cluster.local",
                authority=(f"{dst.name}.{dst.namespace}" if port.number == 80
                           else f"{dst.name}.{dst.namespace}:{port.number}"),
                denies=plan.rules[("DENY", tcp)], allows=plan.rules[("ALLOW", tcp)], has_allow=bool(plan.allows),
                any_enforced=plan.any_enforced)
    if mtls.mode == "STRICT":
        pa = mtls.decided_by
        t.strict = t.decision("deny", DENIED_L4, "sidecar", STRICT_MTLS, pa.ref if pa else None)
    return t


@dataclass(frozen=True)
class _RequestView:
    """What an Envoy's RBAC filter reads of a request that does not depend on the source (decide.py _attributes)."""

    method: str
    path_direct: str  # normalized by the destination's Envoy only
    path_sidecar: str  # ... after a client sidecar normalized it first
    headers: tuple[tuple[str, str], ...]
    host: str | None  # the Host header, None: the authority curl derives from the URL
    xff: str | None


def _view(c: _Compiled, r: Request) -> _RequestView:
    """Per request object, by identity: hashing a Request hashes its headers, which costs more than the view
    saves. The object is kept with its view, so its id cannot be reused while the entry lives."""
    views = c.fast_views
    found = views.get(id(r))
    if found is not None and found[0] is r:
        return found[1]
    if len(views) >= _VIEWS:
        views.clear()
    view = _RequestView(
        r.method, _request_path(r.path, c.version, False), _request_path(r.path, c.version, True),
        _visible_headers(jwt.carried_headers(r)), r.header("host"), r.header(xff.XFF))
    views[id(r)] = (r, view)
    return view


_VIEWS = 65536  # request views kept per compiled state




def _sidecar_attrs(c: _Compiled, t: _Target, src: Workload, v: _RequestView | None) -> Attributes:
    """decide.py _attributes for the destination's sidecar (sidecar_sni, client_sidecar = the source is in the
    mesh)."""
    identity = src.identity(c.state.mesh.trust_domain) if src.in_mesh and not t.disabled else None
    source_ip = c.state.addresses.get(src.ref, "")
    if v is None:  # a TCP chain
        return Attributes.of(identity, source_ip, t.dst_ip, t.port.number, t.sni if identity is not None else None,
                             None, None, (), None, source_ip)
    remote = source_ip if v.xff is None else xff.remote_address(v.xff, source_ip, use_remote_address=False)
    return Attributes.of(identity, source_ip, t.dst_ip, t.port.number, t.sni if identity is not None else None,
                         v.method, v.path_sidecar if src.in_mesh else v.path_direct, v.headers,
                         t.authority if v.host is None else v.host, remote)


def _first(rules: Sequence[_EnvoyRule], attrs: Attributes) -> _EnvoyRule | None:
    """The first rule whose every part matches (decide.py _envoy_decider without `every` and the trace)."""
    for rule in rules:
        for check in rule.checks:
            if not check(attrs):
                break
        else:
            return rule
    return None


def _envoy(t: _Target, attrs: Attributes, denies: Sequence[_EnvoyRule], allows: Sequence[_EnvoyRule]) -> Decision:
    """decide.py _envoy_layer. `denies` / `allows` may be the target's rules without those that cannot match this
    request (decide_matrix); the candidates of a DENY are always taken from all of them."""
    denial = DENIED_L4 if t.tcp else DENIED_L7
    if denies and _first(denies, attrs) is not None:
        found = _envoy_decider(t.denies, attrs, _OFF, every=True)
        assert found is not None
        rule, matching = found
        return t.decision("deny", denial, "sidecar", DENY_MATCHED, rule.ep.policy.ref, rule.index, matching)
    if not t.has_allow:
        return t.decision("allow", ALLOWED, "sidecar", NO_ALLOW if t.any_enforced else NO_POLICY)
    allowed = _first(allows, attrs)
    if allowed is not None:
        return t.decision("allow", ALLOWED, "sidecar", ALLOW_MATCHED, allowed.ep.policy.ref, allowed.index)
    return t.decision("deny", denial, "sidecar", ALLOW_UNMATCHED)


def _ztunnel(c: _Compiled, t: _Target, probe_src: Workload, probe: Probe | None) -> Decision:
    """decide.py _ambient_ztunnel with `via` None and no client sidecar: the destination ztunnel alone."""
    state = c.state
    identity = probe_src.identity(state.mesh.trust_domain) if probe_src.in_mesh else None
    conn = Connection(identity, state.addresses.get(probe_src.ref, ""), t.dst_ip, t.port.number)
    for z in t.zdenies:
        index = first_matching_rule(z, conn)
        if index is not None:
            matching = tuple(o.policy.ref for o in t.zdenies if first_matching_rule(o, conn) is not None)
            return t.decision("deny", DENIED_L4, "ztunnel", DENY_MATCHED, z.policy.ref, index, matching)
    if identity is None and t.strict_policies:
        strict = _ztunnel_peer_authentication(
            c, probe if probe is not None else Probe(probe_src, t.dst, t.port), False, _OFF)
        if strict is not None:
            return t.decision("deny", DENIED_L4, "ztunnel", STRICT_MTLS, strict or None)
    if not t.has_allow:
        return t.decision("allow", ALLOWED, "ztunnel", NO_ALLOW if t.any_enforced else NO_POLICY)
    for z in t.zallows:
        index = first_matching_rule(z, conn)
        if index is not None:
            return t.decision("allow", ALLOWED, "ztunnel", ALLOW_MATCHED, z.policy.ref, index)
    return t.decision("deny", DENIED_L4, "ztunnel", ALLOW_UNMATCHED)


def decide(c: _Compiled, probe: Probe) -> Decision | None:
    """The decision for `probe`, or None when the traced path must make it."""
    src = probe.source
    t = target(c, probe.destination, probe.port, src.in_mesh)
    if t is None:
        return None
    if t.kind == "ztunnel":
        return _ztunnel(c, t, src, probe)
    if not src.in_mesh and t.strict is not None:
        return t.strict
    r = probe.request
    if r.jwt is not None:
        return None  # the token's header is shown as minted text: the traced path words it
    attrs = _sidecar_attrs(c, t, src, None if t.tcp else _view(c, r))
    return _envoy(t, attrs, t.denies, t.allows)


# -- all pairs ------------------------------------------------------------------------------------------------


def _to_holds(rule: _EnvoyRule, attrs: Attributes) -> bool:
    """Whether the rule's `to` part (hosts, ports, methods, paths: the request and the destination, never the
    source: proxy.py value_check) matches; a rule without one holds."""
    return all(check(attrs) for label, check in rule.parts if label == "to")


def _without_to(rules: Iterable[_EnvoyRule], attrs: Attributes) -> tuple[_EnvoyRule, ...]:
    """The rules whose `to` matches this request at this destination, each without its `to` part (it would hold
    for every source). Order kept, so the first match is the same."""
    out = []
    for rule in rules:
        if _to_holds(rule, attrs):
            parts: tuple[tuple[str, Check], ...] = tuple(p for p in rule.parts if p[0] != "to")
            out.append(_EnvoyRule(rule.pid, rule.ep, rule.index, parts, rule.ref))
    return tuple(out)


def decide_matrix(state: State, sources: Sequence[Workload], destinations: Iterable[Workload], mode: Mode,
                  version: IstioVersion, request: Request | None = None,
                  ) -> Iterator[tuple[Workload, Port, list[Decision]]]:
    """Every source to every port of every destination with one request (the all-pairs matrix `init` and `snapshot`
    meet on a big cluster; benchmarks/engine.py times it, tests/test_engine_fast.py holds it equal to `decide` cell by
    cell; `init` and `snapshot` themselves still predict probe by probe through `decide`'s fast path): per
    destination port, the decisions for `sources` in order, each equal to `decide(state, Probe(src, dst, port,
    request), mode, version)`.

    Why not a loop over `decide`: the request and the destination are the same along a row, so what depends only on
    them is done once per row: the path and headers, and every rule whose `to` part (hosts, ports, methods,
    paths) fails is left out; a row that no source can change (no policy, or no rule left) is one Decision."""
    r = request if request is not None else Request()
    c = state.compiled(mode, version)
    for dst in destinations:
        for port in dst.ports:
            yield dst, port, _row(c, state, sources, dst, port, r, mode, version)


def _row(c: _Compiled, state: State, sources: Sequence[Workload], dst: Workload, port: Port, r: Request,
         mode: Mode, version: IstioVersion) -> list[Decision]:
    out: list[Decision] = []
    groups = {True: [i for i, s in enumerate(sources) if s.in_mesh], False: [i for i, s in enumerate(sources)
                                                                             if not s.in_mesh]}
    row: list[Decision | None] = [None] * len(sources)
    for in_mesh, members in groups.items():
        if not members:
            continue
        t = target(c, dst, port, in_mesh)
        if t is None or (r.jwt is not None and t.kind == "sidecar"):
            for i in members:
                row[i] = _decide_probe(state, Probe(sources[i], dst, port, r), mode, version)
            continue
        if t.kind == "ztunnel":
            if not t.zdenies and not t.zallows and not (t.strict_policies and not in_mesh):
                same = _ztunnel(c, t, sources[members[0]], None)
                for i in members:
                    row[i] = same
                continue
            for i in members:
                row[i] = _ztunnel(c, t, sources[i], None)
            continue
        if not in_mesh and t.strict is not None:
            for i in members:
                row[i] = t.strict
            continue
        v = None if t.tcp else _view(c, r)
        sample = _sidecar_attrs(c, t, sources[members[0]], v)
        denies, allows = _without_to(t.denies, sample), _without_to(t.allows, sample)
        if not denies and (not t.has_allow or not allows or not allows[0].parts):
            same = _envoy(t, sample, denies, allows)  # no source can change it
            for i in members:
                row[i] = same
            continue
        for i in members:
            row[i] = _envoy(t, _sidecar_attrs(c, t, sources[i], v), denies, allows)
    for x in row:
        assert x is not None
        out.append(x)
    return out
