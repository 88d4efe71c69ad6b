"""Skip logic: when Docker, kind, istioctl, pytest-kind or the kubernetes client is missing, the cluster
targets say so in ONE reason naming everything missing, every item skips with it, the summary says no
cluster test ran, and --require-target turns that into a failure. Tools are hidden by controlling PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.mesh.cluster import availability
from conformance.mesh.cluster.existing import ExistingClusterTarget
from conformance.mesh.cluster.kind import KindTarget
from conformance.mesh.cluster.options import ClusterSettings

ROOT = Path(__file__).resolve().parents[2]


def tool(bindir: Path, name: str, script: str = "exit 0") -> Path:
    path = bindir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def needs(module: str, package: str) -> None:
    """Skip unless the cluster extra's package is installed (the README's `pip install -e '.[test]'` brings it)."""
    pytest.importorskip(module, reason=f"the Python package {package} is not installed: "
                        "pip install -e '.[test]' (or '.[test,report,cluster]') brings it")


def settings(**kw: object) -> ClusterSettings:
    return ClusterSettings(istio_version="1.30", pytest_kind_options=True, **kw)  # type: ignore[arg-type]


def test_nothing_on_path_names_everything_missing(tmp_path):
    target = KindTarget(settings(), env={"PATH": str(tmp_path)})
    reason = target.unavailable("ambient")
    assert reason is not None and reason.startswith("cannot run here, missing: ")
    assert "Docker (no docker on PATH" in reason
    assert "kind (not on PATH" in reason
    assert "istioctl (neither istioctl-1.30.5 nor istioctl on PATH" in reason  # 1.30: the newest modelled patch
    assert target.unavailable("sidecar") == reason.replace("ambient", "sidecar")


def test_docker_client_without_engine(tmp_path):
    tool(tmp_path, "docker", 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1')
    tool(tmp_path, "kind")
    tool(tmp_path, "istioctl")
    reason = KindTarget(settings(), env={"PATH": str(tmp_path)}).unavailable("sidecar")
    # Only the engine is missing, besides the cluster extra's Python packages when they are not installed
    # (`pip install -e '.[test]'` brings them; a narrower install may not): kind and istioctl are there.
    packages = [m for m in (availability.module_missing("pytest_kind", "pytest-kind"),
                            availability.module_missing("kubernetes", "kubernetes")) if m is not None]
    engine = availability.Missing("a running Docker engine", "docker info failed: Cannot connect to the Docker "
                                  "daemon at unix:///var/run/docker.sock.")
    assert reason == availability.reason("kind", [*packages, engine])


def test_everything_present(tmp_path):
    needs("pytest_kind", "pytest-kind")
    needs("kubernetes", "kubernetes")
    tool(tmp_path, "docker", "echo 27.0.0")
    tool(tmp_path, "kind")
    tool(tmp_path, "istioctl-1.30.5")
    target = KindTarget(settings(), env={"PATH": str(tmp_path)})
    assert target.unavailable("waypoint") is None
    assert target._istioctl == str(tmp_path / "istioctl-1.30.5")  # the release-named one first


def test_explicit_binaries_must_exist(tmp_path):
    tool(tmp_path, "docker", "echo 27.0.0")
    reason = KindTarget(settings(kind_bin=str(tmp_path / "nope"), istioctl=str(tmp_path / "nope2")),
                        env={"PATH": str(tmp_path)}).unavailable("sidecar")
    assert f"--kind-bin {tmp_path / 'nope'} is not an executable file" in reason
    assert f"--istioctl {tmp_path / 'nope2'} is not an executable file" in reason


def test_a_release_outside_the_matrix(tmp_path):
    tool(tmp_path, "docker", "echo 27.0.0")
    tool(tmp_path, "kind")
    tool(tmp_path, "istioctl")
    reason = KindTarget(ClusterSettings(istio_version="1.27", pytest_kind_options=True),
                        env={"PATH": str(tmp_path)}).unavailable("sidecar")
    assert reason is not None and "Istio 1.27.9 is not in the tested matrix" in reason


def test_missing_python_packages_are_named(monkeypatch):
    real = availability.importlib.util.find_spec
    monkeypatch.setattr(availability.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pytest_kind", "kubernetes") else real(name, *a))
    missing, _, _ = availability.kind_requirements(None, None, "1.30.3", env={"PATH": ""})
    text = "; ".join(map(str, missing))
    assert "the Python package pytest-kind (pip install 'istio-authz-conformance[cluster]')" in text
    assert "the Python package kubernetes" in text


def test_existing_cluster_needs_a_context(tmp_path):
    tool(tmp_path, "istioctl")
    reason = ExistingClusterTarget(settings(), env={"PATH": str(tmp_path)}).unavailable("sidecar")
    assert reason is not None and "--kube-context (name the kubeconfig context" in reason


PLUGIN_RUN_ARGS = ["-p", "no:cacheprovider", "-q"]


def scenario_dir(pytester: pytest.Pytester) -> Path:
    (pytester.path / "s.yaml").write_text((ROOT / "tests" / "data" / "good.yaml").read_text())
    (pytester.path / "manifests").mkdir()
    (pytester.path / "manifests" / "allow-finance.yaml").write_text(
        (ROOT / "tests" / "data" / "manifests" / "allow-finance.yaml").read_text())
    return pytester.path


@pytest.fixture
def empty_path(monkeypatch, tmp_path):
    bindir = tmp_path / "emptybin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def test_plugin_skips_every_item_with_one_reason(pytester, empty_path):
    scenario_dir(pytester)
    result = pytester.runpytest("--mesh", "kind", *PLUGIN_RUN_ARGS)
    result.assert_outcomes(skipped=6)
    out = result.stdout.str()
    assert "kind target, sidecar mode: cannot run here, missing:" in out
    assert "Nothing ran on the kind target: no conformance result was produced." in out
    assert " passed" not in out


def test_plugin_fails_with_require_target(pytester, empty_path):
    scenario_dir(pytester)
    result = pytester.runpytest("--mesh", "kind", "--require-target", *PLUGIN_RUN_ARGS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "Nothing ran on the kind target" in result.stdout.str()


def test_plugin_existing_cluster_without_context(pytester, empty_path):
    scenario_dir(pytester)
    result = pytester.runpytest("--mesh", "cluster", *PLUGIN_RUN_ARGS)
    result.assert_outcomes(skipped=6)
    assert "--kube-context" in result.stdout.str()


def test_pytest_kind_options_are_not_registered_twice(pytester):
    needs("pytest_kind", "pytest-kind")
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert result.ret == 0
    assert out.count("--kind-bin") == 1 and "--istioctl" in out and "--allow-mesh-wide" in out
