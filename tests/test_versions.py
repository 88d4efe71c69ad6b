"""The Istio releases the engine models, the refusal of every other one (issue 9: every pass is earned), the
one table of behaviour changes (`authz-conformance versions`, docs/istio-versions.md), and 1.31 against 1.30
on held-out scenarios (issue 16).

A release outside MODELLED_VERSIONS must never be predicted "as if" it were the nearest one: each command
and option refuses it with a usage error that lists what is modelled.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import versions
from conformance.engine.decide import Decision
from conformance.errors import UsageError
from conformance.scenario import check, load
from conformance.truthtable import predict
from conformance.versions import MODELLED_VERSIONS, PINNED_PATCH, IstioVersion, is_modelled

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
UNMODELLED = ["9.99", "2.0", "1.30.9", "1.30.6", "1.31.1", "1.32", "1.21", "1.29.7", "1.99"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_modelled_versions_are_every_patch_up_to_the_newest_one() -> None:
    assert {(major, minor) for major, minor, _ in MODELLED_VERSIONS} == {(1, m) for m in range(22, 32)}
    for (major, minor), pinned in PINNED_PATCH.items():
        patches = sorted(p for ma, mi, p in MODELLED_VERSIONS if (ma, mi) == (major, minor))
        assert patches == list(range(pinned + 1))
    # the newest patches istio.io lists whose changes are known (docs/istio-versions.md); 1.31.1 is not
    assert {(1, 30, 4), (1, 30, 5), (1, 31, 0)} <= set(MODELLED_VERSIONS)
    assert (1, 30, 6) not in MODELLED_VERSIONS and (1, 31, 1) not in MODELLED_VERSIONS


@pytest.mark.parametrize(("text", "resolved"), [
    ("1.30", "1.30.5"), ("1.30.3", "1.30.3"), ("v1.30.0", "1.30.0"), ("1.22", "1.22.8"), ("1.25.2", "1.25.2"),
    (None, "1.30.5"), ("1.31", "1.31.0"),
])
def test_modelled_versions_parse_and_a_minor_resolves_to_its_pinned_patch(text: str | None, resolved: str) -> None:
    assert str(IstioVersion.parse(text)) == resolved
    assert text is None or is_modelled(text)


@pytest.mark.parametrize("text", UNMODELLED)
def test_unmodelled_versions_are_refused_with_the_modelled_list(text: str) -> None:
    assert not is_modelled(text)
    with pytest.raises(UsageError) as exc:
        IstioVersion.parse(text)
    assert "1.22.0-1.22.8" in str(exc.value) and "1.30.0-1.30.5, 1.31.0" in str(exc.value)


def test_malformed_versions_are_refused() -> None:
    for text in ("x", "1", "1.30.3.1", "latest"):
        assert not is_modelled(text)
        with pytest.raises(UsageError):
            IstioVersion.parse(text)


@pytest.mark.parametrize("args", [
    ("validate", str(DATA / "good.yaml"), "--istio-version", "9.99"),
    ("predict", str(DATA / "good.yaml"), "--istio-version", "9.99"),
    ("predict", str(DATA / "good.yaml"), "--istio-version", "2.0"),
    ("lint", str(DATA / "good.yaml"), "--istio-version", "1.30.9"),
    ("explain", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--istio-version", "1.31.1"),
    ("repro", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--mode", "sidecar",
     "--istio-version", "9.99"),
    ("compare", str(DATA / "good.yaml"), "--from", "1.29", "--to", "1.99"),
    ("compare", str(DATA / "good.yaml"), "--from", "1.21", "--to", "1.30"),
])
def test_every_command_refuses_an_unmodelled_version(args: tuple[str, ...]) -> None:
    r = cli(*args)
    assert r.returncode != 0, r.stdout
    assert "not modelled" in r.stderr or "older than" in r.stderr or "newer than" in r.stderr
    assert "1.30.0-1.30.5" in r.stderr
    assert "Traceback" not in r.stderr
    assert "probe(s) change" not in r.stdout


def test_pytest_option_refuses_an_unmodelled_version(pytester: pytest.Pytester) -> None:
    for text in ("9.99", "1.30.9"):
        result = pytester.runpytest_subprocess("--istio-version", text)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        err = result.stderr.str()
        assert "--istio-version" in err and "1.30.0-1.30.5" in err
        assert "Traceback" not in err + result.stdout.str()


def test_pytest_option_accepts_a_modelled_version(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--istio-version", "1.29", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


# --- the one table of behaviour changes ---------------------------------------------------------------

DOC = ROOT / "docs" / "istio-versions.md"
_ROW = re.compile(r"^\| (\d+\.\d+\.\d+) \| (.+) \| (.+) \|$")


def test_every_version_check_reads_the_change_table() -> None:
    """No module but versions.py compares release numbers: each boundary is a CHANGES entry, written once."""
    comparison = re.compile(r"at_least\(|fixed_in\(|carries\(|\(1, \d{2}(, \d+)?\)|\.minor *[<>=]|\.patch *[<>=]")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sorted((ROOT / "conformance").rglob("*.py")) if path.name != "versions.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]
    assert not found, found


def test_a_change_is_carried_from_its_first_patch_per_minor() -> None:
    change = versions.Change("x", "src", ((1, 28, 7), (1, 29, 3), (1, 30, 0)))
    assert not change.carried_by((1, 27, 99)) and change.carried_by((1, 31, 0))
    assert not change.carried_by((1, 29, 2)) and change.carried_by((1, 29, 3))
    # a fix released in older minors after the newer one: not in any modelled 1.31 patch
    dots = versions.DOT_SEGMENT_PARAMETERS
    assert [IstioVersion.parse(v).has(dots) for v in ("1.29.6", "1.30.3", "1.30.4", "1.30.5", "1.31.0")] == [
        False, False, True, True, False]


def test_versions_lists_1_31_and_the_newest_1_30_patch_with_their_changes() -> None:
    r = cli("versions")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "1.30.0-1.30.5" in lines and "1.31.0" in lines and "default 1.30 = 1.30.5" in lines[0]
    assert any(line.startswith("  1.30.4: ") and "CVE-2026-73551" in line for line in lines)
    assert any(line.startswith("  1.31.0: not in 1.31.x") and "CVE-2026-73551" in line for line in lines)
    assert any(line.startswith("  1.25.2: ") and "#55414" in line for line in lines)
    assert any(line.startswith("Not modelled: 1.31.1: ") for line in lines)
    # one line per change, each with its source
    change_lines = [line for line in lines if line.startswith("  ")]
    assert len(change_lines) == len(versions.table()) and all(line.endswith("]") for line in change_lines)


def test_the_doc_holds_the_same_table_as_the_command() -> None:
    """docs/istio-versions.md and `authz-conformance versions`: the same releases, rows and refusals."""
    text = DOC.read_text()
    out = cli("versions").stdout.splitlines()
    doc_rows = [f"  {m.group(1)}: {m.group(2)} [{m.group(3)}]" for line in text.splitlines()
                if (m := _ROW.match(line))]
    assert doc_rows == [line for line in out if line.startswith("  ")]
    assert f"Modelled: {', '.join(versions.modelled_ranges())}" in text.splitlines()
    assert [line for line in out if re.match(r"^\d", line)] == versions.modelled_ranges()
    assert [line for line in text.splitlines() if line.startswith("Not modelled: ")] == [
        line for line in out if line.startswith("Not modelled: ")]
    assert f"Default: {versions.DEFAULT_VERSION} ({IstioVersion.parse(None)})." in text


# --- held-out scenarios: 1.31 against 1.30 --------------------------------------------------------------

# Scenarios whose verdicts are transcribed from Istio's own tests and docs (policies/) or pinned on the real
# local mesh (tests/data/regressions/ without a release suffix), never taken from the engine.
HELD_OUT = sorted((ROOT / "policies").glob("*.yaml")) + sorted(
    p for p in (DATA / "regressions").glob("*.yaml") if "@" not in p.stem)


def _decisions(paths: list[Path], version: IstioVersion) -> dict[tuple[str, str, str, int], Decision]:
    """Every probe's decision (verdict, denial form, enforcing proxy, policy) per step and mode."""
    out = {}
    for path in paths:
        scenario = load(path, version)
        for step in scenario.steps:
            for mode in scenario.modes:
                for i, row in enumerate(predict(scenario, step, mode, version)):
                    out[(path.name, step.name, mode, i)] = row.predicted
    return out


