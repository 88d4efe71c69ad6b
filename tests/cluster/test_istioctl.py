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
