"""Rendering a scenario into Kubernetes objects, from the templates in clusters/workloads.

The templates are plain YAML skeletons a reader can check against the cluster; this module fills them
per scenario and mode (names, labels, ports, images) without any text templating, so what is applied
is always well-formed. The rules it encodes (DESIGN.md §7, issue 6):

- a namespace per scenario namespace, renamed by the run's `NamespaceMap`, carrying the mode's
  enrollment label when it holds in-mesh workloads (`istio-injection=enabled`, or the revision label,
  for sidecars; `istio.io/dataplane-mode=ambient` for ambient and waypoint) and, in waypoint mode,
  `istio.io/use-waypoint=<waypoint>`; `mesh: false` workloads sharing a namespace with in-mesh ones
  opt out per pod (`sidecar.istio.io/inject: "false"`, `istio.io/dataplane-mode: none`);
- per workload a ServiceAccount, a Deployment whose pod has the workload's labels plus the unique
  selector label `authz-conformance/workload=<name>`, and, when it serves ports, a Service selecting
  only that label, with port names `http-<port>` / `tcp-<port>` and `appProtocol`;
- the app is conformance/mesh/local/app.py itself, in a ConfigMap, run by a digest-pinned python image;
  a `kind: ext-authz` workload runs conformance/mesh/local/extauthz_server.py the same way (Istio's
  samples/extauthz behaviour, HTTP and gRPC: ext-authz-container.yaml), the ext_authz protocol of each
  port being that of the provider naming it (`Scenario.grpc_check_ports`);
- in waypoint mode a Gateway of class `istio-waypoint` per scenario waypoint;
- in mode mixed each namespace on the data plane `spec.dataplanes` gives it (`data_plane`), on one ambient
  install: a sidecar namespace the sidecar injection label, an ambient one the ambient label, a waypoint one
  the ambient label, `istio.io/use-waypoint` and its waypoint (Istio's documented migration: the ambient
  profile runs istiod's injector too, and a pod is captured by one or the other by its namespace's label);
- a `kind: ingress-gateway` workload (issue 12) is an Istio ingress gateway in every mode (`_gateway`): a
  gateway-injected Deployment (ingress-gateway.yaml), its Service, an Istio Gateway selecting it
  (istio-gateway.yaml) and one VirtualService per route host (virtualservice.yaml). Its namespace, which holds
  nothing else (the loader's rule), gets no data-plane label: the pod's own injection label brings the proxy,
  and ztunnel never captures it, even in an ambient namespace, because istio-cni skips every pod the injector
  marked (cni/pkg/util/enablement_selector.go@1.30.3 l.76-80, "Ztunnel and sidecar for a single pod is
  currently not supported; opt out"; the injector sets sidecar.istio.io/status on every pod it injects, the
  gateway template's too: pkg/kube/inject/webhook.go l.772). So the gateway stays its own Envoy: it decides
  with its own RBAC and reaches sidecars with mTLS and ambient pods with HBONE of its own, as engine/path.py
  `ingress_route` says;
- a workload labelled `istio.io/ingress-use-waypoint` carries that label on its Service too, where istiod reads
  it (serviceregistry/ambient/services.go@1.30 l.271-290; the scenario's workload labels stand for the
  Service's, read as istiod reads it: ParseBool).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conformance.mesh.cluster.matrix import CLUSTERS_DIR
from conformance.mesh.cluster.naming import MANAGED_BY, MANAGER, RUN_LABEL, NamespaceMap
from conformance.model import INGRESS_USE_WAYPOINT, DataPlane, Mode, Scenario, Waypoint, Workload

TEMPLATES = CLUSTERS_DIR / "workloads"
APP_SCRIPT = Path(__file__).resolve().parents[2] / "local" / "app.py"
EXT_AUTHZ_SCRIPT = APP_SCRIPT.with_name("extauthz_server.py")
EXT_AUTHZ_REQUIREMENTS = TEMPLATES / "ext-authz-grpc-requirements.txt"
# pip in the app image, for the gRPC check service's packages: wheels only, each hash-pinned, nothing else
# pulled in, nothing cached, into a directory of the container's own
GRPC_DEPS = "/tmp/ext-authz-deps"
PIP_INSTALL = ("python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore "
               f"--no-deps --only-binary=:all: --require-hashes --target {GRPC_DEPS} "
               "-r /app/ext-authz-grpc-requirements.txt")
WORKLOAD_LABEL = "authz-conformance/workload"
APP_CONFIGMAP = "authz-conformance-app"
CURL_CONTAINER = "curl"
APP_CONTAINER = "app"
SIDECAR_INJECTION = {"istio-injection": "enabled"}
AMBIENT_ENROLLMENT = {"istio.io/dataplane-mode": "ambient"}
USE_WAYPOINT = "istio.io/use-waypoint"
# Istio's sidecar injector selects a pod of a namespace without injection labels by one of these pod labels
# (istio-discovery templates/mutatingwebhook.yaml@1.30.3 l.131-144 for the default revision, l.89-107 by revision)
INJECT_LABEL = "sidecar.istio.io/inject"
REVISION_LABEL = "istio.io/rev"
# Per-pod ProxyConfig, merged over the mesh's defaultConfig (pilot/pkg/model/proxy_config.go@1.30.3 l.57-63); how
# Istio's docs set a gateway's numTrustedProxies ("Configuring Gateway Network Topology",
# https://istio.io/latest/docs/ops/configuration/traffic-management/network-topologies/)
PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"


def data_plane(scenario: Scenario, mode: Mode, namespace: str) -> DataPlane:
    """The data plane `namespace` runs in `mode`: the mode itself, or in mode mixed `spec.dataplanes` (unlisted:
    sidecar)."""
    return scenario.dataplane(namespace) if mode == "mixed" else mode  # type: ignore[return-value]


def deployed_waypoints(scenario: Scenario, mode: Mode) -> list[Waypoint]:
    """The waypoints a mode deploys: every scenario waypoint in waypoint mode, those of `waypoint` namespaces in
    mixed, none otherwise."""
    return [wp for wp in scenario.waypoints if data_plane(scenario, mode, wp.namespace) == "waypoint"
            and mode in ("waypoint", "mixed")]


def enrollment_labels(mode: Mode | DataPlane, revision: str | None = None) -> dict[str, str]:
    """The namespace labels that put a namespace's pods into the mesh in `mode`.

    Sidecar injection by revision (`istio.io/rev=<rev>`) when the control plane is revisioned (a canary
    install, or an existing cluster without a default revision); otherwise `istio-injection=enabled`.
    """
    if mode == "sidecar":
        return {"istio.io/rev": revision} if revision else dict(SIDECAR_INJECTION)
    return dict(AMBIENT_ENROLLMENT)


@dataclass(frozen=True)
class RenderSettings:
    mode: Mode
    curl_image: str
    app_image: str
    run: str  # the run's token (its namespace prefix without the dash): a label on everything made
    enrollment: Mapping[str, str] = field(default_factory=dict)  # default: enrollment_labels(mode)
    revision: str | None = None  # mode mixed: a sidecar namespace's injection by revision (enrollment_labels)

    def labels(self) -> dict[str, str]:
        return {MANAGED_BY: MANAGER, RUN_LABEL: self.run}


def _template(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load_template(name))


_cache: dict[str, Any] = {}


def _load_template(name: str) -> Any:
    if name not in _cache:
        _cache[name] = yaml.safe_load((TEMPLATES / name).read_text())
    return _cache[name]


def port_name(protocol: str, number: int) -> str:
    return f"{protocol.lower() if protocol in ('HTTP', 'GRPC') else 'tcp'}-{number}"


def service_protocol(workload: Workload, port: int, protocol: str, grpc_ports: frozenset[tuple[str, int]]) -> str:
    """HTTP, TCP, or GRPC for an ext-authz port a gRPC provider calls: Istio takes a port's protocol from its
    name or appProtocol (pilot/pkg/serviceregistry/kube/conversion.go, protocol.Parse), and only an HTTP/2
    protocol (grpc) gives the ext_authz gRPC client the HTTP/2 cluster it needs, as the sample's Service names
    its port 9000 `grpc` (samples/extauthz/ext-authz.yaml)."""
    return "GRPC" if (workload.ref, port) in grpc_ports else protocol


def selector_labels(workload: Workload) -> dict[str, str]:
    return {WORKLOAD_LABEL: workload.name}


def pod_labels(workload: Workload, mode: Mode | DataPlane, namespace_in_mesh: bool) -> dict[str, str]:
    """`mode`: the data plane of the workload's namespace (data_plane)."""
    labels = {**dict(workload.labels), **selector_labels(workload)}
    if not workload.in_mesh and namespace_in_mesh and mode != "sidecar":
        labels["istio.io/dataplane-mode"] = "none"  # ambient opt-out of one pod in an enrolled namespace
    return labels


