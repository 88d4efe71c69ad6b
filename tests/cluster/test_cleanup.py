"""What a session applied outside its own namespaces does not outlive it (issue 10).

Root-namespace policies are never renamed, so deleting the session's namespaces leaves them: the
mtls-migration scenario ends with a mesh-wide STRICT PeerAuthentication, and plaintext-clients, run next
on the same cluster, expects plaintext to be allowed. These tests run scenarios one after the other on
one (fake) cluster, and break sessions off with failures and Ctrl-C.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from typing import Any

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.kube import ExecResult
from conformance.mesh.cluster.session import ClusterContext, ClusterSession, IstioAnalyzeWarning
from conformance.model import Manifest, Scenario
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.envoy_dump import listeners_dump
from tests.cluster.test_session import ROOT, FakeKube, world  # noqa: F401  (the fixture, reused)

POLICY_KINDS = {"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"}
V130 = IstioVersion.parse("1.30")


def policies_in(kube: FakeKube) -> set[tuple[str, str, str]]:
    return {key for key in kube.objects if key[0] in POLICY_KINDS}


def outside(kube: FakeKube, prefix: str = "azt3st00-") -> set[tuple[str, str, str]]:
    """Policies left outside the session's namespaces (the fake does not cascade namespace deletes)."""
    return {key for key in policies_in(kube) if not key[1].startswith(prefix)}


def run_all_steps(scenario: Scenario, ctx: ClusterContext, mode: str = "sidecar") -> ClusterSession:
    session = ClusterSession(scenario, mode, ctx).start()  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        for step in scenario.steps:
            session.apply(step.policies)
    return session


