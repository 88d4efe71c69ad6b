"""Engine speed: decisions per second and a large truth table, printed as figures (run on demand).

    python benchmarks/engine.py

Issue 2's bars: ≥ 100,000 decisions/s for a mesh of 50 workloads and 200 policies; a 1,000-workload ×
1,000-probe truth table predicted in under 30 s. The policies are a realistic mix (selector and
namespace-wide ALLOW/DENY with principals, namespaces, paths, methods, ports, headers), generated with a
fixed seed so the figures are comparable between runs. Times are CPU time of this process
(time.process_time), so other load on the machine does not distort them.
"""

from __future__ import annotations

import platform
import random
import time

from conformance.engine import State, decide
from conformance.model import Manifest, MeshConfig, Port, Probe, Request, Workload
from conformance.versions import IstioVersion


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


def main() -> None:
    version = IstioVersion.parse("1.30")
    rows = []
    for mode in ("sidecar", "ambient"):
        state, workloads = world(50, 200)
        ps = probes(workloads, 20_000)
        for p in ps[:200]:  # compile the per-workload policy sets once, as a run does
            decide(state, p, mode, version)
        t0 = time.process_time()
        for p in ps:
            decide(state, p, mode, version)
        rate = len(ps) / (time.process_time() - t0)
        rows.append((f"decisions/s, 50 workloads × 200 policies, {mode}", f"{rate:,.0f}", "≥ 100,000"))
    state, workloads = world(1000, 2000)
    ps = probes(workloads, 1000)
    t0 = time.process_time()
    for p in ps:
        decide(state, p, "sidecar", version)
    rows.append(("1,000-workload × 1,000-probe truth table (sidecar), s", f"{time.process_time() - t0:.2f}", "< 30"))
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("command: python benchmarks/engine.py")
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>10}  (goal {goal})")


if __name__ == "__main__":
    main()
