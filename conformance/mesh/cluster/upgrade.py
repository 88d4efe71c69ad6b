"""Upgrade validation: probe continuously while Istio is upgraded in place by revision (a canary upgrade).

The suite's third use, beside CI gates and reports (issue 6, item 7). Between a run of the suite at
the older release and one at the newer, this module upgrades the cluster the way Istio documents a
revision-based canary upgrade, while a watcher keeps probing a small scenario whose verdicts are
known (clusters/upgrade/watch.yaml), and records every moment a probe that must be denied was
allowed (a fail-open window: the finding that matters most) or a probe that must be allowed was not
(an availability gap, reported separately):

1. `istioctl-<to> install --set revision=<to-rev> -f <overlay> --set profile=<profile>`: the new
   control plane beside the old one (ztunnel and istio-cni are node agents, upgraded in place by it);
2. wait for `istiod-<to-rev>` (and the ztunnel / istio-cni DaemonSets in ambient) to roll out;
3. `istioctl-<to> tag set default --revision <to-rev>`: the default tag (what `istio-injection=enabled`
   and ambient namespaces use) now points at the new revision;
4. sidecar mode: restart the watch workloads so their sidecars come from the new revision;
5. keep probing a little longer, then stop and write the report (JSON).

    python -m conformance.mesh.cluster.upgrade --kubeconfig K --context kind-x --mode ambient \\
        --from 1.29.6 --to 1.30.3 --istioctl-to istioctl-1.30.3 --out upgrade.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conformance.errors import ConformanceError, UsageError
from conformance.mesh.cluster import istioctl
from conformance.mesh.cluster.istioctl import ISTIO_NAMESPACE, Kubeconfig
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import enrollment_labels
from conformance.mesh.cluster.matrix import CLUSTERS_DIR, Matrix, load
from conformance.mesh.cluster.naming import new_prefix
from conformance.mesh.cluster.session import ClusterContext, ClusterSession
from conformance.model import ALLOWED, Mode, Probe, Verdict
from conformance.scenario import load as load_scenario
from conformance.versions import IstioVersion

WATCH_SCENARIO = CLUSTERS_DIR / "upgrade" / "watch.yaml"
RESTART_MANAGER = "authz-conformance-restart"


@dataclass(frozen=True)
class Sample:
    time: float  # seconds since the watch started
    probe: int
    outcome: str


@dataclass
class WatchReport:
    samples: int = 0
    rounds: int = 0
    fail_open: list[dict[str, object]] = field(default_factory=list)  # must deny, observed allowed
    unavailable: list[dict[str, object]] = field(default_factory=list)  # must allow, observed otherwise
    errors: list[str] = field(default_factory=list)
    phases: list[dict[str, object]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.fail_open or self.errors)


def summarize(samples: Sequence[Sample], probes: Sequence[Probe], verdicts: Sequence[Verdict],
              errors: Sequence[str] = (), phases: Sequence[dict[str, object]] = ()) -> WatchReport:
    """Windows where a probe disagreed with its verdict: (first, last, count) per probe and kind."""
    report = WatchReport(samples=len(samples), errors=list(errors), phases=list(phases))
    report.rounds = len({s.time for s in samples})
    windows: dict[tuple[int, str], dict[str, object]] = {}
    for s in samples:
        must = verdicts[s.probe]
        if must == "deny" and s.outcome == ALLOWED:
            kind = "fail_open"
        elif must == "allow" and s.outcome != ALLOWED:
            kind = "unavailable"
        else:
            continue
        w = windows.setdefault((s.probe, kind), {"probe": probes[s.probe].describe(), "first": s.time,
                                                 "last": s.time, "count": 0, "outcomes": []})
        w["last"] = s.time
        w["count"] = int(w["count"]) + 1  # type: ignore[call-overload]
        outcomes = w["outcomes"]
        assert isinstance(outcomes, list)
        if s.outcome not in outcomes:
            outcomes.append(s.outcome)
    for (_, kind), w in sorted(windows.items()):
        getattr(report, kind).append(w)
    return report


class Watcher:
    """Probes a session in a loop from a thread until stopped; an infrastructure error is recorded, and
    the loop goes on (an exec failing during a control-plane restart is itself worth knowing)."""

    def __init__(self, probe_round: Callable[[], Sequence[str]], interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.probe_round = probe_round
        self.interval = interval
        self.clock = clock
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def run_once(self) -> None:
        t = self.clock() - self._start
        try:
            outcomes = self.probe_round()
        except ConformanceError as exc:
            self.errors.append(f"{t:.1f}s: {exc}")
            return
        self.samples += [Sample(t, i, o) for i, o in enumerate(outcomes)]

    def start(self) -> None:
        self._start = self.clock()

        def loop() -> None:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="upgrade-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def elapsed(self) -> float:
        return self.clock() - self._start


def canary_commands(istioctl_to: str, kube: Kubeconfig, profile: str, overlay: Path, revision: str) -> list[list[str]]:
    """The istioctl commands of a revision-based canary upgrade (install beside, then move the default tag)."""
    return [
        istioctl.install_argv(istioctl_to, kube, profile, overlay, revision=revision),
        istioctl.tag_set_argv(istioctl_to, kube, revision),
    ]


def restart_body(name: str, namespace: str, stamp: str) -> dict[str, object]:
    """What `kubectl rollout restart` changes, applied under its own field manager (never ours)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}


