"""Upgrade validation without a cluster: the canary commands, the watcher's fail-open windows on a fake
clock, and the truth-table diff that separates changes the engine predicted from regressions."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from conformance.errors import TargetError, UsageError
from conformance.mesh.cluster import upgrade as upgrade_mod
from conformance.mesh.cluster.istioctl import Kubeconfig, Result
from conformance.mesh.cluster.kube import ExecLost
from conformance.mesh.cluster.matrix import load as load_matrix
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
M = load_matrix()


def test_canary_commands():
    install, tag = canary_commands("istioctl-1.30.3", Kubeconfig("/k", "kind-u"), "default", Path("o.yaml"), "1-30-3")
    assert install[:2] == ["istioctl-1.30.3", "install"] and install[-2:] == ["--set", "revision=1-30-3"]
    assert "profile=default" in install and "-y" in install
    assert tag[:6] == ["istioctl-1.30.3", "tag", "set", "default", "--revision", "1-30-3"]
    body = restart_body("api", "ns", "2026-01-01T00:00:00Z")
    assert body["spec"] == {
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}


def test_istioctls_revision_canary_is_refused_for_ambient():
    """`istioctl install --set revision=... --set profile=ambient` replaces ztunnel and istio-cni in place:
    not a canary, and not Istio's documented ambient upgrade."""
    with pytest.raises(UsageError, match="not Istio's ambient upgrade"):
        canary_commands("istioctl", Kubeconfig("/k", "c"), "ambient", Path("o.yaml"), "1-30-3")
    assert "Helm" in upgrade_mod.PROCEDURES["ambient"] and "in place" in upgrade_mod.PROCEDURES["ambient"]


def test_ambient_upgrade_follows_istios_documented_helm_procedure():
    """istio.io docs/ambient/upgrade/helm, "Revisioned upgrade": base, istiod-<rev> beside the old one,
    istio-cni in place, ztunnel in place with the new revision, then the revision tags."""
    cmds = upgrade_mod.ambient_upgrade_commands("helm", Kubeconfig("/k", "kind-u"), Path("/c"), "1-30-3")
    assert list(cmds) == ["base", "istiod", "cni", "ztunnel", "tags"]
    assert cmds["base"][:4] == ["helm", "upgrade", "istio-base", "/c/base"]
    assert cmds["istiod"][:4] == ["helm", "install", "istiod-1-30-3", "/c/istio-control/istio-discovery"]
    assert "revision=1-30-3" in cmds["istiod"] and "profile=ambient" in cmds["istiod"] and "--wait" in cmds["istiod"]
    assert cmds["cni"][:4] == ["helm", "upgrade", "istio-cni", "/c/istio-cni"]
    assert not any(a.startswith("revision=") for a in cmds["cni"])  # no canary of istio-cni exists
    assert cmds["ztunnel"][:4] == ["helm", "upgrade", "ztunnel", "/c/ztunnel"] and "revision=1-30-3" in cmds["ztunnel"]
    assert cmds["tags"][:3] == ["helm", "template", "istiod"] and "revisionTags={default}" in cmds["tags"]
    for c in ("base", "istiod", "cni", "ztunnel"):
        assert "--kube-context" in cmds[c] and "kind-u" in cmds[c] and "istio-system" in cmds[c]
    install = upgrade_mod.helm_install_ambient_commands("helm", Kubeconfig("/k", "kind-u"), Path("/c"))
    assert [c[2] for c in install] == ["istio-base", "istiod", "istio-cni", "ztunnel"]
    assert all(c[1] == "install" and "--wait" in c for c in install)


def test_helm_values_configure_the_same_access_log_as_the_istioctl_overlay():
    overlay = yaml.safe_load(M.modes["ambient"].overlay.read_text())["spec"]["meshConfig"]
    assert yaml.safe_load(upgrade_mod.HELM_VALUES.read_text())["meshConfig"] == overlay


