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
    namespaces = len({w.namespace for w in s.workloads})  # istioctl analyze runs once per namespace per step
    analyze_high = 2 * (namespaces - 1) * c.analyze_namespace[1]
    assert cost.high == pytest.approx(c.scenario[1] + 2 * c.step[1] + extra_high + analyze_high)
    assert cost.low < cost.high
    wp = POLICIES / "waypoint-l7-policy.yaml"
    in_waypoint = plan.scenario_cost(load(wp, V), str(wp), "waypoint")
    in_ambient = plan.scenario_cost(load(wp, V), str(wp), "ambient")
    assert in_waypoint.waypoints == 1 and in_waypoint.high == in_ambient.high + c.waypoint[1]


def test_root_namespace_policies_make_a_scenario_run_alone():
    mesh_wide = {Path(c.path).name for c in (plan.scenario_cost(load(p, V), str(p), "sidecar")
                                             for p in sorted(POLICIES.glob("*.yaml"))) if c.mesh_wide}
    assert {"namespace-deny.yaml", "peer-authentication-strict.yaml", "principal-deny.yaml"} <= mesh_wide
    assert "namespace-allow.yaml" not in mesh_wide
    costs = [plan.ScenarioCost(f"{n}.yaml", n, "sidecar", 1, 1, 0, n.startswith("m"), 10, 20) for n in "abmn"]
    batches = plan.Shard(1, 1, tuple(costs)).batches()
    assert [[c.name for c in b] for b in batches] == [["a", "b", "n"], ["m"]]


def test_shard_is_deterministic_and_fits_the_budget():
    costs = [plan.ScenarioCost(f"s{i}.yaml", f"s{i}", "ambient", 1, 1, 0, False, 10, h)
             for i, h in enumerate([100, 90, 80, 70, 60, 50, 40])]
    bins = plan.shard(costs, 150)
    assert all(sum(c.high for c in b) <= 150 for b in bins)
    assert sorted(c.path for b in bins for c in b) == sorted(c.path for c in costs)
    assert bins == plan.shard(list(reversed(costs)), 150)
    assert len(bins) == 4  # 490 s in all: 4 bins of <= 150
    alone = plan.shard([plan.ScenarioCost("big.yaml", "big", "ambient", 1, 1, 0, False, 10, 999)], 150)
    assert len(alone) == 1 and alone[0][0].path == "big.yaml"
    assert plan.shard([], 150) == []


def test_the_suite_is_sharded_within_ten_minutes_per_job():
    built = plan.build([POLICIES], "kind", None, "1.30.3")
    assert [m.mode for m in built.modes] == ["sidecar", "ambient", "waypoint"]
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
    assert "shard 1/" in out and "alone (mesh-wide policy)" in out and "timeout" in out
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
