"""Lint: scenario expectations that contradict the engine (errors), and policies worth a second look.

Errors fail `authz-conformance lint`: an explicit verdict the engine says Istio will not give (that is
how the sidecar walkthrough's claim, "the ALLOW works while the DENY {} is in place", is caught).
Warnings only inform: a policy that selects nothing, a DENY that is a no-op at ztunnel, an ALLOW rule
ztunnel drops, a principal that can never match, a CUSTOM policy whose provider istiod cannot use (so it
denies what its rules match) or that ztunnel ignores, a RequestAuthentication ztunnel and waypoints ignore.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from conformance import yamlio
from conformance.engine import explain, state_for_step
from conformance.engine.policy import AuthorizationPolicy, Field, TargetRef
from conformance.engine.scope import Attachable, applies_at_waypoint, applies_to_gateway, applies_to_workload
from conformance.engine.ztunnel import Translated, translate, unenforceable
from conformance.errors import Location, NotModelled, Problem
from conformance.model import Manifest, Mode, Scenario, Step, Workload
from conformance.pilotenv import AMBIENT_DRY_RUN
from conformance.truthtable import TruthTable, predict
from conformance.validation import provider_defects
from conformance.versions import DRY_RUN_NOT_SENT_TO_ZTUNNEL, IstioVersion


@dataclass(frozen=True)
class Contradiction:
    problem: Problem
    explanation: tuple[str, ...]


Prediction = tuple[Step, Mode, TruthTable]


def predictions(scenario: Scenario, version: IstioVersion) -> Iterator[Prediction]:
    """The engine's truth table of every step in every mode (what AC010 and AC011 read)."""
    for step in scenario.steps:
        for mode in scenario.modes:
            yield step, mode, predict(scenario, step, mode, version)


def contradictions(scenario: Scenario, version: IstioVersion,
                   tables: list[Prediction] | None = None) -> Iterator[Contradiction]:
    for step, mode, table in tables if tables is not None else predictions(scenario, version):
        for row in table.contradictions():
            e = row.expectation
            state = state_for_step(scenario, step)
            why = explain(state, e.probe, mode, version)
            message = (f"expects {e.verdict(mode)} in {mode} mode, but Istio {version} gives "
                       f"{row.predicted.verdict} ({e.probe.describe()})")
            yield Contradiction(
                Problem(Location(scenario.path, f"step '{step.name}': probe expect[{e.index}]", "verdict"),
                        message),
                why.trace,
            )


@dataclass(frozen=True)
class Finding:
    """One lint finding: a rule's code (conformance/lint_rules.py) on a problem, with the policy it concerns and,
    when it depends on the mode, the mode; `explanation` holds a contradiction's trace."""

    code: str
    problem: Problem
    policy: str = ""  # "AuthorizationPolicy shop/x"
    mode: str = ""
    explanation: tuple[str, ...] = ()

    @property
    def severity(self) -> str:
        return self.problem.severity


def findings(scenario: Scenario, version: IstioVersion) -> list[Finding]:
    """Every finding about a loaded scenario, each once: the warnings, then the contradictions."""
    out = list(_warning_findings(scenario, version))
    tables = list(predictions(scenario, version))
    out += dedupe(_strict_cutoffs(scenario, tables))
    for c in contradictions(scenario, version, tables):
        out.append(Finding("AC010", c.problem, explanation=c.explanation))
    return out