def root_deny_all(scenario: Scenario) -> Scenario:
    """The scenario with a last step adding a mesh-wide deny-all AuthorizationPolicy (observable by the barrier)."""
    policy = Manifest("AuthorizationPolicy", "security.istio.io/v1", "mesh-deny", "istio-system",
                      {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                       "metadata": {"name": "mesh-deny", "namespace": "istio-system"},
                       "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}},
                      "test: step mesh-deny")
    last = replace(scenario.steps[-1], name="mesh-deny", policies=(*scenario.steps[-1].policies, policy))
    return replace(scenario, steps=(*scenario.steps, last))


def test_the_next_scenario_sees_none_of_the_previous_ones_policies(world):  # noqa: F811
    _scenario, kube, ctx = world
    strict = load(ROOT / "policies" / "peer-authentication-strict.yaml", V130)
    plaintext = load(ROOT / "policies" / "plaintext-clients.yaml", V130)
    first = run_all_steps(strict, replace(ctx, prefix="aztest01-"))
    mesh_wide = ("PeerAuthentication", "istio-system", "default")
    assert mesh_wide in kube.objects  # the last step: STRICT for the whole mesh
    first.close()
    assert mesh_wide in kube.deleted and policies_in(kube) == set()
    # a PeerAuthentication is in no proxy's configuration by name: its removal is said to be unobserved
    assert any("istio-system/default deleted" in n and "could not be waited for" in n for n in first.notes)

    second = ClusterSession(plaintext, "sidecar", replace(ctx, prefix="aztest02-")).start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        second.apply(plaintext.steps[0].policies)
    assert policies_in(kube) == {("PeerAuthentication", "aztest02-ns1", "ns-default")}
    second.close()


def test_close_waits_until_the_proxies_no_longer_hold_a_root_policy(world):  # noqa: F811
    scenario, kube, ctx = world
    lagging = {"reads": 0, "armed": False}
    real_exec = kube.exec

    def config_dump(namespace: str, pod: str, container: str, argv: list[str], timeout: float) -> ExecResult:
        """Envoy keeps a deleted root policy for two more config-dump reads (istiod's push is not instant)."""
        if container == "istio-proxy" and lagging["armed"] and lagging["reads"] < 2:
            lagging["reads"] += 1
            return ExecResult(listeners_dump(["ns[istio-system]-policy[mesh-deny]-rule[0]"]), "", 0, 0.01)
        return real_exec(namespace, pod, container, argv, timeout)

    kube.exec = config_dump  # type: ignore[method-assign]
    session = run_all_steps(root_deny_all(scenario), replace(ctx, sleep=lambda _s: None))
    assert session.barriers[-1].reached
    lagging["armed"] = True
    session.close()
    assert ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted
    (cleanup,) = session.cleanup
    assert cleanup.reached and cleanup.polls == 3  # twice "still has", then gone
    namespace_deletes = [i for i, key in enumerate(kube.deleted) if key[0] == "Namespace"]
    assert min(namespace_deletes) > kube.deleted.index(("AuthorizationPolicy", "istio-system", "mesh-deny"))


def test_a_step_that_drops_a_root_policy_deletes_it_then(world):  # noqa: F811
    scenario, kube, ctx = world
    session = run_all_steps(root_deny_all(scenario), ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        applied = session.apply(())
    assert applied.deleted[-1] == "istio-system/mesh-deny"
    assert ("AuthorizationPolicy", "istio-system", "mesh-deny") not in kube.objects
    before = len(kube.deleted)
    session.close()
    assert all(key[0] == "Namespace" for key in kube.deleted[before:])  # nothing outside left to delete


def test_keep_namespaces_still_removes_root_policies(world):  # noqa: F811
    scenario, kube, ctx = world
    session = run_all_steps(root_deny_all(scenario), replace(ctx, keep_namespaces=True))
    session.close()
    assert ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted
    assert not any(key[0] == "Namespace" for key in kube.deleted)


class Interrupting:
    """Wraps the fake: the apply of one object reaches the cluster, then the user presses Ctrl-C."""

    def __init__(self, kube: FakeKube, name: str):
        self.kube, self.name = kube, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.kube, attr)

    def apply(self, doc: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        out = self.kube.apply(doc, field_manager)
        if doc["metadata"]["name"] == self.name:
            raise KeyboardInterrupt
        return out


def test_ctrl_c_in_the_middle_of_an_apply_still_cleans_up(world):  # noqa: F811
    scenario, kube, ctx = world
    scenario = root_deny_all(scenario)
    session = ClusterSession(scenario, "sidecar", replace(ctx, kube=Interrupting(kube, "mesh-deny"))).start()
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        session.apply(scenario.steps[-1].policies)
    session.close()  # what the plugin's teardown does after the interrupt
    assert outside(kube) == set() and ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted


def test_ctrl_c_during_cleanup_still_deletes_everything_then_goes_on(world):  # noqa: F811
    scenario, kube, ctx = world
    session = run_all_steps(root_deny_all(scenario), ctx)
    real_delete = kube.delete
    pressed = []

    def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        out = real_delete(api_version, kind, name, namespace)
        if not pressed:
            pressed.append(kind)
            raise KeyboardInterrupt
        return out

    kube.delete = delete  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        session.close()
    assert outside(kube) == set()
    assert {ns for kind, _, ns in kube.deleted if kind == "Namespace"} == {
        "azt3st00-accounts", "azt3st00-finance", "azt3st00-legacy", "azt3st00-rogue"}


def test_a_failed_delete_is_reported_and_the_rest_still_deleted(world):  # noqa: F811
    scenario, kube, ctx = world
    session = run_all_steps(root_deny_all(scenario), ctx)
    real_delete = kube.delete

    def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        if kind == "AuthorizationPolicy":
            raise TargetError("deleting AuthorizationPolicy istio-system/mesh-deny failed: 500")
        return real_delete(api_version, kind, name, namespace)

    kube.delete = delete  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="cleanup incomplete: deleting AuthorizationPolicy"):
        session.close()
    assert any(kind == "Namespace" for kind, _, _ in kube.deleted)


def test_the_existing_cluster_target_closes_sessions_left_open(world):  # noqa: F811
    from conformance.mesh.cluster.existing import ExistingClusterTarget

    scenario, kube, ctx = world
    target = ExistingClusterTarget.__new__(ExistingClusterTarget)
    session = run_all_steps(root_deny_all(scenario), ctx)
    target._sessions, target._kube, target._lock = [session], None, threading.Lock()
    target.close()
    assert session.closed and ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted


class Blocking:
    """Wraps the fake: the apply of one object waits (a worker thread mid-write) until released."""

    def __init__(self, kube: FakeKube, name: str):
        self.kube, self.name = kube, name
        self.writing, self.release = threading.Event(), threading.Event()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.kube, attr)

    def apply(self, doc: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        if doc["metadata"]["name"] == self.name:
            self.writing.set()
            assert self.release.wait(10)
        return self.kube.apply(doc, field_manager)


def test_a_close_from_another_thread_waits_for_the_write_in_flight_and_stops_the_rest(world):  # noqa: F811
    """Review finding: after a second Ctrl-C the target closes sessions while their worker threads still run;
    an apply in flight then re-created a root-namespace policy after the cleanup. Now close() waits for the
    write in flight (recorded as outside before it was sent), withdraws it, and the apply's next write fails."""
    scenario, kube, ctx = world
    scenario = root_deny_all(scenario)
    blocking = Blocking(kube, "mesh-deny")
    session = ClusterSession(scenario, "sidecar", replace(ctx, kube=blocking)).start()
    policies = (*scenario.steps[-1].policies, Manifest(
        "AuthorizationPolicy", "security.istio.io/v1", "after", "istio-system",
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "after", "namespace": "istio-system"}, "spec": {"action": "DENY", "rules": [{}]}},
        "test: step mesh-deny"))
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session.apply(policies)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert blocking.writing.wait(10)
    closer = threading.Thread(target=session.close)
    closer.start()
    blocking.release.set()
    closer.join(10)
    thread.join(10)
    assert not closer.is_alive() and not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], TargetError) and "closed" in str(failures[0])
    assert outside(kube) == set()
    assert ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted
    assert ("AuthorizationPolicy", "istio-system", "after") not in kube.objects


class InterruptedLock:
    """A lock whose first wait is cut by Ctrl-C (a second SIGINT, or SIGTERM made an interrupt)."""

    def __init__(self) -> None:
        self.waits = 0

    def acquire(self, timeout: float = -1) -> bool:
        self.waits += 1
        if self.waits == 1:
            raise KeyboardInterrupt
        return True

    def release(self) -> None:
        pass


def test_ctrl_c_while_close_waits_for_a_write_in_flight_still_cleans_up(world):  # noqa: F811
    """Third review: the wait for another thread's write let an interrupt escape before anything was deleted,
    and the session already counted as closed. The interrupt is held, the cleanup done, then it is raised."""
    scenario, kube, ctx = world
    session = run_all_steps(root_deny_all(scenario), ctx)
    lock = InterruptedLock()
    session._write_lock = lock  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        session.close()
    assert lock.waits == 2 and outside(kube) == set()
    assert ("AuthorizationPolicy", "istio-system", "mesh-deny") in kube.deleted
