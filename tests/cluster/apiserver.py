"""A small Kubernetes API server for tests: the real `kubernetes` client talks to it over real HTTP and a
real websocket, on 127.0.0.1 only, on a random port.

Why: `Kube` (conformance/mesh/cluster/kube.py) is the one place the suite speaks the Kubernetes API, and a
fake standing in for `Kube` never checks what the client really sends. This server answers the requests a
session makes the way kube-apiserver and the kubelet answer them, and records every request, so tests can
hold the request shapes against the API's:

- discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`), which the DynamicClient
  reads before anything else (kubernetes/dynamic/discovery.py);
- server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml` and the `fieldManager` /
  `force` query parameters (Kubernetes docs, "Server-Side Apply"; the DynamicClient's `server_side_apply`
  sends the body as JSON, which is YAML, kubernetes/client/rest.py). Without `force=true` a write over
  another manager's object is a 409 Conflict, as kube-apiserver answers a conflicting apply;
- GET / LIST (with `labelSelector` equality terms) / DELETE (the `propagationPolicy` query parameter or a
  DeleteOptions body); a Namespace delete removes everything in it (the namespace controller, done at once);
- PUT (replace, what the DynamicClient's `replace` sends: the whole object as JSON) with optimistic
  concurrency: a body whose `metadata.resourceVersion` is set and differs from the stored one is refused
  with `409 Conflict`, "Operation cannot be fulfilled on <resource> "<name>": the object has been modified;
  please apply your changes to the latest version and try again" (apiserver pkg/registry/generic/registry
  store.go `Update` -> apimachinery pkg/api/errors `NewConflict` with storage `OptimisticLockErrorMsg`); an
  empty resourceVersion is an unconditional update; a missing object is `404` (ConfigMaps and the other
  types here do not allow create-on-update); a body whose name or namespace is not the URL's is `400`
  (apiserver pkg/endpoints/handlers/update.go). Every accepted write gets a new resourceVersion.
  `race_next_put` makes another client write the object just before the next PUT of it is looked at, so
  that PUT meets a real resourceVersion mismatch;
- the pod proxy subresource, `/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy/<path>` (also
  `<scheme>:<name>:<port>`; Kubernetes API "pods/proxy", kubectl's "Manually constructing apiserver proxy
  URLs"): answered by `proxy_handler` as if the pod's port had answered, status and body passed through;
  an unknown pod is `404`; nothing listening (no handler, or it answers None) is `503 ServiceUnavailable`
  "error trying to reach service: dial tcp <ip>:<port>: connect: connection refused" (apimachinery
  pkg/util/proxy/transport.go `RoundTrip` wraps the dial error so). Paths are percent-decoded before
  routing, as Go's net/http gives kube-apiserver `URL.Path`: the Python client quotes path parameters
  with no safe characters (`pod:15014` -> `pod%3A15014`, `debug/mesh` -> `debug%2Fmesh`,
  kubernetes/client/api_client.py), and `Request.path` is that decoded form (`raw_path` as sent);
- `404 NotFound` and `409 Conflict` as `metav1.Status` bodies (apimachinery pkg/api/errors);
- a tiny Deployment controller + kubelet: an applied Deployment gets a rolled-out status and one Ready pod
  (IP, node, container statuses), so `wait_rollout` and `pods()` see what a cluster would show; the pod
  gets an `istio-proxy` container where a sidecar injector would add one (namespace label
  `istio-injection=enabled`, or `istio.io/rev=<rev>` naming the revision of an istiod Deployment in
  istio-system, which the revision's injector webhook selects);
- `install_istiod`: what an Istio install leaves in istio-system for a revision: the istiod Deployment and
  its Ready pod, labelled `app=istiod`, `istio.io/rev=<rev>` as the istiod chart labels them, and the mesh
  config ConfigMap `istio` (`istio-<rev>` for a revision other than default) with its `mesh` key
  (istio/istio pilot/pkg/bootstrap/mesh.go `getMeshConfigMapName`);
- exec over the websocket subprotocol `v5.channel.k8s.io` (falls back to `v4.channel.k8s.io`): one binary
  frame per write, its first byte the channel (1 stdout, 2 stderr, 3 the status as a JSON `metav1.Status`:
  `Success`, or `Failure` / `NonZeroExitCode` with `details.causes[{reason: ExitCode, message: "<code>"}]`:
  kubernetes pkg/kubelet/cri/streaming/remotecommand/exec.go `ServeExec` builds it, httpstream.go
  `v4WriteStatusFunc` writes it as JSON; StatusCause.Type is serialized as `reason`), then a websocket
  close frame; optionally v5's close signal (`255, <channel>`), which the client must tolerate;
- logs (`/pods/<name>/log?container=&timestamps=true&sinceSeconds=`): recorded lines, filtered by
  `sinceSeconds` against the server's clock and prefixed with the kubelet's RFC 3339 nanosecond timestamp
  when `timestamps=true`.

Bearer-token auth is checked (the kubeconfig's token), on the websocket too. `stop()` closes the listener,
and every open connection, and joins the serving thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TOKEN = "authz-conformance-test-token"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
STDOUT, STDERR, STATUS, CLOSE = 1, 2, 3, 255


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = (
    ResourceType("", "v1", "Namespace", "namespaces", False),
    ResourceType("", "v1", "Pod", "pods", True),
    ResourceType("", "v1", "Service", "services", True),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True),
    ResourceType("", "v1", "ConfigMap", "configmaps", True),
    ResourceType("apps", "v1", "Deployment", "deployments", True),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", True),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True),  # what `snapshot` reads (snapshot.py)
    *(ResourceType("security.istio.io", v, k, p, True) for v in ("v1", "v1beta1")
      for k, p in (("AuthorizationPolicy", "authorizationpolicies"), ("PeerAuthentication", "peerauthentications"),
                   ("RequestAuthentication", "requestauthentications"))),
    ResourceType("gateway.networking.k8s.io", "v1", "Gateway", "gateways", True),
    # an ingress gateway's routing (render.py `_gateway`); stored by kind, namespace and name like the rest, so an
    # Istio Gateway and a waypoint Gateway of one name in one namespace would share a key (no test does that)
    ResourceType("networking.istio.io", "v1", "Gateway", "gateways", True),
    ResourceType("networking.istio.io", "v1", "VirtualService", "virtualservices", True),
    ResourceType("gateway.networking.k8s.io", "v1", "GatewayClass", "gatewayclasses", False),
    # what the existing-cluster target reads to detect Istio (existing.py `detect`)
    ResourceType("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration",
                 "mutatingwebhookconfigurations", False),
    ResourceType("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False),
)


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str  # percent-decoded, as Go's net/http gives kube-apiserver URL.Path
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    raw_path: str = ""  # as the client sent it

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class ExecAnswer:
    """What an exec prints and how it ends: `exit_code` None sends no status at all (a lost connection)."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = 0
    close_signal: bool = False  # v5: send `255, <channel>` for stdout and stderr before the status


