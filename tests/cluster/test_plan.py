"""The run plan (conformance/mesh/cluster/plan.py): estimates from the scenario files, mesh-wide scenarios
alone, shards within the job budget, the workflow matrices and what the cluster targets print."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conformance.cli import main as cli_main
from conformance.mesh.cluster import plan
from conformance.scenario import load
from conformance.versions import IstioVersion

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
V = IstioVersion.parse("1.30.3")


def test_scenario_cost_counts_steps_probes_and_waypoints():
    path = POLICIES / "conditions.yaml"  # 2 steps with 35 probes between them
    s = load(path, V)
    cost = plan.scenario_cost(s, str(path), "sidecar")
    c = plan.COSTS
    probes = [len(st.expectations) for st in s.steps]
    extra_high = sum(max(0, n - c.probe_beyond) for n in probes) * c.probe[1]
    assert cost.steps == 2 and cost.probes == sum(probes) and cost.waypoints == 0
    # istioctl analyze runs beside the barrier (session.py apply): no per-namespace term
    assert cost.high == pytest.approx(c.scenario[1] + 2 * c.step[1] + extra_high + c.close[1])
    assert cost.low < cost.high
    wp = POLICIES / "waypoint-l7-policy.yaml"
    in_waypoint = plan.scenario_cost(load(wp, V), str(wp), "waypoint")
    in_ambient = plan.scenario_cost(load(wp, V), str(wp), "ambient")
    assert in_waypoint.waypoints == 1 and in_waypoint.high == in_ambient.high + c.waypoint[1]


def test_an_ingress_gateway_adds_to_a_scenarios_start_in_every_mode():
    """Issue 12: a gateway is one more injected Deployment plus an Istio Gateway and VirtualServices to push before
    the canary's route probes answer (Costs.gateway); its root-namespace DENY makes ingress-gateway.yaml run alone."""
    import dataclasses

    path = POLICIES / "ingress-gateway.yaml"
    s = load(path, V)
    c = plan.COSTS
    without = dataclasses.replace(s, workloads=tuple(w for w in s.workloads if not w.is_gateway))
    for mode in ("sidecar", "ambient"):
        with_gateway = plan.scenario_cost(s, str(path), mode)
        assert with_gateway.start == (plan.scenario_cost(without, str(path), mode).start[0] + c.gateway[0],
                                      plan.scenario_cost(without, str(path), mode).start[1] + c.gateway[1])
    assert plan.scenario_cost(s, str(path), "sidecar").alone_from == 1


def test_a_scenario_runs_alone_from_its_first_step_with_a_root_namespace_policy():
    alone = {Path(c.path).name: c.alone_from for c in (plan.scenario_cost(load(p, V), str(p), "sidecar")
                                                        for p in sorted(POLICIES.glob("*.yaml")))}
    assert alone["namespace-deny.yaml"] == 0 and alone["principal-deny.yaml"] == 0
    assert alone["peer-authentication-strict.yaml"] == 2  # its mesh-wide STRICT comes in its third step
    assert alone["namespace-allow.yaml"] is None


def cost(name: str, steps: int = 2, alone_from: int | None = None, start: float = 30.0, step: float = 10.0,
         close: float = 2.0) -> plan.ScenarioCost:
    return plan.ScenarioCost(f"{name}.yaml", name, "sidecar", steps, steps, 0, alone_from, (start, start),
                             tuple((step, step) for _ in range(steps)), (close, close))


FLAT = plan.Costs(contention=(1.0, 1.0))


def test_simulate_one_worker_is_the_sum_and_enough_workers_the_longest():
    runs = [cost("a"), cost("b", steps=4), cost("c", steps=1)]
    assert plan.simulate(runs, 1, 1, FLAT) == pytest.approx(sum(r.high for r in runs))
    assert plan.simulate(runs, 3, 1, FLAT) == pytest.approx(max(r.high for r in runs))
    stretched = plan.Costs(contention=(1.0, 1.5))
    assert plan.simulate(runs, 3, 1, stretched) == pytest.approx(1.5 * max(r.high for r in runs))
    assert plan.simulate(runs, 1, 1, stretched) == pytest.approx(sum(r.high for r in runs))  # no one to share with
    assert plan.simulate([], 4, 1) == 0.0


