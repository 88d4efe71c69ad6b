"""Namespace mapping: a scenario's namespaces become run-unique ones on a cluster, consistently.

Why: on an existing cluster everything the suite creates must live in namespaces of its own (so a run
never touches anyone's workloads and deletes exactly what it made), and on a kind cluster that runs
many scenarios one after the other, fresh names avoid waiting for the previous scenario's namespaces to
finish terminating. A scenario says `accounts`; the cluster gets `az7k2q1-accounts`.

Renaming a namespace changes identities (`cluster.local/ns/<ns>/sa/<sa>`), so every place a policy
names a namespace is rewritten the same way, and the proxies' records are mapped back:

- `metadata.namespace` (not the mesh root namespace: it is special and never renamed);
- `source.namespaces` / `notNamespaces` and `when: source.namespace` values: exact `N` -> `P+N`,
  prefix `N*` -> `P+N*`, suffix `*N` and `*` unchanged (a prefixed name ends the same way);
- `principals` / `notPrincipals` and `when: source.principal`: the namespace segment after `/ns/`;
- `serviceAccounts` / `notServiceAccounts` and `when: source.serviceAccount` (`ns/sa`): the namespace;
- `hosts` / `notHosts`: `<svc>.<ns>[.svc...][:port]` host names;
- `targetRefs[].namespace` / `targetRef.namespace`;
- a CUSTOM policy's `provider.name`: each session adds its providers to the mesh config under its own
  prefix (meshconfig.py), so concurrent sessions never share one.

Selectors (`matchLabels`) are left as written: workloads keep their labels, so a selector keeps
selecting the same pods. The map is shown in reports and reversible (`scenario_namespace`).
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from conformance.errors import TargetError
from conformance.model import Manifest, Scenario, Step

MAX_NAMESPACE = 63  # a DNS-1123 label
PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?-$")
RUN_LABEL = "authz-conformance/run"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "authz-conformance"


def new_prefix(base: str = "az") -> str:
    """A run-unique prefix: `az` + 6 random base-36 characters + `-` (36^6 ≈ 2·10^9 runs)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return base + "".join(secrets.choice(alphabet) for _ in range(6)) + "-"


def session_prefix(base: str | None, number: int) -> str:
    """The prefix of one scenario x mode session: fresh random, or `--namespace-prefix` + a counter
    (so two scenarios never share a namespace, even while the previous one is still terminating)."""
    if not base:
        return new_prefix()
    return f"{base.rstrip('-')}{number}-"


class SessionPrefixes:
    """The prefixes a target hands its sessions in turn (one counter, shared by the kind and cluster targets)."""

    def __init__(self, base: str | None):
        self.base = base
        self.count = 0
        self._lock = threading.Lock()  # sessions start side by side (schedule.py)

    def next(self) -> str:
        with self._lock:
            self.count += 1
            count = self.count
        return session_prefix(self.base, count)


# The ports Istio's proxy uses itself ("Ports used by Istio", https://istio.io/latest/docs/ops/deployment/
# requirements/#ports-used-by-istio: admin, outbound, debug, inbound, HBONE, merged and Envoy metrics, health,
# DNS): an ingress gateway's Envoy binds its Gateway servers' ports in the same pod, beside its own.
ISTIO_PROXY_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090})


def not_built_for_clusters(scenario: Scenario) -> str | None:
    """Why the cluster targets cannot run this scenario, or None. Refused before any cluster is made, as a skip
    naming it; the planner lists it as not planned.

    Ingress gateways are built (render.py) and probed (session.py). What a cluster cannot do that the local mesh
    can is listen with a gateway on a port its own proxy already holds: a Gateway server on one of Istio's ports
    (`ISTIO_PROXY_PORTS`) would collide with the injected proxy's own listener. (Client addresses need no refusal:
    a client pod reaches the gateway's Service from its pod address, which `${ip:...}` names, and the scenarios'
    literal X-Forwarded-For entries are sent as written; session.py checks at start that no pod address falls in
    a literal address block a policy names, which the written verdicts assume.)"""
    for w in scenario.workloads:
        clash = sorted(p.number for p in w.ports if p.number in ISTIO_PROXY_PORTS) if w.is_gateway else []
        if clash:
            return (f"the ingress gateway {w.ref} listens on port(s) {', '.join(map(str, clash))}, which Istio's "
                    "proxy in the gateway pod uses itself (istio.io \"Ports used by Istio\")")
    return None


