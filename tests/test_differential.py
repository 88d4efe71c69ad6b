"""Differential test: the verdict engine and the real Envoy mesh must agree on generated scenarios.

Why: the engine (conformance/engine) and the local mesh's compiler (conformance/mesh/local/authz.py,
rbac.py, ztunnel.py) are two independent implementations of Istio's semantics (DESIGN.md §5, §6, §9).
Neither is trusted alone; where they disagree, one of them is wrong, and Istio's source says which.
Hypothesis generates valid policy sets and probe batches over a few fixed worlds; for each example, one
mesh per mode (kept across examples: apply() is declarative and waits for Envoy's acknowledgement)
gets the policies, runs every probe in one parallel batch, and each observation must equal the engine's
decision: the verdict, the outcome form (denied-l7 / denied-l4 / denied-upstream), the enforcing proxy,
and the deciding policy named in that proxy's access log.

Coverage is recorded with `hypothesis.event()` (run with `--hypothesis-show-statistics` to see it) and
summed up at the end of the session (tests/conftest.py prints the summary). The number of examples is
the `differential` settings profile (conftest.py): 55 per world, 220 in all, by default.

A second test runs the same comparison in a world with JWT issuers and the suite's ext-authz provider
(differential_world.JWT_WORLDS): RequestAuthentications (selector, namespace-wide, waypoint targetRefs; 1-2
issuers, audiences, fromHeaders, fromParams), tokens of every kind (valid, expired, badly signed, malformed,
unknown issuer, audiences matching or not, elsewhere than where a rule looks), request principals and
request.auth.* keys in rules, and CUSTOM policies (working, header-less, unreachable with failOpen /
statusOnError, and undefined providers) with `x-ext-authz` headers. Its examples are the `differential-jwt`
profile: 120 by default (~1 min), AUTHZ_DIFFERENTIAL_JWT_EXAMPLES=N for more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conformance.engine import Decision, decide, state_for_step
from conformance.engine.decide import ALLOW_MATCHED
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import Manifest, Mode, Probe, Step
from conformance.probe import Observation
from conformance.validation import ERROR, UNSUPPORTED, validate_manifest
from conformance.verdicts import judge
from conformance.versions import IstioVersion
from tests.differential_world import JWT_WORLDS, WORLDS, Pools, World, features, policy_set, probes

VERSION = IstioVersion.parse("1.30")

# Summed over every example of the session, printed by tests/conftest.py (pytest_terminal_summary).
COVERAGE: Counter[str] = Counter()


class Meshes:
    """One running local mesh per mode for one world, started on first use and always closed."""

    def __init__(self, world: World):
        self.world = world
        self.target = LocalTarget()
        self.sessions: dict[Mode, LocalMeshSession] = {}

    @property
    def modes(self) -> tuple[Mode, ...]:
        return self.world.scenario().modes

    def session(self, mode: Mode) -> LocalMeshSession:
        found = self.sessions.get(mode)
        if found is None:
            found = self.sessions[mode] = self.target.start(self.world.scenario(), mode)
        return found

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()


def _meshes(world: World) -> Iterator[Meshes]:
    reason = LocalTarget().unavailable("waypoint") or LocalTarget().refusal(world.scenario(), "sidecar")
    if reason:
        pytest.skip(reason)
    m = Meshes(world)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(params=WORLDS, ids=[w.name for w in WORLDS])
def meshes(request: pytest.FixtureRequest) -> Iterator[Meshes]:
    yield from _meshes(request.param)


@pytest.fixture(params=JWT_WORLDS, ids=[w.name for w in JWT_WORLDS])
def jwt_meshes(request: pytest.FixtureRequest) -> Iterator[Meshes]:
    yield from _meshes(request.param)


def _yaml(policies: Sequence[Manifest]) -> str:
    return yaml.safe_dump_all([dict(m.body) for m in policies], sort_keys=False)


def disagreement(d: Decision, o: Observation, probe: Probe) -> str | None:
    """What differs between the engine's decision and the mesh's observation, or None.

    The rule of conformance/verdicts.py (`judge` with the engine's own verdict as the expectation: the
    denial form, the record's kind, its proxy and policy), made stricter: for ALLOW matches at an Envoy
    layer the allowing policy is compared too.
    """
    proof = o.proof
    where = proof.proxy if proof else "no proof"
    if o.outcome != d.outcome:
        ev = o.evidence
        return (f"engine: {d.verdict} ({d.outcome}, {d.layer}, {d.reason}, {d.policy}); observed {o.outcome} "
                f"[{where}] (curl exit {ev.exit_code}, status {ev.status}, {ev.body[:120]!r} {ev.stderr[:120]})")
    if d.verdict == "allow":
        if d.reason == ALLOW_MATCHED and d.layer != "ztunnel" and proof is not None and proof.policy is not None:
            named = proof.policy == d.policy or proof.policy in d.candidates
            if not named:
                return f"allowed, but by {proof.policy} at {where}; the engine says {d.policy} {d.candidates}"
        return None
    judgement = judge(d.verdict, d, o, probe)
    if not judgement.passed:
        return f"{judgement.category}: {judgement.message} [{where}]"
    return None


def _record(mode: Mode, d: Decision) -> None:
    label = f"outcome: {mode} {d.outcome} ({d.reason} at {d.layer})"
    event(label)
    COVERAGE[label] += 1


def routed_disagreements(state: Any, batch: Sequence[Probe], observations: Sequence[Observation],
                         mode: Mode) -> list[str]:
    """Each probe's disagreement, labelled with its path's crossing (engine/path.py), counted in COVERAGE by mode,
    crossing and outcome: the loop the mixed-mode and gateway differential tests share."""
    from conformance.engine.decide import probe_route

    problems = []
    for p, o in zip(batch, observations, strict=True):
        d = decide(state, p, mode, VERSION)
        crossing = probe_route(state, p, mode, VERSION).crossing
        label = f"outcome: {mode} {crossing} {d.outcome} ({d.reason} at {d.layer})"
        event(label)
        COVERAGE[label] += 1
        COVERAGE["probes"] += 1
        problem = disagreement(d, o, p)
        if problem:
            problems.append(f"[{mode} {crossing}] {p.describe()}: {problem}")
    COVERAGE["examples"] += 1
    return problems


def _check_valid(policies: Sequence[Manifest], addresses: dict[str, str]) -> None:
    """A generated policy Istio would reject, or that the suite does not model, is a generator bug."""
    for m in policies:
        bad = [f for f in validate_manifest(m.rendered(addresses).body, VERSION) if f.severity in (ERROR, UNSUPPORTED)]
        assert not bad, f"generated an invalid policy:\n{_yaml([m])}\n{bad}"


@given(data=st.data())
@settings(settings.get_profile("differential"))
def test_engine_and_envoy_mesh_agree(meshes: Meshes, data: st.DataObject) -> None:
    _compare(meshes, data)


@given(data=st.data())
@settings(settings.get_profile("differential-jwt"))
def test_engine_and_envoy_mesh_agree_on_jwt_and_custom(jwt_meshes: Meshes, data: st.DataObject) -> None:
    """The same comparison in a world with JWT issuers and the suite's ext-authz provider: generated
    RequestAuthentications, tokens (valid, expired, badly signed, malformed, of an unknown issuer, with
    and without audiences, in other locations), JWT fields in rules, and CUSTOM policies."""
    _compare(jwt_meshes, data)


def _compare(meshes: Meshes, data: st.DataObject) -> None:
    world = meshes.world
    pools = Pools(world)
    policies = data.draw(policy_set(pools), label="policies")
    batch = data.draw(probes(world), label="probes")
    for label in sorted(features(policies, batch, world.root)):
        event(label)
        COVERAGE[label] += 1
    step = Step("generated", policies, ())
    scenario = world.scenario((step,))
    problems: list[str] = []
    for mode in meshes.modes:
        session = meshes.session(mode)
        _check_valid(policies, session.addresses)
        session.apply(policies)
        observations = session.probe(batch)
        state = state_for_step(scenario, step, session.addresses)
        for p, o in zip(batch, observations, strict=True):
            d = decide(state, p, mode, VERSION)
            _record(mode, d)
            COVERAGE["probes"] += 1
            problem = disagreement(d, o, p)
            if problem:
                problems.append(f"[{mode}] {p.describe()}: {problem}")
    COVERAGE["examples"] += 1
    if problems:
        raise AssertionError(
            f"engine and mesh disagree on {len(problems)} observation(s) in world {world.name}:\n"
            + "\n".join(problems) + "\npolicies:\n" + (_yaml(policies) or "(none)\n"))
