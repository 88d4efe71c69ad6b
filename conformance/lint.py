"""Lint: scenario expectations that contradict the engine (errors), and policies worth a second look.

Errors fail `authz-conformance lint`: an explicit verdict the engine says Istio will not give (that is
how the sidecar walkthrough's claim, "the ALLOW works while the DENY {} is in place", is caught).
Warnings only inform: a policy that selects nothing, a DENY that is a no-op at ztunnel, an ALLOW rule
ztunnel drops, a principal that can never match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from conformance.engine import explain, state_for_step
from conformance.engine.policy import AuthorizationPolicy
from conformance.engine.scope import applies_at_waypoint, applies_to_workload
from conformance.engine.ztunnel import translate, unenforceable
from conformance.errors import Location, Problem
from conformance.model import Scenario
from conformance.truthtable import predict
from conformance.versions import IstioVersion


@dataclass(frozen=True)
class Contradiction:
    problem: Problem
    explanation: tuple[str, ...]


def contradictions(scenario: Scenario, version: IstioVersion) -> Iterator[Contradiction]:
    for step in scenario.steps:
        for mode in scenario.modes:
            table = predict(scenario, step, mode, version)
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


def warnings(scenario: Scenario, version: IstioVersion) -> Iterator[Problem]:
    ambient = any(m in scenario.modes for m in ("ambient", "waypoint"))
    for step in scenario.steps:
        state = state_for_step(scenario, step)
        by_ref = {p.ref: p for p in state.authorization_policies}
        for manifest in step.policies:
            if manifest.kind != "AuthorizationPolicy":
                continue
            p = by_ref[manifest.ref]
            where = f"step '{step.name}': {manifest.origin} (AuthorizationPolicy {p.ref})"

            def warn(message: str, field: str = "", where: str = where) -> Problem:
                return Problem(Location(scenario.path, where, field), message, "warning")

            if not _selects_anything(p, scenario, version):
                yield warn("this policy applies to no workload of the scenario"
                           + (" (targetRefs bind only waypoints: add the waypoint mode)" if p.target_refs
                              and "waypoint" not in scenario.modes else ""),
                           "spec.targetRefs" if p.target_refs else "spec.selector")
            for rule in p.rules or ():
                for fields in rule.sources or ():
                    for f in fields:
                        for v in f.values + f.not_values:
                            if f.name == "principals" and v.startswith("spiffe://"):
                                yield warn(f"principal {v!r} can never match: principals are written without "
                                           "spiffe:// (research note §3.1)",
                                           f"spec.rules[{rule.index}].from")
            if ambient and not p.target_refs and p.action in ("ALLOW", "DENY"):
                t = translate(p)
                if p.action == "DENY" and t.l7_fields and unenforceable(t):
                    yield warn(f"in ambient mode this DENY is a no-op at ztunnel: its rules only constrain L7 "
                               f"attributes ({', '.join(t.l7_fields)}), which ztunnel strips; a waypoint and "
                               "targetRefs are needed (istio/istio#61126)", "spec.rules")
                elif t.dropped_rules:
                    yield warn(f"in ambient mode ztunnel drops ALLOW rules {list(t.dropped_rules)}: they use L7 "
                               f"attributes ({', '.join(t.l7_fields)}); without a waypoint they allow nothing",
                               "spec.rules")
        levels: dict[str, str] = {}
        for pa in state.peer_authentications:
            if pa.selector:
                continue
            if pa.namespace in levels:
                yield Problem(Location(scenario.path, f"step '{step.name}': PeerAuthentication {pa.ref}"),
                              f"namespace {pa.namespace} already has PeerAuthentication {levels[pa.namespace]}: "
                              "Istio uses the oldest (ComposePeerAuthentication); this suite takes the first listed",
                              "warning")
            levels.setdefault(pa.namespace, pa.ref)

def _selects_anything(p: AuthorizationPolicy, scenario: Scenario, version: IstioVersion) -> bool:
    if p.target_refs:
        if "waypoint" not in scenario.modes:
            return False
        return any(applies_at_waypoint(p, wp, w, scenario.mesh, version)
                   for wp in scenario.waypoints for w in scenario.workloads if w.namespace == wp.namespace)
    return any(applies_to_workload(p, w, scenario.mesh) for w in scenario.workloads if w.in_mesh and w.ports)
