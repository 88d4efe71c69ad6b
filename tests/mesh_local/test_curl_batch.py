"""Batched curl (curl.py `run_curl_batch`): one process, one transfer per probe, and every probe keeps exactly what it
would have had alone: its exit code, status, body, error message and its own connection.

Checked against real curl and real sockets on loopback: a server that answers with the path it got and the port the
connection came from, one that resets every connection, and a port nobody listens on.
"""

from __future__ import annotations

import errno
import random
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conformance.mesh.local import curl as curl_module
from conformance.mesh.local.curl import (
    CURL_MISSING,
    CurlRequest,
    SourcePorts,
    batches_supported,
    curl_binary,
    run_curl,
    run_curl_batch,
)
from conformance.mesh.local.lifetime import retry_failed_spawn


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: curl *could* reuse a connection, so the test sees if it does

    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        body = f"{self.path} from {self.client_address[1]}\n".encode()
        self.server.ports.append(self.client_address[1])  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops SYNs of a parallel batch (as app.py says)
    daemon_threads = True


@pytest.fixture
def curl() -> str:
    found = curl_binary()
    if found is None:
        pytest.skip(CURL_MISSING)
    if not batches_supported(found):
        pytest.skip("this curl is older than 7.75 (no %{exitcode}): batches fall back to one process per probe")
    return found


