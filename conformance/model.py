"""The scenario's domain types: workloads, policies as written, probes, expectations, steps.

These are plain data, shared by every part of the suite (engine, targets, plugin, reports). They carry
no Istio semantics: interpreting a policy is the engine's job, compiling it to Envoy is the local
mesh's, and the two must stay independent (DESIGN.md §6), so nothing here decides anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

Mode = Literal["sidecar", "ambient", "waypoint"]
MODES: tuple[Mode, ...] = ("sidecar", "ambient", "waypoint")
DEFAULT_MODES: tuple[Mode, ...] = ("sidecar", "ambient")
Verdict = Literal["allow", "deny"]
Protocol = Literal["HTTP", "TCP"]

# Outcome forms (DESIGN.md §2); the probe classifier produces them, the engine predicts them.
ALLOWED = "allowed"
DENIED_L7 = "denied-l7"
DENIED_L4 = "denied-l4"
DENIED_UPSTREAM = "denied-upstream"
TIMEOUT = "timeout"
ERROR = "error"
DENIAL_FORMS = (DENIED_L7, DENIED_L4, DENIED_UPSTREAM)


@dataclass(frozen=True)
class MeshConfig:
    """The mesh-wide settings a scenario may change; every default is Istio's."""

    root_namespace: str = "istio-system"
    trust_domain: str = "cluster.local"


@dataclass(frozen=True)
class Port:
    number: int
    protocol: Protocol = "HTTP"


@dataclass(frozen=True)
class Workload:
    """A pod and its Service. Identity: `<trustDomain>/ns/<namespace>/sa/<serviceAccount>`."""

    name: str
    namespace: str
    service_account: str
    labels: Mapping[str, str]
    ports: tuple[Port, ...] = ()
    in_mesh: bool = True

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def identity(self, trust_domain: str) -> str:
        return f"{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)

    def __hash__(self) -> int:
        return hash(self.ref)


@dataclass(frozen=True)
class Waypoint:
    """A waypoint proxy serving every Service of its namespace; its service account is its name."""

    name: str
    namespace: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_account(self) -> str:
        return self.name

    def identity(self, trust_domain: str) -> str:
        return f"{trust_domain}/ns/{self.namespace}/sa/{self.name}"


@dataclass(frozen=True)
class Manifest:
    """One Istio policy document exactly as the user wrote it (before address placeholders are filled).

    `origin` says where it came from, for error messages: the scenario step, or a referenced file and
    the document's index in it.
    """

    kind: str
    api_version: str
    name: str
    namespace: str
    body: Mapping[str, Any]
    origin: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def annotations(self) -> Mapping[str, str]:
        meta = self.body.get("metadata") or {}
        ann = meta.get("annotations") if isinstance(meta, Mapping) else None
        return ann if isinstance(ann, Mapping) else {}

    def rendered(self, addresses: Mapping[str, str]) -> Manifest:
        """This manifest with `${ip:ns/name}` placeholders replaced by the workloads' addresses."""
        return Manifest(
            self.kind, self.api_version, self.name, self.namespace,
            fill_addresses(self.body, addresses), self.origin,
        )


ADDRESS_PLACEHOLDER = re.compile(r"\$\{ip:([a-z0-9.-]+/[a-z0-9.-]+)\}")


def fill_addresses(value: Any, addresses: Mapping[str, str]) -> Any:
    """Replace every `${ip:ns/name}` in strings nested in `value` with that workload's address.

    Pod and loopback addresses are only known once a target has placed the workloads, so a scenario
    names them symbolically; unknown names are left as they are (the loader reports them).
    """
    if isinstance(value, str):
        return ADDRESS_PLACEHOLDER.sub(lambda m: addresses.get(m.group(1), m.group(0)), value)
    if isinstance(value, Mapping):
        return {k: fill_addresses(v, addresses) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_addresses(v, addresses) for v in value]
    return value


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The value of a header (names are case-insensitive); repeated headers joined with commas."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class Probe:
    """One request from a source workload to a destination workload's port."""

    source: Workload
    destination: Workload
    port: Port
    request: Request = field(default_factory=Request)

    @property
    def authority(self) -> str:
        """The Host a client sends for `http://<name>.<namespace>:<port>` (curl omits port 80)."""
        host = self.request.header("host")
        if host is not None:
            return host
        base = f"{self.destination.name}.{self.destination.namespace}"
        return base if self.port.number == 80 else f"{base}:{self.port.number}"

    @property
    def key(self) -> tuple[str, str, int, str, str, tuple[tuple[str, str], ...]]:
        """The truth-table key: the whole probe, not only source and destination."""
        r = self.request
        return (self.source.ref, self.destination.ref, self.port.number, r.method, r.path, r.headers)

    def describe(self) -> str:
        hdrs = "".join(f" -H '{k}: {v}'" for k, v in self.request.headers)
        return (
            f"{self.source.ref} → {self.destination.ref}:{self.port.number} "
            f"{self.request.method} {self.request.path}{hdrs}"
        )


@dataclass(frozen=True)
class Expectation:
    """A probe and its expected verdict per mode; `None` means: take the engine's prediction (auto)."""

    index: int
    probe: Probe
    verdicts: Mapping[Mode, Verdict | None]

    def verdict(self, mode: Mode) -> Verdict | None:
        return self.verdicts.get(mode)


@dataclass(frozen=True)
class Step:
    name: str
    policies: tuple[Manifest, ...]
    expectations: tuple[Expectation, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    modes: tuple[Mode, ...]
    mesh: MeshConfig
    workloads: tuple[Workload, ...]
    waypoints: tuple[Waypoint, ...]
    steps: tuple[Step, ...]
    waypoints_explicit: bool = False

    def workload(self, ref: str) -> Workload | None:
        return next((w for w in self.workloads if w.ref == ref), None)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.namespace for w in self.workloads))


def default_addresses(scenario: Scenario) -> dict[str, str]:
    """Synthetic addresses for predicting without a target: one per workload and waypoint.

    They come from TEST-NET-2 (198.51.100.0/24, RFC 5737) and the ones after it, so they can never be
    mistaken for a real target's addresses; a target passes its own.
    """
    refs = [w.ref for w in scenario.workloads] + [w.ref for w in scenario.waypoints]
    return {ref: f"198.51.{100 + i // 250}.{i % 250 + 1}" for i, ref in enumerate(refs)}