def app_spec(workload: Workload, nsmap: NamespaceMap) -> list[dict[str, Any]]:
    """app.py's listener spec: the app answers as the workload's cluster ref, on every port."""
    ref = nsmap.cluster_ref(workload.ref)
    return [{"ref": ref, "address": "0.0.0.0", "port": p.number} for p in workload.ports]


def ext_authz_spec(workload: Workload, nsmap: NamespaceMap, grpc_ports: frozenset[tuple[str, int]]
                   ) -> dict[str, Any]:
    """extauthz_server.py's spec: one item per port, its protocol that of the provider naming it; decisions to
    stdout (the pod's log)."""
    ref = nsmap.cluster_ref(workload.ref)
    return {"items": [{"ref": ref, "address": "0.0.0.0", "port": p.number,
                       "protocol": "grpc" if (workload.ref, p.number) in grpc_ports else "http"}
                      for p in workload.ports],
            "log": "/dev/stdout"}


def render_workloads(scenario: Scenario, nsmap: NamespaceMap, settings: RenderSettings) -> list[dict[str, Any]]:
    """Every object a scenario needs in `settings.mode`, in apply order (namespaces first)."""
    mode = settings.mode
    base_labels = settings.labels()
    # A gateway's namespace takes no data plane (module docstring): only its pod's own injection label
    in_mesh_ns = {w.namespace for w in scenario.workloads if w.in_mesh and not w.is_gateway}
    waypoints = deployed_waypoints(scenario, mode)
    waypoint_ns: dict[str, str] = {}
    for wp in waypoints:
        waypoint_ns.setdefault(wp.namespace, wp.name)  # the first waypoint of a namespace serves it

    def enrollment(ns: str) -> dict[str, str]:
        if mode == "mixed":
            return enrollment_labels(data_plane(scenario, mode, ns), settings.revision)
        return dict(settings.enrollment) or enrollment_labels(mode)

    namespaces = list(dict.fromkeys([*(w.namespace for w in scenario.workloads),
                                     *(wp.namespace for wp in waypoints)]))
    docs: list[dict[str, Any]] = []
    app_script = APP_SCRIPT.read_text()
    grpc_ports = scenario.grpc_check_ports()

    for ns in namespaces:
        doc = _template("namespace.yaml")
        doc["metadata"]["name"] = nsmap.cluster_namespace(ns)
        labels = dict(base_labels)
        if ns in in_mesh_ns or ns in waypoint_ns:
            labels.update(enrollment(ns))
        if ns in waypoint_ns:
            labels[USE_WAYPOINT] = waypoint_ns[ns]
        doc["metadata"]["labels"] = labels
        docs.append(doc)

    for ns in namespaces:
        servers = [w for w in scenario.workloads if w.namespace == ns and w.ports and not w.is_gateway]
        if not servers:
            continue
        doc = _template("configmap.yaml")
        doc["metadata"]["namespace"] = nsmap.cluster_namespace(ns)
        doc["metadata"]["labels"] = dict(base_labels)
        doc["data"] = {"app.py": app_script}
        for w in servers:
            spec: Any = ext_authz_spec(w, nsmap, grpc_ports) if w.kind == "ext-authz" else app_spec(w, nsmap)
            doc["data"][f"{w.name}.json"] = json.dumps(spec)
        if any(w.kind == "ext-authz" for w in servers):
            doc["data"]["extauthz_server.py"] = EXT_AUTHZ_SCRIPT.read_text()
        if any(ref == w.ref for w in servers for ref, _ in grpc_ports):
            doc["data"]["ext-authz-grpc-requirements.txt"] = EXT_AUTHZ_REQUIREMENTS.read_text()
        docs.append(doc)

    seen_sa: set[tuple[str, str]] = set()
    for w in scenario.workloads:
        if (w.namespace, w.service_account) in seen_sa:
            continue
        seen_sa.add((w.namespace, w.service_account))
        doc = _template("serviceaccount.yaml")
        doc["metadata"].update(name=w.service_account, namespace=nsmap.cluster_namespace(w.namespace),
                               labels=dict(base_labels))
        docs.append(doc)

    for w in scenario.workloads:
        if w.ports:
            docs.append(_service(w, nsmap, base_labels, grpc_ports))
    for w in scenario.workloads:
        if w.is_gateway:
            docs += _gateway(w, scenario, nsmap, settings, base_labels)
            continue
        docs.append(_deployment(w, nsmap, settings, base_labels, w.namespace in in_mesh_ns, grpc_ports,
                                data_plane(scenario, mode, w.namespace)))

    for wp in waypoints:
        doc = _template("waypoint.yaml")
        doc["metadata"]["name"] = wp.name
        doc["metadata"]["namespace"] = nsmap.cluster_namespace(wp.namespace)
        doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **base_labels}
        docs.append(doc)
    return docs


