"""Workloads from rendered Kubernetes manifests: what `workloadsFrom` and `authz-conformance init` read.

A platform team's repository holds its policies beside the Deployments, Services and Namespaces that kustomize or
Helm render (issue 13). Writing the scenario's workloads again by hand would drift from them; so this module reads
rendered output as it comes (`---` separators, comments, empty documents, `kind: List`) and derives the scenario's
`Workload`s the way Kubernetes and istiod see the same objects:

- a Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob or Pod is one workload,
  named after that object (the owner, not its pods), in `metadata.namespace` (kubectl's `default` when absent),
  with its pod template's labels and service account (`serviceAccountName`, the deprecated `serviceAccount`, else
  Kubernetes' `default`);
- a Service selecting a workload's labels (same namespace) gives it ports: the Service's *target* ports, since
  those are what a sidecar's inbound listener and ztunnel see and what an AuthorizationPolicy's `ports` match,
  with the protocol istiod reads from the port's `appProtocol` or name prefix (`istio_protocol`);
- a Namespace's labels give its data plane (for mode mixed), opt-outs (out of the mesh) and its waypoint's name.

Nothing here decides a verdict or reads a scenario: the loader (scenario.py) merges what this derives with the
scenario's own `workloads`, and turns each `Finding` into a problem naming the file, document and field.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from conformance import yamlio
from conformance.model import DataPlane, Port, Protocol, Workload

# The Istio security kinds a step's policies hold (validation.py checks them); every other kind is a "manifest".
POLICY_GROUP = "security.istio.io"
POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
# Where each workload kind keeps its pod template (apps/v1, batch/v1, core/v1). A Pod is its own template.
POD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}
DEFAULT_NAMESPACE = "default"  # kubectl apply's namespace when metadata.namespace is absent (and no -n)
DEFAULT_SERVICE_ACCOUNT = "default"  # the ServiceAccount admission plugin's default
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Namespace labels that put a namespace's pods on a data plane (Istio 1.30.3):
INJECTION_LABEL = "istio-injection"  # sidecar injector's namespaceSelector: enabled / disabled
REVISION_LABEL = "istio.io/rev"  # revision-based injection (when istio-injection is absent)
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"  # ambient / none
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"  # the waypoint serving the namespace's services ("none": no waypoint)
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"  # a waypoint in another namespace
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"  # gatewayClassName of a waypoint's Gateway

Severity = Literal["error", "notice"]
IstioProtocol = str  # the names of istio/istio pkg/config/protocol/instance.go's protocol.Instance


@dataclass(frozen=True)
class Document:
    """One Kubernetes object of a rendered file, with where it was: `source` as the user wrote it, the 1-based
    index of the YAML document in the file (empty documents counted, so the number matches an editor's `---`
    count), and its 0-based position among a `kind: List`'s items."""

    body: Mapping[str, Any]
    source: str
    index: int
    item: int | None = None

    @property
    def kind(self) -> str:
        return self.body.get("kind") if isinstance(self.body.get("kind"), str) else ""

    @property
    def api_version(self) -> str:
        value = self.body.get("apiVersion")
        return value if isinstance(value, str) else ""

    @property
    def metadata(self) -> Mapping[str, Any]:
        meta = self.body.get("metadata")
        return meta if isinstance(meta, Mapping) else {}

    @property
    def name(self) -> str:
        name = self.metadata.get("name")
        return name if isinstance(name, str) else ""

    @property
    def namespace(self) -> str:
        """`metadata.namespace`, or `default` as kubectl applies an object without one."""
        ns = self.metadata.get("namespace")
        return ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE

    @property
    def origin(self) -> str:
        where = f"{self.source} document {self.index}"
        return where if self.item is None else f"{where} items[{self.item}]"

    @property
    def label(self) -> str:
        """`rendered.yaml document 3 (Deployment shop/api)`: how errors name the document."""
        return f"{self.origin} ({self.kind or 'no kind'} {self.namespace}/{self.name or '?'})"

    @property
    def is_policy(self) -> bool:
        """An Istio security document: one of the policy kinds, or anything of the security.istio.io group (so a
        misspelt `kind: AuthorisationPolicy` stays a policy, and its error is reported, never skipped)."""
        return self.kind in POLICY_KINDS or self.api_version.rpartition("/")[0] == POLICY_GROUP


