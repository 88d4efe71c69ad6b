"""Proof per probe under load: many sidecar TCP denials, each of which must come with its record (run on demand).

    python benchmarks/proofs.py [--rounds N] [--per-round K] [--beside M]

Why: a sidecar TCP denial is proven through a chain of records in two Envoys (curl's connection at the client
sidecar, then the server sidecar's record of the upstream connection it opened), tied by addresses and each Envoy's
own clock. Under load those clocks were read out of order, and 18 of 18,000 correct denials came out "without proof"
(mesh.py `_upstream_records`). This keeps `M` runs of `pytest policies` beside the probing, as the load that showed
it, and prints how many denials lacked a proof; the goal is 0. It is a figure, not a test: it depends on the load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import host  # benchmarks/host.py: a script's own directory is on sys.path

from conformance.mesh.local.mesh import LocalTarget
from conformance.model import DENIED_L4, Manifest, MeshConfig, Port, Probe, Request, Scenario, Workload

ROOT = Path(__file__).resolve().parents[1]


def world() -> tuple[Scenario, list[Manifest], Probe]:
    client = Workload("frontend", "default", "frontend", {"app": "frontend"})
    server = Workload("backend", "default", "backend", {"app": "backend"}, (Port(9000, "TCP"),))
    scenario = Scenario("proofs", "", "proofs.yaml", ("sidecar",), MeshConfig(), (client, server), (), ())

    def manifest(kind: str, name: str, spec: dict[str, object]) -> Manifest:
        body = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": "default"},
                "spec": spec}
        return Manifest(kind, "security.istio.io/v1", name, "default", body, "bench")

    deny = {"selector": {"matchLabels": {"app": "backend"}}, "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}
    policies = [manifest("AuthorizationPolicy", "deny-default", deny),
                manifest("PeerAuthentication", "strict", {"mtls": {"mode": "STRICT"}})]
    return scenario, policies, Probe(client, server, server.ports[0], Request())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="probe rounds (default 300)")
    parser.add_argument("--per-round", type=int, default=20, help="denied TCP probes a round (default 20)")
    parser.add_argument("--beside", type=int, default=1, help="`pytest policies` runs kept going beside (default 1)")
    args = parser.parse_args()
    print("command: python benchmarks/proofs.py " + " ".join(sys.argv[1:]))
    print(host.machine())
    print("load average before:", host.load())
    scenario, policies, probe = world()
    load = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "policies"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.beside)]
    total = without = wrong = 0
    try:
        with LocalTarget() as target, target.start(scenario, "sidecar") as session:
            session.apply(policies)
            t0 = time.monotonic()
            for _ in range(args.rounds):
                for obs in session.probe([probe] * args.per_round):
                    total += 1
                    wrong += obs.outcome != DENIED_L4
                    without += obs.outcome == DENIED_L4 and obs.proof is None
            seconds = time.monotonic() - t0
    finally:
        for proc in load:
            proc.terminate()
            proc.wait()
    print("load average after:", host.load())
    print(f"denied sidecar TCP probes without proof: {without} of {total} (goal 0); observed other than denied: "
          f"{wrong}; {seconds:.1f} s")
    if without or wrong:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