def test_held_out_verdicts_at_1_31_equal_those_at_1_30() -> None:
    old, new = IstioVersion.parse("1.30"), IstioVersion.parse("1.31")
    assert (str(old), str(new)) == ("1.30.5", "1.31.0")
    assert len(HELD_OUT) > 20
    for path in HELD_OUT:  # the same documents are valid at both releases
        assert [str(p) for p in check(path, old)[1]] == [str(p) for p in check(path, new)[1]], path
    before, after = _decisions(HELD_OUT, old), _decisions(HELD_OUT, new)
    assert before.keys() == after.keys() and len(before) > 100
    assert [k for k in before if before[k] != after[k]] == []


def test_held_out_compare_from_1_30_to_1_31_reports_no_change() -> None:
    r = cli("compare", *map(str, HELD_OUT), "--from", "1.30", "--to", "1.31")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "compare: 0 probe(s) change between Istio 1.30.5 and 1.31.0"


def test_compare_does_report_a_change_where_one_exists() -> None:
    """The checks above could fail: the same comparison finds the dry-run change of 1.25.2 in the held-out
    scenarios, and the CVE-2026-73551 change between 1.30.5 and 1.31.0 in its regression scenario."""
    old, new = IstioVersion.parse("1.25.1"), IstioVersion.parse("1.25.2")
    # only scenarios Istio 1.25 accepts (jwt-claims.yaml uses spaceDelimitedClaims, a 1.28 field)
    held_out = [p for p in HELD_OUT if not any(check(p, v)[1] for v in (old, new))]
    assert len(held_out) < len(HELD_OUT) and len(held_out) > 20
    before, after = _decisions(held_out, old), _decisions(held_out, new)
    assert [k for k in before if before[k] != after[k]]
    r = cli("compare", *map(str, held_out), "--from", "1.25.1", "--to", "1.25.2")
    assert r.returncode == 1 and "compare: 0 probe(s)" not in r.stdout  # changes: non-zero, for CI gates
    dots = DATA / "regressions" / "dot-segment-parameters@1.30.3.yaml"
    r = cli("compare", str(dots), "--from", "1.30", "--to", "1.31")
    assert r.returncode == 1, r.stderr
    assert r.stdout.count("1.30.5 deny (denied-l7) → 1.31.0 allow (allowed)") == 4
    assert "CVE-2026-73551" in r.stdout and r.stdout.splitlines()[-1].startswith("compare: 4 probe(s) change")
    as_json = [json.loads(line) for line in cli("compare", str(dots), "--from", "1.30", "--to", "1.31",
                                                   "--json").stdout.splitlines()]
    assert len(as_json) == 4
    assert {(c["before"]["verdict"], c["after"]["verdict"]) for c in as_json} == {("deny", "allow")}
    assert all(c["kind"] == "changed" and any("CVE-2026-73551" in w for w in c["why"]) for c in as_json)


