"""Local mesh figures: start time, probe throughput, change-to-enforcement time, probe overhead and memory,
printed as one table (run on demand; the engine's figures are benchmarks/engine.py's, and benchmarks/all.py
prints both).

    python benchmarks/mesh.py [--quick]

Issue 14's goals (big meshes, policy change): 50 workloads up in ≤ 2 s and 200 in ≤ 8 s, in sidecar and
ambient mode (up = every Envoy LIVE and the canary answered: when a user can run probes); memory per
workload ≤ 15 MiB PSS on those meshes; ≥ 300 probes/s with parallel probes; a policy change acknowledged
by every changed Envoy in ≤ 30 ms median, with zero stale decisions after the acknowledgement. Issue 4's:
a 10-workload mesh up in ≤ 1.5 s; a probe costs ≤ 2× a bare curl through the same two proxies. Every figure
is wall-clock time of real processes on
this machine (other load distorts them: the output names the CPU, the number of cores and the load average
before and after), the median of several runs where it says so. `--quick` runs fewer repetitions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import host  # benchmarks/host.py: a script's own directory is on sys.path

from conformance.gap import measure_gap
from conformance.mesh.local.curl import BATCH_SIZE, run_curl
from conformance.mesh.local.envoy import envoy_binary
from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import (
    DENIAL_FORMS,
    Manifest,
    MeshConfig,
    Port,
    Probe,
    Request,
    Scenario,
    Workload,
)

Row = tuple[str, str, str, str]  # figure, value, goal, verdict


def scenario(n: int) -> Scenario:
    """`n` workloads in n/5 namespaces: servers with an HTTP and a TCP port, every fifth a client only."""
    namespaces = [f"ns{i}" for i in range(max(2, n // 5))]
    workloads = []
    for i in range(n):
        ports = () if i % 5 == 4 else (Port(8080), Port(9000, "TCP"))
        workloads.append(Workload(f"w{i}", namespaces[i % len(namespaces)], f"sa{i}", {"app": f"w{i}"}, ports))
    return Scenario(f"bench-{n}", "", f"<bench {n}>", ("sidecar", "ambient"), MeshConfig(), tuple(workloads), (), ())


def deny_all(namespace: str) -> Manifest:
    body = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-all", "namespace": namespace},
            "spec": {"action": "DENY", "rules": [{}]}}
    return Manifest("AuthorizationPolicy", "security.istio.io/v1", "deny-all", namespace, body, "bench")


def all_probes(sc: Scenario, count: int) -> list[Probe]:
    """`count` probes cycling over every (source, server port) pair, HTTP and TCP."""
    pairs = [(s, d, p) for s in sc.workloads for d in sc.workloads if d.ports and d is not s for p in d.ports]
    return [Probe(s, d, p, Request("GET", f"/bench/{i}")) for i, (s, d, p) in
            ((i, pairs[i % len(pairs)]) for i in range(count))]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (/proc/<pid>/smaps_rollup): shared pages split between
    their users, so Envoys sharing one binary are not counted 50 times."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def start_times(n: int, mode: str, runs: int) -> tuple[list[float], dict[str, float], int]:
    """Start `runs` meshes of n workloads (canary probes included: that is when a user can run probes);
    returns the times, the last run's phase timings and its total PSS in KiB."""
    times: list[float] = []
    phases: dict[str, float] = {}
    pss = 0
    with LocalTarget() as target:  # a fresh target: its first run pays the app host's start, as a user's does
        for _ in range(runs):
            seconds, session = timed(lambda: target.start(scenario(n), mode))  # type: ignore[arg-type]
            try:
                times.append(seconds)
                phases = dict(session.timings)
                # the app host is the target's, shared by its runs; this run is its only one, so all of it counts
                host_pid = target.apps.pid()
                pids = [*session.pids(), *([host_pid] if host_pid is not None else [])]
                pss = sum(pss_kib(pid) for pid in pids)
            finally:
                session.close()
    return times, phases, pss


