"""The mesh config's `extensionProviders` on a cluster: a session adds its CUSTOM providers, then takes them out.

A CUSTOM AuthorizationPolicy names a provider of `meshConfig.extensionProviders`; istiod builds the ext_authz
filter from it, or, when no provider has that name, an RBAC DENY of the rule's requests
(`-deny-due-to-bad-CUSTOM-action`, pilot/pkg/security/authz/builder/builder.go@1.30.3). So before a scenario's
CUSTOM policies are applied, the mesh config must hold its providers, pointing at its own ext-authz workload.

Where they are written, and why not at install: istiod reads the mesh config from the `istio` ConfigMap of
its namespace (`istio-<revision>` for a revisioned istiod), key `mesh` (pilot/pkg/bootstrap/mesh.go@1.30.3
`getMeshConfigMapName`; the file it mounts is that ConfigMap), and reloads it when it changes. This is
also what Istio's own External Authorization task has users do (`kubectl edit configmap istio -n
istio-system`, istio.io tasks/security/authorization/authz-custom). A provider's `service` names the
ext-authz Service in the session's own, run-unique namespace (naming.py), known only when the session
starts, so a provider is added by its session and removed at its close, on kind and on an existing cluster
alike; on an existing cluster only with the user's opt-in (`--allow-mesh-config-update`).

Each session's providers are renamed `<session prefix><name>` (CUSTOM policies' `provider.name` is mapped the
same way, naming.py), so sessions side by side never share or overwrite one; the ConfigMap is updated by
read-modify-write with its resourceVersion (a concurrent writer's 409 Conflict is retried), and everything
else in the mesh config is kept as it was.

istiod's own answer says when the providers are in force: its debug endpoint `/debug/mesh` ("Active mesh
config", pilot/pkg/xds/debug.go@1.30.3, port 15014) read through the API server's pod proxy, on every ready
istiod pod of the revision. Kubelet refreshes a mounted ConfigMap within its sync period (about a minute),
so this wait, not a sleep, is what makes the first CUSTOM step meaningful.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from conformance.errors import TargetError
from conformance.mesh.cluster.kube import ReplaceConflict
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import ExtensionProvider

MESH_KEY = "mesh"  # the ConfigMap key istiod reads (pkg/config/mesh/kubemesh MeshConfigKey)
ISTIOD_DEBUG_PORT = 15014  # istiod's HTTP monitoring and debug port (manifests istiod Service http-monitoring)
DEBUG_MESH_PATH = "debug/mesh"
CONFLICT_ATTEMPTS = 8


def mesh_configmap_name(revision: str | None) -> str:
    """The ConfigMap a revision's istiod reads (bootstrap/mesh.go getMeshConfigMapName)."""
    return "istio" if revision in (None, "", "default") else f"istio-{revision}"


def istiod_selector(revision: str | None) -> str:
    """The label selector of a revision's istiod pods: the istiod chart labels its pod template `app: istiod`,
    `istio.io/rev: {{ .Values.revision | default "default" }}` (manifests/charts/istio-control/istio-discovery/
    templates/deployment.yaml@release-1.30 l.46-47)."""
    return "app=istiod,istio.io/rev=" + (revision or "default")


def mapped_service(service: str, nsmap: NamespaceMap) -> str:
    """A provider's `[<namespace>/]<hostname>` with the scenario's namespaces renamed (LookupCluster reads both
    parts, pilot/pkg/model/telemetry_logging.go@1.30.3)."""
    namespace, slash, host = service.partition("/")
    if not slash:
        return nsmap.host_value(service)
    return f"{nsmap.cluster_namespace(namespace)}/{nsmap.host_value(host)}"


def session_providers(providers: Iterable[ExtensionProvider], nsmap: NamespaceMap) -> list[dict[str, Any]]:
    """The session's providers as mesh config entries: names prefixed, services in its namespaces."""
    return [p.mesh_config_entry(nsmap.provider_name(p.name), mapped_service(p.service, nsmap)) for p in providers]


