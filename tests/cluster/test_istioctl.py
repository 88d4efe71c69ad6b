"""istioctl analyze with `-o json`: its findings are in the JSON, never in its exit code."""

from __future__ import annotations

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster import istioctl
from conformance.mesh.cluster.istioctl import Kubeconfig


def test_analyze_json_succeeds_only_with_exit_0():
    """istio/istio istioctl/pkg/analyze/analyze.go (1.29.6, 1.30.3): the failure threshold's error, which
    istioctl maps to exit 79 (cmd/sysexits.go), is returned only for the `log` output format."""
    argv = istioctl.analyze_argv("istioctl", Kubeconfig("/k", "c"), "ns")
    assert argv[-2:] == ["-o", "json"]
    assert istioctl.ANALYZE_OK == (0,)
    assert istioctl.ANALYZE_FOUND_ISSUES not in istioctl.ANALYZE_OK


def test_findings_come_from_the_json():
    out = '[{"code": "IST0101", "level": "Error", "message": "Referenced selector not found", "origin": "x"}]'
    [m] = istioctl.parse_analyze(out)
    assert (m.code, m.level) == ("IST0101", "Error") and "IST0101" in str(m)
    assert istioctl.parse_analyze("  ") == []
    with pytest.raises(TargetError, match="not JSON"):
        istioctl.parse_analyze("Error [IST0101] ...")


def test_a_non_zero_exit_is_a_failure_of_analyze_itself():
    with pytest.raises(TargetError, match="exited 79"):
        istioctl.run(["sh", "-c", "echo '[]'; exit 79"], timeout=10, ok=istioctl.ANALYZE_OK)
    assert istioctl.run(["sh", "-c", "echo '[]'"], timeout=10, ok=istioctl.ANALYZE_OK).stdout.strip() == "[]"


def _keys(value: object) -> set[str]:
    """Every mapping key nested in a YAML document."""
    if isinstance(value, dict):
        return {str(k) for k in value} | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_the_suites_istio_installs_set_no_default_gateway_topology():
    """Gap: a mesh default `defaultConfig.gatewayTopology` would be every gateway's unless its pod annotation replaces
    it (meshconfig.effective_trusted_proxies). render.py's annotation does, but on kind nothing should depend on it:
    neither the overlays and Helm values of clusters/istio, nor the install command lines (istioctl install with
    istiod's feature flags, the Helm install and upgrade of the ambient upgrade job), nor the modes' profiles set one
    (istio/istio manifests/ has no `gatewayTopology` on release-1.29, -1.30 or -1.31: `git grep -i gatewayTopology
    <branch> -- manifests/` finds nothing)."""
    from pathlib import Path

    import yaml

    from conformance.mesh.cluster import upgrade
    from conformance.mesh.cluster.matrix import CLUSTERS_DIR, load

    overlays = sorted((CLUSTERS_DIR / "istio").glob("*.yaml"))
    assert {p.name for p in overlays} >= {"sidecar.yaml", "ambient.yaml", "ambient-helm.yaml"}
    for path in overlays:
        for doc in yaml.safe_load_all(path.read_text()):
            keys = {k.lower() for k in _keys(doc)}
            assert "gatewaytopology" not in keys and "numtrustedproxies" not in keys, path
    matrix = load()
    kube = Kubeconfig("/k", "ctx")
    argvs = [istioctl.install_argv("istioctl", kube, m.profile, m.overlay, pilot_env=(("PILOT_X", "true"),))
             for m in matrix.modes.values()]
    argvs += upgrade.helm_install_ambient_commands("helm", kube, Path("/charts"))
    argvs += list(upgrade.ambient_upgrade_commands("helm", kube, Path("/charts"), "1-30-5").values())
    for argv in argvs:
        assert not [a for a in argv if "gatewaytopology" in a.lower() or "numtrustedproxies" in a.lower()], argv
    assert {m.profile for m in matrix.modes.values()} <= {"default", "ambient"}