def test_simulate_runs_a_mesh_wide_scenario_alone_from_its_first_root_step_through_its_close():
    # two shared runs start with it; its exclusive part (2 steps + close) waits for their steps and then
    # holds everyone else back: 30 start, shared steps 30-50, its step 0 shared with theirs (30-40), then
    # it waits for theirs to end (50), holds 50-72 (2 steps of 10, close 2), then nothing is left.
    runs = [cost("a"), cost("b"), cost("m", steps=3, alone_from=1)]
    assert plan.simulate(runs, 3, 1, FLAT) == pytest.approx(72.0)
    # all shared: they would all be done at 30 + 3 steps + close = 62
    assert plan.simulate([cost("a"), cost("b"), cost("m", steps=3)], 3, 1, FLAT) == pytest.approx(62.0)
    # an exclusive claim holds back what a start probes (its canary, the last 5 s of its start, under a
    # shared claim) and every step: c's canary and steps wait until m has closed at 22
    late = [cost("m", steps=2, alone_from=0, start=0.0), cost("c", start=5.0)]
    assert plan.simulate(late, 2, 1, FLAT) == pytest.approx(22 + 5 + 20 + 2)


def test_simulate_is_never_faster_than_the_exclusive_parts_nor_slower_than_one_by_one():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    run = st.builds(lambda n, a, s, t: cost(f"r{n}", steps=s, alone_from=(a if a is not None and a < s else None),
                                            step=t),
                    st.integers(0, 99), st.none() | st.integers(0, 3), st.integers(1, 4), st.floats(1.0, 20.0))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(run, min_size=1, max_size=8, unique_by=lambda r: r.name), st.integers(1, 6))
    def check(runs: list[plan.ScenarioCost], workers: int) -> None:
        t = plan.simulate(runs, workers, 1, FLAT)
        exclusive = sum(sum(c[1] for c in r.step_costs[r.alone_from:]) + r.close[1]
                        for r in runs if r.alone_from is not None)
        assert t >= max(r.high for r in runs) - 1e-9
        assert t >= exclusive - 1e-9
        assert t <= sum(r.high for r in runs) + 1e-9

    check()


def test_shard_is_deterministic_and_fits_the_budget():
    costs = [cost(f"s{i}", steps=1, start=h - 12.0) for i, h in enumerate([100, 90, 80, 70, 60, 50, 40])]
    bins = plan.shard(costs, 150, workers=1, model=FLAT)
    assert all(sum(c.high for c in b) <= 150 for b in bins)
    assert sorted(c.path for b in bins for c in b) == sorted(c.path for c in costs)
    assert bins == plan.shard(list(reversed(costs)), 150, workers=1, model=FLAT)
    assert len(bins) == 4  # 490 s in all, one at a time: 4 bins of <= 150
    side_by_side = plan.shard(costs, 150, workers=4, model=FLAT)
    assert len(side_by_side) == 1  # four at once: all seven within 150 s
    assert plan.simulate(side_by_side[0], 4, 1, FLAT) <= 150
    big = plan.shard([cost("big", start=999.0)], 150)
    assert len(big) == 1 and big[0][0].path == "big.yaml"
    assert plan.shard([], 150) == []


def test_the_suite_is_sharded_within_ten_minutes_per_job():
    built = plan.build([POLICIES], "kind", None, "1.30.3")
    assert [m.mode for m in built.modes] == ["sidecar", "ambient", "waypoint", "mixed"]
    for mp in built.modes:
        assert mp.shards
        for sh in mp.shards:
            assert mp.job(sh)[1] <= plan.E2E_JOB_BUDGET
        files = [f for sh in mp.shards for f in sh.files]
        assert sorted(files) == sorted(s.path for s in mp.scenarios)
    sidecar = built.modes[0]
    assert sidecar.cluster == "authz-sidecar-1-30-3" and sidecar.profile == "default"
    assert built.modes[2].fixed[1] > sidecar.fixed[1]  # waypoint mode installs the Gateway API CRDs too


def test_github_matrices():
    e2e = plan.github_e2e([POLICIES])["include"]
    assert {"mode", "istio", "gateway_api", "node_image", "kind", "shard", "shard_id", "files", "estimate_minutes",
            "timeout"} <= set(e2e[0])
    assert len({(j["mode"], j["istio"], j["shard"]) for j in e2e}) == len(e2e)
    assert all(j["timeout"] == plan.timeout_minutes(j["estimate_minutes"] * 60) or
               abs(j["timeout"] - plan.timeout_minutes(j["estimate_minutes"] * 60)) <= 1 for j in e2e)
    upgrade = plan.github_upgrade([POLICIES])["include"]
    assert all(j["estimate_minutes"] * 60 <= plan.UPGRADE_JOB_BUDGET for j in upgrade)


