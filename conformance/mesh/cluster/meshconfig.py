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

The mesh config is also read, never written, for an ingress gateway's `gatewayTopology.numTrustedProxies`
(`effective_trusted_proxies`): the mesh's `defaultConfig` is every proxy's ProxyConfig, the gateway pod's
`proxy.istio.io/config` annotation is merged over it, and the session refuses a scenario whose gateway would run
with another value than the scenario's (session.py `_check_gateway_topology`).
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
GATEWAY_TOPOLOGY = "gatewayTopology"
NUM_TRUSTED_PROXIES = "numTrustedProxies"


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


def _topology(proxy_config: Any, where: str) -> tuple[bool, int]:
    """Whether a ProxyConfig mapping carries `gatewayTopology`, and its numTrustedProxies (proto3: 0 when unset)."""
    if proxy_config is None:
        return False, 0
    if not isinstance(proxy_config, Mapping):
        raise TargetError(f"{where} is not a mapping (a ProxyConfig)")
    if GATEWAY_TOPOLOGY not in proxy_config or proxy_config[GATEWAY_TOPOLOGY] is None:
        # a JSON null is skipped by the decoder, as if absent (golang/protobuf@v1.5.4 jsonpb/decode.go l.338)
        return False, 0
    topology = proxy_config[GATEWAY_TOPOLOGY]
    if not isinstance(topology, Mapping):
        raise TargetError(f"{where}: {GATEWAY_TOPOLOGY} is not a mapping")
    n = topology.get(NUM_TRUSTED_PROXIES, 0)
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TargetError(f"{where}: {GATEWAY_TOPOLOGY}.{NUM_TRUSTED_PROXIES} is {n!r}, not a non-negative integer")
    return True, n


def default_trusted_proxies(mesh_text: str) -> int:
    """`defaultConfig.gatewayTopology.numTrustedProxies` of a mesh config text (0 when unset: Istio's default,
    pkg/config/mesh/mesh.go@release-1.30 DefaultProxyConfig sets no gatewayTopology)."""
    return _topology(_parse(mesh_text).get("defaultConfig"), "the mesh config's defaultConfig")[1]


def effective_trusted_proxies(mesh_text: str, annotation: str | None) -> int:
    """The numTrustedProxies a gateway pod runs with: the mesh's `defaultConfig`, with the pod's
    `proxy.istio.io/config` annotation (YAML or JSON) merged over it as Istio merges it.

    pilot-agent builds its ProxyConfig from the mesh config, the injector's PROXY_CONFIG, then the annotation, last
    (pilot/cmd/pilot-agent/config/config.go@release-1.30 getMeshConfig l.114-143, the comment: "Merging is done by
    replacement. Any fields present in the overlay will replace those existing fields"); istiod builds the gateway's
    xff_num_trusted_hops from that ProxyConfig, sent in the node metadata (pilot/pkg/networking/core/gateway.go l.131,
    l.724-725). Each merge is mesh.MergeProxyConfig (pkg/config/mesh/mesh.go l.146-156), protomarshal.ApplyYAML, i.e.
    golang/protobuf@v1.5.4 jsonpb (istio go.mod), whose decoder sets every field present in the input to a value
    decoded into a *new* field (jsonpb/decode.go l.336-345: `m.NewField(fd)` ... `m.Set(fd, v)`): a message field is
    replaced whole, never merged. So an annotation with `gatewayTopology` wins with its own numTrustedProxies, 0
    included, and one without it leaves the mesh's (mesh.go's correctProxyHeaders exists for that very reason: it
    restores what replacing proxyHeaders drops). The same lines hold on release-1.29 and release-1.31.
    """
    present, n = _topology(_parse_proxy_config(annotation), "the proxy.istio.io/config annotation")
    return n if present else default_trusted_proxies(mesh_text)


def _parse_proxy_config(text: str | None) -> Any:
    if not text:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TargetError(f"the proxy.istio.io/config annotation is not YAML or JSON: {exc}") from exc


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