@dataclass(frozen=True)
class Finding:
    """One problem met while reading manifests: `where` names the document, `field` its field. An error makes the
    scenario invalid; a notice says what was left out or assumed, and why (never a reason to fail)."""

    where: str
    field: str
    message: str
    severity: Severity = "error"


def parse(text: str, source: str) -> tuple[list[Document], list[Finding]]:
    """The objects of a multi-document YAML text, `kind: List` items flattened (kubectl and Helm emit both)."""
    try:
        raw = yamlio.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return [], [Finding(source, "", f"malformed YAML: {problem}{at}")]
    except Exception as exc:  # e.g. an unhashable key: still one line, never a traceback
        return [], [Finding(source, "", f"malformed YAML: {type(exc).__name__}: {exc}")]
    docs: list[Document] = []
    findings: list[Finding] = []
    for n, body in enumerate(raw, 1):
        if body is None:
            continue  # an empty document (`---` twice, or comments only), as kubectl skips it
        if not isinstance(body, Mapping):
            findings.append(Finding(f"{source} document {n}", "", "a manifest must be a mapping (apiVersion, kind, "
                                                                  f"metadata, ...), not {type(body).__name__}"))
            continue
        kind = body.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(body.get("items"), list):
            for j, item in enumerate(body["items"]):
                if isinstance(item, Mapping):
                    docs.append(Document(item, source, n, j))
                else:
                    findings.append(Finding(f"{source} document {n} items[{j}]", "", "a List item must be a mapping"))
            continue
        docs.append(Document(body, source, n))
    return docs, findings


def read(path: Path, source: str) -> tuple[list[Document], list[Finding]]:
    """`parse` of a file; an unreadable file is one error naming it as the user wrote it (`source`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], [Finding(source, "", f"file not found ({path})")]
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Finding(source, "", f"cannot read: {exc}")]
    return parse(text, source)


# -- Service ports: the protocol istiod reads --------------------------------------------------------------------

_PARSE = {  # protocol.Parse, istio/istio pkg/config/protocol/instance.go@1.30.3 l.68-99 (case-insensitive)
    "tcp": "TCP", "udp": "UDP", "grpc": "GRPC", "grpc-web": "GRPC-Web", "http": "HTTP", "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2", "https": "HTTPS", "tls": "TLS", "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL",
}
UNSUPPORTED = "UnsupportedProtocol"  # protocol.Unsupported: istiod sniffs the protocol on such a port
# Ports that are TCP when nothing names their protocol (kube.wellKnownPorts: SMTP, DNS, MySQL, MongoDB)
WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})
# Kubernetes' standard appProtocol names istiod knows (ConvertProtocol's switch)
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP", "kubernetes.io/wss": "HTTPS"}
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})  # Instance.IsHTTP, l.117-125
TCP_PROTOCOLS = frozenset({"TCP", "HTTPS", "TLS", "Mongo", "Redis", "MySQL"})  # Instance.IsTCP, l.127-135


def istio_protocol(port: int, name: str | None, protocol: str | None = "TCP",
                   app_protocol: str | None = None) -> IstioProtocol:
    """The protocol istiod gives a Service port: kube.ConvertProtocol (istio/istio pkg/config/kube/conversion.go
    @1.30.3 l.48-95, called by pilot/pkg/serviceregistry/kube/conversion.go convertPort l.38-44).

    UDP when the port's protocol is UDP; else `appProtocol` when set (the Kubernetes names kubernetes.io/h2c, /ws,
    /wss mapped; any other value parsed like a port name, the port name then unused), else the port name: a
    `grpc-web` prefix, otherwise the part before the first `-` parsed by protocol.Parse (`http-api`, `tcp`,
    `GRPC-x`). Nothing recognised: UnsupportedProtocol (sniffed), except on the well-known ports 25, 53, 3306 and
    27017, which are TCP.
    """
    if protocol == "UDP":
        return "UDP"
    text = name or ""
    if app_protocol is not None:
        text = app_protocol
        if text in _K8S_APP_PROTOCOLS:
            return _K8S_APP_PROTOCOLS[text]
    if text[:8].lower() == "grpc-web":
        return "GRPC-Web"
    prefix = text.split("-", 1)[0]
    found = _PARSE.get(prefix.lower(), UNSUPPORTED)
    if found == UNSUPPORTED and port in WELL_KNOWN_TCP_PORTS:
        return "TCP"
    return found


def model_protocol(protocol: IstioProtocol) -> Protocol | None:
    """How the suite probes a port of `protocol`: HTTP for the HTTP family and for a sniffed port (the suite's
    probes are curl HTTP requests, which the sniffing proxies take for HTTP: Instance.IsHTTPOrSniffed), TCP for the
    protocols istiod treats as opaque TCP (TLS, HTTPS, databases: L4 policy only); None for UDP (no probe)."""
    if protocol in HTTP_PROTOCOLS or protocol == UNSUPPORTED:
        return "HTTP"
    if protocol in TCP_PROTOCOLS:
        return "TCP"
    return None


@dataclass(frozen=True)
class ServicePort:
    """One entry of a Service's `spec.ports`, as written."""

    port: int
    name: str | None
    protocol: str  # Kubernetes' TCP (default), UDP or SCTP
    app_protocol: str | None
    target: int | str | None  # targetPort: a number, a container port name, or absent (= port)

    @property
    def istio(self) -> IstioProtocol:
        return istio_protocol(self.port, self.name, self.protocol, self.app_protocol)