def test_plan_command(capsys):
    argv = ["plan", str(POLICIES), "--mesh", "kind", "--mesh-mode", "ambient", "--istio-version", "1.29.6"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "Istio 1.29.6, kind v0.32.0" in out and "- ambient: cluster authz-ambient-1-29-6, profile ambient" in out
    assert "shard 1/" in out and "to close (mesh-wide policy): namespace-deny.yaml" in out and "timeout" in out
    assert "side by side, " in out and "the whole mode in one job on one runner" in out
    assert "- sidecar:" not in out and "- waypoint:" not in out
    assert cli_main(["plan", str(POLICIES), "--format", "github-e2e"]) == 0
    assert json.loads(capsys.readouterr().out)["include"]


def test_plan_command_refuses_an_unmodelled_version(capsys):
    assert cli_main(["plan", str(POLICIES), "--istio-version", "1.99"]) == 1
    assert "not modelled" in capsys.readouterr().err


def test_session_plan_text_is_one_run_and_never_raises():
    text = plan.session_plan_text([POLICIES / "conditions.yaml"], "kind", ["sidecar"], "1.30")
    assert "one run, no shards" in text and "shard 1/1" in text and "conditions.yaml" in text
    text = plan.session_plan_text([POLICIES], "cluster", ["ambient"], "1.30", kube_context="ctx")
    assert "existing (context ctx)" in text and "profile detected at start" in text
    assert plan.session_plan_text([POLICIES], "kind", None, "9.9").startswith("Plan: not available")


def test_scenario_files_skips_what_is_not_a_scenario(tmp_path):
    (tmp_path / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    buf = io.StringIO(str(plan.scenario_files([tmp_path, POLICIES / "hosts.yaml"])))
    assert "hosts.yaml" in buf.getvalue() and "x.yaml" not in buf.getvalue()


def test_the_plan_names_the_clusters_the_run_will_create():
    """The plan printed before a run, and CI's summary, name the clusters `--cluster-name` gives (review:
    the plan printed default names CI never creates)."""
    from conformance.mesh.cluster.plan import session_plan_text

    text = session_plan_text([str(ROOT / "policies" / "explicit-deny-task.yaml")], "kind", ["sidecar"], "1.30.3",
                             cluster_base="e2e")
    assert "cluster e2e-sidecar-1-30-3," in text


def test_the_plan_a_run_prints_is_for_its_own_concurrency(capsys):
    """Found by review: the plan printed before a run assumed 4 at once whatever --cluster-concurrency said."""
    one = plan.session_plan_text([POLICIES / "conditions.yaml", POLICIES / "hosts.yaml"], "kind", ["sidecar"], "1.30",
                                 workers=1)
    assert "1 scenario(s) at once" in one and "side by side, 1 at once" in one
    assert cli_main(["plan", str(POLICIES / "hosts.yaml"), "--cluster-concurrency", "2"]) == 0
    assert "2 scenario(s) at once" in capsys.readouterr().out


def test_jwt_and_custom_scenarios_are_planned_and_a_provider_costs_the_mesh_config_wait():
    """Issue 11: JWT and CUSTOM scenarios run on the cluster targets, so they get a shard; a scenario with CUSTOM
    providers waits at its start until istiod serves its mesh config change (meshconfig.py), which its
    estimate carries (Costs.mesh_config)."""
    built = plan.build([POLICIES], "kind", ["sidecar"], "1.30")
    planned = {Path(f).name for mp in built.modes for sh in mp.shards for f in sh.files}
    assert {"jwt-claims.yaml", "ext-authz-task.yaml", "conditions.yaml"} <= planned
    assert not any("jwt-claims" in s or "ext-authz-task" in s for s in built.skipped)
    costs = {s.name: s for s in built.modes[0].scenarios}
    jwt, custom = costs["jwt-claims"], costs["ext-authz-task"]
    assert jwt.start == plan.COSTS.scenario  # no provider: no mesh config wait
    assert custom.start == (plan.COSTS.scenario[0] + plan.COSTS.mesh_config[0],
                            plan.COSTS.scenario[1] + plan.COSTS.mesh_config[1])