@pytest.fixture
def echo() -> Iterator[ThreadingHTTPServer]:
    server = _Server(("127.0.0.1", 0), _Echo)
    server.ports = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def resetter() -> Iterator[int]:
    """A port whose every connection is reset at once (SO_LINGER 0): curl's exit 56, a denied-l4 form."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comparable(body: str) -> str:
    return re.sub(r"Date: [^\r\n]*", "Date: -", body.split(" from ", maxsplit=1)[0])


# curl binds a source address and port; a port a run before this one (within TIME_WAIT's minute) used on the
# same address cannot be bound (exit 45, then run alone): each test sends from an address of its own
_SOURCE = f"127.250.{random.randrange(256)}.{random.randrange(1, 255)}"


def _request(port: int, path: str, method: str = "GET") -> CurlRequest:
    return CurlRequest("svc.ns", port, path, method, (), "127.0.0.1", port, interface=_SOURCE,
                       probe_id=path.strip("/").replace("/", "-"))


def test_a_batch_gives_each_probe_what_it_would_have_alone(curl: str, echo: ThreadingHTTPServer, resetter: int,
                                                           tmp_path: Path) -> None:
    port = echo.server_address[1]
    closed = _closed_port()
    requests = [_request(port, f"/ok/{i}") for i in range(6)] + [
        _request(port, "/status/403"), _request(port, "/status/503"), _request(port, "/head", "HEAD"),
        _request(resetter, "/reset"), _request(closed, "/refused"),
    ]
    ports = SourcePorts(low=61000, high=61999)
    batch = run_curl_batch(requests, curl, 1.0, 3.0, ports=ports, workdir=tmp_path)
    alone = [run_curl(replace(r, local_port=None), curl, 1.0, 3.0) for r in requests]
    for request, got, want in zip(requests, batch, alone, strict=True):
        assert got.evidence.exit_code == want.evidence.exit_code, request.path
        assert got.evidence.status == want.evidence.status, request.path
        # the body names the client port, and HEAD's headers the date, which differ between the two runs
        assert _comparable(got.evidence.body) == _comparable(want.evidence.body), request.path
        assert bool(got.evidence.stderr) == bool(want.evidence.stderr), (request.path, got.evidence.stderr)
        # the probe's own command as a user would retype it (with the port it was lent), no batch options
        assert re.sub(r" --local-port \d+", "", got.evidence.command) == want.evidence.command, request.path
        assert "--next" not in got.evidence.command and "--parallel" not in got.evidence.command
    assert [r.evidence.exit_code for r in batch[-2:]] == [56, 7]
    assert "Connection reset" in batch[-2].evidence.stderr or "Recv failure" in batch[-2].evidence.stderr
    # every transfer that connected had its own connection, from the port it was lent: none was reused
    served = [r for r in batch if r.connected and r.evidence.exit_code == 0]
    local_ports = [int(r.local_address.rsplit(":", 1)[1]) for r in served if r.local_address]
    assert len(local_ports) == len(served) == 9 and len(set(local_ports)) == 9
    assert all(61000 <= p <= 61999 for p in local_ports)
    assert all(r.evidence.body.endswith(f"from {p}\n") for r, p in zip(served, local_ports, strict=True)
               if not r.evidence.command.count("--head"))
    assert all(p in echo.ports for p in local_ports)
    assert all(r.started <= r.ended for r in batch)
    assert not list(tmp_path.iterdir()), "a batch's body files outlive it"


def test_a_batch_is_one_curl_process(curl: str, echo: ThreadingHTTPServer, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []
    real = curl_module._spawn

    def counting(argv: list[str], timeout: float) -> tuple[int, str, str]:
        spawned.append(argv)
        return real(argv, timeout)

    monkeypatch.setattr(curl_module, "_spawn", counting)
    requests = [_request(echo.server_address[1], f"/n/{i}") for i in range(10)]
    results = run_curl_batch(requests, curl, 1.0, 3.0, ports=SourcePorts(low=62000, high=62999), workdir=tmp_path)
    assert len(spawned) == 1 and spawned[0].count("--next") == 9
    assert [r.evidence.body.split(" from ")[0] for r in results] == [f"/n/{i}" for i in range(10)]


def test_without_batch_support_every_probe_runs_alone(curl: str, echo: ThreadingHTTPServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []
    real = curl_module._spawn
    monkeypatch.setattr(curl_module, "batches_supported", lambda _curl: False)
    monkeypatch.setattr(curl_module, "_spawn", lambda argv, timeout: spawned.append(argv) or real(argv, timeout))
    requests = [_request(echo.server_address[1], f"/a/{i}") for i in range(3)]
    results = run_curl_batch(requests, curl, 1.0, 3.0, ports=SourcePorts(low=63000, high=63999), workdir=tmp_path)
    assert len(spawned) == 3 and not any("--next" in argv for argv in spawned)
    assert [r.evidence.status for r in results] == [200, 200, 200]


def test_a_transfer_whose_port_is_held_runs_again_alone(curl: str, echo: ThreadingHTTPServer,
                                                        tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind((_SOURCE, 0))
        held = holder.getsockname()[1]
        ports = SourcePorts(low=held, high=held + 1, first=0)  # the first request gets the held port
        requests = [_request(echo.server_address[1], "/held"), _request(echo.server_address[1], "/free")]
        results = run_curl_batch(requests, curl, 1.0, 3.0, ports=ports, workdir=tmp_path)
    assert [r.evidence.exit_code for r in results] == [0, 0]
    assert results[0].local_address != f"{_SOURCE}:{held}"


def test_a_spawn_that_failed_before_exec_is_started_again() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise OSError(errno.EFAULT, "Bad address")  # subprocess's "noexec": no filename
        return "started"

    assert retry_failed_spawn(flaky) == "started" and len(calls) == 2

    def exec_failed() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise OSError(errno.EFAULT, "Bad address", "/usr/bin/setpriv")  # execve returned EFAULT: nothing ran
        return "started"

    calls.clear()
    assert retry_failed_spawn(exec_failed) == "started" and len(calls) == 2

    def missing() -> str:
        calls.append(1)
        raise OSError(errno.ENOENT, "No such file or directory", "/bin/x")  # a real error: raised at once

    calls.clear()
    with pytest.raises(OSError):
        retry_failed_spawn(missing)
    assert len(calls) == 1

    def always() -> str:
        calls.append(1)
        raise OSError(errno.EFAULT, "Bad address")

    calls.clear()
    with pytest.raises(OSError):
        retry_failed_spawn(always)
    assert len(calls) == 3
