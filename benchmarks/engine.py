"""Engine speed: decisions per second and an all-pairs matrix, each printed with its goal (run on demand).

    python benchmarks/engine.py [--repeats 5] [--rows N]

Issue 14's goals: ≥ 150,000 decisions/s on one core for a mesh of 50 workloads and 200 policies (sidecar and
ambient mode), and an all-pairs matrix for 2,000 workloads × 500 policies (every workload to every port of every
workload with one request, the matrix `init` and `snapshot` meet on a big cluster: 8,000,000 cells) in ≤ 30 s.
Issue 2's 1,000-workload × 1,000-probe truth table (< 30 s) is kept as a regression figure.

The policies are a realistic mix (selector and namespace-wide ALLOW/DENY with principals, namespaces, paths,
methods, ports, headers), generated with a fixed seed so the figures are comparable between runs. Times are CPU
time of this process (time.process_time), and each rate is the best of `--repeats` runs: the machine is shared,
and other processes slow a run down (caches, frequency) even in CPU time, never speed it up, so the fastest run is
the one that says most about the engine (timeit's rule). The machine, its core count and its load average before
and after are printed with the figures, because they are only comparable on the same machine under similar load.

`--rows N` times only the first N destinations of the matrix and extrapolates (said so in the output): for a quick
look, or for an engine without fast.decide_matrix, where every cell is a decide() call.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import host  # benchmarks/host.py: a script's own directory is on sys.path

from conformance.engine import State, decide
from conformance.model import Manifest, MeshConfig, Mode, Port, Probe, Request, Workload
from conformance.versions import IstioVersion

try:  # the all-pairs entry point (issue 14); an older engine has only decide()
    from conformance.engine.fast import decide_matrix
except ImportError:  # pragma: no cover - for measuring an engine from before it
    decide_matrix = None  # type: ignore[assignment]


def world(n_workloads: int, n_policies: int, seed: int = 7) -> tuple[State, list[Workload]]:
    rnd = random.Random(seed)
    namespaces = [f"ns{i}" for i in range(max(1, n_workloads // 5))]
    workloads = [Workload(f"w{i}", namespaces[i % len(namespaces)], f"sa{i}", {"app": f"w{i}", "tier": f"t{i % 3}"},
                          (Port(8080), Port(9000, "TCP"))) for i in range(n_workloads)]
    manifests = []
    for i in range(n_policies):
        ns = rnd.choice(namespaces)
        src = rnd.choice(workloads)
        rule: dict = {"from": [{"source": rnd.choice([
            {"principals": [src.identity("cluster.local")]},
            {"namespaces": [rnd.choice(namespaces)]},
            {"notNamespaces": [rnd.choice(namespaces)], "principals": ["*"]},
        ])}]}
        if rnd.random() < 0.6:
            rule["to"] = [{"operation": rnd.choice([
                {"methods": ["GET", "HEAD"], "paths": ["/api/*"]},
                {"ports": ["8080"]},
                {"paths": ["/admin*"], "notMethods": ["GET"]},
            ])}]
        if rnd.random() < 0.3:
            rule["when"] = [{"key": "request.headers[x-team]", "values": ["a*"]}]
        spec: dict = {"action": rnd.choice(["ALLOW", "ALLOW", "DENY"]), "rules": [rule]}
        if rnd.random() < 0.7:
            spec["selector"] = {"matchLabels": {"tier": f"t{rnd.randrange(3)}"}}
        body = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": f"p{i}", "namespace": ns}, "spec": spec}
        manifests.append(Manifest("AuthorizationPolicy", "security.istio.io/v1", f"p{i}", ns, body, "bench"))
    addresses = {w.ref: f"10.{i // 250}.{i % 250}.1" for i, w in enumerate(workloads)}
    return State(MeshConfig(), tuple(workloads), (), tuple(manifests), addresses), workloads


def probes(workloads: list[Workload], count: int, seed: int = 11) -> list[Probe]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        dst = rnd.choice(workloads)
        out.append(Probe(rnd.choice(workloads), dst, rnd.choice(dst.ports),
                         Request(rnd.choice(["GET", "POST"]), rnd.choice(["/", "/api/v1", "/admin/x"]),
                                 (("x-team", rnd.choice(["a1", "b"])),))))
    return out


def best(repeats: int, run: Callable[[], object]) -> float:
    """The fastest of `repeats` runs, in CPU seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        run()
        times.append(time.process_time() - t0)
    return min(times)


def decisions_per_second(mode: Mode, version: IstioVersion, repeats: int) -> float:
    state, workloads = world(50, 200)
    ps = probes(workloads, 20_000)
    for p in ps[:200]:  # compile the per-workload policy sets once, as a run does
        decide(state, p, mode, version)

    def run() -> None:
        for p in ps:
            decide(state, p, mode, version)

    return len(ps) / best(repeats, run)


def matrix_seconds(mode: Mode, version: IstioVersion, rows: int | None) -> tuple[float, int, str]:
    """CPU seconds for the 2,000 × 500 all-pairs matrix, compiling the state included; the cell count; how."""
    t0 = time.process_time()
    state, workloads = world(2000, 500)
    destinations = workloads if rows is None else workloads[:rows]
    cells = 0
    request = Request()
    if decide_matrix is not None:
        for _, _, row in decide_matrix(state, workloads, destinations, mode, version, request):
            cells += len(row)
        how = "decide_matrix"
    else:
        for dst in destinations:
            for port in dst.ports:
                for src in workloads:
                    decide(state, Probe(src, dst, port, request), mode, version)
                    cells += 1
        how = "decide() per cell"
    seconds = time.process_time() - t0
    if rows is not None and rows < len(workloads):
        scale = len(workloads) / rows
        return seconds * scale, int(cells * scale), f"{how}, extrapolated from {rows} of {len(workloads)} rows"
    return seconds, cells, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per rate; the fastest counts (default 5)")
    parser.add_argument("--rows", type=int, default=None, help="time only the matrix's first N destinations")
    args = parser.parse_args()
    version = IstioVersion.parse("1.30")
    print(f"machine: {host.machine()}")
    print(f"load average before: {host.load()}")
    rows: list[tuple[str, str, str, bool]] = []
    for mode in ("sidecar", "ambient"):
        rate = decisions_per_second(mode, version, args.repeats)  # type: ignore[arg-type]
        rows.append((f"decisions/s, 50 workloads × 200 policies, {mode} (best of {args.repeats})", f"{rate:,.0f}",
                     "≥ 150,000", rate >= 150_000))
    for mode in ("sidecar", "ambient"):
        seconds, cells, how = matrix_seconds(mode, version, args.rows)  # type: ignore[arg-type]
        rows.append((f"all-pairs matrix, 2,000 workloads × 500 policies, {mode}: {cells:,} cells ({how}), s",
                     f"{seconds:.1f}", "≤ 30", seconds <= 30))
    state, workloads = world(1000, 2000)
    ps = probes(workloads, 1000)
    t0 = time.process_time()
    for p in ps:
        decide(state, p, "sidecar", version)
    seconds = time.process_time() - t0
    rows.append(("1,000-workload × 1,000-probe truth table (sidecar), s", f"{seconds:.2f}", "< 30", seconds < 30))
    print(f"load average after: {host.load()}")
    print("command: python benchmarks/engine.py" + (f" --rows {args.rows}" if args.rows else "")
          + (f" --repeats {args.repeats}" if args.repeats != 5 else ""))
    width = max(len(r[0]) for r in rows)
    for name, value, goal, met in rows:
        print(f"{name:<{width}}  {value:>10}  goal {goal:<10} {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