# --- the local mesh at 1.31 ------------------------------------------------------------------------------


def test_the_local_mesh_runs_scenarios_at_istio_1_31(pytester: pytest.Pytester) -> None:
    """`pytest --istio-version 1.31` runs on the local mesh (real Envoy) with 1.30's behaviour: every step
    of good.yaml in both its modes passes, and the run says which release it emulated."""
    import shutil

    shutil.copy(DATA / "good.yaml", pytester.path / "good.yaml")
    shutil.copytree(DATA / "manifests", pytester.path / "manifests")
    result = pytester.runpytest_subprocess("good.yaml", "--istio-version", "1.31", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert "Istio 1.31.0" in result.stdout.str()


@pytest.mark.parametrize("mode", ["sidecar", "waypoint"])
def test_the_local_mesh_at_1_31_0_lacks_the_envoy_path_fix(mode: str) -> None:
    """1.31.0's Envoy predates the CVE-2026-73551 fix that 1.30.4 has: the local mesh emulates it with the
    fix's runtime guard off, and the real Envoys then give the verdicts the 1.30.3 regression file states
    (which the engine predicts at 1.31.0 too)."""
    from conformance.mesh.local.mesh import LocalTarget
    from conformance.runner import run_step

    version = IstioVersion.parse("1.31")
    scenario = load(DATA / "regressions" / "dot-segment-parameters@1.30.3.yaml", version)
    target = LocalTarget(version=version)
    if reason := target.unavailable(mode):  # type: ignore[arg-type]
        pytest.skip(reason)
    with target.start(scenario, mode) as session:  # type: ignore[arg-type]
        for step in scenario.steps:
            assert not list(predict(scenario, step, mode, version).contradictions())  # type: ignore[arg-type]
            result = run_step(session, scenario, step, version, required=2, deadline=10.0)
            assert not list(result.failing()), step.name
