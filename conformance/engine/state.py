"""Building the engine's State for a scenario step, with the addresses a target assigned."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from conformance.engine import custom as ext
from conformance.engine.decide import State
from conformance.engine.jwt import unmodelled_claims
from conformance.engine.policy import (
    AuthorizationPolicy,
    compile_authorization_policy,
    compile_request_authentication,
)
from conformance.engine.scope import applies_at_waypoint, applies_to_workload
from conformance.errors import Location, NotModelled, Problem
from conformance.model import Manifest, Scenario, Step, Workload, default_addresses
from conformance.versions import IstioVersion


def state_for_step(scenario: Scenario, step: Step, addresses: Mapping[str, str] | None = None) -> State:
    """The policies of `step` in force over the scenario's world; `${ip:...}` placeholders filled with
    `addresses` (a target's real ones, or synthetic ones when only predicting).

    Raises NotModelled for the few JWT and CUSTOM uses whose outcome depends on what the engine cannot know
    (`_not_modelled`): every prediction, explanation and run goes through here first, so none goes on with a
    guess.
    """
    problems = list(_not_modelled(scenario, step))
    if problems:
        raise NotModelled(problems)
    addrs = dict(addresses) if addresses is not None else default_addresses(scenario)
    # repr, not JSON: JSON would make {1: x} and {"1": x} one key (and cannot sort mixed keys); two bodies with
    # equal repr are equal (dicts, lists, strings, numbers), and equal bodies in another key order only miss
    key = (id(scenario), tuple((m.kind, m.api_version, m.name, m.namespace, repr(m.body)) for m in step.policies),
           tuple(sorted(addrs.items())))
    with _STATES_LOCK:
        cached = _STATES.get(key)
        if cached is not None:  # the entry keeps its scenario alive, so this id() is that scenario's
            _STATES.move_to_end(key)
            return cached[1]
    state = State(
        mesh=scenario.mesh,
        workloads=scenario.workloads,
        waypoints=scenario.waypoints,
        policies=tuple(m.rendered(addrs) for m in step.policies),
        addresses=addrs,
        issuers=scenario.issuers,
        dataplanes=dict(scenario.dataplanes),
    )
    with _STATES_LOCK:
        _STATES[key] = (scenario, state)  # the scenario is kept alive with it, so its id() is not reused meanwhile
        while len(_STATES) > _STATES_KEPT:
            _STATES.popitem(last=False)
    return state


# The States made most recently, by scenario, policies and addresses. A State compiles what it needs once per mode and
# release and keeps it (decide.State); a step's prediction and the next step's "before" prediction
# (runner.newly_denied) are the same policy set over the same world, so they share one: the engine's translations
# were a seventh of the suite's Python time. A State is never changed once made, so sharing one changes no answer.
_STATES: OrderedDict[tuple[Any, ...], tuple[Scenario, State]] = OrderedDict()
_STATES_LOCK = threading.Lock()
_STATES_KEPT = 128


# -- narrow guard: what the engine refuses to predict ---------------------------------------------------------

_NOT_MODELLED = "not modelled by the verdict engine: the scenario is valid, but no verdict can be predicted or " \
                "judged for it"


def _modes_using(scenario: Scenario, target_refs: bool) -> bool:
    """Whether some mode of the scenario applies a policy of this attachment: selector and namespace policies
    at sidecars (ztunnel ignores JWT and CUSTOM), targetRefs ones at waypoints."""
    plane = "waypoint" if target_refs else "sidecar"
    if plane in scenario.modes:
        return True
    # mode mixed: as soon as one in-mesh namespace runs that data plane
    return "mixed" in scenario.modes and any(scenario.dataplane(w.namespace) == plane
                                             for w in scenario.workloads if w.in_mesh)


def _at_proxy_of(policy: Any, workload: Workload, scenario: Scenario, version: IstioVersion) -> bool:
    """Whether `policy` binds at `workload`'s own proxy: its sidecar, or its namespace's waypoint."""
    return workload.in_mesh and (applies_to_workload(policy, workload, scenario.mesh) or any(
        applies_at_waypoint(policy, w, workload, scenario.mesh, version)
        for w in scenario.waypoints if w.namespace == workload.namespace))


def _first_at_proxy_of(step: Step, kind: str, compile: Callable[[Manifest], Any], workload: Workload,
                       scenario: Scenario, version: IstioVersion) -> Any:
    """The step's first policy of `kind`, compiled, that binds at `workload`'s own proxy (`_at_proxy_of`), or None."""
    return next((q for q in map(compile, (m for m in step.policies if m.kind == kind))
                 if _at_proxy_of(q, workload, scenario, version)), None)


def _not_modelled(scenario: Scenario, step: Step) -> Iterator[Problem]:
    """One problem per refused use, each naming the step, the document and the field."""
    def problem(where: str, field: str, what: str) -> Problem:
        return Problem(Location(scenario.path, f"step '{step.name}': {where}", field), f"{what}: {_NOT_MODELLED}")

    def where_of(m: Manifest) -> str:
        return f"{m.origin} ({m.kind} {m.ref})"

    customs: list[tuple[Manifest, AuthorizationPolicy]] = []
    for m in step.policies:
        if m.kind == "AuthorizationPolicy" and m.spec.get("action") == "CUSTOM":
            customs.append((m, compile_authorization_policy(m)))
    # the provider's own defects before 1.30 (no name check: more providers usable, more refusals below); which
    # policies bind where, as at the default release
    before_name_check, version = IstioVersion.parse("1.29"), IstioVersion.parse("1.30")
    for m, p in customs:
        if not _modes_using(scenario, bool(p.target_refs)):
            continue
        if p.dry_run:
            yield problem(where_of(m), "metadata.annotations", "a dry-run CUSTOM policy (istiod 1.30 puts its rules in "
                          "the RBAC filter's enforced rules with action DENY, builder.go buildHTTP, while its comment "
                          "says they only trigger ext_authz; Istio tests neither)")
        view = ext.resolve(p.provider or "", scenario.mesh.extension_providers, scenario.workloads,
                           before_name_check)
        provider, workload = view.provider, view.workload
        if provider is None or workload is None or view.defects:
            continue  # a broken provider is an RBAC deny istiod builds: modelled
        if workload.kind != "ext-authz":
            yield problem(where_of(m), "spec.provider.name", f"provider {provider.name!r} names {workload.ref}, which "
                          "is not a workload of kind ext-authz (only the suite's ext_authz server's answers are "
                          "modelled)")
        if provider.kind == "grpc" and p.target_refs:
            yield problem(where_of(m), "spec.provider.name", f"a gRPC provider ({provider.name!r}) at a waypoint (the "
                          "sample gRPC server decides on the check's source principal when the request has no "
                          "x-ext-authz header, and what a waypoint's internal connection presents there is not "
                          "modelled)")
        if provider.kind == "grpc" and not view.reachable:
            yield problem(where_of(m), "spec.provider.name", f"a gRPC provider ({provider.name!r}) whose port "
                          f"{provider.port} its Service does not serve (whether Envoy accepts an envoy_grpc cluster "
                          "that does not exist is not modelled)")
        q = _first_at_proxy_of(step, "AuthorizationPolicy", compile_authorization_policy, workload, scenario, version)
        if q is not None:
            yield problem(where_of(m), "spec.provider.name", f"AuthorizationPolicy {q.ref} applies to the "
                          f"provider {workload.ref} itself (whether it lets the proxies' check requests "
                          "through is not modelled)")
        # A RequestAuthentication at the provider's own proxy (a mesh-wide one, say) checks the check requests: the
        # token of a probe reaches it in the check's Authorization header or path (query) and is validated there;
        # one it rejects comes back as the authorizer's answer (ext_authz relays the 401/403 and its body).
        # Found by tests/test_differential.py; the engine does not model the provider's proxy, so it refuses.
        r = _first_at_proxy_of(step, "RequestAuthentication", compile_request_authentication, workload, scenario,
                               version)
        if r is not None:
            yield problem(where_of(m), "spec.provider.name", f"RequestAuthentication {r.ref} applies to the "
                          f"provider {workload.ref} itself (its JWT filter checks the proxies' check requests, "
                          "which carry the probe's Authorization header and query, and ext_authz relays a "
                          "rejection as the authorizer's answer: not modelled)")
    ras = [(m, compile_request_authentication(m)) for m in step.policies if m.kind == "RequestAuthentication"]
    relevant = [(m, ra) for m, ra in ras if _modes_using(scenario, bool(ra.target_refs))]
    cookies = [(m, ra, r) for m, ra in relevant for r in ra.jwt_rules if r.from_cookies]
    for e in step.expectations:
        jwt = e.probe.request.jwt
        if relevant and jwt is not None and jwt.raw is None:
            for claim in unmodelled_claims(jwt):
                yield problem(f"probe expect[{e.index}]", f"request.jwt.claims.{claim}", f"the claim {claim!r} in a "
                              "minted token (the target sets iat itself; nbf is compared with the proxy's clock)")
        if cookies and e.probe.request.header("cookie") is not None:
            m, ra, r = cookies[0]
            yield problem(f"probe expect[{e.index}]", "request.headers.cookie", "a Cookie header where "
                          f"{ra.ref} jwtRules[{r.index}] reads fromCookies (token extraction from cookies)")
