"""Nothing the local mesh starts may outlive the run: child supervision, run markers, reaping, signals.

DESIGN.md §6 asks that no process or temp file survives a run, on success, failure, Ctrl-C, SIGTERM and
SIGKILL of the test process alike. Each layer covers what the one before cannot:

- context managers and pytest fixtures close sessions on success, failure and Ctrl-C (KeyboardInterrupt);
- `atexit` and chained SIGTERM/SIGHUP handlers close whatever sessions are still live;
- every child is started with `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills it when the test
  process dies, even by SIGKILL, where no Python code runs. The death signal follows the *thread* that
  forked the child, so every child is forked from one long-lived spawner thread, never from a worker
  thread that may end before the child should. util-linux's `setpriv --pdeathsig KILL` sets it when it is
  installed (a Python preexec_fn otherwise): without a preexec_fn, Python starts the child with vfork,
  which costs well under a millisecond where forking the whole test process costs tens of milliseconds
  under load (a 200-workload mesh starts 200 Envoys);
- each run writes a marker (its pid, the pid's start time, its temp dir, its children) into a per-user
  runtime directory, and every new run first reaps what the markers of dead runs left: it kills their
  children still alive (only processes whose command line names that run's temp dir: the ones the marker
  lists, and any other process of this user naming it, such as a child whose parent died before setpriv
  had set its death signal) and deletes the temp dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

RUNTIME_ENV = "AUTHZ_CONFORMANCE_RUNTIME_DIR"
TEMP_PREFIX = "authz-mesh-"
_PR_SET_PDEATHSIG = 1


def runtime_dir() -> Path:
    """The per-user directory holding run markers and address-block locks (created 0700).

    `$AUTHZ_CONFORMANCE_RUNTIME_DIR` wins, then `$XDG_RUNTIME_DIR/istio-authz-conformance`, then
    `<tmp>/istio-authz-conformance-<uid>`. A directory that is a symlink or belongs to someone else is
    refused: another user could otherwise plant markers that make us delete their choice of files.
    """
    override = os.environ.get(RUNTIME_ENV)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if override:
        path = Path(override)
    elif xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        path = Path(xdg) / "istio-authz-conformance"
    else:
        path = Path(tempfile.gettempdir()) / f"istio-authz-conformance-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if os.path.islink(path) or st.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory owned by uid {os.getuid()}; refusing to use it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    for sub in ("runs", "blocks"):
        (path / sub).mkdir(mode=0o700, exist_ok=True)
    return path


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), None if it is gone.

    A pid alone can be reused after its process died; pid plus start time names one process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RunMarker:
    """This run's marker file: who owns the run, where its files are, which children it started."""

    def __init__(self, runtime: Path, tmpdir: Path, block: str):
        self.path = runtime / "runs" / f"{os.getpid()}-{tmpdir.name}.json"
        self._data: dict[str, Any] = {
            "pid": os.getpid(),
            "start_time": process_start_time(os.getpid()),
            "tmpdir": str(tmpdir),
            "block": block,
            "children": [],
        }
        self._lock = threading.Lock()
        self._write()

    def add_child(self, pid: int) -> None:
        self.add_children([pid])

    def add_children(self, pids: Sequence[int]) -> None:
        """Record several children in one write (each write is a file replace: a few ms on a busy disk)."""
        with self._lock:
            self._data["children"].extend(pids)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def reap_stale(runtime: Path) -> list[str]:
    """Kill the children and delete the temp dirs of runs whose owner process is dead; say what was done.

    A child is killed only if its command line names the dead run's temp dir (its Envoy bootstrap or
    app spec lives there), so a reused pid belonging to an unrelated process is left alone.
    """
    reaped: list[str] = []
    for marker in sorted((runtime / "runs").glob("*.json")):
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            # A marker being written right now by a live run is never partial (rename), so this one
            # is garbage from a crash mid-write: drop it.
            with contextlib.suppress(OSError):
                marker.unlink()
            continue
        pid, started = int(data.get("pid", 0)), data.get("start_time")
        if pid and process_start_time(pid) == started and started is not None:
            continue  # a live run
        tmpdir = str(data.get("tmpdir", ""))
        killed = []
        candidates = {int(c) for c in data.get("children", [])} | (_naming(tmpdir) if tmpdir else set())
        for child in sorted(candidates):
            if tmpdir and tmpdir in _cmdline(child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
                    killed.append(child)
        for child in killed:
            _wait_gone(child, 2.0)
        path = Path(tmpdir)
        if (
            tmpdir and path.name.startswith(TEMP_PREFIX) and path.is_dir() and not path.is_symlink()
            and path.stat().st_uid == os.getuid()
        ):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            marker.unlink()
        reaped.append(f"run {pid}: killed {killed}, removed {tmpdir}")
    return reaped


def _naming(tmpdir: str) -> set[int]:
    """This user's processes whose command line names `tmpdir` (a dead run's children the marker missed)."""
    found = set()
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        if tmpdir in _cmdline(int(entry.name)):
            found.add(int(entry.name))
    found.discard(os.getpid())
    return found


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until `pid` is gone or a zombie (its own parent, or init, reaps it; never us: stealing an
    exit status from someone's Popen would confuse it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_running(pid):
        time.sleep(0.01)


def process_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0] != "Z"


# --- spawning children that die with us ----------------------------------------------------------

_LIBC: dict[str, Any] = {}


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    if "libc" not in _LIBC:
        _LIBC["libc"] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _LIBC["libc"].prctl


def _die_with_parent(parent: int, prctl: Callable[..., int] | None) -> Callable[[], None]:
    """A preexec_fn: ask for SIGKILL when the spawning thread dies; exit if the parent is already gone.

    The check after prctl closes the race where the parent dies between fork and prctl (the child would
    then be reparented and never get the signal). `prctl` is resolved before fork: no dlopen in the child.
    """

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _Spawner:
    """One daemon thread that forks every child, so PR_SET_PDEATHSIG is tied to a thread that lives as
    long as the process (the signal fires when the forking *thread* exits)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="authz-mesh-spawner", daemon=True)
                self._thread.start()
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            fn, reply = self._jobs.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))


_SPAWNER = _Spawner()


def _setpriv() -> str | None:
    """util-linux's setpriv when it can set the parent-death signal (`--pdeathsig`, util-linux >= 2.33)."""
    if "setpriv" not in _LIBC:
        path = shutil.which("setpriv")
        ok = False
        if path is not None:
            try:
                ok = "--pdeathsig" in subprocess.run([path, "--help"], capture_output=True, text=True,
                                                     timeout=5, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                ok = False
        _LIBC["setpriv"] = path if ok else None
    return _LIBC["setpriv"]


SPAWN_ATTEMPTS = 3
T = TypeVar("T")


def retry_failed_spawn(start: Callable[[], T]) -> T:
    """`start()` again when the child failed with EFAULT before the program ran.

    Seen here a few times in some thirty runs of `pytest policies` under load, both ways subprocess reports a
    child that failed before the program ran: `OSError(14, 'Bad address')` with no file name (the child's set-up
    before exec: `_posixsubprocess` writes "noexec" to its error pipe) and with the program's name (execve itself
    returned EFAULT, so it never replaced the child). Either way no program ran and nothing was observed, so
    starting it again is not retrying an observation away. Any other error (a missing program is ENOENT), or
    EFAULT three times, is raised as it is."""
    for attempt in range(SPAWN_ATTEMPTS):
        try:
            return start()
        except OSError as exc:
            if exc.errno != errno.EFAULT or attempt == SPAWN_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def spawn(argv: Sequence[str], *, stdout: Any, stderr: Any, env: dict[str, str] | None = None,
          cwd: str | None = None, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a child that the kernel kills when this process dies (see the module docstring)."""
    setpriv = _setpriv() if sys.platform.startswith("linux") else None
    prctl = None if setpriv else _load_prctl()
    command = [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)

    def start() -> subprocess.Popen[bytes]:
        if setpriv:
            # vfork + exec: setpriv sets the death signal (tied to this spawner thread, as prctl would be) and
            # execs the command, which keeps it; a child orphaned before that is reaped by the next run
            # (reap_stale: its command line names this run's temp dir)
            return subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                    cwd=cwd, close_fds=True)
        return subprocess.Popen(
            command, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
            # Safe here despite threads: the child only calls prctl and getppid (async-signal-safe,
            # resolved before fork), and all forks come from the one spawner thread.
            preexec_fn=_die_with_parent(os.getpid(), prctl), close_fds=True,  # noqa: PLW1509
        )

    return _SPAWNER.run(lambda: retry_failed_spawn(start))


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 2.0) -> None:
    """SIGTERM all, then SIGKILL what is still there after `timeout`; always reap (no zombies)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


# --- closing live sessions on exit and on signals ---------------------------------------------------

class Closable(Protocol):
    def close(self) -> None: ...


_LIVE: set[Closable] = set()
_LIVE_LOCK = threading.RLock()  # re-entered when a signal arrives while held
_HOOKS = {"installed": False}


def register(session: Closable) -> None:
    """Track a live session so that atexit and SIGTERM/SIGHUP close it; installs the hooks once."""
    with _LIVE_LOCK:
        _LIVE.add(session)
        if _HOOKS["installed"]:
            return
        _HOOKS["installed"] = True
    import atexit

    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            _chain_signal(sig)


def unregister(session: Closable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(session)


def close_all() -> None:
    """Close every live session (atexit, signals); errors are swallowed: this is the last line of defence."""
    with _LIVE_LOCK:
        sessions = list(_LIVE)
    for session in sessions:
        with contextlib.suppress(Exception):
            session.close()


def _chain_signal(sig: signal.Signals) -> None:
    previous = signal.getsignal(sig)

    def handler(signum: int, frame: Any) -> None:
        close_all()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # SIG_DFL (or unknown): die of the same signal, as the process would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(sig, handler)
