"""Scenarios side by side on one cluster (schedule.py) through the existing-cluster target, the real
`kubernetes` client and the test API server with its pretend data plane (test_session_apiserver.py).

Two scenarios that expect their first step to be allowed share the cluster with a third whose first step
puts an allow-nothing AuthorizationPolicy in the mesh root namespace, which the pretend sidecars (like
istiod, pilot/pkg/model/authorization.go) apply to every workload. Had the mesh-wide scenario overlapped
either of the others' steps, or left its policy behind, their allowed probes would have been denied.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest

from conformance.mesh.cluster.existing import ExistingClusterTarget
from conformance.mesh.cluster.session import IstioAnalyzeWarning
from conformance.model import Scenario, Step
from conformance.schedule import RunSpec, Scheduler, wait
from tests.cluster.test_existing_apiserver import cluster  # noqa: F401  (the fixture)
from tests.cluster.test_session_apiserver import V130, good, mesh_deny_all

pytest.importorskip("kubernetes")


def shared(name: str) -> Scenario:
    base = good()
    return replace(base, name=name, steps=base.steps[:2])  # baseline (allowed), deny-all in its namespace


def mesh_wide() -> Scenario:
    base = good()
    baseline, denied = base.steps[0], base.steps[1]
    return replace(base, name="mesh-wide", steps=(
        Step("mesh-deny-all", (mesh_deny_all(),), denied.expectations), Step("lifted", (), baseline.expectations)))


def test_two_scenarios_share_the_cluster_and_a_mesh_wide_one_runs_alone(cluster):  # noqa: F811
    world, settings = cluster
    target = ExistingClusterTarget(replace(settings, concurrency=3))
    assert target.unavailable("sidecar") is None
    scenarios = [shared("first"), mesh_wide(), shared("second")]
    specs = [RunSpec(s.name, s, "sidecar", s.steps,
                     next((i for i, st in enumerate(s.steps) if target.runs_alone(s, st)), None)) for s in scenarios]
    assert [s.exclusive for s in specs] == [False, True, False]
    scheduler = Scheduler.for_version(target, specs, target.concurrency, V130, required=2, deadline=20)
    try:
        outcomes = {(s.key, step.name): wait(scheduler.run(s.key).steps[step.name]) for s in specs for step in s.steps}
        closed = {s.key: wait(scheduler.run(s.key).closed) for s in specs}
    finally:
        scheduler.shutdown()
        target.close()
    for key, outcome in outcomes.items():
        assert outcome.error is None, (key, outcome.error)
        result = outcome.value
        assert result.passed, (key, [(r.probe.describe(), r.last) for r in result.table.rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IstioAnalyzeWarning)
            outcome.notices.replay()
    assert all(c.error is None for c in closed.values())
    # the mesh-wide scenario held the cluster alone from its first step through its close
    history = scheduler.lock.history
    start, end = history.index(("enter", "exclusive", "mesh-wide")), history.index(("leave", "exclusive", "mesh-wide"))
    assert [h for h in history[start:end + 1] if h[1] == "shared"] == []
    # and the two others really ran side by side: each created its namespaces before the other deleted its own
    patches = [r.path for r in world.api.made("PATCH")]
    deletes = [r.path for r in world.api.made("DELETE")]
    prefixes = sorted({p.split("/")[4].split("-")[0] for p in patches if p.startswith("/api/v1/namespaces/az")})
    assert len(prefixes) == 3, prefixes
    with world.api.lock:
        order = [(r.method, r.path) for r in world.api.requests]
    first_delete = {pre: min(i for i, (m, p) in enumerate(order) if m == "DELETE" and f"/namespaces/{pre}-" in p)
                    for pre in prefixes}
    first_create = {pre: min(i for i, (m, p) in enumerate(order) if m == "PATCH" and f"/namespaces/{pre}-" in p)
                    for pre in prefixes}
    overlapping = [(a, b) for a in prefixes for b in prefixes if a < b
                   and first_create[b] < first_delete[a] and first_create[a] < first_delete[b]]
    assert overlapping, (first_create, first_delete)
    # nothing left behind: no policy anywhere, no namespace of the run
    assert world.api.policies() == []
    assert not [k for k in world.api.objects if k[1].startswith("azex")]
    assert deletes


SHARED = """apiVersion: authz-conformance/v1
kind: Scenario
metadata: {{name: {name}}}
spec:
  modes: [sidecar]
  workloads:
    - {{name: accounts, namespace: accounts, ports: [8080]}}
    - {{name: curl, namespace: finance}}
  steps:
    - name: baseline
      policies: []
      expect:
        - {{from: finance/curl, to: accounts/accounts:8080, verdict: allow}}
    - name: {policy}
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {{name: deny-all, namespace: {namespace}}}
          spec: {{}}
      expect:
        - {{from: finance/curl, to: accounts/accounts:8080, verdict: deny}}
    - name: lifted
      policies: []
      expect:
        - {{from: finance/curl, to: accounts/accounts:8080, verdict: allow}}
"""


def test_pytest_reports_each_step_of_scenarios_run_side_by_side(cluster, pytester):  # noqa: F811
    """The plugin's path: `--mesh cluster --cluster-concurrency 3` runs the three scenarios ahead in worker
    threads, and pytest still reports one item per step, each with its own result and warnings."""
    world, settings = cluster
    for name, policy, namespace in (("one", "deny-all", "accounts"), ("two", "deny-all", "accounts"),
                                    ("mesh", "mesh-deny-all", "istio-system")):
        (pytester.path / f"{name}.yaml").write_text(SHARED.format(name=name, policy=policy, namespace=namespace))
    result = pytester.runpytest_subprocess(
        "--mesh", "cluster", "--kube-context", settings.kube_context, "--kubeconfig", settings.kubeconfig,
        "--istioctl", settings.istioctl, "--allow-mesh-wide", "--namespace-prefix", "azpt", "--converge", "2",
        "--cluster-concurrency", "3", "--istio-version", "1.30.3", "-p", "no:cacheprovider",
        "-W", "ignore::UserWarning", "-rA", ".")
    result.assert_outcomes(passed=9)
    text = result.stdout.str()
    assert "PASSED mesh.yaml::sidecar::mesh-deny-all" in text
    assert world.api.policies() == [] and not [k for k in world.api.objects if k[1].startswith("azpt")]
    deleted = {r.path.split("/")[4] for r in world.api.made("DELETE") if r.path.startswith("/api/v1/namespaces/azpt")}
    assert len(deleted) == 6, deleted  # accounts and finance of each of the three