ExecHandler = Callable[[str, str, str, list[str]], ExecAnswer]  # namespace, pod, container, command


@dataclass(frozen=True)
class ProxyAnswer:
    """What the pod's port answered a request the API server proxied to it (passed through as it is)."""

    body: str | bytes = b""
    status: int = 200
    content_type: str = "application/json"


# namespace, pod, port, path (no leading slash, query string not included), the request: an answer, or None when
# nothing listens there
ProxyHandler = Callable[[str, str, int, str, Request], ProxyAnswer | None]


def status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A `metav1.Status` failure, as kube-apiserver answers errors (apimachinery pkg/api/errors)."""
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = dict(details)
    return out


def exec_status(exit_code: int) -> dict[str, Any]:
    """The status the kubelet writes on channel 3 when the command ended (exec.go `ServeExec`)."""
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}


def kubelet_timestamp(seconds: float) -> str:
    """RFC 3339 with nanoseconds, as the kubelet prefixes lines read with timestamps=true."""
    whole = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{round((seconds % 1) * 1e9):09d}Z"


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One unmasked, final websocket frame (server to client, RFC 6455 §5.2)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def read_ws_frame(rfile: Any) -> tuple[int, bytes] | None:
    """One client frame (masked, RFC 6455 §5.3), or None when the connection ended."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class FakeApiServer:
    """See the module docstring. Thread-safe: the client's requests come from several threads."""

    exec_handler: ExecHandler | None = None
    proxy_handler: ProxyHandler | None = None
    clock: Callable[[], float] = time.time
    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, ns, name)
    logs: dict[tuple[str, str, str], list[tuple[float, str]]] = field(default_factory=dict)  # (ns, pod, container)
    ws_frames: list[tuple[int, bytes]] = field(default_factory=list)  # frames the client sent on exec sockets
    failures: list[tuple[str, str, int, str, str]] = field(default_factory=list)  # method, path part, code, ...
    # group/versions this server does not serve (e.g. "security.istio.io/v1", as Istio < 1.22's CRDs): left out of
    # discovery and answered 404, so a client's fallback to another version is exercised
    unserved: set[str] = field(default_factory=set)
    node: str = "node1"
    lock: threading.RLock = field(default_factory=threading.RLock)
    _http: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _ips: Any = field(default_factory=lambda: itertools.count(10))
    _versions: Any = field(default_factory=lambda: itertools.count(1))
    _sockets: set[socket.socket] = field(default_factory=set)
    # (kind, namespace, name) -> another client's edit, made just before the next PUT of that object is looked at
    _races: dict[tuple[str, str, str], Callable[[dict[str, Any]], None]] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeApiServer:
        api = self

        class Handler(_Handler):
            server_api = api

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def stop(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        with self.lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, directory: Path, context: str = "fake") -> Path:
        """A kubeconfig for this server (plain HTTP on loopback, a bearer token), written into `directory`."""
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    # -- test helpers -----------------------------------------------------------------------------
    def fail_next(self, method: str, path_part: str, code: int, reason: str, message: str) -> None:
        """The next `method` request whose path contains `path_part` gets this error instead."""
        with self.lock:
            self.failures.append((method, path_part, code, reason, message))

    def race_next_put(self, kind: str, namespace: str, name: str,
                      edit: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Another client writes this object (`edit` changes it in place; None: a write changing nothing but its
        resourceVersion) just before the next PUT of it is looked at: that PUT, read before, conflicts."""
        with self.lock:
            self._races[(kind, namespace, name)] = edit or (lambda obj: None)

    def install_istiod(self, revision: str = "default", mesh: str = "", namespace: str = "istio-system",
                       version: str = "1.30.3") -> dict[str, Any]:
        """An installed istiod of `revision` (see the module docstring): its Deployment, its Ready pod, its mesh
        ConfigMap with `mesh` as the `mesh` key. Returns the pod."""
        suffix = "" if revision == "default" else f"-{revision}"
        labels = {"app": "istiod", "istio": "pilot", "istio.io/rev": revision}
        if ("Namespace", "", namespace) not in self.objects:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.put({"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": f"istiod{suffix}", "namespace": namespace, "labels": dict(labels),
                               "generation": 1},
                  "spec": {"selector": {"matchLabels": {"app": "istiod", "istio.io/rev": revision}},
                           "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [
                               {"name": "discovery", "image": f"docker.io/istio/pilot:{version}"}]}}},
                  "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                             "availableReplicas": 1}})
        self.put({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"istio{suffix}", "namespace": namespace,
                               "labels": {"istio.io/rev": revision}},
                  "data": {"mesh": mesh, "meshNetworks": "networks: {}"}})
        return self.put({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"istiod{suffix}-5d8f7c9b4-q{next(self._ips)}", "namespace": namespace,
                                      "labels": dict(labels)},
                         "spec": {"nodeName": self.node, "containers": [{"name": "discovery"}]},
                         "status": {"phase": "Running", "podIP": f"10.244.0.{next(self._ips)}",
                                    "conditions": [{"type": "Ready", "status": "True"}],
                                    "containerStatuses": [{"name": "discovery", "ready": True, "restartCount": 0,
                                                           "state": {"running": {}}}]}})

    def log(self, namespace: str, pod: str, container: str, line: str, when: float | None = None) -> None:
        """A line written by a container, stamped now (or at `when`)."""
        with self.lock:
            self.logs.setdefault((namespace, pod, container), []).append((self.clock() if when is None else when,
                                                                           line))

    def made(self, method: str, path_part: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if some other client had created it (e.g. a ztunnel pod)."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._versions))
        with self.lock:
            self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def policies(self, namespaces: set[str] | None = None) -> list[dict[str, Any]]:
        kinds = {"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"}
        with self.lock:
            return [o for (k, ns, _), o in self.objects.items()
                    if k in kinds and (namespaces is None or ns in namespaces)]

    # -- the API ----------------------------------------------------------------------------------
    def resource(self, group: str, version: str, plural: str) -> ResourceType | None:
        return next((r for r in self.served() if (r.group, r.version, r.plural) == (group, version, plural)), None)

    def served(self) -> list[ResourceType]:
        """RESOURCES without the `unserved` group/versions."""
        return [r for r in RESOURCES if r.group_version not in self.unserved]

    def discovery(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for r in self.served():
                if r.group and r.version not in groups.setdefault(r.group, []):
                    groups[r.group].append(r.version)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None
        listed = [r for r in self.served() if (r.group, r.version) == (group, version)]
        if not listed:
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = [{"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
                      "verbs": verbs} for r in listed]
        if group == "":
            resources += [{"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
                           "verbs": ["create", "get"]},
                          {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]}]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": listed[0].group_version,
                "resources": resources}

    def route(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None] | None:
        """(resource, namespace, name, subresource) of an object path, or None."""
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = self.resource(group, version, rest[0])
        if res is None:
            return None
        return res, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None

    def handle(self, req: Request) -> tuple[int, dict[str, Any] | str | ProxyAnswer]:
        """An ordinary (non-websocket) request: (status code, JSON body, plain text or a proxied answer)."""
        with self.lock:
            for i, (method, part, code, reason, message) in enumerate(self.failures):
                if method == req.method and (part in req.path or part in req.raw_path):
                    del self.failures[i]
                    return code, status_body(code, reason, message)
        found = self.discovery(req.path)
        if found is not None:
            return 200, found
        routed = self.route(req.path)
        if routed is None:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        res, namespace, name, sub = routed
        if res.kind == "Pod" and sub == "proxy" and namespace is not None and name is not None:
            return self._proxy(namespace, name, req)
        if sub == "log" and req.method == "GET":
            return self._read_log(namespace or "", name or "", req)
        if name is None and req.method == "GET":
            return 200, self._list(res, namespace, req.param("labelSelector"))
        if name is None:
            return 405, status_body(405, "MethodNotAllowed", f"{req.method} on a collection is not served here")
        key = (res.kind, namespace or "", name)
        if req.method == "GET":
            with self.lock:
                obj = self.objects.get(key)
            return (200, obj) if obj is not None else (404, _not_found(res, name))
        if req.method == "DELETE":
            return self._delete(res, key)
        if req.method == "PATCH":
            return self._apply(res, key, req)
        if req.method == "PUT" and sub is None:
            return self._replace(res, key, req)
        return 405, status_body(405, "MethodNotAllowed", f"{req.method} is not served here")

    def _list(self, res: ResourceType, namespace: str | None, selector: str | None) -> dict[str, Any]:
        terms = [t.partition("=")[::2] for t in (selector or "").split(",") if t]
        with self.lock:
            items = [o for (k, ns, _), o in sorted(self.objects.items()) if k == res.kind and
                     (namespace is None or ns == namespace) and
                     all(((o.get("metadata") or {}).get("labels") or {}).get(k2) == v for k2, v in terms)]
        return {"kind": f"{res.kind}List", "apiVersion": res.group_version, "metadata": {"resourceVersion": "1"},
                "items": items}

    def _delete(self, res: ResourceType, key: tuple[str, str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            obj = self.objects.pop(key, None)
            if obj is None:
                return 404, _not_found(res, key[2])
            if res.kind == "Namespace":  # the namespace controller: everything in it goes too
                for other in [k for k in self.objects if k[1] == key[2]]:
                    del self.objects[other]
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": key[2], "kind": res.plural, "uid": obj["metadata"].get("uid")}}

    def _apply(self, res: ResourceType, key: tuple[str, str, str], req: Request) -> tuple[int, dict[str, Any]]:
        if req.headers.get("content-type", "").split(";")[0].strip() != "application/apply-patch+yaml":
            return 415, status_body(415, "UnsupportedMediaType", "only server-side apply is served here")
        manager = req.param("fieldManager")
        if not manager:
            return 400, status_body(400, "BadRequest", "PATCH is required to have a fieldManager for apply")
        body = yaml.safe_load(req.body or b"{}")
        meta = body.get("metadata") or {}
        if body.get("kind") != res.kind or body.get("apiVersion") != res.group_version or meta.get("name") != key[2]:
            return 400, status_body(400, "BadRequest", "the body's apiVersion, kind and name must match the URL")
        if res.namespaced and meta.get("namespace", key[1]) != key[1]:
            return 400, status_body(400, "BadRequest", "the namespace of the object does not match the URL")
        with self.lock:
            if res.namespaced and ("Namespace", "", key[1]) not in self.objects:
                return 404, status_body(404, "NotFound", f'namespaces "{key[1]}" not found',
                                        {"name": key[1], "kind": "namespaces"})
            old = self.objects.get(key)
            owner = ((old or {}).get("metadata") or {}).get("managedFields", [{}])[0].get("manager")
            if old is not None and owner != manager and req.param("force") != "true":
                return 409, status_body(409, "Conflict", f'Apply failed with 1 conflict: conflict with "{owner}": '
                                        ".spec", {"causes": [{"reason": "FieldManagerConflict", "field": ".spec"}]})
            obj = json.loads(json.dumps(body))
            new_meta = obj.setdefault("metadata", {})
            if res.namespaced:
                new_meta["namespace"] = key[1]
            new_meta["uid"] = ((old or {}).get("metadata") or {}).get("uid") or str(uuid.uuid4())
            new_meta["generation"] = ((old or {}).get("metadata") or {}).get("generation", 0) + 1
            new_meta["managedFields"] = [{"manager": manager, "operation": "Apply",
                                          "apiVersion": res.group_version}]
            self.put(obj)
            if res.kind == "Deployment":
                self._roll_out(obj)
            if res.kind == "Gateway" and (obj.get("spec") or {}).get("gatewayClassName") == "istio-waypoint":
                self._deploy_waypoint(obj)
        return 200, obj

    def _replace(self, res: ResourceType, key: tuple[str, str, str], req: Request) -> tuple[int, dict[str, Any]]:
        """PUT: the whole object, with optimistic concurrency on metadata.resourceVersion (module docstring)."""
        content_type = req.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in ("application/json", "application/yaml"):
            return 415, status_body(415, "UnsupportedMediaType", "the body of the request was in an unknown format "
                                    "- accepted media types include: application/json, application/yaml")
        try:
            body = yaml.safe_load(req.body or b"{}")  # JSON is YAML
        except yaml.YAMLError as exc:
            return 400, status_body(400, "BadRequest", f"the body of the request could not be decoded: {exc}")
        if not isinstance(body, dict):
            return 400, status_body(400, "BadRequest", "the body of the request is not an object")
        meta = body.get("metadata") or {}
        if body.get("kind") != res.kind or body.get("apiVersion") != res.group_version:
            return 400, status_body(400, "BadRequest", f"the API version and kind in the data ({body.get('apiVersion')}"
                                    f", {body.get('kind')}) do not match the URL ({res.group_version}, {res.kind})")
        if meta.get("name") != key[2]:
            return 400, status_body(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match "
                                    f"the name on the URL ({key[2]})")
        if res.namespaced and meta.get("namespace", key[1]) != key[1]:
            return 400, status_body(400, "BadRequest", "the namespace of the provided object does not match the "
                                    "namespace sent on the request")
        group = f".{res.group}" if res.group else ""
        with self.lock:
            race = self._races.pop(key, None)
            if race is not None and key in self.objects:  # another client's write lands first
                other = json.loads(json.dumps(self.objects[key]))
                race(other)
                self.put(other)
            old = self.objects.get(key)
            if old is None:
                return 404, _not_found(res, key[2])
            stored = old["metadata"]["resourceVersion"]
            sent = meta.get("resourceVersion")
            if sent and sent != stored:
                return 409, status_body(409, "Conflict", f'Operation cannot be fulfilled on {res.plural}{group} '
                                        f'"{key[2]}": the object has been modified; please apply your changes to '
                                        "the latest version and try again",
                                        {"name": key[2], "group": res.group, "kind": res.plural})
            obj = json.loads(json.dumps(body))
            new_meta = obj.setdefault("metadata", {})
            if res.namespaced:
                new_meta["namespace"] = key[1]
            new_meta["uid"] = old["metadata"].get("uid")
            if "generation" in old["metadata"]:
                changed = obj.get("spec") != old.get("spec")
                new_meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
            manager = req.param("fieldManager") or req.headers.get("user-agent", "unknown").split("/")[0]
            fields = [f for f in old["metadata"].get("managedFields") or []
                      if (f.get("manager"), f.get("operation")) != (manager, "Update")]
            new_meta["managedFields"] = [*fields, {"manager": manager, "operation": "Update",
                                                   "apiVersion": res.group_version}]
            if "status" in old and res.kind != "ConfigMap":
                obj["status"] = old["status"]  # the main resource's PUT never writes status
            self.put(obj)
            if res.kind == "Deployment":
                self._roll_out(obj)
        return 200, obj

    def _proxy(self, namespace: str, target: str, req: Request) -> tuple[int, dict[str, Any] | ProxyAnswer]:
        """`pods/<[scheme:]name[:port]>/proxy/<path>`: the pod's answer, as the API server relays it."""
        parts = target.split(":")
        if len(parts) == 3:
            parts = parts[1:]  # <scheme>:<name>:<port>
        name, port_text = parts[0], parts[1] if len(parts) > 1 else ""
        with self.lock:
            pod = self.objects.get(("Pod", namespace, name))
        if pod is None:
            return 404, status_body(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        if port_text and not port_text.isdigit():
            return 503, status_body(503, "ServiceUnavailable", f"error trying to reach service: no port {port_text}")
        port = int(port_text) if port_text else 80
        marker = f"/pods/{target}/proxy"
        path = req.path.split(marker, 1)[1].lstrip("/") if marker in req.path else ""
        answer = self.proxy_handler(namespace, name, port, path, req) if self.proxy_handler else None
        if answer is None:
            ip = (pod.get("status") or {}).get("podIP", "")
            return 503, status_body(503, "ServiceUnavailable", f"error trying to reach service: dial tcp {ip}:{port}: "
                                    "connect: connection refused")
        return answer.status, answer

    def _deploy_waypoint(self, gateway: dict[str, Any]) -> None:
        """What istiod's gateway deployment controller does for an `istio-waypoint` Gateway (istio/istio
        pilot/pkg/config/kube/gateway/deploymentcontroller.go): a Deployment of the Gateway's name whose pods
        carry `gateway.networking.k8s.io/gateway-name`, then the Gateway's `Programmed` condition."""
        meta = gateway["metadata"]
        labels = {"gateway.networking.k8s.io/gateway-name": meta["name"]}
        deployment = self.put({"apiVersion": "apps/v1", "kind": "Deployment",
                               "metadata": {"name": meta["name"], "namespace": meta["namespace"], "generation": 1},
                               "spec": {"selector": {"matchLabels": labels}, "template": {
                                   "metadata": {"labels": {**labels, "istio.io/dataplane-mode": "none"}},
                                   "spec": {"containers": [{"name": "istio-proxy"}]}}}})
        self._roll_out(deployment)
        gateway["status"] = {"conditions": [{"type": "Accepted", "status": "True"},
                                            {"type": "Programmed", "status": "True"}]}

    def _roll_out(self, deployment: dict[str, Any]) -> None:
        """The Deployment controller and the kubelet, at once: rolled out, one Ready pod."""
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        deployment["status"] = {"observedGeneration": meta["generation"], "replicas": 1, "updatedReplicas": 1,
                                "readyReplicas": 1, "availableReplicas": 1}
        template = spec.get("template") or {}
        tmeta, tspec = template.get("metadata") or {}, template.get("spec") or {}
        labels = dict(tmeta.get("labels") or {})
        ns = meta["namespace"]
        namespace = self.objects.get(("Namespace", "", ns)) or {}
        ns_labels = (namespace.get("metadata") or {}).get("labels", {})
        revisions = {((o.get("metadata") or {}).get("labels") or {}).get("istio.io/rev", "default")
                     for (k, ns2, _), o in self.objects.items() if k == "Deployment" and ns2 == "istio-system"
                     and ((o.get("metadata") or {}).get("labels") or {}).get("app") == "istiod"}
        injected = (ns_labels.get("istio-injection") == "enabled" or ns_labels.get("istio.io/rev") in revisions) \
            and labels.get("sidecar.istio.io/inject") != "false"
        containers = [c["name"] for c in tspec.get("containers") or []] + (["istio-proxy"] if injected else [])
        annotations = dict(tmeta.get("annotations") or {})
        if ns_labels.get("istio.io/dataplane-mode") == "ambient" and labels.get("istio.io/dataplane-mode") != "none":
            # istio-cni marks a pod whose traffic it redirected to ztunnel (annotation
            # `ambient.istio.io/redirection: enabled`, istio/istio cni/pkg/nodeagent); the session waits for it
            annotations["ambient.istio.io/redirection"] = "enabled"
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]}  # (a ReplicaSet, really)
        for key in [k for k, o in self.objects.items() if k[0] == "Pod" and k[1] == ns and
                    owner in ((o.get("metadata") or {}).get("ownerReferences") or [])]:
            del self.objects[key]
        self.put({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": f"{meta['name']}-7d9f8b6c5-x{next(self._ips)}", "namespace": ns,
                               "labels": labels, "annotations": annotations,
                               "ownerReferences": [owner]},
                  "spec": {"nodeName": self.node, "containers": [{"name": c} for c in containers]},
                  "status": {"phase": "Running", "podIP": f"10.244.0.{next(self._ips)}",
                             "conditions": [{"type": "Ready", "status": "True"}],
                             "containerStatuses": [{"name": c, "ready": True, "restartCount": 0,
                                                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
                                                   for c in containers]}})

    def _read_log(self, namespace: str, pod: str, req: Request) -> tuple[int, str | dict[str, Any]]:
        container = req.param("container") or ""
        with self.lock:
            if ("Pod", namespace, pod) not in self.objects:
                return 404, status_body(404, "NotFound", f'pods "{pod}" not found')
            lines = list(self.logs.get((namespace, pod, container), []))
        since = req.param("sinceSeconds")
        if since is not None:
            lines = [(t, text) for t, text in lines if t >= self.clock() - int(since)]
        stamped = req.param("timestamps") == "true"
        return 200, "".join((f"{kubelet_timestamp(t)} " if stamped else "") + text + "\n" for t, text in lines)


