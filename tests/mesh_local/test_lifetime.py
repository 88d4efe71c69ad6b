"""Nothing the local target starts survives it: close, SIGTERM, and SIGKILL of the test process.

SIGKILL runs no Python code, so there the kernel (PR_SET_PDEATHSIG) kills the children, and the next
run reaps the temp dir the killed one left, from its marker.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.mesh.local import lifetime
from conformance.mesh.local.mesh import LocalTarget
from tests.mesh_local.world import BACKEND, FRONTEND, scenario

ROOT = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return []
        time.sleep(0.02)
    return [p for p in pids if _running(p)]


def _start_child(mode: str = "sidecar") -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.mesh_local.mesh_child", mode], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 60)
    line = child.stdout.readline() if ready else b""
    if not line:
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the child mesh did not start: {err.decode(errors='replace')[-2000:]}")
    return child, json.loads(line)


@pytest.fixture(autouse=True)
def _needs_local_target() -> None:
    reason = LocalTarget().unavailable("sidecar")
    if reason:
        pytest.skip(reason)


def test_close_leaves_nothing_behind() -> None:
    target = LocalTarget()
    session = target.start(scenario(FRONTEND, BACKEND), "sidecar")
    pids, tmpdir = session.pids(), session.tmpdir
    marker = session._marker.path if session._marker else None
    assert pids and tmpdir is not None and tmpdir.is_dir()
    session.close()
    assert _wait_gone(pids, 0.5) == []
    assert not tmpdir.exists()
    assert marker is not None and not marker.exists()
    session.close()  # idempotent
    # the app host outlives a run (the target's, shared by its runs) and goes with the target
    host, (host_dir, host_marker) = target.apps.pid(), target.apps.files
    assert host is not None and _running(host) and host_dir is not None and host_dir.is_dir()
    target.close()
    assert _wait_gone([host], 0.5) == []
    assert not host_dir.exists() and host_marker is not None and not host_marker.exists()
    target.close()  # idempotent


def test_a_closed_run_releases_its_app_listeners_before_its_block() -> None:
    """A later run may get the same loopback block: the closed run's apps must not answer on it any more."""
    import socket

    with LocalTarget() as target:
        session = target.start(scenario(FRONTEND, BACKEND), "sidecar")
        app = session.layout.app_address[BACKEND.ref] if session.layout else ""
        port = session.layout.real(BACKEND.ports[0].number) if session.layout else 0
        socket.create_connection((app, port), timeout=2).close()  # the backend's app listens
        session.close()
        with pytest.raises(OSError):
            socket.create_connection((app, port), timeout=2).close()
        assert target.apps.problem() is None  # the host itself lives on for the next run


def test_sigkill_of_the_test_process_kills_its_children_and_the_next_run_reaps_its_files() -> None:
    child, info = _start_child()
    pids = [int(p) for p in info["pids"]]  # type: ignore[union-attr]
    tmpdir = Path(str(info["tmpdir"]))
    assert tmpdir.is_dir() and all(_running(p) for p in pids)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert _wait_gone(pids) == [], "children of a SIGKILLed run survived it"
    assert tmpdir.is_dir()  # nobody could clean up: that is the next run's job
    with LocalTarget() as target, target.start(scenario(FRONTEND, BACKEND), "sidecar"):
        assert not tmpdir.exists(), "a new run did not reap the killed run's temp dir"
        assert not Path(str(info["marker"])).exists()
        assert not Path(str(info["host_dir"])).exists(), "a new run did not reap the killed app host's temp dir"
        assert not Path(str(info["host_marker"])).exists()


def test_sigterm_closes_the_mesh() -> None:
    child, info = _start_child("ambient")
    pids = [int(p) for p in info["pids"]]  # type: ignore[union-attr]
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == -signal.SIGTERM  # the handler chains to the default action
    assert _wait_gone(pids) == []
    assert not Path(str(info["tmpdir"])).exists()
    assert not Path(str(info["marker"])).exists()
    assert not Path(str(info["host_dir"])).exists() and not Path(str(info["host_marker"])).exists()


def test_reaper_kills_stale_children_of_a_dead_run(tmp_path: Path) -> None:
    """If a child outlived its run (no death signal), the next run kills it: identified by the dead
    run's temp dir on its command line, never by name."""
    runtime = tmp_path / "runtime"
    os.environ[lifetime.RUNTIME_ENV] = str(runtime)
    try:
        base = lifetime.runtime_dir()
        stale_dir = Path(tmp_path / f"{lifetime.TEMP_PREFIX}stale")
        stale_dir.mkdir()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(stale_dir)])
        dead = subprocess.Popen(["true"])
        dead.wait()
        (base / "runs" / "dead.json").write_text(json.dumps({
            "pid": dead.pid, "start_time": 1, "tmpdir": str(stale_dir), "children": [sleeper.pid],
        }))
        unrelated = subprocess.Popen(["sleep", "60"])
        (base / "runs" / "dead2.json").write_text(json.dumps({
            "pid": dead.pid, "start_time": 1, "tmpdir": str(stale_dir), "children": [unrelated.pid],
        }))
        reaped = lifetime.reap_stale(base)
        assert len(reaped) == 2
        assert sleeper.wait(5) == -signal.SIGKILL  # killed, not finished
        assert not stale_dir.exists()
        assert unrelated.poll() is None, "a process not naming the run's temp dir was killed"
        unrelated.kill()
        unrelated.wait()
    finally:
        del os.environ[lifetime.RUNTIME_ENV]
