"""Building the engine's State for a scenario step, with the addresses a target assigned."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from conformance.engine.decide import State
from conformance.errors import Location, NotModelled, Problem
from conformance.model import Scenario, Step, default_addresses


def state_for_step(scenario: Scenario, step: Step, addresses: Mapping[str, str] | None = None) -> State:
    """The policies of `step` in force over the scenario's world; `${ip:...}` placeholders filled with
    `addresses` (a target's real ones, or synthetic ones when only predicting).

    Raises NotModelled when the step uses JWT or CUSTOM, which the format has (issue 11) and the engine does
    not model yet: every prediction, explanation and run goes through here first, so none can go on as if
    a RequestAuthentication, a CUSTOM policy or a probe's token were absent.
    """
    problems = list(_not_modelled(scenario, step))
    if problems:
        raise NotModelled(problems)
    addrs = dict(addresses) if addresses is not None else default_addresses(scenario)
    return State(
        mesh=scenario.mesh,
        workloads=scenario.workloads,
        waypoints=scenario.waypoints,
        policies=tuple(m.rendered(addrs) for m in step.policies),
        addresses=addrs,
    )


# -- narrow guard: JWT and CUSTOM are in the scenario format before the engine models them (issue 11) ----------

_NOT_MODELLED = "not modelled yet by the verdict engine (issue 11): the scenario is valid, but no verdict can be " \
                "predicted or judged for it"


def _not_modelled(scenario: Scenario, step: Step) -> Iterator[Problem]:
    """One problem per use of JWT or CUSTOM in `step`, each naming the step, the document and the field."""
    def problem(where: str, field: str, what: str) -> Problem:
        return Problem(Location(scenario.path, f"step '{step.name}': {where}", field), f"{what} is {_NOT_MODELLED}")

    for m in step.policies:
        where = f"{m.origin} ({m.kind} {m.ref})"
        if m.kind == "RequestAuthentication":
            yield problem(where, "kind", "RequestAuthentication (JWT authentication)")
            continue
        if m.kind != "AuthorizationPolicy":
            continue
        if m.spec.get("action") == "CUSTOM":
            yield problem(where, "spec.action", "action CUSTOM (external authorization)")
            continue
        for field, what in _jwt_fields(m.spec.get("rules")):
            yield problem(where, field, what)
    for e in step.expectations:
        if e.probe.request.jwt is not None:
            yield problem(f"probe expect[{e.index}]", "request.jwt", "a probe's JWT (request.jwt)")


def _jwt_fields(rules: Any) -> Iterator[tuple[str, str]]:
    """(field, what) of each requestPrincipals / notRequestPrincipals and `request.auth.*` when key in `rules`."""
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, Mapping):
            continue
        for j, entry in enumerate(rule.get("from") or []):
            source = entry.get("source") if isinstance(entry, Mapping) else None
            for name in ("requestPrincipals", "notRequestPrincipals"):
                if isinstance(source, Mapping) and source.get(name):
                    yield f"spec.rules[{i}].from[{j}].source.{name}", f"{name} (JWT request principals)"
        for j, cond in enumerate(rule.get("when") or []):
            key = cond.get("key") if isinstance(cond, Mapping) else None
            if isinstance(key, str) and key.startswith("request.auth."):
                yield f"spec.rules[{i}].when[{j}].key", f"the when key {key} (JWT claims)"
