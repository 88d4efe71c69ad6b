"""Mode mixed as a user meets it: `spec.dataplanes` validation (errors naming file and field) and
`compare --dataplanes` (what a migration changes, exit 1 when anything does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from conformance.scenario import check

ROOT = Path(__file__).resolve().parents[1]
MIGRATION = ROOT / "policies" / "mixed-migration.yaml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def scenario(tmp_path: Path, **spec: Any) -> Path:
    doc = {"apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "m"}, "spec": {
        "modes": ["mixed"],
        "workloads": [{"name": "api", "namespace": "shop", "ports": [8080]}, {"name": "curl", "namespace": "legacy"},
                      {"name": "out", "namespace": "outside", "mesh": False}],
        "steps": [{"name": "s", "policies": [], "expect": [{"from": "legacy/curl", "to": "shop/api:8080",
                                                              "verdict": {"mixed": "allow"}}]}],
        **spec}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def messages(path: Path) -> list[str]:
    _, problems = check(path)
    return [str(p) for p in problems]


def test_dataplanes_load_and_default_to_sidecar(tmp_path: Path) -> None:
    s, problems = check(scenario(tmp_path, dataplanes={"shop": "waypoint"}))
    assert s is not None and not problems
    assert (s.dataplane("shop"), s.dataplane("legacy")) == ("waypoint", "sidecar")
    assert s.steps[0].expectations[0].verdict("mixed") == "allow"


def test_dataplanes_outside_mode_mixed_are_refused(tmp_path: Path) -> None:
    out = messages(scenario(tmp_path, modes=["sidecar"], dataplanes={"shop": "ambient"}))
    assert any("field spec.dataplanes: dataplanes only applies to mode mixed" in m and "m.yaml" in m for m in out)


def test_a_namespace_without_workload_or_out_of_mesh_is_an_error(tmp_path: Path) -> None:
    out = messages(scenario(tmp_path, dataplanes={"shopp": "ambient", "outside": "ambient"}))
    assert any("field spec.dataplanes.shopp: namespace 'shopp' has no workload" in m for m in out)
    assert any("field spec.dataplanes.outside: namespace 'outside' holds out-of-mesh workloads only" in m
               for m in out)


def test_a_bad_plane_and_a_waypoint_plane_without_waypoint(tmp_path: Path) -> None:
    out = messages(scenario(tmp_path, dataplanes={"shop": "sidecars"}))
    assert any("spec.dataplanes.shop" in m and "sidecar, ambient, waypoint" in m for m in out)
    out = messages(scenario(tmp_path, dataplanes={"shop": "waypoint"}, waypoints=[]))
    assert any("spec.dataplanes.shop: namespace 'shop' has the waypoint data plane but spec.waypoints names no "
               "waypoint there" in m for m in out)


def test_compare_dataplanes_prints_each_change_and_exits_1() -> None:
    r = cli("compare", str(MIGRATION), "--dataplanes", "legacy=ambient")
    assert r.returncode == 1, r.stderr
    assert "legacy sidecar → ambient" in r.stdout
    # l7-policy: the sidecar's L7 ALLOW becomes ztunnel's, whose L7 rules are dropped
    block = r.stdout.split("step 'l7-policy' expect[0] shop/curl → legacy/orders:8080 GET /allowed:")[1]
    lines = block.splitlines()[1:4]
    assert lines[0].strip() == "before allow (allowed) at sidecar:legacy/orders by legacy/policy"
    assert lines[1].strip() == "after  deny (denied-l4) at ztunnel:legacy/orders (allow-unmatched)"
    assert lines[2].strip().startswith("why: ALLOW legacy/policy with L7 rules (methods, paths) dropped by ztunnel")


def test_compare_dataplanes_json_and_no_change_exits_0() -> None:
    r = cli("compare", str(MIGRATION), "--dataplanes", "pay=sidecar", "--json")
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    bypass = next(x for x in rows if x["step"] == "waypoint-deny-all" and x["from"] == "shop/curl")
    assert bypass["before"]["enforcer"] == "waypoint:pay/waypoint" and bypass["before"]["verdict"] == "deny"
    assert bypass["after"]["enforcer"] == "sidecar:pay/billing" and bypass["after"]["verdict"] == "allow"
    assert bypass["moved"] == {"pay": {"from": "waypoint", "to": "sidecar"}}
    assert bypass["before"]["crossing"] == "ambient->waypoint" and bypass["after"]["crossing"] == "ambient->sidecar"
    same = cli("compare", str(MIGRATION), "--dataplanes", "legacy=sidecar")  # where it already is
    assert same.returncode == 0 and "compare: 0 probe(s) change" in same.stdout


def test_compare_dataplanes_moving_to_a_waypoint_gets_the_default_waypoint() -> None:
    r = cli("compare", str(MIGRATION), "--dataplanes", "shop=waypoint", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert any("waypoint shop/waypoint" in x["after"]["path"] for x in rows)


def test_compare_usage_errors() -> None:
    r = cli("compare", str(MIGRATION), "--dataplanes", "legacy")
    assert r.returncode == 1 and "NAMESPACE=PLANE" in r.stderr
    r = cli("compare", str(MIGRATION), "--dataplanes", "nowhere=ambient")
    assert r.returncode == 1 and "namespace 'nowhere' has no in-mesh workload" in r.stderr
    r = cli("compare", str(MIGRATION), "--dataplanes", "legacy=ambient", "--from", "1.29", "--to", "1.30")
    assert r.returncode == 1 and "not both" in r.stderr
    r = cli("compare", str(MIGRATION))
    assert r.returncode == 1 and "--dataplanes" in r.stderr