def throughput(session: LocalMeshSession, sc: Scenario, count: int, runs: int) -> list[float]:
    rates = []
    batch = all_probes(sc, count)
    session.probe(batch[:20])  # warm-up
    for _ in range(runs):
        seconds, observations = timed(lambda: session.probe(batch))
        bad = [o for o in observations if o.outcome != "allowed"]
        if bad:
            raise SystemExit(f"throughput run: {len(bad)} probes not allowed, e.g. {bad[0]}")
        rates.append(len(batch) / seconds)
    return rates


def enforcement(session: LocalMeshSession, sc: Scenario, toggles: int,
                rounds_after: int) -> tuple[list[float], list[tuple[float, float]], int, int]:
    """Toggle a namespace-wide DENY on and off `toggles` times while one client probes an HTTP and a TCP
    port of a workload there in a tight loop (conformance/gap.py: one round = both probes, in parallel).
    Returns the apply() times (change made → every changed Envoy acknowledged it), per change the window
    in which both probes turned denied (start, end of that round, from the change), the stale allowed
    observations after the acknowledgement (goal: 0) and how many observations were made after it."""
    namespace = sc.workloads[0].namespace
    dst = next(w for w in sc.workloads if w.namespace == namespace and w.ports)
    src = next(w for w in sc.workloads if w.namespace != namespace)
    watched = [Probe(src, dst, p, Request()) for p in dst.ports]
    session.probe(watched)  # the source's outbound plumbing for them, before any change is timed
    applied_s, windows, stale, after = [], [], 0, 0
    for _ in range(toggles):
        applied, record = measure_gap(session, lambda: session.apply([deny_all(namespace)]),
                                      list(enumerate(watched)), rounds_after=rounds_after)
        if record.error:
            raise SystemExit(record.error)
        applied_s.append(applied.seconds)
        if record.enforced_window is not None:
            windows.append(record.enforced_window)
        stale += record.stale_allowed
        after += sum(len(r.outcomes) for r in record.rounds if r.after_barrier)
        last = [r for r in record.rounds if r.after_barrier][-1]
        if any(o not in DENIAL_FORMS for o in last.outcomes):
            raise SystemExit(f"enforcement run: not denied after the change: {last}")
        session.apply([])
    return applied_s, windows, stale, after


def overhead(session: LocalMeshSession, sc: Scenario, runs: int) -> tuple[float, float]:
    """Median latency of one probe through session.probe() (curl, classification, the proxy's log record)
    against the same curl command run bare, through the same two proxies (source sidecar, destination
    sidecar), one at a time so that neither waits for the other."""
    src = next(w for w in sc.workloads if not w.ports)
    dst = next(w for w in sc.workloads if w.ports)
    probe = Probe(src, dst, dst.ports[0], Request("GET", "/overhead"))
    plan = session._plan(probe)
    curl = shutil.which("curl") or "curl"
    target = session.target
    bare, full = [], []
    for _ in range(3):  # warm-up both paths
        run_curl(plan.request, curl, target.connect_timeout, target.max_time)
        session.probe([probe])
    for _ in range(runs):
        seconds, result = timed(lambda: run_curl(plan.request, curl, target.connect_timeout, target.max_time))
        if result.evidence.status != 200:
            raise SystemExit(f"bare curl failed: {result.evidence}")
        bare.append(seconds)
        seconds, (obs,) = timed(lambda: session.probe([probe]))
        if obs.outcome != "allowed" or obs.proof is None:
            raise SystemExit(f"probe failed: {obs}")
        full.append(seconds)
    return statistics.median(bare), statistics.median(full)


