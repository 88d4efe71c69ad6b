"""Lint: scenario expectations that contradict the engine (errors), and policies worth a second look.

Errors fail `authz-conformance lint`: an explicit verdict the engine says Istio will not give (that is
how the sidecar walkthrough's claim, "the ALLOW works while the DENY {} is in place", is caught).
Warnings only inform: a policy that selects nothing, a DENY that is a no-op at ztunnel, an ALLOW rule
ztunnel drops, a principal that can never match, a CUSTOM policy whose provider istiod cannot use (so it
denies what its rules match) or that ztunnel ignores, a RequestAuthentication ztunnel and waypoints ignore.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from conformance.engine import explain, state_for_step
from conformance.engine.policy import AuthorizationPolicy
from conformance.engine.scope import applies_at_waypoint, applies_to_workload
from conformance.engine.ztunnel import translate, unenforceable
from conformance.errors import Location, NotModelled, Problem
from conformance.model import Manifest, Scenario
from conformance.truthtable import predict
from conformance.validation import provider_defects
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
        # the waypoints some mode deploys: all of them in waypoint mode, those of `waypoint` namespaces in mixed
        deployed = [wp for wp in scenario.waypoints if "waypoint" in scenario.modes
                    or ("mixed" in scenario.modes and scenario.dataplane(wp.namespace) == "waypoint")]
        return any(applies_at_waypoint(p, wp, w, scenario.mesh, version)
                   for wp in deployed for w in scenario.workloads if w.namespace == wp.namespace)
    return any(applies_to_workload(p, w, scenario.mesh) for w in scenario.workloads if w.in_mesh and w.ports)


def _jwt_and_custom(scenario: Scenario, step: str, manifest: Manifest, version: IstioVersion) -> Iterator[Problem]:
    """What Istio accepts about a CUSTOM policy or a RequestAuthentication but does not do as written.

    A CUSTOM policy whose provider istiod cannot use (undefined, or invalid: istiod's processExtensionProvider /
    getExtAuthz, pilot/pkg/security/authz/builder/extauthz.go@1.30.3) is compiled to an RBAC deny of the requests
    its rules match (`-deny-due-to-bad-CUSTOM-action`), whatever failOpen says. ztunnel ignores CUSTOM policies and
    RequestAuthentication (ambient/authorization.go convertAuthorizationPolicy: "ztunnel does not support the
    CUSTOM action"); waypoints ignore selector policies (research note §2, §3.5).
    """
    where = f"step '{step}': {manifest.origin} ({manifest.kind} {manifest.ref})"

    def warn(message: str, field: str) -> Problem:
        return Problem(Location(scenario.path, where, field), message, "warning")

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
                yield warn(f"provider {name!r} is not in mesh.extensionProviders (defined: {known}): {deny} "
                           "(istiod builds a deny instead of ext_authz: getExtAuthz)", "spec.provider.name")
            else:
                broken = provider_defects(found, version)
                target = scenario.provider_workload(found)
                if broken:
                    yield warn(f"provider {name!r} is one istiod treats as invalid ({'; '.join(broken)}): {deny}",
                               "spec.provider.name")
                elif target is None:
                    yield warn(f"provider {name!r} calls service {found.service!r}, which names no workload of the "
                               f"scenario: istiod cannot find it (LookupCluster), so {deny}", "spec.provider.name")
                elif target.kind != "ext-authz":
                    yield warn(f"provider {name!r} calls {target.ref}, which is not of kind ext-authz: the suite's "
                               "echo app is no external authorizer", "spec.provider.name")
                elif target.port(found.port) is None:
                    yield warn(f"provider {name!r} calls port {found.port} of {target.ref}, which does not serve it: "
                               "every check fails, so failOpen and statusOnError decide", "spec.provider.name")
        if ambient and not targeted:
            yield warn("in ambient mode ztunnel ignores CUSTOM policies (\"ztunnel does not support the CUSTOM "
                       "action\"): without a waypoint and targetRefs this policy protects nothing", "spec.action")
    if manifest.kind == "RequestAuthentication" and ambient and not targeted:
        yield warn("in ambient mode ztunnel does not check JWTs, and waypoints ignore selector policies: this "
                   "RequestAuthentication rejects no token there; attach it to a waypoint with targetRefs",
                   "spec.selector" if spec.get("selector") else "spec")


POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
_RAW_NAMESPACE = "authz-conformance-lint"


def is_policy_file(path: str | Path) -> bool:
    """A YAML file holding at least one Istio security document (and no scenario): what `lint` checks on its own."""
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return any(isinstance(d, dict) and d.get("kind") in POLICY_KINDS
               and str(d.get("apiVersion", "")).startswith("security.istio.io/") for d in docs)


def policy_file_problems(path: str | Path, version: IstioVersion) -> list[Problem]:
    """`lint` of a raw policy file (issue 13): Istio's own validation of every policy document, and the warnings
    that need no scenario, in sidecar and ambient mode (L7 rules ztunnel drops, DENYs it cannot enforce, CUSTOM and
    RequestAuthentication ignored without a waypoint, principals that can never match, duplicate namespace-wide
    PeerAuthentications). Warnings that depend on the mesh (which workloads a policy selects, which providers the
    mesh config defines) need a scenario and are left out; documents of other kinds are ignored.

    The documents are read through a scenario that references them (`policies: [{file: ...}]`), the loader's own
    path, so each gets the same checks as in a scenario: each one alone first (an invalid document never hides
    the others' warnings), then the valid ones together. Problems name the policy file and its document."""
    import tempfile

    from conformance.scenario import check

    target = Path(path).resolve()
    docs = list(yaml.safe_load_all(target.read_text(encoding="utf-8")))
    numbered = [(n + 1, d) for n, d in enumerate(d for d in docs if d is not None)
                if isinstance(d, dict) and d.get("kind") in POLICY_KINDS]
    shown = str(path)
    out: list[Problem] = []
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
            out += problems
            if scenario is not None:
                valid.append(item)
        if valid:
            scenario, _ = run(valid)
            if scenario is not None:
                seen = {str(p) for p in out}
                for w in warnings(scenario, version):
                    if "applies to no workload" in w.message or "mesh.extensionProviders" in w.message \
                            or "names no workload of the scenario" in w.message:
                        continue  # depends on the mesh, which a raw file does not describe
                    moved = _relocate(w, shown, [n for n, _ in valid])
                    if str(moved) not in seen:
                        seen.add(str(moved))
                        out.append(moved)
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