class FakeKube:
    def __init__(self, log: list) -> None:
        self.log = log

    def apply(self, doc, field_manager="authz-conformance"):
        self.log.append(("apply", doc["kind"], doc["metadata"]["name"], field_manager))
        return dict(doc)

    def wait_rollout(self, kind, name, namespace, timeout, **kw):
        self.log.append(("wait", kind, name, namespace))
        return 0.0


class FakeNsMap:
    def cluster_namespace(self, ns: str) -> str:
        return f"az-{ns}"


class FakeSession:
    """What the upgrade touches of a ClusterSession: the watched workloads and refresh_pods."""

    def __init__(self, log: list, watcher: Watcher | None = None) -> None:
        self.log = log
        self.watcher = watcher
        self.scenario = type("S", (), {"workloads": (API, GOOD)})()
        self.nsmap = FakeNsMap()
        self.pods = {"shop/api": "api-1", "front/good": "good-1"}
        self.generation = 1

    def refresh_pods(self) -> None:
        # what session.refresh_pods does: empty the map, then fill it again (slowly)
        disruption = self.watcher._disruption if self.watcher else None
        self.log.append(("refresh", disruption))
        keys = list(self.pods)
        self.pods.clear()
        time.sleep(0.002)
        self.generation += 1
        for k in keys:
            self.pods[k] = f"{k.split('/')[1]}-{self.generation}"

    def probe_round(self) -> list[str]:
        return ["allowed" if self.pods["front/good"] else "error", "denied-l4" if self.pods["shop/api"] else "x"]


def fake_run(log: list, stdout: str = ""):
    def run(argv, timeout, **kw):
        log.append(("run", tuple(argv[:4])))
        return Result(tuple(argv), 0, stdout, "", 0.0)
    return run


def test_sidecar_upgrade_restarts_one_by_one_and_refreshes_pods_during_a_disruption():
    log: list = []
    w = Watcher(lambda: ["allowed", "denied-l4"])
    session = FakeSession(log, w)
    phases: list[str] = []
    upgrade_mod.sidecar_upgrade(FakeKube(log), Kubeconfig("/k", "c"), M, "1.30.3", "istioctl-1.30.3",
                                session, w, phases.append, run=fake_run(log))  # type: ignore[arg-type]
    assert log[0] == ("run", ("istioctl-1.30.3", "install", "-y", "--kubeconfig"))
    assert log[1] == ("wait", "Deployment", "istiod-1-30-3", "istio-system")
    assert log[2][0] == "run" and log[2][1][1:3] == ("tag", "set")
    assert log[3:] == [
        ("apply", "Deployment", "api", upgrade_mod.RESTART_MANAGER), ("wait", "Deployment", "api", "az-shop"),
        ("refresh", "rolling restart shop/api"),
        ("apply", "Deployment", "good", upgrade_mod.RESTART_MANAGER), ("wait", "Deployment", "good", "az-front"),
        ("refresh", "rolling restart front/good")]
    assert phases[-1] == "rolling restart front/good" and w._disruption is None


def test_ambient_upgrade_runs_the_documented_steps_and_refreshes_ztunnel_pods():
    log: list = []
    w = Watcher(lambda: ["allowed", "denied-l4"])
    session = FakeSession(log, w)
    tags = ("apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\n"
            "metadata: {name: istio-revision-tag-default}\n")
    upgrade_mod.ambient_upgrade(FakeKube(log), Kubeconfig("/k", "c"), M, "1.30.3", Path("/charts"), session, w,
                                lambda _: None, run=fake_run(log, tags))  # type: ignore[arg-type]
    assert log == [
        ("run", ("helm", "upgrade", "istio-base", "/charts/base")),
        ("run", ("helm", "install", "istiod-1-30-3", "/charts/istio-control/istio-discovery")),
        ("wait", "Deployment", "istiod-1-30-3", "istio-system"),
        ("run", ("helm", "upgrade", "istio-cni", "/charts/istio-cni")),
        ("wait", "DaemonSet", "istio-cni-node", "istio-system"),
        ("refresh", "helm upgrade istio-cni (in place)"),
        ("run", ("helm", "upgrade", "ztunnel", "/charts/ztunnel")),
        ("wait", "DaemonSet", "ztunnel", "istio-system"),
        ("refresh", "helm upgrade ztunnel (in place)"),
        ("run", ("helm", "template", "istiod", "/charts/istio-control/istio-discovery")),
        ("apply", "MutatingWebhookConfiguration", "istio-revision-tag-default", "authz-conformance")]