# -- derivation ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DerivedWorkload:
    """A workload and the document it came from (errors and the generated scenario name it)."""

    workload: Workload
    origin: str
    container_ports: Mapping[str, int] = field(default_factory=dict)  # named container ports (targetPort names)


@dataclass
class Derivation:
    """Everything rendered manifests say about the scenario's world."""

    workloads: list[DerivedWorkload] = field(default_factory=list)
    dataplanes: dict[str, DataPlane] = field(default_factory=dict)  # namespace -> plane, labelled namespaces only
    outside: set[str] = field(default_factory=set)  # namespaces opted out of the mesh
    waypoints: dict[str, str] = field(default_factory=dict)  # namespace -> its waypoint's name
    policies: list[Document] = field(default_factory=list)  # security.istio.io documents, in order
    ignored: Counter[str] = field(default_factory=Counter)  # kinds read but not used, by count
    findings: list[Finding] = field(default_factory=list)

    def notice(self, where: str, message: str, field_name: str = "") -> None:
        self.findings.append(Finding(where, field_name, message, "notice"))

    def error(self, where: str, message: str, field_name: str = "") -> None:
        self.findings.append(Finding(where, field_name, message, "error"))


def derive(documents: Iterable[Document]) -> Derivation:
    """Workloads, their ports, data planes and policies from rendered manifests (the module docstring says how)."""
    out = Derivation()
    docs = list(documents)
    by_ref: dict[str, DerivedWorkload] = {}
    for doc in docs:
        if doc.is_policy:
            out.policies.append(doc)
        elif doc.kind in POD_TEMPLATES:
            derived = _workload(doc, out)
            if derived is None:
                continue
            ref = derived.workload.ref
            if ref in by_ref:
                out.error(doc.label, f"a second workload named '{ref}' (also {by_ref[ref].origin}): the suite "
                                     "names a workload, and its Service, after its owner object", "metadata.name")
                continue
            by_ref[ref] = derived
        elif doc.kind == "Namespace":
            _namespace(doc, out)
        elif doc.kind == "Gateway" and _map(doc.body.get("spec")).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS:
            out.waypoints.setdefault(doc.namespace, doc.name)
        elif doc.kind != "Service":
            out.ignored[doc.kind or "(no kind)"] += 1
    ports: dict[str, dict[int, tuple[Port, str]]] = {ref: {} for ref in by_ref}
    for doc in docs:
        if doc.kind == "Service" and not doc.is_policy:
            _service(doc, list(by_ref.values()), ports, out)
    for ref, derived in by_ref.items():
        w = derived.workload
        if w.namespace in out.outside:
            w = replace(w, in_mesh=False)
        out.workloads.append(replace(derived, workload=replace(w, ports=tuple(p for p, _ in ports[ref].values()))))
    return out