def upgrade(kube: Kube, kcfg: Kubeconfig, matrix: Matrix, mode: Mode, to_version: str, istioctl_to: str,
            session: ClusterSession, phase: Callable[[str], None]) -> None:
    release = matrix.release(to_version)
    install = matrix.modes[mode]
    install_cmd, tag_cmd = canary_commands(istioctl_to, kcfg, install.profile, install.overlay, release.revision)
    phase(f"install revision {release.revision}")
    istioctl.run(install_cmd, timeout=600)
    kube.wait_rollout("Deployment", f"istiod-{release.revision}", ISTIO_NAMESPACE, timeout=300)
    if install.profile == "ambient":
        kube.wait_rollout("DaemonSet", "istio-cni-node", ISTIO_NAMESPACE, timeout=300)
        kube.wait_rollout("DaemonSet", "ztunnel", ISTIO_NAMESPACE, timeout=300)
    phase("move the default tag")
    istioctl.run(tag_cmd, timeout=120)
    if mode == "sidecar":
        phase("restart workloads onto the new revision")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for w in session.scenario.workloads:
            ns = session.nsmap.cluster_namespace(w.namespace)
            kube.apply(restart_body(w.name, ns, stamp), field_manager=RESTART_MANAGER)
        for w in session.scenario.workloads:
            kube.wait_rollout("Deployment", w.name, session.nsmap.cluster_namespace(w.namespace), timeout=300)
        session.refresh_pods()
    phase("upgraded")


def _modelled_version(text: str) -> str:
    """An Istio version the engine models (versions.MODELLED_VERSIONS), as given; anything else is a
    usage error naming what is modelled, never a traceback."""
    try:
        IstioVersion.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.mesh.cluster.upgrade", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--context", required=True)
    p.add_argument("--mode", required=True, choices=("sidecar", "ambient"))
    p.add_argument("--from", dest="old", required=True, type=_modelled_version)
    p.add_argument("--to", dest="new", required=True, type=_modelled_version)
    p.add_argument("--istioctl-to", required=True)
    p.add_argument("--scenario", type=Path, default=WATCH_SCENARIO)
    p.add_argument("--settle", type=float, default=20.0, help="seconds to keep probing after the upgrade")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    matrix = load()
    kube = Kube(args.kubeconfig, args.context)
    kcfg = Kubeconfig(args.kubeconfig, args.context)
    old = IstioVersion.parse(args.old)
    scenario = load_scenario(args.scenario, old)
    step = scenario.steps[-1]
    ctx = ClusterContext(kube=kube, kubeconfig=kcfg, istioctl=args.istioctl_to, version=old,
                         curl_image=matrix.images["curl"], app_image=matrix.images["app"],
                         prefix=new_prefix("up"), enrollment=enrollment_labels(args.mode), target_name="upgrade")
    session = ClusterSession(scenario, args.mode, ctx).start()
    phases: list[dict[str, object]] = []
    try:
        session.apply(step.policies)
        expectations = [e for e in step.expectations if e.verdict(args.mode)]
        probes = [e.probe for e in expectations]
        verdicts: list[Verdict] = [e.verdict(args.mode) for e in expectations]  # type: ignore[misc]
        watcher = Watcher(lambda: [o.outcome for o in session.probe(probes)])
        watcher.start()

        def phase(name: str) -> None:
            phases.append({"phase": name, "at": round(watcher.elapsed(), 2)})
            print(f"[{watcher.elapsed():7.1f}s] {name}", flush=True)

        try:
            phase("watching")
            time.sleep(5)
            upgrade(kube, kcfg, matrix, args.mode, args.new, args.istioctl_to, session, phase)
            time.sleep(args.settle)
            phase("done")
        finally:
            watcher.stop()
        report = summarize(watcher.samples, probes, verdicts, watcher.errors, phases)
    finally:
        session.close()
    args.out.write_text(json.dumps({"from": args.old, "to": args.new, "mode": args.mode, **asdict(report)}, indent=2))
    print(f"upgrade {args.old} -> {args.new} ({args.mode}): {report.samples} observations in {report.rounds} rounds; "
          f"fail-open windows: {len(report.fail_open)}; availability gaps: {len(report.unavailable)}; "
          f"infrastructure errors: {len(report.errors)}")
    for w in report.fail_open:
        print(f"  FAIL-OPEN {w['probe']}: allowed {w['count']}x between {w['first']:.1f}s and {w['last']:.1f}s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