def test_refresh_retries_while_pods_are_coming_up():
    calls = []

    class Flaky:
        def refresh_pods(self) -> None:
            calls.append(1)
            if len(calls) < 3:
                raise TargetError("workload shop/api: expected one ready pod in az-shop, found 2")

    sleeps: list[float] = []
    upgrade_mod.refresh(Flaky(), Watcher(lambda: []), sleep=sleeps.append)  # type: ignore[arg-type]
    assert len(calls) == 3 and sleeps == [2.0, 2.0]
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    calls.clear()
    with pytest.raises(TargetError):
        upgrade_mod.refresh(type("Never", (), {"refresh_pods": lambda self: (_ for _ in ()).throw(
            TargetError("gone"))})(), Watcher(lambda: []), timeout=5, sleep=sleep, clock=lambda: now[0])


def test_the_pod_map_is_swapped_while_no_round_runs():
    """A watcher thread probing while the upgrade refreshes the pods never sees the map half refilled."""
    log: list = []
    w = Watcher(lambda: [], interval=0.0)
    session = FakeSession(log, w)
    w.probe_round = session.probe_round
    w.start()
    try:
        for _ in range(30):
            upgrade_mod.refresh(session, w)  # type: ignore[arg-type]
            time.sleep(0.001)
        deadline = time.monotonic() + 5
        while not w.samples and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert w.errors == [] and w.disruptions == [] and len(w.samples) > 0


def test_a_round_that_raises_anything_is_reported_and_the_watch_goes_on():
    now = [0.0]
    rounds = iter([KeyError("front/good"), ["allowed", "denied-l4"], ["allowed"]])

    def probe_round():
        value = next(rounds)
        if isinstance(value, BaseException):
            raise value
        return value

    w = Watcher(probe_round, clock=lambda: now[0], expected=2)
    for t in (0.0, 1.0, 2.0):
        now[0] = t
        w.run_once()
    assert w.errors == ["0.0s: KeyError: 'front/good'", "2.0s: a probe round returned 1 outcomes for 2 probes"]
    assert [s.time for s in w.samples] == [1.0, 1.0]


def test_exec_loss_during_a_deliberate_restart_is_an_availability_gap_not_a_failure():
    now = [0.0]
    lost = [False]

    def probe_round():
        if lost[0]:
            raise ExecLost("exec in az-front/good-1 (curl) failed: pod not found")
        return ["allowed", "denied-l4"]

    w = Watcher(probe_round, clock=lambda: now[0])
    w.run_once()
    with w.disruption("rolling restart front/good"):
        lost[0] = True
        for t in (1.0, 1.5, 2.0):
            now[0] = t
            w.run_once()
        lost[0] = False
        now[0] = 2.5
        w.run_once()
    assert w.errors == []
    assert w.disruptions == [{"phase": "rolling restart front/good", "first": 1.0, "last": 2.0, "rounds": 3,
                              "reasons": ["exec in az-front/good-1 (curl) failed: pod not found"]}]
    rep = summarize(w.samples, PROBES, ["allow", "deny"], w.errors, (), w.disruptions, "revision canary")
    assert not rep.failed and rep.disruptions[0]["rounds"] == 3 and rep.procedure == "revision canary"
    now[0] = 3.0
    lost[0] = True
    w.run_once()  # outside a deliberate restart, the same loss is an infrastructure error
    assert w.errors == ["3.0s: exec in az-front/good-1 (curl) failed: pod not found"]


