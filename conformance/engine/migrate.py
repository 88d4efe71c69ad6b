"""What a data-plane move does to one probe: the decision before and after, and why, in one line.

`authz-conformance compare FILE --dataplanes shop=ambient` (DESIGN.md §10) asks this for every probe: the
scenario in mode `mixed` with its own `spec.dataplanes`, then with the namespaces moved. A migration's
surprises are few and well known (istio.io ambient/migrate and migrate-policies): ztunnel drops ALLOW rules
with L7 attributes and strips L7 conditions from DENY rules, it has no JWT filter and no CUSTOM, a selector
policy behind a waypoint sees the waypoint's identity, sidecars bypass waypoints. `why` names the one that
applies, from the same compiled policies `decide` used, so the line is the engine's reasoning, not a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conformance.engine.decide import (
    ALLOW_UNMATCHED,
    DENY_MATCHED,
    EXT_AUTHZ_DENIED,
    EXT_AUTHZ_ERROR,
    JWT_REJECTED,
    Decision,
    State,
    decide,
    probe_route,
)
from conformance.engine.path import Route
from conformance.model import Probe
from conformance.versions import IstioVersion


@dataclass(frozen=True)
class Side:
    """One side of a move for one probe: the decision and the path it was made on."""

    decision: Decision
    route: Route
    enforcer: str | None

    def as_json(self) -> dict[str, object]:
        d = self.decision
        return {"verdict": d.verdict, "outcome": d.outcome, "enforcer": self.enforcer, "policy": d.policy,
                "rule": d.rule, "reason": d.reason, "crossing": self.route.crossing, "path": self.route.describe()}


@dataclass(frozen=True)
class Change:
    probe: Probe
    before: Side
    after: Side
    why: str


def side(state: State, probe: Probe, version: IstioVersion) -> Side:
    d = decide(state, probe, "mixed", version)
    return Side(d, probe_route(state, probe, "mixed", version), d.enforcer(probe))


def change(before: State, after: State, probe: Probe, version: IstioVersion) -> Change | None:
    """The change the move makes to `probe`, or None when verdict, denial form, enforcer and deciding policy
    all stay."""
    a, b = side(before, probe, version), side(after, probe, version)
    key = ("verdict", "outcome", "policy")
    if all(getattr(a.decision, k) == getattr(b.decision, k) for k in key) and a.enforcer == b.enforcer:
        return None
    return Change(probe, a, b, why(after, probe, version, a, b))


def _ztunnel_words(state: State, probe: Probe, version: IstioVersion) -> str | None:
    """What ztunnel does to the destination's policies that a sidecar or waypoint would not, if anything."""
    c = state.compiled("mixed", version)
    plan = c.ztunnel_plan(probe.destination)
    dropped = [t for t in plan.allows if t.dropped_rules]
    stripped = [t for t in plan.denies if t.l7_fields]
    if dropped:
        t = dropped[0]
        return f"ALLOW {t.policy.ref} with L7 rules ({', '.join(t.l7_fields)}) dropped by ztunnel"
    if stripped:
        t = stripped[0]
        return f"DENY {t.policy.ref} with its L7 conditions ({', '.join(t.l7_fields)}) stripped by ztunnel"
    if plan.notes:
        return plan.notes[0].strip()
    return None


def why(state: State, probe: Probe, version: IstioVersion, a: Side, b: Side) -> str:
    """One line: the reason the decision moved, most specific first."""
    old, new = a.decision, b.decision
    moved = a.route.crossing != b.route.crossing
    path = f" (path {a.route.crossing} → {b.route.crossing}: now {b.route.describe()})" if moved else ""
    behind_waypoint = any(h.proxy == "waypoint" for h in b.route.hops) and not any(
        h.proxy == "waypoint" for h in a.route.hops)
    if new.layer == "ztunnel" and behind_waypoint and new.reason in (ALLOW_UNMATCHED, DENY_MATCHED):
        return f"selector policy at the destination's ztunnel now sees the waypoint's identity{path}"
    if new.layer == "ztunnel" and old.layer in ("sidecar", "waypoint"):
        if old.reason == JWT_REJECTED or (old.reason in (EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR)):
            what = "RequestAuthentication" if old.reason == JWT_REJECTED else "CUSTOM"
            return f"{what} no longer applies: ztunnel has no JWT filter and no ext_authz{path}"
        words = _ztunnel_words(state, probe, version)
        if words is not None and (old.verdict != new.verdict or old.policy != new.policy):
            return words + path
        if old.layer == "waypoint" and b.route.source_plane == "sidecar":
            return f"the waypoint's targetRefs policies no longer apply: sidecars bypass service waypoints{path}"
    if new.layer == "waypoint" and old.layer != "waypoint":
        return f"the waypoint's targetRefs policies now apply (selector L7 policies no longer do){path}"
    if new.layer == "sidecar" and old.layer in ("ztunnel", "waypoint"):
        return ("the sidecar now enforces the policies that select it, L7 included"
                + (" (the waypoint's targetRefs policies no longer apply)" if old.layer == "waypoint" else "") + path)
    if old.verdict == new.verdict and old.outcome != new.outcome:
        return f"same verdict, the client now sees {new.outcome} instead of {old.outcome}{path}"
    if moved:
        return f"path {a.route.crossing} → {b.route.crossing}: now {b.route.describe()}"
    return f"decided by {new.policy or new.reason} instead of {old.policy or old.reason}"


def moved_namespaces(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """namespace -> (old plane, new plane) for the namespaces whose plane differs (unlisted = sidecar)."""
    out = {}
    for ns in sorted(set(before) | set(after)):
        o, n = before.get(ns, "sidecar"), after.get(ns, "sidecar")
        if o != n:
            out[ns] = (o, n)
    return out