def with_providers(mesh_text: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """The mesh config text with `entries` added (an entry of the same name is replaced), all else kept."""
    mesh = _parse(mesh_text)
    names = {e["name"] for e in entries}
    kept = [e for e in mesh.get("extensionProviders") or [] if not (isinstance(e, Mapping) and e.get("name") in names)]
    mesh["extensionProviders"] = [*kept, *(dict(e) for e in entries)]
    return yaml.safe_dump(mesh, sort_keys=False)


def without_providers(mesh_text: str, names: Iterable[str]) -> str | None:
    """The mesh config text without the providers named `names`, or None when it holds none of them."""
    mesh = _parse(mesh_text)
    drop = set(names)
    current = mesh.get("extensionProviders") or []
    kept = [e for e in current if not (isinstance(e, Mapping) and e.get("name") in drop)]
    if len(kept) == len(current):
        return None
    if kept:
        mesh["extensionProviders"] = kept
    else:
        mesh.pop("extensionProviders", None)
    return yaml.safe_dump(mesh, sort_keys=False)


def active_provider_names(debug_mesh: str) -> set[str]:
    """The provider names in istiod's `/debug/mesh` answer (the active MeshConfig as JSON, protojson field
    names), or an empty set when it is not that."""
    try:
        mesh = json.loads(debug_mesh)
    except ValueError:
        return set()
    providers = mesh.get("extensionProviders") if isinstance(mesh, dict) else None
    return {str(p.get("name")) for p in providers or [] if isinstance(p, dict) and p.get("name")}


def _parse(text: str) -> dict[str, Any]:
    try:
        mesh = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        raise TargetError(f"the mesh config (ConfigMap key {MESH_KEY!r}) is not YAML: {exc}") from exc
    if not isinstance(mesh, dict):
        raise TargetError(f"the mesh config (ConfigMap key {MESH_KEY!r}) is not a mapping")
    return mesh


@dataclass(frozen=True)
class MeshConfigAccess:
    """Where a cluster's mesh config lives: the ConfigMaps of the istiods in force (one per revision, two during a
    canary upgrade) in `namespace`, and the label selector of the istiod pods that must load it."""

    namespace: str
    configmaps: tuple[str, ...]
    istiod_selector: str


@dataclass
class MeshConfigWriter:
    """Adds and removes one session's providers (the session owns one; calls come from one thread at a time)."""

    access: MeshConfigAccess
    get: Callable[[str, str], dict[str, Any] | None]  # (namespace, name) -> ConfigMap
    replace: Callable[[dict[str, Any]], Any]  # PUT with metadata.resourceVersion; ReplaceConflict on 409

    def _update(self, edit: Callable[[str, str], str | None]) -> list[str]:
        changed = []
        for name in self.access.configmaps:
            for _attempt in range(CONFLICT_ATTEMPTS):
                cm = self.get(self.access.namespace, name)
                if cm is None:
                    raise TargetError(f"the mesh config ConfigMap {self.access.namespace}/{name} does not exist")
                data = dict(cm.get("data") or {})
                new = edit(name, str(data.get(MESH_KEY) or ""))
                if new is None:
                    break
                data[MESH_KEY] = new
                try:
                    self.replace({**cm, "data": data})
                except ReplaceConflict:
                    continue
                changed.append(name)
                break
            else:
                raise TargetError(f"the mesh config ConfigMap {self.access.namespace}/{name} kept changing under "
                                  f"us ({CONFLICT_ATTEMPTS} conflicting writes)")
        return changed

    def __post_init__(self) -> None:
        self._originals: dict[str, str] = {}  # the text each ConfigMap had before our first change

    def add(self, entries: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add the entries to every mesh ConfigMap; returns the ConfigMaps changed."""
        def edit(name: str, text: str) -> str:
            self._originals.setdefault(name, text)
            return with_providers(text, entries)
        return self._update(edit)

    def remove(self, names: Iterable[str]) -> list[str]:
        """Take the named providers out of every mesh ConfigMap (nothing to do is fine). When nothing else changed
        meanwhile, the ConfigMap gets its original text back, comments and layout included (a GitOps or Helm
        owner sees no drift; review finding), else the re-serialised mesh config without our entries."""
        drop = list(names)

        def edit(name: str, text: str) -> str | None:
            new = without_providers(text, drop)
            original = self._originals.get(name)
            if new is not None and original is not None and _parse(new) == _parse(original):
                return original
            return new
        return self._update(edit)
