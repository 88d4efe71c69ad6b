"""Upgrade validation: probe continuously while Istio is upgraded the way Istio documents it, per mode.

The suite's third use, beside CI gates and reports (issue 6, item 7). Between a run of the suite at
the older release and one at the newer, this module upgrades the cluster while a watcher keeps probing
a small scenario whose verdicts are known (clusters/upgrade/watch.yaml), and records every moment a
probe that must be denied was allowed (a fail-open window: the finding that matters most) and every
moment a probe that must be allowed was not, or could not run at all (an availability gap, reported
with its duration, never a failure of the job).

Two procedures, each named for what it is (`PROCEDURES`):

- sidecar, `revision canary` (istio.io docs/setup/upgrade/canary): `istioctl-<to> install --set
  revision=<rev>` beside the old control plane, wait for `istiod-<rev>`, `istioctl tag set default
  --revision <rev>` (what `istio-injection=enabled` uses), then restart the watched workloads one by one
  so their sidecars come from the new revision. The restart switches each Deployment to a RollingUpdate
  with maxUnavailable 0 (the suite's templates use Recreate, so that a session always sees one pod):
  the new pod is ready before the old one goes, and the watcher moves to it as soon as it exists.
- ambient, `Helm: revisioned istiod, in-place CNI and ztunnel` (istio.io docs/ambient/upgrade/helm,
  "Revisioned upgrade"; istio/istio.io content/en/docs/ambient/upgrade/helm/index.md): the cluster must
  have been installed with Helm (`install-ambient`, the charts of the release tarball); then `helm
  upgrade istio-base`, `helm install istiod-<rev> --set revision=<rev> --set profile=ambient --wait`,
  `helm upgrade istio-cni` (in place: Istio does not support canary upgrades of istio-cni) and `helm
  upgrade ztunnel --set revision=<rev> --wait` (in place: nor of ztunnel, "even with the use of
  revisions"; it resets connections on the node), then the revision tags moved with the chart's
  revision-tags template. `istioctl install --set revision=... --set profile=ambient` is NOT this: it
  replaces ztunnel and istio-cni in place under the cover of a "canary". Helm itself is the release
  clusters/versions.yaml pins (`matrix install --helm`, tarball sha256 verified); both commands refuse any
  other (`check_helm`), so the procedure never depends on the Helm a runner happens to have.

Why the watcher is built the way it is: the pod map the probes use is replaced only while no probe
round runs (`Watcher.paused`, one lock), so a round never sees it half refilled; everything a round
raises is caught and reported (a silent dead thread would report a clean upgrade); an exec lost while
the upgrade deliberately restarts pods (`Watcher.disruption`) is an availability gap with its length,
not an infrastructure error; pods are found again after every phase that replaces them, ztunnel's too.

    python -m conformance.mesh.cluster.upgrade --kubeconfig K --context kind-x --mode ambient \\
        --from 1.29.6 --to 1.30.3 --istioctl-to istioctl-1.30.3 --charts-to .bin/charts-1.30.3 --out upgrade.json
    python -m conformance.mesh.cluster.upgrade install-ambient --kubeconfig K --context kind-x \\
        --charts .bin/charts-1.29.6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from conformance.errors import ConformanceError, TargetError, UsageError
from conformance.mesh.cluster import istioctl
from conformance.mesh.cluster.istioctl import ISTIO_NAMESPACE, Kubeconfig
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import enrollment_labels
from conformance.mesh.cluster.matrix import CLUSTERS_DIR, Matrix, load
from conformance.mesh.cluster.naming import new_prefix
from conformance.mesh.cluster.session import ClusterContext, ClusterSession
from conformance.model import ALLOWED, Probe, Verdict
from conformance.scenario import load as load_scenario
from conformance.versions import IstioVersion

WATCH_SCENARIO = CLUSTERS_DIR / "upgrade" / "watch.yaml"
HELM_VALUES = CLUSTERS_DIR / "istio" / "ambient-helm.yaml"
RESTART_MANAGER = "authz-conformance-restart"
PROCEDURES: dict[str, str] = {
    "sidecar": "revision canary: istioctl install --set revision, tag set default, rolling restart of the workloads",
    "ambient": "Helm: revisioned istiod, then istio-cni and ztunnel upgraded in place (istio.io ambient/upgrade/helm)",
}
# The charts inside an Istio release tarball (istio-<v>/manifests/charts, istio/istio manifests/charts).
CHARTS = {"base": "base", "istiod": "istio-control/istio-discovery", "cni": "istio-cni", "ztunnel": "ztunnel"}


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
    # rounds that could not run while the upgrade deliberately replaced pods: availability, not failure
    disruptions: list[dict[str, object]] = field(default_factory=list)
    procedure: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.fail_open or self.errors)


def summarize(samples: Sequence[Sample], probes: Sequence[Probe], verdicts: Sequence[Verdict],
              errors: Sequence[str] = (), phases: Sequence[dict[str, object]] = (),
              disruptions: Sequence[dict[str, object]] = (), procedure: str = "") -> WatchReport:
    """Windows where a probe disagreed with its verdict: (first, last, count) per probe and kind."""
    report = WatchReport(samples=len(samples), errors=list(errors), phases=list(phases),
                         disruptions=[dict(d) for d in disruptions], procedure=procedure)
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
    """Probes a session in a loop from a thread until stopped.

    Every round runs under one lock, which `paused()` takes too: whoever replaces the session's pod
    map does it inside `paused()`, so a round sees the old map or the new one, never one half refilled.
    A round that raises (anything: a lost exec, a KeyError from a pod that is gone) is recorded, and the
    loop goes on; inside `disruption(phase)` (the upgrade deliberately replacing pods) such a round is an
    availability gap of that phase, outside it an infrastructure error. Should the loop itself die, the
    traceback is an error too: the report can never look clean because the thread stopped watching.
    """

    def __init__(self, probe_round: Callable[[], Sequence[str]], interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, expected: int | None = None):
        self.probe_round = probe_round
        self.interval = interval
        self.clock = clock
        self.expected = expected
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.disruptions: list[dict[str, object]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._lock = threading.Lock()
        self._disruption: str | None = None

    def run_once(self) -> None:
        with self._lock:
            t = self.clock() - self._start
            phase = self._disruption
            try:
                outcomes = list(self.probe_round())
                if self.expected is not None and len(outcomes) != self.expected:
                    raise TargetError(f"a probe round returned {len(outcomes)} outcomes for {self.expected} probes")
            except Exception as exc: # everything is reported; the thread must not die
                text = str(exc) if isinstance(exc, ConformanceError) else f"{type(exc).__name__}: {exc}"
                if phase is not None:
                    self._gap(phase, t, text)
                else:
                    self.errors.append(f"{t:.1f}s: {text}")
                return
            self.samples += [Sample(t, i, o) for i, o in enumerate(outcomes)]

    def _gap(self, phase: str, t: float, text: str) -> None:
        gap = next((d for d in self.disruptions if d["phase"] == phase), None)
        if gap is None:
            gap = {"phase": phase, "first": round(t, 2), "last": round(t, 2), "rounds": 0, "reasons": []}
            self.disruptions.append(gap)
        gap["last"] = round(t, 2)
        gap["rounds"] = int(gap["rounds"]) + 1  # type: ignore[call-overload]
        reasons = gap["reasons"]
        assert isinstance(reasons, list)
        if text not in reasons and len(reasons) < 5:
            reasons.append(text)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No probe round runs inside: replace what the rounds read (the session's pods) here."""
        with self._lock:
            yield

    @contextlib.contextmanager
    def disruption(self, phase: str) -> Iterator[None]:
        """Rounds that fail inside are availability gaps of `phase` (a deliberate restart), not errors."""
        self._disruption = phase
        try:
            yield
        finally:
            self._disruption = None

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.interval)
        except BaseException: # a dying watcher must leave its reason in the report
            self.errors.append(f"{self.elapsed():.1f}s: the watcher thread died: "
                               + " | ".join(traceback.format_exc().strip().splitlines()[-3:]))

    def start(self) -> None:
        self._start = self.clock()
        self._thread = threading.Thread(target=self._loop, name="upgrade-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
            if self._thread.is_alive():
                self.errors.append(f"{self.elapsed():.1f}s: the watcher thread did not stop within 120 s")

    def elapsed(self) -> float:
        return self.clock() - self._start


def canary_commands(istioctl_to: str, kube: Kubeconfig, profile: str, overlay: Path, revision: str) -> list[list[str]]:
    """The istioctl commands of a revision-based canary upgrade (install beside, then move the default tag).

    Sidecar mode only: with the ambient profile the same install replaces ztunnel and istio-cni in place.
    """
    if profile == "ambient":
        raise UsageError("istioctl's revision canary is not Istio's ambient upgrade; use ambient_upgrade_commands")
    return [
        istioctl.install_argv(istioctl_to, kube, profile, overlay, revision=revision),
        istioctl.tag_set_argv(istioctl_to, kube, revision),
    ]


def helm_version_argv(helm: str) -> list[str]:
    """`helm version --template {{.Version}}`: the bare release, `v3.21.0` (helm/helm@v3.21.0 cmd/helm/version.go
    executes the template over version.Get(); internal/version/version.go's `version` is set from the git tag
    by the Makefile's LDFLAGS, with no `+metadata` for a tagged build)."""
    return [helm, "version", "--template", "{{.Version}}"]


def check_helm(helm: str, matrix: Matrix, run: Runner | None = None, platform: str = "linux-amd64") -> str:
    """The Helm release `helm` is, when it is the pinned one; a UsageError saying how to get it otherwise."""
    want = matrix.helm[platform].version
    got = (run or istioctl.run)(helm_version_argv(helm), timeout=60).stdout.strip()
    if got != want:
        raise UsageError(f"{helm} is Helm {got or '(no version printed)'}, not the pinned {want} "
                         "(clusters/versions.yaml helm): install it with `python -m conformance.mesh.cluster.matrix "
                         "install --dest DIR --no-kind --helm` (sha256 verified) and pass --helm DIR/helm")
    return got


def _helm_flags(kube: Kubeconfig) -> list[str]:
    out = ["-n", ISTIO_NAMESPACE]
    if kube.path:
        out += ["--kubeconfig", kube.path]
    if kube.context:
        out += ["--kube-context", kube.context]
    return out


def helm_install_ambient_commands(helm: str, kube: Kubeconfig, charts: Path, values: Path = HELM_VALUES
                                  ) -> list[list[str]]:
    """An ambient install with Helm from a release's charts (istio.io docs/ambient/install/helm).

    base, istiod (profile ambient, with the suite's access-log values), istio-cni (profile ambient),
    ztunnel, each waited for; the documented upgrade needs a Helm-installed mesh to start from.
    """
    f = _helm_flags(kube)
    return [
        [helm, "install", "istio-base", str(charts / CHARTS["base"]), *f, "--create-namespace", "--wait"],
        [helm, "install", "istiod", str(charts / CHARTS["istiod"]), *f, "--set", "profile=ambient", "-f", str(values),
         "--wait"],
        [helm, "install", "istio-cni", str(charts / CHARTS["cni"]), *f, "--set", "profile=ambient", "--wait"],
        [helm, "install", "ztunnel", str(charts / CHARTS["ztunnel"]), *f, "--wait"],
    ]


def ambient_upgrade_commands(helm: str, kube: Kubeconfig, charts: Path, revision: str,
                             values: Path = HELM_VALUES) -> dict[str, list[str]]:
    """Istio's documented ambient upgrade, "Revisioned upgrade" tab (istio.io docs/ambient/upgrade/helm):
    CRDs and base, a revisioned istiod beside the old one, then istio-cni and ztunnel in place, then
    the revision tags; in that order (the keys' order). Two deliberate details: istio-cni keeps
    `profile=ambient` as it was installed (a plain `helm upgrade` resets values to the chart's), and the
    tag template is the one the new chart ships (`revision-tags-mwc.yaml` in 1.30's istiod chart).
    """
    f = _helm_flags(kube)
    return {
        "base": [helm, "upgrade", "istio-base", str(charts / CHARTS["base"]), *f],
        "istiod": [helm, "install", f"istiod-{revision}", str(charts / CHARTS["istiod"]), *f,
                   "--set", f"revision={revision}", "--set", "profile=ambient", "-f", str(values), "--wait"],
        "cni": [helm, "upgrade", "istio-cni", str(charts / CHARTS["cni"]), *f, "--set", "profile=ambient", "--wait"],
        "ztunnel": [helm, "upgrade", "ztunnel", str(charts / CHARTS["ztunnel"]), *f, "--set", f"revision={revision}",
                    "--wait"],
        "tags": [helm, "template", "istiod", str(charts / CHARTS["istiod"]), "-s", "templates/revision-tags-mwc.yaml",
                 "--set", "revisionTags={default}", "--set", f"revision={revision}", "-n", ISTIO_NAMESPACE],
    }


def restart_body(name: str, namespace: str, stamp: str) -> dict[str, object]:
    """What `kubectl rollout restart` changes, plus a rolling strategy that keeps the old pod until the new
    one is ready (the templates' Recreate would leave the watcher nothing to probe), applied under its own
    field manager (never ours)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}


def refresh(session: ClusterSession, watcher: Watcher, timeout: float = 90.0, sleep: Callable[[float], None] =
            time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Find the session's pods again while no probe round runs; retried while pods are still coming up."""
    deadline = clock() + timeout
    while True:
        try:
            with watcher.paused():
                session.refresh_pods()
            return
        except TargetError:
            if clock() >= deadline:
                raise
            sleep(2.0)


Runner = Callable[..., istioctl.Result]


def sidecar_upgrade(kube: Kube, kcfg: Kubeconfig, matrix: Matrix, to_version: str, istioctl_to: str,
                    session: ClusterSession, watcher: Watcher, phase: Callable[[str], None],
                    run: Runner = istioctl.run) -> None:
    release = matrix.release(to_version)
    install = matrix.modes["sidecar"]
    install_cmd, tag_cmd = canary_commands(istioctl_to, kcfg, install.profile, install.overlay, release.revision)
    phase(f"istioctl install revision {release.revision} (beside the old control plane)")
    run(install_cmd, timeout=600)
    kube.wait_rollout("Deployment", f"istiod-{release.revision}", ISTIO_NAMESPACE, timeout=300)
    phase("istioctl tag set default")
    run(tag_cmd, timeout=120)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for w in session.scenario.workloads:
        ns = session.nsmap.cluster_namespace(w.namespace)
        name = f"rolling restart {w.ref}"
        phase(name)
        with watcher.disruption(name):
            kube.apply(restart_body(w.name, ns, stamp), field_manager=RESTART_MANAGER)
            kube.wait_rollout("Deployment", w.name, ns, timeout=300)
            refresh(session, watcher)


def ambient_upgrade(kube: Kube, kcfg: Kubeconfig, matrix: Matrix, to_version: str, charts_to: Path,
                    session: ClusterSession, watcher: Watcher, phase: Callable[[str], None],
                    helm: str = "helm", run: Runner = istioctl.run) -> None:
    revision = matrix.release(to_version).revision
    cmds = ambient_upgrade_commands(helm, kcfg, charts_to, revision)
    phase("helm upgrade istio-base (CRDs)")
    run(cmds["base"], timeout=300)
    phase(f"helm install istiod-{revision} (revisioned, beside the old control plane)")
    run(cmds["istiod"], timeout=600)
    kube.wait_rollout("Deployment", f"istiod-{revision}", ISTIO_NAMESPACE, timeout=300)
    for key, daemonset, name in (("cni", "istio-cni-node", "helm upgrade istio-cni (in place)"),
                                 ("ztunnel", "ztunnel", "helm upgrade ztunnel (in place)")):
        phase(name)
        with watcher.disruption(name):
            run(cmds[key], timeout=600)
            kube.wait_rollout("DaemonSet", daemonset, ISTIO_NAMESPACE, timeout=300)
            refresh(session, watcher)  # ztunnel pods have new names: their logs are the L4 proof
    phase("move the default tag (revision-tags template)")
    rendered = run(cmds["tags"], timeout=120)
    for doc in yaml.safe_load_all(rendered.stdout):
        if isinstance(doc, dict) and doc.get("kind"):
            kube.apply(doc)


def _modelled_version(text: str) -> str:
    """An Istio version the engine models (versions.MODELLED_VERSIONS), as given; anything else is a
    usage error naming what is modelled, never a traceback."""
    try:
        IstioVersion.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def install_ambient_main(argv: Sequence[str]) -> int:
    """`install-ambient`: the Helm install the documented ambient upgrade starts from."""
    p = argparse.ArgumentParser(prog="python -m conformance.mesh.cluster.upgrade install-ambient",
                                description=helm_install_ambient_commands.__doc__.split("\n")[0] if
                                helm_install_ambient_commands.__doc__ else None)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--context", required=True)
    p.add_argument("--charts", type=Path, required=True, help="the release's charts (matrix install --charts)")
    p.add_argument("--helm", default="helm", help="the pinned Helm (matrix install --helm)")
    args = p.parse_args(argv)
    try:
        check_helm(args.helm, load())
    except (UsageError, TargetError) as exc:
        p.error(str(exc))
    for argv_ in helm_install_ambient_commands(args.helm, Kubeconfig(args.kubeconfig, args.context), args.charts):
        print("+ " + " ".join(argv_), flush=True)
        istioctl.run(argv_, timeout=600)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["install-ambient"]:
        return install_ambient_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m conformance.mesh.cluster.upgrade", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--context", required=True)
    p.add_argument("--mode", required=True, choices=("sidecar", "ambient"))
    p.add_argument("--from", dest="old", required=True, type=_modelled_version)
    p.add_argument("--to", dest="new", required=True, type=_modelled_version)
    p.add_argument("--istioctl-to", required=True)
    p.add_argument("--charts-to", type=Path, default=None, help="ambient: the new release's Helm charts")
    p.add_argument("--helm", default="helm", help="ambient: the pinned Helm (matrix install --helm)")
    p.add_argument("--scenario", type=Path, default=WATCH_SCENARIO)
    p.add_argument("--settle", type=float, default=20.0, help="seconds to keep probing after the upgrade")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.mode == "ambient" and args.charts_to is None:
        p.error("--mode ambient needs --charts-to (Istio's ambient upgrade is done with Helm)")

    matrix = load()
    if args.mode == "ambient":
        try:
            check_helm(args.helm, matrix)
        except (UsageError, TargetError) as exc:
            p.error(str(exc))
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
    procedure = PROCEDURES[args.mode]
    try:
        session.apply(step.policies)
        expectations = [e for e in step.expectations if e.verdict(args.mode)]
        probes = [e.probe for e in expectations]
        verdicts: list[Verdict] = [e.verdict(args.mode) for e in expectations]  # type: ignore[misc]
        watcher = Watcher(lambda: [o.outcome for o in session.probe(probes)], expected=len(probes))
        watcher.start()

        def phase(name: str) -> None:
            phases.append({"phase": name, "at": round(watcher.elapsed(), 2)})
            print(f"[{watcher.elapsed():7.1f}s] {name}", flush=True)

        try:
            phase(f"watching; procedure: {procedure}")
            time.sleep(5)
            if args.mode == "sidecar":
                sidecar_upgrade(kube, kcfg, matrix, args.new, args.istioctl_to, session, watcher, phase)
            else:
                ambient_upgrade(kube, kcfg, matrix, args.new, args.charts_to, session, watcher, phase, args.helm)
            phase("upgraded; settling")
            time.sleep(args.settle)
            phase("done")
        except ConformanceError as exc:
            watcher.errors.append(f"{watcher.elapsed():.1f}s: the upgrade itself failed: {exc}")
        finally:
            watcher.stop()
        report = summarize(watcher.samples, probes, verdicts, watcher.errors, phases, watcher.disruptions, procedure)
    finally:
        session.close()
    args.out.write_text(json.dumps({"from": args.old, "to": args.new, "mode": args.mode, **asdict(report)}, indent=2))
    print(f"upgrade {args.old} -> {args.new} ({args.mode}, {procedure}): {report.samples} observations in "
          f"{report.rounds} rounds; fail-open windows: {len(report.fail_open)}; availability gaps: "
          f"{len(report.unavailable)} + {len(report.disruptions)} during deliberate restarts; infrastructure "
          f"errors: {len(report.errors)}")
    for w in report.fail_open:
        print(f"  FAIL-OPEN {w['probe']}: allowed {w['count']}x between {w['first']:.1f}s and {w['last']:.1f}s")
    for d in report.disruptions:
        print(f"  no probe round ran during {d['phase']}: {d['rounds']} round(s) between {d['first']}s and "
              f"{d['last']}s ({'; '.join(map(str, d['reasons']))})")  # type: ignore[call-overload]
    for e in report.errors:
        print(f"  infrastructure: {e}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