def _strict_cutoffs(scenario: Scenario, tables: list[Prediction]) -> Iterator[Finding]:
    """AC011: a probe from an out-of-mesh client that the scenario expects allowed, which the engine says STRICT
    mTLS rejects (engine/decide.py STRICT_MTLS, from mtls.py's sidecar_mtls / ztunnel_mtls): one finding per
    PeerAuthentication, at the field that set the mode, naming the modes and the first such probe."""
    from conformance.engine.decide import STRICT_MTLS

    found: dict[tuple[str, str], tuple[Step, list[str], str]] = {}
    for step, mode, table in tables:
        for row in table:
            e, d = row.expectation, row.predicted
            if e.probe.source.in_mesh or e.verdict(mode) != "allow" or d.reason != STRICT_MTLS:
                continue
            entry = found.setdefault((step.name if not d.policy else "", d.policy or f"expect[{e.index}]"),
                                     (step, [], e.probe.describe()))
            if mode not in entry[1]:
                entry[1].append(mode)
    for (_, ref), (step, modes, probe) in found.items():
        manifest = next((m for m in step.policies if m.kind == "PeerAuthentication" and m.ref == ref), None)
        words = " and ".join(modes)
        message = (f"in {words} mode STRICT mTLS rejects the plaintext of out-of-mesh clients, but the scenario "
                   f"expects {probe} to be allowed: no AuthorizationPolicy can let it through")
        if manifest is None:  # no PeerAuthentication of the step named: the probe itself
            index = ref.removeprefix("expect[").rstrip("]")
            yield Finding("AC011", Problem(Location(scenario.path, f"step '{step.name}': probe expect[{index}]",
                                                    "verdict"), message, "warning"), "", words)
            continue
        spec = manifest.spec
        field = "spec.mtls.mode" if isinstance(spec.get("mtls"), dict) else \
            "spec.portLevelMtls" if spec.get("portLevelMtls") else "spec"
        where = f"step '{step.name}': {manifest.origin} (PeerAuthentication {ref})"
        yield Finding("AC011", Problem(Location(scenario.path, where, field), message, "warning"),
                      f"PeerAuthentication {ref}", words)


def warnings(scenario: Scenario, version: IstioVersion) -> Iterator[Problem]:
    """The warnings about a scenario's policies, each once (not once per step that lists the policy)."""
    for f in _warning_findings(scenario, version):
        yield f.problem


def _policy_label(where: str) -> str:
    m = re.search(r"\((\w+ [^()]+)\)$", where)
    return m.group(1) if m else ""


def dedupe(found: Iterator[Finding] | list[Finding]) -> list[Finding]:
    """Once per finding: the same policy (in the same file) warned about in several steps is one finding, at the
    first place it is written. The key is (code, file, policy, field, mode); a finding that names no policy (a
    contradiction, one probe of one step) is kept unless it is the very same problem."""
    from conformance.positions import resolve

    seen: set[tuple[str, ...]] = set()
    out: list[Finding] = []
    for f in found:
        loc = f.problem.location
        if f.policy:
            resolved = resolve(loc)
            source = resolved[0] if resolved else loc.file
            if resolved is not None and re.search(r" document \d+", loc.where):
                source = f"{source}#{resolved[1].start_mark.line}"  # a referenced file's document
            key: tuple[str, ...] = (f.code, source, f.policy, loc.field, f.mode)
        else:
            key = (f.code, str(f.problem))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _warning_findings(scenario: Scenario, version: IstioVersion) -> list[Finding]:
    return dedupe(_raw_warnings(scenario, version))