def _workload(doc: Document, out: Derivation) -> DerivedWorkload | None:
    """One workload from a pod-owning object: its name, namespace, pod labels and service account."""
    template: Any = doc.body
    for key in POD_TEMPLATES[doc.kind]:
        template = _map(template).get(key)
    base = ".".join(POD_TEMPLATES[doc.kind])
    prefix = f"{base}." if base else ""
    if not isinstance(template, Mapping):
        out.error(doc.label, f"a {doc.kind} needs a pod template", base or "spec")
        return None
    ok = True
    for what, value, field_name in (("name", doc.name, "metadata.name"),
                                    ("namespace", doc.namespace, "metadata.namespace")):
        if not _DNS_LABEL.match(value) or len(value) > 63:
            out.error(doc.label, f"{what} {value!r} is not a DNS label (lowercase letters, digits and '-', at most 63 "
                                 "characters): the suite names the workload's Service after it", field_name)
            ok = False
    labels: dict[str, str] = {}
    for key, value in _map(_map(template.get("metadata")).get("labels")).items():
        if not isinstance(value, str):
            out.error(doc.label, f"label values must be strings (Kubernetes rejects {value!r}): quote it",
                      f"{prefix}metadata.labels.{key}")
            ok = False
        else:
            labels[str(key)] = value
    pod_spec = _map(template.get("spec"))
    sa_field = "serviceAccountName" if pod_spec.get("serviceAccountName") else "serviceAccount"
    sa = pod_spec.get(sa_field) or DEFAULT_SERVICE_ACCOUNT
    if not isinstance(sa, str) or not _DNS_SUBDOMAIN.match(sa):
        out.error(doc.label, f"service account {sa!r} is not a DNS subdomain", f"{prefix}spec.{sa_field}")
        ok = False
    if not ok:
        return None
    named: dict[str, int] = {}
    for c in _list(pod_spec.get("containers")):
        for p in _list(_map(c).get("ports")):
            number, pname = _map(p).get("containerPort"), _map(p).get("name")
            if isinstance(pname, str) and isinstance(number, int) and (_map(p).get("protocol") or "TCP") == "TCP":
                named.setdefault(pname, number)
    workload = Workload(name=doc.name, namespace=doc.namespace, service_account=str(sa), labels=labels)
    return DerivedWorkload(workload, doc.label, named)