def test_a_dying_watcher_thread_leaves_its_reason():
    def probe_round():
        raise SystemExit("boom")  # not an Exception: escapes run_once, must not escape the thread silently

    w = Watcher(probe_round, interval=0.0)
    w.start()
    w.stop()
    assert len(w.errors) == 1 and "the watcher thread died" in w.errors[0] and "boom" in w.errors[0]


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
    probe = ["rogue/bad", "shop/api", 8080, "GET", "/", [], None]  # Probe.key: its token (none) is part of it
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


def test_report_names_the_procedure_and_counts_disruptions_as_availability():
    upgrade = {"mode": "ambient", "procedure": upgrade_mod.PROCEDURES["ambient"], "samples": 6, "rounds": 3,
               "fail_open": [], "unavailable": [], "errors": [],
               "disruptions": [{"phase": "helm upgrade ztunnel (in place)", "first": 4.0, "last": 5.0, "rounds": 2,
                                "reasons": ["x"]}]}
    text, failed = report.render([], [], [], "1.29.6", "1.30.3", upgrade)
    assert not failed
    assert "Procedure (ambient mode): Helm: revisioned istiod, then istio-cni and ztunnel upgraded in place" in text
    assert "- availability: no probe round ran during helm upgrade ztunnel (in place): 2 round(s)" in text


def test_ambient_needs_the_new_releases_charts(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.mesh.cluster.upgrade import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--kubeconfig", "k", "--context", "c", "--mode", "ambient", "--from", "1.29", "--to", "1.30",
              "--istioctl-to", "istioctl", "--out", "out.json"])
    assert exit_info.value.code == 2 and "--charts-to" in capsys.readouterr().err


def test_an_unmodelled_version_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.mesh.cluster.upgrade import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--kubeconfig", "k", "--context", "c", "--mode", "ambient", "--from", "1.99", "--to", "1.30",
              "--istioctl-to", "istioctl", "--out", "out.json"])
    assert exit_info.value.code == 2
    assert "Istio version '1.99' is not modelled" in capsys.readouterr().err


def test_the_procedure_runs_only_the_pinned_helm(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`helm version --template {{.Version}}` must print the release clusters/versions.yaml pins; another
    Helm (the runner's own) is refused before any Helm command touches the cluster."""
    assert upgrade_mod.helm_version_argv("h") == ["h", "version", "--template", "{{.Version}}"]
    log: list = []
    assert upgrade_mod.check_helm("h", M, fake_run(log, "v3.21.0")) == "v3.21.0"
    with pytest.raises(UsageError, match=r"Helm v3\.19\.0, not the pinned v3\.21\.0.*--helm"):
        upgrade_mod.check_helm("h", M, fake_run(log, "v3.19.0\n"))
    calls: list = []

    def runner_helm(argv, timeout, **kw):
        calls.append(list(argv))
        return Result(tuple(argv), 0, "v3.19.0" if argv[1] == "version" else "", "", 0.0)

    monkeypatch.setattr(upgrade_mod.istioctl, "run", runner_helm)
    with pytest.raises(SystemExit) as exit_info:
        upgrade_mod.main(["install-ambient", "--kubeconfig", "k", "--context", "c", "--charts", "/c",
                          "--helm", "/usr/local/bin/helm"])
    assert exit_info.value.code == 2 and "not the pinned v3.21.0" in capsys.readouterr().err
    assert calls == [["/usr/local/bin/helm", "version", "--template", "{{.Version}}"]]  # nothing installed
    with pytest.raises(SystemExit) as exit_info:
        upgrade_mod.main(["--kubeconfig", "k", "--context", "c", "--mode", "ambient", "--from", "1.29", "--to",
                          "1.30", "--istioctl-to", "istioctl", "--charts-to", "/c", "--out", "out.json"])
    assert exit_info.value.code == 2 and "not the pinned v3.21.0" in capsys.readouterr().err
