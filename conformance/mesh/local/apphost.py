"""The one workload-app process of a local target, shared by its runs (app.py is the process itself).

Why one per target and not one per run: a run's app is plain Python serving a few listeners, but starting it
(the interpreter and `http.server`'s imports) cost ~50 ms of CPU, paid by every one of `pytest policies`' ~110
runs on two cores. A run binds its workloads' listeners when it starts (`bind`, answered once every socket is
bound) and releases them when it closes (`release`, answered once every socket is closed), before its loopback
block is handed on. Every listener is still on its own workload's address in its own run's block, so nothing a
run's proxies reach can be another run's app.

Lifetime (lifetime.py): the host is spawned like every child (death signal), has its own run marker (so a run
that finds it orphaned reaps it), is registered for atexit/SIGTERM, and is stopped by `LocalTarget.close()`.
Its end is also its stdin's: when the target's process dies the pipe closes and the host exits.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conformance.errors import TargetError
from conformance.mesh.local import lifetime

_APP_SCRIPT = Path(__file__).with_name("app.py")


class AppHost:
    """Starts app.py on first use; `bind`/`release` a run's listeners; `problem()` says if it died."""

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._marker: lifetime.RunMarker | None = None
        self._lock = threading.Lock()  # one command and its answer at a time
        self._closed = False

    def bind(self, run: str, spec: Sequence[Mapping[str, Any]]) -> None:
        """Listen on every `{ref, address, port}` of `spec` for run `run`; TargetError (with the app's words)
        when any cannot be bound, and then none is."""
        if not spec:
            return
        self._command(f"bind {run} {json.dumps(list(spec))}", run, "ready")

    def release(self, run: str) -> None:
        """Close every listener of `run` (nothing when the host is gone: its sockets went with it)."""
        with self._lock:
            alive = self._proc is not None and self._proc.poll() is None
        if alive:
            self._command(f"release {run}", run, "released")

    def problem(self) -> str | None:
        """Why no app answers any more (the host exited), or None."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        return f"the workload app host exited with {proc.returncode}: {self._stderr_tail()}"

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def files(self) -> tuple[Path | None, Path | None]:
        """Its temp dir and its run marker (for the lifetime tests: both must be gone after `close`)."""
        return self._dir, self._marker.path if self._marker is not None else None

    def close(self) -> None:
        """Stop the host and remove its files; safe to call twice, from any path."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()  # its end of the control stream: the host closes its sockets and exits
            lifetime.stop_processes([proc])
            if proc.stdout is not None:
                proc.stdout.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if self._marker is not None:
            self._marker.remove()
        lifetime.unregister(self)

    # --- internals ----------------------------------------------------------------------------------

    def _start(self) -> subprocess.Popen[bytes]:
        """The running host (started now if it is not yet); the caller holds the lock."""
        if self._closed:
            raise TargetError("the local target is closed: no app host")
        if self._proc is not None:
            return self._proc
        runtime = lifetime.runtime_dir()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{lifetime.TEMP_PREFIX}{os.getpid()}-apps-"))
        self._marker = lifetime.RunMarker(runtime, self._dir, "app host")
        lifetime.register(self)
        with open(self._dir / "app.stderr", "wb") as err:
            self._proc = lifetime.spawn([sys.executable, "-S", "-u", str(_APP_SCRIPT), str(self._dir)],
                                        stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE)
        self._marker.add_child(self._proc.pid)
        return self._proc

    def _command(self, line: str, run: str, expect: str) -> None:
        verb = line.split(maxsplit=1)[0]
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
            except OSError as exc:
                raise TargetError(f"the workload app host cannot be told to {verb} run {run}: {exc}; "
                                  f"{self._stderr_tail()}") from exc
            ready, _, _ = select.select([proc.stdout], [], [], self.startup_timeout)
            answer = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if answer == f"{expect} {run}":
            return
        if answer.startswith(f"error {run} "):
            raise TargetError(f"the workload app: {answer[len(f'error {run} '):]}")
        raise TargetError(f"the workload app host gave no answer to {verb} {run} "
                          f"within {self.startup_timeout:g}s (got {answer!r}): {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self._dir is None:
            return "(no output)"
        try:
            text = (self._dir / "app.stderr").read_text(errors="replace")[-2000:].strip()
        except OSError:
            text = ""
        return text or "(no output)"