def _raw_warnings(scenario: Scenario, version: IstioVersion) -> Iterator[Finding]:
    ambient = any(m in scenario.modes for m in ("ambient", "waypoint")) or (
        "mixed" in scenario.modes and any(p != "sidecar" for p in scenario.dataplanes.values()))
    for step in scenario.steps:
        for manifest in step.policies:
            yield from _jwt_and_custom(scenario, step.name, manifest, version)
        try:
            state = state_for_step(scenario, step)
        except NotModelled:
            continue  # JWT / CUSTOM the engine does not model yet: `contradictions` reports it
        by_ref = {p.ref: p for p in state.authorization_policies}
        for manifest in step.policies:
            if manifest.kind != "AuthorizationPolicy":
                continue
            p = by_ref[manifest.ref]
            where = f"step '{step.name}': {manifest.origin} (AuthorizationPolicy {p.ref})"
            label = f"AuthorizationPolicy {p.ref}"

            def warn(code: str, message: str, field: str = "", where: str = where, label: str = label,
                     mode: str = "") -> Finding:
                return Finding(code, Problem(Location(scenario.path, where, field), message, "warning"), label,
                               mode)

            if not _selects_anything(p, scenario, version):
                if p.target_refs:
                    yield warn("AC102", "this targetRefs policy binds no waypoint of the scenario: sidecars and "
                               "ztunnel ignore targetRefs policies" + ("" if "waypoint" in scenario.modes else
                                                                       " (add the waypoint mode)"),
                               "spec.targetRefs", mode="sidecar")
                else:
                    root = p.namespace == scenario.mesh.root_namespace
                    has = root or any(w.namespace == p.namespace and w.in_mesh and w.ports
                                      for w in scenario.workloads)
                    scope = "of the mesh (a root-namespace policy)" if root else f"of namespace {p.namespace}"
                    yield warn("AC101", "this policy applies to no workload of the scenario: "
                               + (f"its selector matches no workload {scope}" if has and p.selector is not None
                                  else f"namespace {p.namespace} has no workload in the mesh"),
                               "spec" if p.selector is None else "spec.selector" if has else "metadata.namespace")
            for rule in p.rules or ():
                for s, fields in enumerate(rule.sources or ()):
                    for f in fields:
                        if f.name != "principals":
                            continue
                        for v in f.values + f.not_values:
                            key = "principals" if v in f.values else "notPrincipals"
                            field = f"spec.rules[{rule.index}].from[{s}].source.{key}"
                            if v.startswith("spiffe://"):
                                yield warn("AC301", f"principal {v!r} can never match: principals are written "
                                           "without spiffe:// (research note §3.1)", field)
                            elif v.startswith("*") and len(v) > 1 and not _suffix_can_match(v[1:]):
                                yield warn("AC302", f"principal {v!r} can never match: no identity "
                                           "<trust domain>/ns/<ns>/sa/<sa> ends with {v[1:]!r}", field)
                            elif ambient and not p.target_refs and scenario.mesh.trust_domain != "cluster.local" \
                                    and v.startswith("cluster.local/") and not _gateway_only(p, scenario):
                                yield warn("AC303", f"in ambient mode ztunnel compares principal {v!r} literally: "
                                           f"the mesh's trust domain is {scenario.mesh.trust_domain!r}, so it never "
                                           "matches there (sidecars and waypoints read cluster.local as the mesh's "
                                           "trust domain)", field, mode="ambient")
            if ambient and not p.target_refs and p.action in ("ALLOW", "DENY") and not _gateway_only(p, scenario):
                t = translate(p)
                if p.action == "DENY" and t.l7_fields and unenforceable(t):
                    yield warn("AC201", f"in ambient mode this DENY is a no-op at ztunnel: its rules only constrain "
                               f"L7 attributes ({', '.join(t.l7_fields)}), which ztunnel strips, and waypoints "
                               "ignore selector policies: write it as a targetRefs policy on the waypoint "
                               "(istio/istio#61126)", "spec.rules", mode="ambient")
                elif t.dropped_rules:
                    yield warn("AC202", f"in ambient mode ztunnel drops ALLOW rules {list(t.dropped_rules)}: they "
                               f"use L7 attributes ({', '.join(t.l7_fields)}), so they allow nothing; a waypoint "
                               "alone does not help (it ignores selector policies): put them in a targetRefs "
                               "policy on the waypoint", f"spec.rules[{t.dropped_rules[0]}]", mode="ambient")
                elif p.action == "DENY" and t.l7_fields:
                    for field, stripped, kept in _broader_denies(p, t):
                        yield warn("AC207", f"in ambient mode ztunnel strips {', '.join(stripped)} from this DENY "
                                   f"and keeps {', '.join(kept)}: it denies every connection those match, whatever "
                                   "the request (\"more restrictive than requested\"); waypoints ignore selector "
                                   "policies: write it as a targetRefs policy on the waypoint", field,
                                   mode="ambient")
            if p.dry_run and not p.target_refs and p.action in ("ALLOW", "DENY") and not _gateway_only(p, scenario):
                at = [w.ref for w in _ambient_workloads(scenario) if applies_to_workload(p, w, scenario.mesh)]
                if at and not version.has(DRY_RUN_NOT_SENT_TO_ZTUNNEL):
                    yield warn("AC208", f"in ambient mode Istio {version} sends this dry-run policy to ztunnel like "
                               f"any other, and ztunnel enforces it at {', '.join(at)} (dry-run is honoured only "
                               "by sidecars and waypoints before 1.25.2, istio/istio#55414)",
                               "metadata.annotations", mode="ambient")
                elif at and not scenario.mesh.pilot_flag(AMBIENT_DRY_RUN):
                    yield warn("AC208", f"in ambient mode istiod does not send this dry-run policy to ztunnel "
                               f"(AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is off): at {', '.join(at)} it is "
                               "neither enforced nor logged, so the dry run shows nothing there"
                               + ("" if AMBIENT_DRY_RUN.available(version) else
                                  f" (the flag exists from {AMBIENT_DRY_RUN.first_release()})"),
                               "metadata.annotations", mode="ambient")
            yield from _hosts_without_port(scenario, step, p, warn, version)
        yield from _waypoint_pitfalls(scenario, step.name, step.policies, state, version)
        levels: dict[str, str] = {}
        for pa in state.peer_authentications:
            if pa.selector:
                continue
            if pa.namespace in levels:
                yield Finding("AC103", Problem(
                    Location(scenario.path, f"step '{step.name}': PeerAuthentication {pa.ref}"),
                    f"namespace {pa.namespace} already has PeerAuthentication {levels[pa.namespace]}: "
                    "Istio uses the oldest (ComposePeerAuthentication); this suite takes the first listed",
                    "warning"), f"PeerAuthentication {pa.ref}")
            levels.setdefault(pa.namespace, pa.ref)