def _service(doc: Document, workloads: Sequence[DerivedWorkload], ports: dict[str, dict[int, tuple[Port, str]]],
             out: Derivation) -> None:
    """A Service's ports on the workloads it selects: each target port, with the Service port's protocol.

    Two Services giving one target port different protocols: istiod's inbound listener takes the oldest Service's
    (pilot/pkg/networking/core/listener_inbound.go@1.30.3 l.420 "If there is a conflict, we will use the oldest
    Service"); rendered manifests are created in document order, so the first one here.
    """
    spec = _map(doc.body.get("spec"))
    selector = spec.get("selector")
    if spec.get("type") == "ExternalName":
        return
    if not isinstance(selector, Mapping) or not selector:
        out.notice(doc.label, "selects no pod (no spec.selector: its endpoints are managed by hand), so it gives no "
                              "workload ports", "spec.selector")
        return
    entries: list[tuple[int, ServicePort]] = []
    for j, p in enumerate(_list(spec.get("ports"))):
        p = _map(p)
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            out.error(doc.label, f"port must be a number from 1 to 65535, not {number!r}", f"spec.ports[{j}].port")
            continue
        target = p.get("targetPort")
        entries.append((j, ServicePort(number, _opt_str(p.get("name")), str(p.get("protocol") or "TCP"),
                                       _opt_str(p.get("appProtocol")),
                                       target if isinstance(target, (int, str)) else None)))
    selected = [d for d in workloads if d.workload.namespace == doc.namespace
                and all(d.workload.labels.get(k) == v for k, v in selector.items())]
    for j, sp in entries:
        istio = sp.istio
        protocol = model_protocol(istio)
        if protocol is None:
            out.notice(doc.label, f"port {sp.port} is {istio}: the suite probes TCP only (and Istio proxies no "
                                  "UDP), so it is left out", f"spec.ports[{j}]")
            continue
        for d in selected:
            target: int | None
            if sp.target is None:
                target = sp.port
            elif isinstance(sp.target, int):
                target = sp.target
            elif sp.target.isdigit():
                target = int(sp.target)
            else:
                target = d.container_ports.get(sp.target)
                if target is None:
                    out.notice(doc.label, f"targetPort '{sp.target}' names no container port of "
                                          f"'{d.workload.ref}': istiod finds no endpoint port for it (FindPort, "
                                          "pilot/pkg/serviceregistry/kube/controller/util.go@1.30.3 l.53), so it is "
                                          "left out", f"spec.ports[{j}].targetPort")
                    continue
            have = ports[d.workload.ref].get(target)
            if have is not None:
                if have[0].protocol != protocol:
                    out.notice(doc.label, f"target port {target} of '{d.workload.ref}' is {istio} here but "
                                          f"{have[0].protocol} in {have[1]}: istiod uses the oldest Service's "
                                          "protocol (listener_inbound.go l.420), taken to be the first",
                               f"spec.ports[{j}]")
                continue
            ports[d.workload.ref][target] = (Port(target, protocol), doc.label)


def _namespace(doc: Document, out: Derivation) -> None:
    """A Namespace's data plane from its labels (Istio 1.30.3):

    - sidecar: `istio-injection: enabled`, or `istio.io/rev` with no `istio-injection` label (the injector's
      namespaceSelectors, manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml); injection
      wins over ambient, as istio-cni does not capture pods that have a sidecar (cni/pkg/util/podutil.go
      podHasSidecar);
    - ambient: `istio.io/dataplane-mode: ambient`; waypoint when `istio.io/use-waypoint` also names a waypoint
      (not `none`) of this namespace;
    - outside the mesh: `istio-injection: disabled` or `istio.io/dataplane-mode: none`, and nothing opting in;
    - no label: no data plane of its own (the scenario's modes put it on theirs).
    """
    labels = _map(doc.metadata.get("labels"))
    name = doc.name
    if not name:
        return
    injection, mode = labels.get(INJECTION_LABEL), labels.get(DATAPLANE_MODE_LABEL)
    waypoint, waypoint_ns = labels.get(USE_WAYPOINT_LABEL), labels.get(USE_WAYPOINT_NAMESPACE_LABEL)
    if injection == "enabled" or (REVISION_LABEL in labels and injection is None):
        out.dataplanes[name] = "sidecar"
    elif mode == "ambient":
        out.dataplanes[name] = "ambient"
        if isinstance(waypoint, str) and waypoint != "none":
            if waypoint_ns not in (None, name):
                out.notice(doc.label, f"uses waypoint {waypoint_ns}/{waypoint} of another namespace: not modelled "
                                      "(a waypoint here serves its own namespace), so this namespace is ambient "
                                      "without a waypoint", f"metadata.labels.{USE_WAYPOINT_NAMESPACE_LABEL}")
            else:
                out.dataplanes[name] = "waypoint"
                out.waypoints[name] = waypoint
    elif injection == "disabled" or mode == "none":
        out.outside.add(name)


def _map(value: object) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
