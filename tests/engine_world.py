"""A small world for engine tests: workloads, addresses and policies built inline, no scenario files.

Kept apart from the loader on purpose: these tests pin the engine's semantics, whatever the file format.
"""

from __future__ import annotations

from typing import Any

import yaml

from conformance.engine import Decision, State, decide, explain
from conformance.model import Manifest, MeshConfig, Mode, Port, Probe, Request, Waypoint, Workload
from conformance.versions import IstioVersion

V130 = IstioVersion.parse("1.30")


def wl(ref: str, *ports: int | tuple[int, str], sa: str | None = None, labels: dict[str, str] | None = None,
       mesh: bool = True) -> Workload:
    ns, name = ref.split("/")
    return Workload(
        name=name, namespace=ns, service_account=sa or name, labels=labels or {"app": name},
        ports=tuple(Port(p) if isinstance(p, int) else Port(p[0], p[1]) for p in ports),  # type: ignore[arg-type]
        in_mesh=mesh,
    )


BACKEND = wl("default/backend", 8080, (9000, "TCP"), 80)
FRONTEND = wl("default/frontend")
ROGUE = wl("rogue/rogue", sa="default")
FINANCE = wl("finance/app", sa="app")
OUTSIDER = wl("legacy/outsider", mesh=False)
WORKLOADS = (BACKEND, FRONTEND, ROGUE, FINANCE, OUTSIDER)
ADDRESSES = {w.ref: f"10.0.0.{i + 1}" for i, w in enumerate(WORKLOADS)} | {"default/waypoint": "10.0.0.100"}


def policies(text: str) -> tuple[Manifest, ...]:
    out = []
    for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d):
        meta = doc["metadata"]
        out.append(Manifest(doc["kind"], doc["apiVersion"], meta["name"], meta["namespace"], doc, f"doc {i}"))
    return tuple(out)


def state(text: str = "", *, trust_domain: str = "cluster.local", waypoints: tuple[Waypoint, ...] = (),
          workloads: tuple[Workload, ...] = WORKLOADS) -> State:
    return State(
        mesh=MeshConfig(trust_domain=trust_domain), workloads=workloads, waypoints=waypoints,
        policies=policies(text), addresses=ADDRESSES,
    )


def probe(src: Workload, dst: Workload = BACKEND, port: int = 8080, method: str = "GET", path: str = "/",
          headers: dict[str, str] | None = None) -> Probe:
    p = dst.port(port)
    assert p is not None
    return Probe(src, dst, p, Request(method, path, tuple((headers or {}).items())))


def verdict(s: State, p: Probe, mode: Mode = "sidecar", version: IstioVersion = V130) -> str:
    return decide(s, p, mode, version).verdict


def why(s: State, p: Probe, mode: Mode = "sidecar", version: IstioVersion = V130) -> Decision:
    return explain(s, p, mode, version)


def ap(name: str, spec: dict[str, Any], ns: str = "default", annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": meta, "spec": spec}) + "---\n"


def pa(name: str, mode: str | None, ns: str = "default", selector: dict[str, str] | None = None,
       ports: dict[int, str] | None = None) -> str:
    """A PeerAuthentication; `mode` None leaves `mtls` out (UNSET), `ports` is its portLevelMtls."""
    spec: dict[str, Any] = {"mtls": {"mode": mode}} if mode is not None else {}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec}) + "---\n"