def _selects_anything(p: AuthorizationPolicy, scenario: Scenario, version: IstioVersion) -> bool:
    if p.target_refs:
        # the waypoints some mode deploys: all of them in waypoint mode, those of `waypoint` namespaces in mixed
        deployed = [wp for wp in scenario.waypoints if "waypoint" in scenario.modes
                    or ("mixed" in scenario.modes and scenario.dataplane(wp.namespace) == "waypoint")]
        return any(applies_at_waypoint(p, wp, w, scenario.mesh, version)
                   for wp in deployed for w in scenario.workloads if w.namespace == wp.namespace) or any(
            applies_to_gateway(p, w, scenario.mesh) for w in scenario.workloads if w.is_gateway)
    return any(applies_to_workload(p, w, scenario.mesh) for w in scenario.workloads if w.in_mesh and w.ports)


@dataclass(frozen=True)
class _Selecting:
    """What ShouldAttachPolicy reads of a policy (scope.Attachable), from a manifest the engine does not compile
    here (a RequestAuthentication, a CUSTOM policy)."""

    namespace: str
    selector: Mapping[str, str] | None
    target_refs: tuple[TargetRef, ...] = ()


def _selecting(manifest: Manifest) -> _Selecting:
    sel = manifest.spec.get("selector")
    labels = sel.get("matchLabels") if isinstance(sel, dict) else None
    return _Selecting(manifest.namespace, dict(labels) if isinstance(labels, dict) else None if sel is None else {})


def _gateway_only(p: Attachable, scenario: Scenario) -> bool:
    """A selector policy that applies to ingress gateways only. A gateway is an Envoy: it enforces L7 rules,
    CUSTOM and RequestAuthentication as a sidecar does, and reads `cluster.local` principals with the trust domain
    aliases; ztunnel never sees the policy (a gateway has no ztunnel in front: policyattachment.go ShouldAttachPolicy
    l.123-146 attaches selector policies to it like to any workload). A policy whose namespace the scenario does not
    describe is not gateway-only."""
    applies = [w for w in scenario.workloads if w.in_mesh and applies_to_workload(p, w, scenario.mesh)]
    return bool(applies) and all(w.is_gateway for w in applies)


def _ambient_workloads(scenario: Scenario) -> list[Workload]:
    """The in-mesh servers whose ztunnel enforces selector policies in some mode of the scenario (ambient and
    waypoint mode: all of them; mixed: those of namespaces not running sidecars). Gateways are Envoys."""
    every = any(m in scenario.modes for m in ("ambient", "waypoint"))
    mixed = "mixed" in scenario.modes
    return [w for w in scenario.workloads if w.in_mesh and w.ports and not w.is_gateway
            and (every or (mixed and scenario.dataplane(w.namespace) != "sidecar"))]


def _broader_denies(p: AuthorizationPolicy, t: Translated) -> Iterator[tuple[str, list[str], list[str]]]:
    """AC207: the sources and operations of a DENY whose L7 fields istiod leaves out of a Match that still holds
    L4 fields (ambient authorization.go@1.30 handleRule l.537-567), in a rule ztunnel can fire (every clause keeps a
    non-empty Match: rbac.rs skips empty ones). Yields (field, the L7 names stripped, the L4 names kept)."""
    from conformance.engine.ztunnel import L7_OPERATION_FIELDS, L7_SOURCE_FIELDS

    translated = {index: clauses for clauses, index in t.rules}
    for rule in p.rules or ():
        clauses = translated.get(rule.index)
        if clauses is None or not all(any(not m.is_empty() for m in clause) for clause in clauses):
            continue  # dropped, or never fires at ztunnel (AC201's case)
        parts: list[tuple[str, tuple[tuple[Field, ...], ...], frozenset[str]]] = []
        if rule.operations:
            parts.append(("to[{j}].operation", rule.operations, L7_OPERATION_FIELDS))
        if rule.sources:
            parts.append(("from[{j}].source", rule.sources, L7_SOURCE_FIELDS))
        for (path, groups, l7), clause in zip(parts, clauses, strict=False):
            for j, (fields, match) in enumerate(zip(groups, clause, strict=True)):
                stripped = [n for f in fields if f.name in l7 for n in _field_names(f)]
                kept = [n for f in fields if f.name not in l7 for n in _field_names(f)]
                if stripped and kept and not match.is_empty():
                    yield f"spec.rules[{rule.index}].{path.format(j=j)}", stripped, kept


