"""A thin wrapper over the official `kubernetes` client: apply, delete, wait, exec, logs.

Why a wrapper: the targets need a handful of operations done one careful way each, and tests need a
seam to replace them with fakes. The rules from research/kind-istio-practicals.md §6:

- one `ApiClient` per kubeconfig context (`new_client_from_config`, never the global default), and a
  fresh one per concurrent exec: the websocket `stream` is not thread-safe;
- server-side apply for everything (`application/apply-patch+yaml`, field manager `authz-conformance`,
  conflicts forced), through the DynamicClient, so CRDs, policies and core objects go one way;
- exec with `_preload_content=False`, reading stdout and the status channel (3) ourselves: an exec
  that times out, or closes without a status, is an infrastructure error (`ExecLost`), never an outcome;
- readiness on real conditions (Deployment and DaemonSet rollouts, Pod Ready), polled with a deadline.

The `kubernetes` package is imported lazily, so the suite loads (and the targets can say what is
missing) where it is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from conformance.errors import TargetError

FIELD_MANAGER = "authz-conformance"
STDOUT, STDERR, STATUS = 1, 2, 3


class ExecLost(TargetError):
    """An exec timed out or lost its status channel: the probes it carried observed nothing."""


class ReplaceConflict(TargetError):
    """A replace (PUT) refused with 409 Conflict: the object changed since it was read."""


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    returncode: int
    seconds: float


def exit_status(status_text: str | None) -> int:
    """The exit code from an exec's status channel (a metav1.Status as JSON/YAML).

    `Success` -> 0; `Failure` with reason NonZeroExitCode -> the ExitCode cause; anything else (the
    command could not start, the container died, no status at all) -> ExecLost.
    """
    if not status_text or not status_text.strip():
        raise ExecLost("exec ended without a status: the connection to the pod was lost")
    try:
        status = yaml.safe_load(status_text)
    except yaml.YAMLError as exc:
        raise ExecLost(f"exec status unreadable: {status_text[:200]!r}") from exc
    if not isinstance(status, Mapping):
        raise ExecLost(f"exec status unreadable: {status_text[:200]!r}")
    if status.get("status") == "Success":
        return 0
    causes = ((status.get("details") or {}).get("causes") or []) if isinstance(status.get("details"), Mapping) else []
    for cause in causes:
        if isinstance(cause, Mapping) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                break
    raise ExecLost(f"exec failed: {status.get('message') or status_text[:200]}")


@dataclass(frozen=True)
class PodInfo:
    """What the targets need of a pod; `restarts` and `running` per container tell a dead or restarted proxy
    (its log and its state are gone) from a policy decision."""

    name: str
    namespace: str
    ip: str
    node: str
    labels: Mapping[str, str]
    ready: bool
    containers: tuple[str, ...] = ()
    deleting: bool = False
    restarts: Mapping[str, int] = field(default_factory=dict)  # container -> status.containerStatuses restartCount
    running: frozenset[str] = frozenset()  # containers whose state is `running`
    uid: str = ""


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    names = [c.get("name", "") for c in spec.get("containers") or []]
    names += [c.get("name", "") for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    # Native sidecars (istio-proxy as an init container with restartPolicy Always) report in
    # initContainerStatuses (Kubernetes PodStatus API).
    statuses = [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]
    restarts = {str(c.get("name", "")): int(c.get("restartCount") or 0) for c in statuses}
    # ContainerState has exactly one of running / waiting / terminated set; `running` may be an empty object
    # (startedAt is optional in the API), so its presence, not its content, says running.
    running = frozenset(str(c.get("name", "")) for c in statuses
                        if isinstance((c.get("state") or {}).get("running"), Mapping))
    return PodInfo(meta.get("name", ""), meta.get("namespace", ""), status.get("podIP") or "",
                   spec.get("nodeName") or "", dict(meta.get("labels") or {}), ready, tuple(names),
                   bool(meta.get("deletionTimestamp")), restarts, running, str(meta.get("uid") or ""))


def rollout_done(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment or DaemonSet finished rolling out (what `kubectl rollout status` checks)."""
    kind = obj.get("kind")
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False, "spec change not observed yet"
    if kind == "Deployment":
        want = spec.get("replicas", 1)
        updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
        total = status.get("replicas", 0)
        if updated < want:
            return False, f"{updated} of {want} replicas updated"
        if total > updated:
            return False, f"{total - updated} old replicas pending termination"
        if available < updated:
            return False, f"{available} of {updated} updated replicas available"
        return True, "rolled out"
    if kind == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        updated, available = status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0)
        if want == 0:
            return False, "no pods scheduled yet"
        if updated < want:
            return False, f"{updated} of {want} pods updated"
        if available < want:
            return False, f"{available} of {want} pods available"
        return True, "rolled out"
    return False, f"not a Deployment or DaemonSet: {kind}"