def machine() -> str:
    envoy = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"version: \S+?/([\d.]+)/", envoy.stdout)
    envoy_version = found.group(1) if found else "?"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout.split()[1]
    return f"{host.machine()}; Envoy {envoy_version}; curl {curl}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a rough figure in ~1-2 min)")
    args = parser.parse_args()
    runs = 2 if args.quick else 5
    header = machine()
    load_before = host.load()
    rows: list[Row] = []

    for n, goal in ((10, 1.5), (50, 2.0), (200, 8.0)):
        for mode in ("sidecar", "ambient"):
            # 200 workloads: three starts, since one start of 200 Envoys on two cores varies by a second or two
            count = 1 if args.quick and n > 10 else runs if n == 10 else max(1, runs // 2) if n == 50 else 3
            times, phases, pss = start_times(n, mode, count)
            median = statistics.median(times)
            spread = f", {min(times):.2f}–{max(times):.2f} s" if len(times) > 1 else ""
            detail = (f"median of {len(times)}{spread}; last: Envoys ready {phases.get('envoys_ready', 0):.2f} s, "
                      f"canary done {phases.get('started', 0):.2f} s")
            rows.append((f"start, {n} workloads, {mode} ({detail})", f"{median:.2f} s", f"≤ {goal:g} s",
                         verdict(median <= goal)))
            per = pss / len(scenario(n).workloads) / 1024
            mem_goal = n >= 50  # issue 14's goal is for big meshes: the binary's shared pages are split among more
            rows.append((f"memory per workload, {n} workloads, {mode} (PSS of every Envoy and the app / workloads)",
                         f"{per:.1f} MiB", "≤ 15 MiB" if mem_goal else "-", verdict(per <= 15) if mem_goal else "-"))

    target = LocalTarget()
    try:
        sc = scenario(10)
        with target.start(sc, "sidecar") as session:
            rates = throughput(session, sc, 300, runs)
            rate = statistics.median(rates)
            rows.append((f"probes/s, 300 parallel probes, sidecar (batches of up to {BATCH_SIZE} per curl process, "
                         f"{target.parallel} processes at once, median of {len(rates)})", f"{rate:.0f}", "≥ 300",
                         verdict(rate >= 300)))
            bare, full = overhead(session, sc, 20 if args.quick else 50)
            ratio = full / bare
            rows.append(("one probe vs a bare curl through the same two proxies (median latency)",
                         f"{full * 1000:.1f} / {bare * 1000:.1f} ms = {ratio:.2f}×", "≤ 2×", verdict(ratio <= 2)))
        for mode in ("sidecar", "ambient"):
            with target.start(sc, mode) as session:  # type: ignore[arg-type]
                applied, windows, stale, after = enforcement(session, sc, 7 if args.quick else 15,
                                                             5 if args.quick else 10)
                med_applied = statistics.median(applied)
                ends = [end for _, end in windows]
                starts = [start for start, _ in windows]
                med_end = statistics.median(ends)
                rows.append((f"policy change → every changed Envoy acknowledged it, {mode} (median of {len(applied)}, "
                             f"max {max(applied) * 1000:.0f} ms)", f"{med_applied * 1000:.0f} ms", "≤ 30 ms",
                             verdict(med_applied <= 0.03)))
                start = max(0.0, statistics.median(starts))  # the loop's first round starts just before the change
                rows.append((f"policy change → new requests denied, {mode} (median of {len(ends)}: the first "
                             f"all-denied probe round started {start * 1000:.0f} ms after the change and ended by)",
                             f"{med_end * 1000:.0f} ms", "-", "-"))
                rows.append((f"stale decisions after the acknowledgement, {mode} ({after} observations)",
                             str(stale), "0", verdict(stale == 0)))
    finally:  # the app host too, when a figure fails
        target.close()

    print(f"command: python benchmarks/mesh.py{' --quick' if args.quick else ''}")
    print(f"machine: {header}")
    print(f"load average (1/5/15 min): {load_before} before, {host.load()} after")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>{vwidth}}  {'goal':<9}  result")
    for name, value, goal, result in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {goal:<9}  {result}")


if __name__ == "__main__":
    main()
