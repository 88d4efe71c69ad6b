"""The HTML report as a reader opens it: rendered from real results, checked in headless Chromium.

A small run (good.yaml in two modes and the seed's false claim, on the real local mesh) writes Allure
results; `tools/render-report` renders them with the pinned Allure 3 (npm, tools/report); then
`tools/report/check-report.mjs` serves the report on 127.0.0.1, opens it in Debian's Chromium through
playwright-core and reports what it found: every scenario in the tree, the probe steps and the
truth-table attachment (one row per probe, the differing cell highlighted) of the tests it opened, the
failure's category in both UIs. It also saves a screenshot. The check script stops its browser and
server itself; a timeout here kills it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing() -> list[str]:
    """What this machine lacks to render the report and open it, each naming the package that brings it."""
    missing: list[str] = []
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing.append("Node.js 20 or newer with npm (they render and check the HTML report)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (the Debian package chromium: apt-get install chromium, which "
                       ".ci/run does; or set CHROMIUM)")
    if importlib.util.find_spec("allure_pytest") is None:
        missing.append("the Python package allure-pytest (pip install -e '.[test]' brings it)")
    return missing


MISSING = _missing()
pytestmark = pytest.mark.skipif(bool(MISSING), reason="cannot render and open the HTML report here, missing: "
                                + "; ".join(MISSING))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("html-report")
    for name in ("good.yaml", "wrong-claim.yaml"):
        shutil.copy(DATA / name, work / name)
    shutil.copytree(DATA / "manifests", work / "manifests")
    run = subprocess.run([sys.executable, "-m", "pytest", "good.yaml", "wrong-claim.yaml", "-p", "no:cacheprovider",
                          "--converge-deadline", "1", "--alluredir", "results"],
                         cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 1, run.stdout + run.stderr  # the false claim fails, the rest passes
    env = dict(os.environ, AUTHZ_ALLURE_HISTORY=str(work / "history.jsonl"))
    render = subprocess.run([str(ROOT / "tools" / "render-report"), str(work / "results"), str(work / "html")],
                            capture_output=True, text=True, timeout=600, check=False, env=env)
    assert render.returncode == 0, render.stdout + render.stderr
    shot = work / "report.png"
    check = subprocess.run(["node", str(ROOT / "tools" / "report" / "check-report.mjs"), "--report", str(work / "html"),
                            "--results", str(work / "results"), "--screenshot", str(shot)],
                           capture_output=True, text=True, timeout=300, check=False, env=env)
    found = json.loads(check.stdout) if check.stdout.strip().startswith("{") else {}
    return {"work": work, "render": render.stdout, "rc": check.returncode, "found": found, "stderr": check.stderr,
            "screenshot": shot}


def test_check_finds_no_problem(report: dict[str, Any]) -> None:
    assert report["found"], report["stderr"]
    assert report["found"]["problems"] == [] and report["rc"] == 0, report["found"]["problems"]


def test_every_scenario_is_in_the_tree(report: dict[str, Any]) -> None:
    assert report["found"]["scenarios"] == {"expected": 2, "found": ["good", "wrong-claim"]}


def test_the_wrong_claim_page_shows_its_step_truth_table_and_category(report: dict[str, Any]) -> None:
    opened = {o["name"]: o for o in report["found"]["opened"]}
    wrong = opened["wrong-claim · deny-plus-allow [sidecar]"]
    assert wrong["status"] == "failed" and wrong["category"] == "policy verdict mismatch"
    assert wrong["steps"] == 1
    assert wrong["truthTable"] == {"rows": 1, "differing": 1}
    assert wrong["attachments"] == ["policies in force", "truth table: expected vs observed",
                                    "engine explanation: expect[0] default/frontend → default/backend:80 GET "
                                    "/api/v1/data", "convergence record", "scenario ≠ engine"]
    passing = [o for name, o in opened.items() if name.startswith("good · ")]
    assert passing and all(o["truthTable"]["differing"] == 0 and o["category"] is None for o in passing)
    assert report["found"]["classicCategories"] == {"policy verdict mismatch": 1}


def test_a_screenshot_is_saved(report: dict[str, Any]) -> None:
    shot: Path = report["screenshot"]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, len(data)  # a rendered page, not a blank one
    print(f"screenshot: {shot}")


def test_the_check_fails_on_a_report_missing_a_scenario(report: dict[str, Any], tmp_path: Path) -> None:
    """The check can fail: a result the report never saw (a scenario added after rendering) is a problem."""
    results = tmp_path / "results"
    shutil.copytree(report["work"] / "results", results)
    one = json.loads(next(results.glob("*-result.json")).read_text())
    one["name"] = "ghost · step [sidecar]"
    one["uuid"] = "00000000-0000-0000-0000-000000000000"
    one["labels"] = [lb for lb in one["labels"] if lb["name"] != "parentSuite"] + [
        {"name": "parentSuite", "value": "ghost"}]
    (results / "00000000-0000-0000-0000-000000000000-result.json").write_text(json.dumps(one))
    check = subprocess.run(["node", str(ROOT / "tools" / "report" / "check-report.mjs"), "--report",
                            str(report["work"] / "html"), "--results", str(results)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert check.returncode == 1
    problems = json.loads(check.stdout)["problems"]
    assert "scenario ghost: not in the report's tree" in problems
    assert "ghost · step [sidecar]: not in the report" in problems