def _service(w: Workload, nsmap: NamespaceMap, base_labels: Mapping[str, str],
             grpc_ports: frozenset[tuple[str, int]] = frozenset()) -> dict[str, Any]:
    doc = _template("service.yaml")
    labels = dict(base_labels)
    if INGRESS_USE_WAYPOINT in w.labels:  # istiod reads it on the Service (module docstring)
        labels[INGRESS_USE_WAYPOINT] = w.labels[INGRESS_USE_WAYPOINT]
    doc["metadata"].update(name=w.name, namespace=nsmap.cluster_namespace(w.namespace), labels=labels)
    doc["spec"]["selector"] = selector_labels(w)
    ports = []
    for p in w.ports:
        protocol = service_protocol(w, p.number, p.protocol, grpc_ports)
        ports.append({"name": port_name(protocol, p.number), "port": p.number, "targetPort": p.number,
                      "protocol": "TCP", "appProtocol": protocol.lower() if protocol != "TCP" else "tcp"})
    doc["spec"]["ports"] = ports
    return doc


def _deployment(w: Workload, nsmap: NamespaceMap, settings: RenderSettings, base_labels: Mapping[str, str],
                namespace_in_mesh: bool, grpc_ports: frozenset[tuple[str, int]] = frozenset(),
                plane: DataPlane | None = None) -> dict[str, Any]:
    doc = _template("deployment.yaml")
    mode = plane or settings.mode  # the data plane of the workload's namespace
    doc["metadata"].update(name=w.name, namespace=nsmap.cluster_namespace(w.namespace), labels=dict(base_labels))
    spec = doc["spec"]
    spec["selector"]["matchLabels"] = selector_labels(w)
    template = spec["template"]
    template["metadata"]["labels"] = pod_labels(w, mode, namespace_in_mesh)
    annotations: dict[str, str] = {}
    if not w.in_mesh and namespace_in_mesh and mode == "sidecar":
        template["metadata"]["labels"]["sidecar.istio.io/inject"] = "false"
    if mode == "sidecar" and w.in_mesh:
        # The probe is exec'd into `curl`; the sidecar must hold the app until Envoy is ready.
        annotations["proxy.istio.io/config"] = '{"holdApplicationUntilProxyStarts": true}'
        annotations["kubectl.kubernetes.io/default-container"] = CURL_CONTAINER
    template["metadata"]["annotations"] = annotations
    pod = template["spec"]
    pod["serviceAccountName"] = w.service_account
    pod["containers"][0]["image"] = settings.curl_image
    if w.ports:
        app = _template("ext-authz-container.yaml" if w.kind == "ext-authz" else "app-container.yaml")
        app["image"] = settings.app_image
        app["args"] = [f"/app/{w.name}.json"]
        if w.kind == "ext-authz" and any((w.ref, p.number) in grpc_ports for p in w.ports):
            # the gRPC check service's packages first (hash-pinned, ext-authz-grpc-requirements.txt)
            server = " ".join(app["command"][1:])
            app["command"] = ["sh", "-c", f"{PIP_INSTALL} && PYTHONPATH={GRPC_DEPS} exec python3 {server} \"$0\"",
                              f"/app/{w.name}.json"]
            app["args"] = []
        app["ports"] = [{"name": port_name(service_protocol(w, p.number, p.protocol, grpc_ports), p.number)[:15],
                         "containerPort": p.number, "protocol": "TCP"} for p in w.ports]
        app["readinessProbe"]["tcpSocket"]["port"] = w.ports[0].number
        pod["containers"].append(app)
        pod["volumes"] = [{"name": "app", "configMap": {"name": APP_CONFIGMAP}}]
    return doc


