"""The small world the local-mesh tests run in: workloads and hand-built policies, no scenario files.

Kept independent of the scenario loader so that these tests pin the local target alone. The workloads
cover what the target must handle: HTTP and TCP ports, a privileged port (80, remapped), a client-only
workload in another namespace, and an out-of-mesh workload.
"""

from __future__ import annotations

from typing import Any

from conformance.model import Manifest, MeshConfig, Port, Probe, Request, Scenario, Waypoint, Workload


def wl(ref: str, *ports: int | tuple[int, str], sa: str | None = None, mesh: bool = True) -> Workload:
    ns, name = ref.split("/")
    return Workload(
        name=name, namespace=ns, service_account=sa or name, labels={"app": name},
        ports=tuple(Port(p) if isinstance(p, int) else Port(p[0], p[1]) for p in ports),  # type: ignore[arg-type]
        in_mesh=mesh,
    )


FRONTEND = wl("default/frontend", 8080)
BACKEND = wl("default/backend", 80, (9000, "TCP"))
ROGUE = wl("rogue/rogue", sa="default")
OUTSIDER = wl("legacy/outsider", mesh=False)
WORKLOADS = (FRONTEND, BACKEND, ROGUE, OUTSIDER)


WAYPOINT = Waypoint("waypoint", "default")


def scenario(*workloads: Workload, name: str = "local-mesh-test", waypoints: tuple[Waypoint, ...] = ()) -> Scenario:
    return Scenario(
        name=name, description="", path=f"{name}.yaml", modes=("sidecar", "ambient", "waypoint"),
        mesh=MeshConfig(), workloads=workloads or WORKLOADS, waypoints=waypoints, steps=(),
    )


def policy(name: str, namespace: str, spec: dict[str, Any], kind: str = "AuthorizationPolicy") -> Manifest:
    body = {
        "apiVersion": "security.istio.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace}, "spec": spec,
    }
    return Manifest(kind, "security.istio.io/v1", name, namespace, body, f"test {name}")


def strict(namespace: str = "default") -> Manifest:
    return policy("strict", namespace, {"mtls": {"mode": "STRICT"}}, kind="PeerAuthentication")


def probe(src: Workload, dst: Workload, port: int | None = None, method: str = "GET", path: str = "/",
          headers: tuple[tuple[str, str], ...] = ()) -> Probe:
    number = port if port is not None else dst.ports[0].number
    chosen = dst.port(number)
    assert chosen is not None, f"{dst.ref} has no port {number}"
    return Probe(src, dst, chosen, Request(method, path, headers))


def echo(body: str) -> dict[str, Any]:
    """The app's JSON echo (the line after `<ns>/<name> responding`)."""
    import json

    return json.loads(body.split("\n", 1)[1])
