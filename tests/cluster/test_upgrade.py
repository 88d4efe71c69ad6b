"""Upgrade validation without a cluster: the canary commands, the watcher's fail-open windows on a fake
clock, and the truth-table diff that separates changes the engine predicted from regressions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conformance.mesh.cluster.istioctl import Kubeconfig
from conformance.mesh.cluster.upgrade import Sample, Watcher, canary_commands, restart_body, summarize
from conformance.model import Port, Probe, Workload

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("upgrade_report", ROOT / "clusters" / "tools" / "upgrade_report.py")
assert spec and spec.loader
report = importlib.util.module_from_spec(spec)
sys.modules.setdefault("upgrade_report", report)
spec.loader.exec_module(report)

API = Workload("api", "shop", "api", {"app": "api"}, (Port(8080),))
GOOD = Workload("good", "front", "good", {})
BAD = Workload("bad", "rogue", "bad", {})
PROBES = [Probe(GOOD, API, API.ports[0]), Probe(BAD, API, API.ports[0])]


def test_canary_commands():
    install, tag = canary_commands("istioctl-1.30.3", Kubeconfig("/k", "kind-u"), "ambient", Path("o.yaml"), "1-30-3")
    assert install[:2] == ["istioctl-1.30.3", "install"] and install[-2:] == ["--set", "revision=1-30-3"]
    assert "profile=ambient" in install and "-y" in install
    assert tag[:6] == ["istioctl-1.30.3", "tag", "set", "default", "--revision", "1-30-3"]
    body = restart_body("api", "ns", "2026-01-01T00:00:00Z")
    assert body["spec"] == {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}


def test_summarize_reports_fail_open_windows_and_availability_gaps():
    samples = [Sample(0.0, 0, "allowed"), Sample(0.0, 1, "denied-l4"),
               Sample(1.0, 0, "error"), Sample(1.0, 1, "allowed"),
               Sample(2.0, 0, "allowed"), Sample(2.0, 1, "allowed"),
               Sample(3.0, 0, "allowed"), Sample(3.0, 1, "denied-l4")]
    rep = summarize(samples, PROBES, ["allow", "deny"])
    assert rep.samples == 8 and rep.rounds == 4 and rep.failed
    assert rep.fail_open == [{"probe": PROBES[1].describe(), "first": 1.0, "last": 2.0, "count": 2,
                              "outcomes": ["allowed"]}]
    assert rep.unavailable[0]["outcomes"] == ["error"] and rep.unavailable[0]["count"] == 1
    clean = summarize([Sample(0.0, 0, "allowed"), Sample(0.0, 1, "denied-l4")], PROBES, ["allow", "deny"])
    assert not clean.failed and not clean.fail_open


def test_watcher_records_rounds_and_infrastructure_errors():
    from conformance.errors import TargetError

    now = [0.0]
    rounds = iter([["allowed", "denied-l4"], TargetError("exec lost"), ["allowed", "allowed"]])

    def probe_round():
        value = next(rounds)
        if isinstance(value, Exception):
            raise value
        return value

    w = Watcher(probe_round, clock=lambda: now[0])
    w._start = 0.0
    for t in (0.0, 1.0, 2.0):
        now[0] = t
        w.run_once()
    assert [(s.time, s.outcome) for s in w.samples] == [(0.0, "allowed"), (0.0, "denied-l4"), (2.0, "allowed"),
                                                        (2.0, "allowed")]
    assert w.errors == ["1.0s: exec lost"]


def record(step: int, probe: list, outcome: str, path: str = "p.yaml") -> str:
    return json.dumps({"path": path, "scenario": "s", "mode": "ambient", "step": step, "probe": probe,
                       "outcome": outcome})


def test_diff_separates_predicted_changes_from_regressions():
    p1 = ["front/good", "shop/api", 8080, "GET", "/", []]
    p2 = ["rogue/bad", "shop/api", 8080, "GET", "/", []]
    p3 = ["rogue/bad", "shop/api", 8080, "GET", "/x", []]
    before = report.final_outcomes([record(0, p1, "denied-l4"), record(0, p1, "allowed"),  # the last one counts
                                    record(0, p2, "denied-l4"), record(0, p3, "allowed")])
    after = report.final_outcomes([record(0, p1, "allowed"), record(0, p2, "allowed"), record(0, p3, "denied-l4")])
    predictions = {("p.yaml", "1.29.6", "/"): "denied-l4", ("p.yaml", "1.30.3", "/"): "denied-l4",
                   ("p.yaml", "1.29.6", "/x"): "allowed", ("p.yaml", "1.30.3", "/x"): "denied-l4"}

    def predictor(path, mode, step, probe, version):
        return predictions[(path, version, probe[4])]

    changes, only_before, only_after = report.diff(before, after, "1.29.6", "1.30.3", predictor)
    by_path = {c.probe[4]: c for c in changes}
    assert len(changes) == 2 and not only_before and not only_after
    assert not by_path["/"].predicted  # engine says denied at both releases: the cluster regressed
    assert by_path["/x"].predicted  # the engine predicts this very change
    text, failed = report.render(changes, [], [], "1.29.6", "1.30.3",
                                 {"samples": 10, "rounds": 5, "fail_open": [], "unavailable": [], "errors": []})
    assert failed and "1 regression(s)" in text and "Predicted changes" in text
    text, failed = report.render([by_path["/x"]], [], [], "1.29.6", "1.30.3", None)
    assert not failed


def test_engine_predictions_for_a_shipped_scenario():
    path = str(ROOT / "clusters" / "upgrade" / "watch.yaml")
    probe = ["rogue/bad", "shop/api", 8080, "GET", "/", []]
    assert report.predicted_outcome(path, "ambient", 0, probe, "1.30.3") == "denied-l4"
    assert report.predicted_outcome(path, "sidecar", 0, probe, "1.29.6") == "denied-l7"
    assert report.predicted_outcome(path, "sidecar", 5, probe, "1.29.6") is None


def test_report_command_line(tmp_path, capsys):
    p = ["front/good", "shop/api", 8080, "GET", "/", []]
    (tmp_path / "b.jsonl").write_text(record(0, p, "allowed") + "\n")
    (tmp_path / "a.jsonl").write_text(record(0, p, "allowed") + "\n")
    (tmp_path / "u.json").write_text(json.dumps({"samples": 4, "rounds": 2, "fail_open": [
        {"probe": "x", "count": 1, "first": 3.5, "last": 3.5, "outcomes": ["allowed"]}], "unavailable": [],
        "errors": []}))
    rc = report.main(["--before", str(tmp_path / "b.jsonl"), "--after", str(tmp_path / "a.jsonl"), "--from",
                      "1.29.6", "--to", "1.30.3", "--upgrade", str(tmp_path / "u.json"), "--markdown",
                      str(tmp_path / "s.md")])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL-OPEN x" in out and (tmp_path / "s.md").read_text() == out


def test_an_unmodelled_version_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.mesh.cluster.upgrade import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--kubeconfig", "k", "--context", "c", "--mode", "ambient", "--from", "1.99", "--to", "1.30",
              "--istioctl-to", "istioctl", "--out", "out.json"])
    assert exit_info.value.code == 2
    assert "Istio version '1.99' is not modelled" in capsys.readouterr().err
