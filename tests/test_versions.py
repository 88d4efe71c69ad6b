"""The Istio releases the engine models, and the refusal of every other one (issue 9: every pass is earned).

A release outside MODELLED_VERSIONS must never be predicted "as if" it were the nearest one: each command
and option refuses it with a usage error that lists what is modelled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.errors import UsageError
from conformance.versions import MODELLED_VERSIONS, PINNED_PATCH, IstioVersion, is_modelled

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
UNMODELLED = ["9.99", "2.0", "1.30.9", "1.31", "1.21", "1.29.7", "1.99"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_modelled_versions_are_every_patch_up_to_the_pinned_one() -> None:
    assert {(major, minor) for major, minor, _ in MODELLED_VERSIONS} == {(1, m) for m in range(22, 31)}
    for (major, minor), pinned in PINNED_PATCH.items():
        patches = sorted(p for ma, mi, p in MODELLED_VERSIONS if (ma, mi) == (major, minor))
        assert patches == list(range(pinned + 1))
    assert (1, 30, 3) in MODELLED_VERSIONS and (1, 30, 4) not in MODELLED_VERSIONS


@pytest.mark.parametrize(("text", "resolved"), [
    ("1.30", "1.30.3"), ("1.30.3", "1.30.3"), ("v1.30.0", "1.30.0"), ("1.22", "1.22.8"), ("1.25.2", "1.25.2"),
    (None, "1.30.3"),
])
def test_modelled_versions_parse_and_a_minor_resolves_to_its_pinned_patch(text: str | None, resolved: str) -> None:
    assert str(IstioVersion.parse(text)) == resolved
    assert text is None or is_modelled(text)


@pytest.mark.parametrize("text", UNMODELLED)
def test_unmodelled_versions_are_refused_with_the_modelled_list(text: str) -> None:
    assert not is_modelled(text)
    with pytest.raises(UsageError) as exc:
        IstioVersion.parse(text)
    assert "1.22.0-1.22.8" in str(exc.value) and "1.30.0-1.30.3" in str(exc.value)


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
    ("explain", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--istio-version", "1.31"),
    ("repro", str(DATA / "good.yaml"), "--step", "baseline", "--probe", "0", "--mode", "sidecar",
     "--istio-version", "9.99"),
    ("compare", str(DATA / "good.yaml"), "--from", "1.29", "--to", "1.99"),
    ("compare", str(DATA / "good.yaml"), "--from", "1.21", "--to", "1.30"),
])
def test_every_command_refuses_an_unmodelled_version(args: tuple[str, ...]) -> None:
    r = cli(*args)
    assert r.returncode != 0, r.stdout
    assert "not modelled" in r.stderr or "older than" in r.stderr or "newer than" in r.stderr
    assert "1.30.0-1.30.3" in r.stderr
    assert "Traceback" not in r.stderr
    assert "probe(s) change" not in r.stdout


def test_pytest_option_refuses_an_unmodelled_version(pytester: pytest.Pytester) -> None:
    for text in ("9.99", "1.30.9"):
        result = pytester.runpytest_subprocess("--istio-version", text)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        err = result.stderr.str()
        assert "--istio-version" in err and "1.30.0-1.30.3" in err
        assert "Traceback" not in err + result.stdout.str()


def test_pytest_option_accepts_a_modelled_version(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--istio-version", "1.29", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