def _field_names(f: Field) -> list[str]:
    """The names as written (`methods`, `notMethods`) a Field carries values for."""
    neg = "not" + f.name[0].upper() + f.name[1:]
    return [n for n, vs in ((f.name, f.values), (neg, f.not_values)) if vs]


def _hosts_without_port(scenario: Scenario, step: Step, p: AuthorizationPolicy, warn: Callable[..., Finding],
                        version: IstioVersion) -> Iterator[Finding]:
    """AC501: a `hosts` / `notHosts` value that matches a probe's Host without its port but not the Host the probe
    sends (with the port): Envoy's `:authority` matcher as the engine compiles it (proxy.EnvoySemantics, HostMatcher:
    exact, `*suffix` or `prefix*`, ignoring case), for probes to a workload the policy applies to."""
    from conformance.engine.matchers import envoy_header

    probes = [e.probe for e in step.expectations if _enforced_at(p, e.probe.destination, scenario, version)]
    for rule in p.rules or ():
        for j, fields in enumerate(rule.operations or ()):
            for f in fields:
                if f.name != "hosts":
                    continue
                for key, values in (("hosts", f.values), ("notHosts", f.not_values)):
                    matchers = [(v, envoy_header(v, ignore_case=True)) for v in values]
                    for probe in probes:
                        authority = probe.authority
                        host, port = _split_port(authority)
                        bare = next((v for v, m in matchers if m(host)), None) if port else None
                        if bare is not None and not any(m(authority) for _, m in matchers):
                            yield warn("AC501", f"{key} value {bare!r} does not match the Host {authority!r} that "
                                       f"{probe.source.ref} sends to {probe.destination.ref} (Istio matches "
                                       f":authority with its port): add {host + ':' + port!r} or {host + ':*'!r}",
                                       f"spec.rules[{rule.index}].to[{j}].operation.{key}")
                            break