def poll_until(check: Callable[[], tuple[bool, str]], timeout: float, what: str,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               interval: float = 1.0) -> float:
    """Call `check` until it says done; TargetError with its last word after `timeout`. Returns seconds."""
    start = clock()
    last = ""
    while True:
        done, last = check()
        elapsed = clock() - start
        if done:
            return elapsed
        if elapsed >= timeout:
            raise TargetError(f"{what}: not ready after {timeout:.0f} s ({last})")
        sleep(min(interval, max(0.0, timeout - elapsed)))


@dataclass
class Kube:
    """One cluster (kubeconfig file + context). Not thread-safe except `exec`, which makes its own client."""

    kubeconfig: str | None
    context: str | None
    request_timeout: float = 30.0
    _api: Any = field(default=None, init=False, repr=False)
    _dyn: Any = field(default=None, init=False, repr=False)
    _log_api: Any = field(default=None, init=False, repr=False)  # logs have their own client (probe thread)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- clients --------------------------------------------------------------------------------
    def new_api_client(self) -> Any:
        from kubernetes import config as kconfig

        try:
            return kconfig.new_client_from_config(config_file=self.kubeconfig, context=self.context,
                                                  persist_config=False)
        except Exception as exc:  # ConfigException, FileNotFoundError, ...
            raise TargetError(f"cannot load kubeconfig {self.kubeconfig or '~/.kube/config'} "
                              f"(context {self.context or 'current'}): {exc}") from exc

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self.new_api_client()
        return self._api

    @property
    def dynamic(self) -> Any:
        """The DynamicClient, its discovery kept in memory only.

        Why not the client's default: `LazyDiscoverer` caches discovery in `<tmp>/osrcp-<md5 of the host>.json`
        (kubernetes/dynamic/discovery.py, 37.0.2) and reads it back in every later process for the same
        server address: after CRDs were installed, or on another cluster that got the same local port (kind
        picks them), a new client would start from a stale list; and the file outlives the run.
        """
        if self._dyn is None:
            from kubernetes.dynamic import DynamicClient

            self._dyn = DynamicClient(self.api, cache_file=_NO_CACHE_FILE, discoverer=_memory_discoverer())
        return self._dyn

    def invalidate(self) -> None:
        """Forget discovered API resources (after CRDs were installed)."""
        self._dyn = None

    def close(self) -> None:
        """Close the long-lived API clients (their connection pools); the Kube can still be used afterwards."""
        with self._lock:
            clients, self._api, self._log_api, self._dyn = (self._api, self._log_api), None, None, None
        for api in clients:
            if api is not None:
                with contextlib.suppress(Exception):
                    api.close()

    def resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except Exception as exc:
            raise TargetError(f"the cluster does not serve {kind} ({api_version}): {exc}") from exc

    # -- objects ------------------------------------------------------------------------------------
    def apply(self, doc: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply one object (field manager authz-conformance, conflicts forced)."""
        res = self.resource(doc["apiVersion"], doc["kind"])
        meta = doc.get("metadata") or {}
        try:
            out = res.server_side_apply(body=dict(doc), name=meta.get("name"),
                                        namespace=meta.get("namespace") if res.namespaced else None,
                                        field_manager=field_manager, force_conflicts=True,
                                        _request_timeout=self.request_timeout)
        except Exception as exc:
            raise TargetError(f"server-side apply of {doc['kind']} {meta.get('namespace', '')}/"
                              f"{meta.get('name')} failed: {_api_message(exc)}") from exc
        return out.to_dict() if hasattr(out, "to_dict") else dict(out)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)
        try:
            out = res.get(name=name, namespace=namespace if res.namespaced else None,
                          _request_timeout=self.request_timeout)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise TargetError(f"reading {kind} {namespace or ''}/{name} failed: {_api_message(exc)}") from exc
        return out.to_dict()

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        res = self.resource(api_version, kind)
        try:
            out = res.get(namespace=namespace, label_selector=label_selector, _request_timeout=self.request_timeout)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return []
            raise TargetError(f"listing {kind} failed: {_api_message(exc)}") from exc
        return list(out.to_dict().get("items") or [])

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete one object; False when it was already gone (404).

        `propagationPolicy=Background` as a query parameter (Kubernetes API reference, DELETE of any object;
        the DynamicClient's `propagation_policy`): the object's dependents (a Deployment's ReplicaSets and
        pods) are removed by the garbage collector after the call returns, so cleanup never waits on them.
        """
        res = self.resource(api_version, kind)
        try:
            res.delete(name=name, namespace=namespace if res.namespaced else None,
                       propagation_policy="Background", _request_timeout=self.request_timeout)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise TargetError(f"deleting {kind} {namespace or ''}/{name} failed: {_api_message(exc)}") from exc
        return True

    def replace(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """PUT one object as read, its `metadata.resourceVersion` kept: the API server refuses it (409) when the
        object changed since it was read (optimistic concurrency, Kubernetes API concepts), raised as
        `ReplaceConflict` so the caller reads again."""
        res = self.resource(doc["apiVersion"], doc["kind"])
        meta = doc.get("metadata") or {}
        try:
            out = res.replace(body=dict(doc), name=meta.get("name"),
                              namespace=meta.get("namespace") if res.namespaced else None,
                              _request_timeout=self.request_timeout)
        except Exception as exc:
            if getattr(exc, "status", None) == 409:
                raise ReplaceConflict(f"{doc['kind']} {meta.get('namespace', '')}/{meta.get('name')} changed since it "
                                      f"was read: {_api_message(exc)}") from exc
            raise TargetError(f"replacing {doc['kind']} {meta.get('namespace', '')}/{meta.get('name')} failed: "
                              f"{_api_message(exc)}") from exc
        return out.to_dict() if hasattr(out, "to_dict") else dict(out)

    def proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        """GET `path` on a pod's port through the API server's pod proxy (`pods/<name>:<port>/proxy/<path>`),
        so nothing is port-forwarded and nothing runs in the pod."""
        from kubernetes import client as kclient

        try:
            out = kclient.CoreV1Api(self.api).connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}", namespace, path, _request_timeout=self.request_timeout, _preload_content=False)
            return bytes(out.data).decode(errors="replace")
        except Exception as exc:
            raise TargetError(f"GET {path} on pod {namespace}/{pod}:{port} failed: {_api_message(exc)}") from exc

    def pods(self, namespace: str | None, label_selector: str | None = None) -> list[PodInfo]:
        return [pod_info(p) for p in self.list("v1", "Pod", namespace, label_selector)]

    # -- waiting ------------------------------------------------------------------------------------
    def wait_rollout(self, kind: str, name: str, namespace: str, timeout: float, **kw: Any) -> float:
        api_version = "apps/v1"

        def check() -> tuple[bool, str]:
            obj = self.get(api_version, kind, name, namespace)
            return (False, "not found") if obj is None else rollout_done(obj)

        return poll_until(check, timeout, f"{kind} {namespace}/{name} rollout", **kw)

    def wait_crds_established(self, names: Iterable[str], timeout: float, **kw: Any) -> float:
        pending = list(names)

        def check() -> tuple[bool, str]:
            nonlocal pending
            still = []
            for name in pending:
                crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
                conds = ((crd or {}).get("status") or {}).get("conditions") or []
                if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                    still.append(name)
            pending = still
            return not still, f"not established: {', '.join(still)}"

        elapsed = poll_until(check, timeout, "CRDs", **kw)
        self.invalidate()
        return elapsed

    # -- exec and logs ----------------------------------------------------------------------------
    def exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], timeout: float) -> ExecResult:
        """Run `argv` in a container with its own API client; ExecLost on timeout or a lost status."""
        from kubernetes import client
        from kubernetes.stream import stream

        api = self.new_api_client()
        start = time.monotonic()
        ws = None
        try:
            core = client.CoreV1Api(api)
            ws = stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=list(argv),
                        container=container, stdin=False, stdout=True, stderr=True, tty=False,
                        _preload_content=False, _request_timeout=timeout)
            out: list[str] = []
            err: list[str] = []
            while ws.is_open():
                remaining = timeout - (time.monotonic() - start)
                if remaining <= 0:
                    raise ExecLost(f"exec in {namespace}/{pod} ({container}) did not finish within {timeout:.0f} s")
                ws.update(timeout=min(remaining, 1.0))
                out.append(ws.read_channel(STDOUT))
                err.append(ws.read_channel(STDERR))
            out.append(ws.read_channel(STDOUT))
            err.append(ws.read_channel(STDERR))
            code = exit_status(ws.read_channel(STATUS))
            return ExecResult("".join(out), "".join(err), code, time.monotonic() - start)
        except TargetError:
            raise
        except Exception as exc:
            # kubernetes/stream/ws_client.py `websocket_call` turns *everything* raised while connecting,
            # KeyboardInterrupt and SystemExit included, into ApiException(status=0): a Ctrl-C must stay one
            # (the run stops and cleans up), never become a lost exec.
            if isinstance(exc.__context__, (KeyboardInterrupt, SystemExit)):
                raise exc.__context__ from None
            raise ExecLost(f"exec in {namespace}/{pod} ({container}) failed: {_api_message(exc)}") from exc
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()
            with contextlib.suppress(Exception):
                api.close()

    def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
             tail_lines: int | None = None) -> str:
        """A container's log, every line behind the kubelet's RFC 3339 timestamp (`timestamps=True`).

        Why timestamps: a record proves a probe only when it was written after the probe's exec started
        (logs.py). The client's `read_namespaced_pod_log` (kubernetes 37.0.2) offers `since_seconds` but not
        the API's `sinceTime`, so callers ask for a few seconds more than they need and filter on the
        timestamps. One client for logs, behind a lock: reads come from the probe thread too.
        """
        from kubernetes import client

        kwargs: dict[str, Any] = {"container": container, "timestamps": True, "_request_timeout": self.request_timeout}
        if since_seconds is not None:
            kwargs["since_seconds"] = max(1, int(since_seconds))
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        try:
            with self._lock:
                if self._log_api is None:
                    self._log_api = self.new_api_client()
                return str(client.CoreV1Api(self._log_api).read_namespaced_pod_log(pod, namespace, **kwargs))
        except Exception as exc:
            raise TargetError(f"reading logs of {namespace}/{pod} ({container}) failed: {_api_message(exc)}") from exc


# Never created: the discoverer below does not write its cache, and reads it only when the file exists.
_NO_CACHE_FILE = os.path.join(tempfile.gettempdir(), f"authz-conformance-no-discovery-cache-{uuid.uuid4().hex}.json")


def _memory_discoverer() -> Any:
    """`LazyDiscoverer` without its disk cache (see `Kube.dynamic`): discovery lives as long as the client."""
    from kubernetes.dynamic.discovery import LazyDiscoverer

    class MemoryDiscoverer(LazyDiscoverer):  # type: ignore[misc]
        def _write_cache(self) -> None:
            pass

    return MemoryDiscoverer


def _api_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except (TypeError, ValueError):
            pass
    # ApiException's str() starts with "(<status>)" alone on its first line; the why is its `reason` (for a
    # websocket that never connected, status 0 and the websocket error's text, ws_client.websocket_call).
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason.strip():
        status = getattr(exc, "status", None)
        return f"{status} {reason.strip()}" if status else reason.strip()
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