def gateway_selector(w: Workload, settings: RenderSettings) -> dict[str, str]:
    """The labels an ingress gateway's Istio Gateway selects its pod by: its workload label and the run label, unique
    on the cluster (istio-gateway.yaml says why the scenario's own labels are not enough)."""
    return {**selector_labels(w), RUN_LABEL: settings.run}


def injection_labels(settings: RenderSettings) -> dict[str, str]:
    """The pod label that has istiod inject an ingress gateway in a namespace without injection labels: the
    revision's own (`istio.io/rev`, as the gateway chart's `gateway.sidecarInjectionLabels` adds it, _helpers.tpl
    l.27-32) when the session enrolls by revision, else `sidecar.istio.io/inject: "true"`."""
    revision = settings.revision or settings.enrollment.get(REVISION_LABEL)
    return {REVISION_LABEL: revision} if revision else {INJECT_LABEL: "true"}


def gateway_proxy_config(num_trusted_proxies: int) -> str:
    """The gateway pod's `proxy.istio.io/config`: `gatewayTopology` with the scenario's numTrustedProxies, written
    for 0 too. The annotation is merged over the mesh's defaultConfig by replacing every field it has, a message
    field whole (meshconfig.effective_trusted_proxies cites the lines), so a `gatewayTopology` here is the gateway's
    whatever the mesh default says: 0 wins over a cluster's non-zero default, and the mesh's other gatewayTopology
    fields (proxyProtocol, forwardClientCertDetails) do not reach the scenario's gateway either, which models none."""
    return json.dumps({"gatewayTopology": {"numTrustedProxies": num_trusted_proxies}}, separators=(",", ":"))