def _split_port(authority: str) -> tuple[str, str]:
    """`host:port` as Envoy's header value holds it (an IPv6 literal keeps its brackets): (host, port or "")."""
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1:] if end >= 0 else ""
        return (authority[: end + 1], rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else (authority, "")
    host, sep, port = authority.rpartition(":")
    return (host, port) if sep and port.isdigit() and ":" not in host else (authority, "")


def _enforced_at(p: AuthorizationPolicy, w: Workload, scenario: Scenario, version: IstioVersion) -> bool:
    """Whether an Envoy applies `p` to requests for `w`: its sidecar or gateway (a selector policy), or a waypoint
    in front of it (a targetRefs policy). ztunnel never sees `hosts` (AC201, AC202)."""
    if w.is_gateway:
        return applies_to_gateway(p, w, scenario.mesh)
    if p.target_refs:
        return any(applies_at_waypoint(p, wp, w, scenario.mesh, version) for wp in scenario.waypoints
                   if wp.namespace == w.namespace)
    sidecar = "sidecar" in scenario.modes or (
        "mixed" in scenario.modes and scenario.dataplane(w.namespace) == "sidecar")
    return sidecar and applies_to_workload(p, w, scenario.mesh)


def _suffix_can_match(suffix: str) -> bool:
    """Whether some identity `<td>/ns/<ns>/sa/<sa>` ends with `suffix` (Envoy's regex `spiffe://.*<suffix>` over
    the URI and ztunnel's suffix match over the identity both come to this)."""
    template = [None, "ns", None, "sa", None]  # None: a free, non-empty segment without "/"
    parts = suffix.split("/")
    if len(parts) > len(template):
        return False
    aligned = template[len(template) - len(parts):]
    for i, (part, literal) in enumerate(zip(parts, aligned, strict=True)):
        if i == 0:  # the first part only has to end a segment
            if literal is not None and not literal.endswith(part):
                return False
        elif (literal is not None and part != literal) or (literal is None and not part):
            return False
    return True


def _waypoint_pitfalls(scenario: Scenario, step: str, manifests: tuple[Manifest, ...] | list[Manifest],
                       state: object, version: IstioVersion) -> Iterator[Finding]:
    """Behind a waypoint the destination's ztunnel sees the waypoint's identity, not the client's: an ALLOW there
    that admits the waypoint admits every client the waypoint forwards (AC205, unless a targetRefs policy restricts
    them at the waypoint), and one that admits only client identities denies all of it (AC206)."""
    from conformance.engine.ztunnel import Connection, first_matching_rule
    from conformance.model import default_addresses

    if "waypoint" in scenario.modes:
        mode, behind = "waypoint", scenario.waypoints
    elif "mixed" in scenario.modes:
        mode, behind = "mixed", tuple(wp for wp in scenario.waypoints if scenario.dataplane(wp.namespace) == "waypoint")
    else:
        return
    from conformance.engine.flags import termination_policies
    from conformance.pilotenv import AUTO_ALLOW_WAYPOINT, LAYERED_WAYPOINT

    auto_allow = scenario.mesh.pilot_flag(AUTO_ALLOW_WAYPOINT)  # istiod then admits the waypoint at ztunnel itself
    # ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES: the policies selecting the waypoint's own pod are enforced at
    # its HBONE termination with the client's identity (listener_waypoint.go@1.30.3 l.276-281; engine/flags.py), so
    # they restrict clients at the waypoint as a targetRefs policy does
    layered = scenario.mesh.pilot_flag(LAYERED_WAYPOINT)
    policies = [p for p in getattr(state, "authorization_policies", ()) if not p.dry_run]
    origin = {m.ref: m.origin for m in manifests if m.kind == "AuthorizationPolicy"}
    addresses = default_addresses(scenario)
    td = scenario.mesh.trust_domain
    for wp in behind:
        for w in scenario.workloads:
            if w.namespace != wp.namespace or not w.in_mesh or not w.ports or w.is_gateway:
                continue
            at_ztunnel = [p for p in policies if p.action == "ALLOW" and applies_to_workload(p, w, scenario.mesh)]
            restricted = any(p.action in ("ALLOW", "DENY", "CUSTOM")
                             and applies_at_waypoint(p, wp, w, scenario.mesh, version) for p in policies) or (
                layered and any(p.action in ("ALLOW", "DENY")
                                for p in termination_policies(policies, wp, scenario.mesh)))
            for p in at_ztunnel:
                if p.ref not in origin or not p.rules:
                    continue
                t = translate(p)
                admits = [first_matching_rule(t, Connection(wp.identity(td), addresses.get(wp.ref, "0.0.0.0"),
                                                            addresses.get(w.ref, "0.0.0.0"), port.number))
                          for port in w.ports]
                matched = next((i for i in admits if i is not None), None)
                where = f"step '{step}': {origin[p.ref]} (AuthorizationPolicy {p.ref})"
                label = f"AuthorizationPolicy {p.ref}"
                rule = next((r for r in p.rules if r.index == matched), None)
                if matched is not None and not restricted and rule is not None and rule.sources is not None:
                    yield Finding("AC205", Problem(Location(scenario.path, where, f"spec.rules[{matched}]"),
                                  f"in {mode} mode {w.ref} is behind waypoint {wp.ref}: this rule admits the "
                                  f"waypoint's identity at ztunnel and no targetRefs policy restricts clients at the "
                                  "waypoint, so any mesh client gets in", "warning"), label, mode)
                elif matched is None and not auto_allow and _names_clients(p) and any(
                        first_matching_rule(t, Connection(c.identity(td), addresses.get(c.ref, "0.0.0.0"),
                                                          addresses.get(w.ref, "0.0.0.0"), port.number)) is not None
                        for c in _waypoint_clients(scenario, mode) for port in w.ports):
                    yield Finding("AC206", Problem(Location(scenario.path, where, "spec.rules"),
                                  f"in {mode} mode {w.ref} is behind waypoint {wp.ref}: its ztunnel sees the "
                                  f"waypoint's identity ({wp.identity(td)}), which no rule of this ALLOW admits, so "
                                  "it denies everything the waypoint forwards", "warning"), label, mode)


def _waypoint_clients(scenario: Scenario, mode: str) -> list[Workload]:
    """The clients whose requests to a waypoint's services go through it: ambient-captured workloads (ingress
    gateways and sidecars go around it, straight to the destination's ztunnel)."""
    return [c for c in scenario.workloads if c.in_mesh and not c.is_gateway
            and (mode == "waypoint" or scenario.dataplane(c.namespace) != "sidecar")]


def _names_clients(p: AuthorizationPolicy) -> bool:
    """An ALLOW whose rules all name source identities (principals, namespaces, service accounts)."""
    names = ("principals", "namespaces", "serviceAccounts")
    return bool(p.rules) and all(
        r.sources is not None and all(any(f.name in names and f.values for f in fields) for fields in r.sources)
        for r in p.rules or ())


def _jwt_and_custom(scenario: Scenario, step: str, manifest: Manifest, version: IstioVersion) -> Iterator[Finding]:
    """What Istio accepts about a CUSTOM policy or a RequestAuthentication but does not do as written.

    A CUSTOM policy whose provider istiod cannot use (undefined, or invalid: istiod's processExtensionProvider /
    getExtAuthz, pilot/pkg/security/authz/builder/extauthz.go@1.30.3) is compiled to an RBAC deny of the requests
    its rules match (`-deny-due-to-bad-CUSTOM-action`), whatever failOpen says. ztunnel ignores CUSTOM policies and
    RequestAuthentication (ambient/authorization.go convertAuthorizationPolicy: "ztunnel does not support the
    CUSTOM action"); waypoints ignore selector policies (research note §2, §3.5).
    """
    where = f"step '{step}': {manifest.origin} ({manifest.kind} {manifest.ref})"

    def warn(code: str, message: str, field: str, mode: str = "") -> Finding:
        return Finding(code, Problem(Location(scenario.path, where, field), message, "warning"),
                       f"{manifest.kind} {manifest.ref}", mode)

    spec = manifest.spec
    targeted = bool(spec.get("targetRef") or spec.get("targetRefs"))
    ambient = "ambient" in scenario.modes
    deny = "Istio accepts the policy and denies the requests its rules match with 403 RBAC: access denied, " \
           "whatever failOpen says"
    if manifest.kind == "AuthorizationPolicy" and spec.get("action") == "CUSTOM":
        provider = spec.get("provider")
        name = provider.get("name") if isinstance(provider, dict) else None
        if isinstance(name, str) and name:
            found = scenario.mesh.provider(name)
            if found is None:
                known = ", ".join(p.name for p in scenario.mesh.extension_providers) or "none"
                yield warn("AC401", f"provider {name!r} is not in mesh.extensionProviders (defined: {known}): "
                           f"{deny} (istiod builds a deny instead of ext_authz: getExtAuthz)", "spec.provider.name")
            else:
                broken = provider_defects(found, version)
                target = scenario.provider_workload(found)
                if broken:
                    yield warn("AC402", f"provider {name!r} is one istiod treats as invalid ({'; '.join(broken)}): "
                               f"{deny}",
                               "spec.provider.name")
                elif target is None:
                    yield warn("AC403", f"provider {name!r} calls service {found.service!r}, which names no workload "
                               f"of the scenario: istiod cannot find it (LookupCluster), so {deny}",
                               "spec.provider.name")
                elif target.kind != "ext-authz":
                    yield warn("AC404", f"provider {name!r} calls {target.ref}, which is not of kind ext-authz: "
                               "the suite's echo app is no external authorizer", "spec.provider.name")
                elif target.port(found.port) is None:
                    yield warn("AC405", f"provider {name!r} calls port {found.port} of {target.ref}, which does "
                               "not serve it: every check fails, so failOpen and statusOnError decide",
                               "spec.provider.name")
        if ambient and not targeted and not _gateway_only(_selecting(manifest), scenario):
            yield warn("AC203", "in ambient mode ztunnel ignores CUSTOM policies (\"ztunnel does not support the "
                       "CUSTOM action\"): without a waypoint and targetRefs this policy protects nothing",
                       "spec.action", "ambient")
    if manifest.kind == "RequestAuthentication" and ambient and not targeted \
            and not _gateway_only(_selecting(manifest), scenario):
        yield warn("AC204", "in ambient mode ztunnel does not check JWTs, and waypoints ignore selector policies: this "
                   "RequestAuthentication rejects no token there; attach it to a waypoint with targetRefs",
                   "spec.selector" if spec.get("selector") else "spec", "ambient")


POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
_RAW_NAMESPACE = "authz-conformance-lint"


def is_policy_file(path: str | Path) -> bool:
    """A YAML file holding at least one Istio security document (and no scenario): what `lint` checks on its own."""
    try:
        docs = yamlio.load_all(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return any(isinstance(d, dict) and d.get("kind") in POLICY_KINDS
               and str(d.get("apiVersion", "")).startswith("security.istio.io/") for d in docs)


def loader_findings(problems: list[Problem]) -> list[Finding]:
    """The scenario loader's problems as findings: Istio's validation errors (AC001), its warnings (AC002) and the
    loader's notices (AC003), each once (the same policy file is read again in every step that lists it)."""
    code = {"error": "AC001", "warning": "AC002"}
    return dedupe([Finding(code.get(p.severity, "AC003"), p, _policy_label(p.location.where)) for p in problems])


def policy_file_problems(path: str | Path, version: IstioVersion) -> list[Problem]:
    """`policy_file_findings`' problems (the API before rule codes)."""
    return [f.problem for f in policy_file_findings(path, version)]


def policy_file_findings(path: str | Path, version: IstioVersion) -> list[Finding]:
    """`lint` of a raw policy file (issue 13): Istio's own validation of every policy document, and the warnings
    that need no scenario, in sidecar and ambient mode (L7 rules ztunnel drops, DENYs it cannot enforce, CUSTOM and
    RequestAuthentication ignored without a waypoint, principals that can never match, duplicate namespace-wide
    PeerAuthentications). Rules that depend on the mesh (`needs_scenario`: which workloads a policy selects, which
    providers the mesh config defines, where waypoints are) need a scenario and are left out; documents of other
    kinds are ignored.

    The documents are read through a scenario that references them (`policies: [{file: ...}]`), the loader's own
    path, so each gets the same checks as in a scenario: each one alone first (an invalid document never hides
    the others' warnings), then the valid ones together. Findings name the policy file and its document."""
    import tempfile

    from conformance.lint_rules import BY_CODE
    from conformance.scenario import check

    target = Path(path).resolve()
    docs = yamlio.load_all(target.read_text(encoding="utf-8"))
    numbered = [(n + 1, d) for n, d in enumerate(d for d in docs if d is not None)
                if isinstance(d, dict) and d.get("kind") in POLICY_KINDS]
    shown = str(path)
    out: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="authz-lint-") as tmp:
        def run(subset: list[tuple[int, dict[str, object]]]) -> tuple[Scenario | None, list[Problem]]:
            policies = Path(tmp) / "policies.yaml"
            policies.write_text(yaml.safe_dump_all([d for _, d in subset]))
            synthetic = Path(tmp) / "scenario.yaml"
            synthetic.write_text(yaml.safe_dump({
                "apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "policy-file-lint"},
                "spec": {"modes": ["sidecar", "ambient"],
                         "workloads": [{"name": "placeholder", "namespace": _RAW_NAMESPACE}],
                         "steps": [{"name": "policies", "policies": [{"file": str(policies)}], "expect": []}]}}))
            scenario, problems = check(synthetic, version)
            return scenario, [_relocate(p, shown, [n for n, _ in subset]) for p in problems]

        valid: list[tuple[int, dict[str, object]]] = []
        for item in numbered:
            scenario, problems = run([item])
            out += loader_findings(problems)
            if scenario is not None:
                valid.append(item)
        if valid:
            scenario, _ = run(valid)
            if scenario is not None:
                seen = {str(f.problem) for f in out}
                for w in _warning_findings(scenario, version):
                    if BY_CODE[w.code].needs_scenario:
                        continue  # depends on the mesh, which a raw file does not describe
                    moved = _relocate(w.problem, shown, [n for n, _ in valid])
                    if str(moved) not in seen:
                        seen.add(str(moved))
                        out.append(Finding(w.code, moved, w.policy, w.mode))
    return out


def _relocate(problem: Problem, file: str, numbers: list[int]) -> Problem:
    """The problem as found in the policy file: `document N` of that file (`numbers`: the file's document number of
    each document the synthetic scenario read, in order), not the synthetic scenario's step."""
    where = problem.location.where
    m = re.search(r" document (\d+)(.*)$", where)
    if m:
        index = int(m.group(1)) - 1
        where = f"document {numbers[index] if index < len(numbers) else m.group(1)}{m.group(2)}"
    elif where.startswith("step "):
        where = ""
    return Problem(Location(file, where, problem.location.field.replace("policies[0].", "")), problem.message,
                   problem.severity)