def _not_found(res: ResourceType, name: str) -> dict[str, Any]:
    group = f".{res.group}" if res.group else ""
    return status_body(404, "NotFound", f'{res.plural}{group} "{name}" not found', {"name": name, "kind": res.plural})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_api: FakeApiServer

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_api.lock:
            self.server_api._sockets.add(self.connection)

    def finish(self) -> None:
        with self.server_api.lock:
            self.server_api._sockets.discard(self.connection)
        super().finish()

    def _request(self) -> Request:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, unquote(split.path), parse_qs(split.query, keep_blank_values=True),
                      {k.lower(): v for k, v in self.headers.items()}, body, split.path)
        with self.server_api.lock:
            self.server_api.requests.append(req)
        return req

    def _send(self, code: int, body: dict[str, Any] | str | ProxyAnswer) -> None:
        if isinstance(body, ProxyAnswer):
            data = body.body.encode() if isinstance(body.body, str) else body.body
            content_type = body.content_type
        else:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            content_type = "application/json" if isinstance(body, dict) else "text/plain"
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self) -> None:
        req = self._request()
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        if req.headers.get("upgrade", "").lower() == "websocket":
            self._exec(req)
            return
        code, body = self.server_api.handle(req)
        self._send(code, body)

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

    def _exec(self, req: Request) -> None:
        api = self.server_api
        routed = api.route(req.path)
        if routed is None or routed[3] != "exec" or api.exec_handler is None:
            self._send(404, status_body(404, "NotFound", "no exec here"))
            return
        _res, namespace, pod, _sub = routed
        offered = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",")]
        protocol = V5 if V5 in offered else V4 if V4 in offered else None
        if protocol is None:
            self._send(400, status_body(400, "BadRequest", "no supported channel protocol offered"))
            return
        accept = base64.b64encode(hashlib.sha1((req.headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        answer = api.exec_handler(namespace or "", pod or "", req.param("container") or "",
                                  list(req.query.get("command", [])))
        frames = []
        if answer.stdout:
            frames.append(ws_frame(bytes([STDOUT]) + answer.stdout))
        if answer.stderr:
            frames.append(ws_frame(bytes([STDERR]) + answer.stderr))
        if answer.close_signal and protocol == V5:
            frames += [ws_frame(bytes([CLOSE, STDOUT])), ws_frame(bytes([CLOSE, STDERR]))]
        if answer.exit_code is not None:
            frames.append(ws_frame(bytes([STATUS]) + json.dumps(exec_status(answer.exit_code)).encode()))
        frames.append(ws_frame(struct.pack("!H", 1000), opcode=0x8))
        for frame in frames:
            self.wfile.write(frame)
        self.wfile.flush()
        self.connection.settimeout(2.0)
        try:  # the client answers the close (or goes away)
            while (frame := read_ws_frame(self.rfile)) is not None:
                with api.lock:
                    api.ws_frames.append(frame)
                if frame[0] == 0x8:
                    break
        except (OSError, struct.error):
            pass
        self.close_connection = True