def _gateway(w: Workload, scenario: Scenario, nsmap: NamespaceMap, settings: RenderSettings,
             base_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """An ingress gateway's Deployment, Istio Gateway and VirtualServices (its Service is rendered with the others).

    Route hosts are mapped as the probes' Host headers and the policies' `hosts` are (NamespaceMap.host_value), so
    the three keep agreeing when a host happens to name a scenario namespace."""
    ns = nsmap.cluster_namespace(w.namespace)
    dep = _template("ingress-gateway.yaml")
    dep["metadata"].update(name=w.name, namespace=ns, labels=dict(base_labels))
    spec = dep["spec"]
    spec["selector"]["matchLabels"] = selector_labels(w)
    pod = spec["template"]
    pod["metadata"]["labels"] = {**dict(w.labels), **gateway_selector(w, settings), **injection_labels(settings)}
    pod["metadata"]["annotations"][PROXY_CONFIG_ANNOTATION] = gateway_proxy_config(scenario.mesh.num_trusted_proxies)
    pod["spec"]["serviceAccountName"] = w.service_account
    hosts = [nsmap.host_value(r.host) for r in w.routes]
    gateway = _template("istio-gateway.yaml")
    gateway["metadata"].update(name=w.name, namespace=ns, labels=dict(base_labels))
    gateway["spec"]["selector"] = gateway_selector(w, settings)
    gateway["spec"]["servers"] = [{"port": {"number": p.number, "name": port_name(p.protocol, p.number),
                                            "protocol": "HTTP"}, "hosts": list(hosts)} for p in w.ports]
    docs = [dep, gateway]
    for i, (r, host) in enumerate(zip(w.routes, hosts, strict=True)):
        target_ns, _, target = r.to.partition("/")
        vs = _template("virtualservice.yaml")
        vs["metadata"].update(name=route_name(w, i), namespace=nsmap.cluster_namespace(target_ns),
                              labels=dict(base_labels))
        vs["spec"]["hosts"] = [host]
        vs["spec"]["gateways"] = [f"{ns}/{w.name}"]
        destination = vs["spec"]["http"][0]["route"][0]["destination"]
        destination["host"] = target
        destination["port"]["number"] = r.port
        docs.append(vs)
    return docs


def route_name(w: Workload, index: int) -> str:
    """A route's VirtualService name: unique per gateway and route (two gateways may route into one namespace)."""
    return f"{w.namespace}-{w.name}-route-{index}"