def mesh_wide_policies(scenario: Scenario, step: Step) -> list[Manifest]:
    """The step's policies in the mesh root namespace, where each one reaches every workload of the cluster.

    istiod reads the root namespace (MeshConfig.rootNamespace) as mesh-wide for every policy kind it holds:
    AuthorizationPolicy (pilot/pkg/model/authorization.go, `ListAuthorizationPolicies`: the root
    namespace's policies are added for every workload, selector matched against its labels) and
    Peer/RequestAuthentication (pilot/pkg/model/authentication.go, `getConfigsForWorkload` with the root
    namespace), at 1.30.3. While one is in force, its scenario cannot share the cluster with another one:
    it would change the other's verdicts (schedule.py runs it alone; plan.py estimates it so).
    """
    return [m for m in step.policies if m.namespace == scenario.mesh.root_namespace]


@dataclass(frozen=True)
class NamespaceMap:
    """Scenario namespace <-> cluster namespace, by prefixing. `prefix=""` is the identity map."""

    prefix: str
    namespaces: frozenset[str]  # the scenario's namespaces that are renamed
    root_namespace: str = "istio-system"

    @classmethod
    def for_scenario(cls, scenario: Scenario, prefix: str) -> NamespaceMap:
        """Every namespace the scenario places something in (workloads, waypoints, policies), but the root."""
        if prefix and not PREFIX_RE.match(prefix):
            raise TargetError(f"namespace prefix {prefix!r} must be a DNS label start ending in '-'")
        root = scenario.mesh.root_namespace
        names = {w.namespace for w in scenario.workloads} | {w.namespace for w in scenario.waypoints}
        names |= {m.namespace for step in scenario.steps for m in step.policies}
        for w in (*scenario.workloads, *scenario.waypoints):
            if w.namespace == root:
                what = "waypoint" if w in scenario.waypoints else "workload"
                raise TargetError(f"{what} {w.namespace}/{w.name} lives in the mesh root namespace {root}: a cluster "
                                  "target cannot place it there (every policy in it is mesh-wide, and the run "
                                  "would label, then delete, the namespace Istio runs in)")
        names.discard(root)
        for name in names:
            if len(prefix + name) > MAX_NAMESPACE:
                raise TargetError(f"namespace {name!r} is too long for the prefix {prefix!r} "
                                  f"({len(prefix + name)} > {MAX_NAMESPACE} characters)")
        return cls(prefix, frozenset(names), root)

    # -- names ----------------------------------------------------------------------------------
    def cluster_namespace(self, namespace: str) -> str:
        return self.prefix + namespace if namespace in self.namespaces else namespace

    def scenario_namespace(self, namespace: str) -> str:
        if self.prefix and namespace.startswith(self.prefix) and namespace[len(self.prefix):] in self.namespaces:
            return namespace[len(self.prefix):]
        return namespace

    def cluster_ref(self, ref: str) -> str:
        ns, _, name = ref.partition("/")
        return f"{self.cluster_namespace(ns)}/{name}"

    def scenario_ref(self, ref: str) -> str:
        ns, _, name = ref.partition("/")
        return f"{self.scenario_namespace(ns)}/{name}"

    def table(self) -> list[tuple[str, str]]:
        """(scenario namespace, cluster namespace) pairs, for reports."""
        return [(ns, self.cluster_namespace(ns)) for ns in sorted(self.namespaces)]

    def describe(self) -> str:
        return ", ".join(f"{a} → {b}" for a, b in self.table()) or "(no namespaces)"

    def provider_name(self, name: str) -> str:
        """An extension provider's name as the session registers it in the mesh config (meshconfig.py)."""
        return self.prefix + name

    # -- values inside policies ---------------------------------------------------------------------
    def namespace_value(self, value: str) -> str:
        """A `namespaces` value: exact, prefix (`N*`), suffix (`*N`) or presence (`*`)."""
        if not self.prefix or value == "*":
            return value
        if value.startswith("*"):
            return value
        if value.endswith("*"):
            return self.prefix + value
        return self.cluster_namespace(value)

    def principal_value(self, value: str) -> str:
        """A principal (`<td>/ns/<ns>/sa/<sa>`) or a prefix (`X*`) / suffix (`*X`) pattern of one."""
        if not self.prefix or value == "*":
            return value
        if value.endswith("*") and not value.startswith("*"):
            # Prefix pattern: once it reaches past `/ns/`, the prefix goes in front of the namespace.
            idx = value.find("/ns/")
            if idx < 0:
                return value
            head, tail = value[: idx + 4], value[idx + 4 :]
            seg, slash, rest = tail.partition("/")
            if slash:  # the whole namespace segment is written out
                return head + self.cluster_namespace(seg) + slash + rest
            return head + self.prefix + tail
        # Exact value or suffix pattern: the segment before `/sa/` is the namespace when it is whole
        # (a `/` before it); a partial one (`*nance/sa/curl`) ends the same way once prefixed.
        idx = value.rfind("/sa/")
        if idx < 0:
            return value
        before = value[:idx]
        cut = before.rfind("/")
        if cut < 0:
            return value
        seg = before[cut + 1 :]
        return before[: cut + 1] + self.cluster_namespace(seg) + value[idx:]

    def service_account_value(self, value: str) -> str:
        """A `serviceAccounts` value, `<ns>/<sa>`."""
        ns, slash, sa = value.partition("/")
        return self.cluster_namespace(ns) + slash + sa if slash else value

    def host_value(self, value: str) -> str:
        """A host name `<svc>.<ns>[.svc.cluster.local][:port]` (also `*.<ns>...`)."""
        if not self.prefix:
            return value
        labels = value.split(".")
        if len(labels) < 2:
            return value
        ns, colon, port = labels[1].partition(":")
        first = labels[0]
        if ns in self.namespaces and first and (first == "*" or "*" not in first):
            labels[1] = self.prefix + ns + colon + port
        return ".".join(labels)

    # -- whole documents ------------------------------------------------------------------------
    def policy_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A policy document with every namespace reference renamed (see the module docstring)."""
        doc = copy.deepcopy(dict(body))
        meta = doc.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("namespace"), str):
            meta["namespace"] = self.cluster_namespace(meta["namespace"])
        spec = doc.get("spec")
        if not isinstance(spec, dict) or not self.prefix:
            return doc
        for ref in _refs(spec):
            if isinstance(ref.get("namespace"), str):
                ref["namespace"] = self.cluster_namespace(ref["namespace"])
        provider = spec.get("provider")
        if spec.get("action") == "CUSTOM" and isinstance(provider, dict) and isinstance(provider.get("name"), str):
            provider["name"] = self.provider_name(provider["name"])
        for rule in spec.get("rules") or []:
            if not isinstance(rule, dict):
                continue
            for frm in rule.get("from") or []:
                source = frm.get("source") if isinstance(frm, dict) else None
                if isinstance(source, dict):
                    _map_list(source, ("namespaces", "notNamespaces"), self.namespace_value)
                    _map_list(source, ("principals", "notPrincipals"), self.principal_value)
                    _map_list(source, ("serviceAccounts", "notServiceAccounts"), self.service_account_value)
            for to in rule.get("to") or []:
                op = to.get("operation") if isinstance(to, dict) else None
                if isinstance(op, dict):
                    _map_list(op, ("hosts", "notHosts"), self.host_value)
            for cond in rule.get("when") or []:
                if not isinstance(cond, dict):
                    continue
                key = cond.get("key")
                fn = {"source.namespace": self.namespace_value, "source.principal": self.principal_value,
                      "source.serviceAccount": self.service_account_value}.get(key)
                if fn is not None:
                    _map_list(cond, ("values", "notValues"), fn)
        return doc

    def manifest(self, manifest: Manifest) -> Manifest:
        body = self.policy_body(manifest.body)
        return Manifest(manifest.kind, manifest.api_version, manifest.name,
                        self.cluster_namespace(manifest.namespace), body, manifest.origin)

    def check_consistent(self, scenario: Scenario, manifests: Iterable[Manifest]) -> None:
        """Refuse what cannot be renamed consistently: a suffix namespace pattern reaching into the prefix.

        `*-accounts` matches `accounts`? No; `az12-accounts`? Yes: such a pattern would start matching
        after the rename, so the run would not test what the scenario says.
        """
        if not self.prefix:
            return
        names = self.namespaces | {w.namespace for w in scenario.workloads}
        for m in manifests:
            for value in _namespace_values(m.body):
                if value.startswith("*") and value != "*":
                    suffix = value[1:]
                    for ns in names:
                        if ns.endswith(suffix) != self.cluster_namespace(ns).endswith(suffix):
                            raise TargetError(
                                f"{m.origin}: the namespace pattern {value!r} cannot be kept meaning the same "
                                f"after namespaces are prefixed with {self.prefix!r} (it would match "
                                f"{self.cluster_namespace(ns)!r} but not {ns!r})")


def _refs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    refs = [r for r in spec.get("targetRefs") or [] if isinstance(r, dict)]
    if isinstance(spec.get("targetRef"), dict):
        refs.append(spec["targetRef"])
    return refs


def _map_list(block: dict[str, Any], keys: tuple[str, ...], fn: Any) -> None:
    for key in keys:
        values = block.get(key)
        if isinstance(values, list):
            block[key] = [fn(v) if isinstance(v, str) else v for v in values]


def _namespace_values(body: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return out
    for rule in spec.get("rules") or []:
        if not isinstance(rule, Mapping):
            continue
        for frm in rule.get("from") or []:
            source = frm.get("source") if isinstance(frm, Mapping) else None
            if isinstance(source, Mapping):
                for key in ("namespaces", "notNamespaces"):
                    out += [v for v in source.get(key) or [] if isinstance(v, str)]
        for cond in rule.get("when") or []:
            if isinstance(cond, Mapping) and cond.get("key") == "source.namespace":
                for key in ("values", "notValues"):
                    out += [v for v in cond.get(key) or [] if isinstance(v, str)]
    return out
