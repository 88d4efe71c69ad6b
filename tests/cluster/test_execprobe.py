"""The exec probe script, run for real: POSIX sh (dash and busybox, as in the curl image) and real curl
against tiny servers on 127.0.0.1, its one-line-per-probe output parsed back into evidence and
classified by the shared classifier; truncated or garbled output is an infrastructure error."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.execprobe import (
    PROBE_HEADER,
    CurlCall,
    ExecOutputError,
    ProbeResult,
    build_script,
    exec_timeout,
    new_nonce,
    parse_output,
)
from conformance.mesh.local.app import EchoServer
from conformance.model import ALLOWED, DENIED_L4, DENIED_L7, ERROR, TIMEOUT
from conformance.probe import classify

CURL = shutil.which("curl")
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


class Forbidden(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"RBAC: access denied"
        self.send_response(403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _raw_server(behaviour: str) -> tuple[socket.socket, threading.Event]:
    """A listener that resets ("reset"), closes silently ("close") or never answers ("hang")."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(4096)
            if behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            elif behaviour == "close":
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return sock, stop


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    echo = EchoServer(("127.0.0.1", 0), "shop/app")
    forbidden = ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    for srv in (echo, forbidden):
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    raw = {name: _raw_server(name) for name in ("reset", "close", "hang")}
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more: connection refused
    yield {"echo": echo.server_address[1], "forbidden": forbidden.server_address[1],
           **{k: s.getsockname()[1] for k, (s, _) in raw.items()}, "refused": closed_port}
    echo.shutdown()
    forbidden.shutdown()
    for s, stop in raw.values():
        stop.set()
        s.close()


def busybox_path(tmp_path: Path) -> str:
    """A PATH holding only busybox applets and curl: what the curlimages/curl image offers."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("sh", "cat", "od", "dd", "tr", "mkdir", "rm", "printf", "echo"):
        os.symlink(BUSYBOX, bindir / applet)
    os.symlink(CURL, bindir / "curl")
    return str(bindir)


def run_script(script: str, shell: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shell == "busybox":
        if BUSYBOX is None:
            pytest.skip("busybox is not installed (apt-get install busybox)")
        env = {"PATH": busybox_path(tmp_path)}
        argv = [BUSYBOX, "sh", "-c", script]
    else:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        argv = ["/bin/sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_many_probes_in_one_exec_each_with_its_own_outcome(servers, shell, tmp_path):
    calls = [
        CurlCall("id-0", f"http://127.0.0.1:{servers['echo']}/api/v1/data?x=1", "POST",
                 (("x-team", "a b 'quoted' \"double\" $HOME `id`"),)),
        CurlCall("id-1", f"http://127.0.0.1:{servers['forbidden']}/"),
        CurlCall("id-2", f"http://127.0.0.1:{servers['reset']}/"),
        CurlCall("id-3", f"http://127.0.0.1:{servers['close']}/"),
        CurlCall("id-4", f"http://127.0.0.1:{servers['hang']}/"),
        CurlCall("id-5", f"http://127.0.0.1:{servers['refused']}/"),
        CurlCall("id-6", f"http://127.0.0.1:{servers['echo']}/", "DELETE"),
    ]
    nonce = new_nonce()
    script = build_script(calls, nonce, connect_timeout=2, max_time=3, parallel=4)
    proc = run_script(script, shell, tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = parse_output(proc.stdout, nonce, len(calls))
    outcomes = [classify(r.evidence("cmd"), "shop/app") for r in results]
    assert outcomes == [ALLOWED, DENIED_L7, DENIED_L4, DENIED_L4, TIMEOUT, ERROR, ALLOWED]
    assert [r.exit_code for r in results[2:6]] == [56, 52, 28, 7]
    echo = results[0]
    assert echo.status == 200 and echo.body.startswith("shop/app responding\n")
    assert '"method": "POST"' in echo.body and '"path": "/api/v1/data"' in echo.body
    assert "a b 'quoted' \\\"double\\\" $HOME `id`" in echo.body  # the header arrived verbatim
    assert f'"{PROBE_HEADER}": "id-0"' in echo.body
    assert results[1].body == "RBAC: access denied" and results[1].status == 403
    assert "Connection reset" in results[2].stderr or "Recv failure" in results[2].stderr
    assert echo.fields["local_ip"] == "127.0.0.1" and echo.fields["local_port"].isdigit()
    assert echo.local_address == f"127.0.0.1:{echo.fields['local_port']}"  # the key to an L4 record
    assert len({r.local_address for r in results[:4]}) == 4  # every connection its own source port
    assert results[5].local_address is None  # refused: curl never had a connection
    assert not Path(f"/tmp/authz-{nonce}").exists()  # the script cleans up after itself


def test_probes_run_in_parallel_waves(servers, tmp_path):
    calls = [CurlCall(f"h{i}", f"http://127.0.0.1:{servers['hang']}/") for i in range(8)]
    nonce = new_nonce()
    import time

    start = time.monotonic()
    proc = run_script(build_script(calls, nonce, 1, 1, parallel=8), "sh", tmp_path)
    elapsed = time.monotonic() - start
    assert [r.exit_code for r in parse_output(proc.stdout, nonce, 8)] == [28] * 8
    assert elapsed < 6  # eight 1-second timeouts at once, not one after the other (>= 8 s)
    assert exec_timeout(4, 1, 1, parallel=4) >= 1 + 10
    assert exec_timeout(20, 2, 5, parallel=8) == 3 * 5 + 10


def sample_output(nonce: str, count: int = 2) -> str:
    body = b"ns/app responding\n{}\n".hex()
    lines = [f"@@authz {nonce} {i} rc=0 http_code=200 local_ip=10.0.0.1 local_port=4000 remote_ip=10.0.0.2 "
             f"remote_port=8080 time_connect=0.001 time_total=0.002 body={body} err=" for i in range(count)]
    return "\n".join(["noise before", *lines, f"@@authz {nonce} done {count}", ""])


def test_parse_ignores_other_output_and_foreign_nonces():
    nonce = "abcdef0123456789"
    out = "@@authz 1111111111111111 0 rc=56 http_code=000 body= err=\n" + sample_output(nonce)
    results = parse_output(out, nonce, 2)
    assert [r.exit_code for r in results] == [0, 0] and results[0].status == 200


@pytest.mark.parametrize("mangle, message", [
    (lambda s: s.rsplit("@@authz", 1)[0], "no completion line"),            # cut before the done line
    (lambda s: s.split("\n", 2)[0] + "\n" + s.split("\n", 2)[2], "no line for probe"),  # a probe line lost
    (lambda s: s.replace("body=", "body=zz", 1), "not hex"),                # garbled body
    (lambda s: s.replace("rc=0", "rc=x", 1), "no curl exit code"),          # curl never wrote its exit code
    (lambda s: s.replace(" done 2", " done 3"), "done line says 3"),
    (lambda s: s.replace("http_code=200 ", "", 1), "lacks http_code"),     # -w output missing
    (lambda s: s.replace(" 1 rc=0", " 0 rc=0"), "repeated probe line"),
])
def test_truncated_or_garbled_output_is_an_infrastructure_error(mangle, message):
    nonce = "abcdef0123456789"
    text = sample_output(nonce)
    if "lost" in message or message == "no line for probe":
        text = "\n".join(line for line in text.splitlines() if f"{nonce} 1 " not in line)
    else:
        text = mangle(text)
    with pytest.raises(ExecOutputError, match=message) as info:
        parse_output(text, nonce, 2)
    assert isinstance(info.value, TargetError)


def test_the_script_is_posix_and_quotes_everything():
    call = CurlCall("i", "http://a.b:80/x;rm -rf /", "GET", (("h", "$(reboot)"),))
    script = build_script([call], "00ff", 2, 5)
    assert "'http://a.b:80/x;rm -rf /'" in script and "'h: $(reboot)'" in script
    assert "bash" not in script and "jq" not in script and "[[" not in script
    assert "--connect-timeout 2 --max-time 5" in script
    with pytest.raises(ValueError):
        build_script([call], "not hex!", 2, 5)
    with pytest.raises(ValueError, match="the suite's own probe id"):
        CurlCall("i", "http://a.b/", "GET", (("X-Authz-Conformance-Probe", "forged"),))
    proc = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert call.describe(2, 5).startswith(
        "curl -sS --connect-timeout 2 --max-time 5 -X GET -H 'x-authz-conformance-probe: i'")


def test_an_empty_batch_still_completes(tmp_path):
    nonce = new_nonce()
    proc = run_script(build_script([], nonce), "sh", tmp_path)
    assert parse_output(proc.stdout, nonce, 0) == []


@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_each_probe_binds_its_source_port_and_a_held_one_falls_back(servers, shell, tmp_path):
    """curl's source port is the key of an L4 record (ztunnel): the session lends each probe its own
    (probe.SourcePorts); a port still held in the pod makes curl fail to bind (exit 45), and the script
    then runs that probe again with the kernel's choice instead of reporting an error."""
    with socket.socket() as free, socket.socket() as held:
        free.bind(("127.0.0.1", 0))
        wanted = free.getsockname()[1]
        free.close()
        held.bind(("0.0.0.0", 0))  # curl --local-port without --interface binds every address
        taken = held.getsockname()[1]
        calls = [CurlCall("id-0", f"http://127.0.0.1:{servers['echo']}/", local_port=wanted),
                 CurlCall("id-1", f"http://127.0.0.1:{servers['echo']}/", local_port=taken)]
        assert f"--local-port {wanted}" in calls[0].describe(2, 3)
        nonce = new_nonce()
        proc = run_script(build_script(calls, nonce, connect_timeout=2, max_time=3), shell, tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = parse_output(proc.stdout, nonce, 2)
    assert first.exit_code == 0 and first.fields["local_port"] == str(wanted)
    assert second.exit_code == 0 and second.fields["local_port"] != str(taken)


def test_local_address_is_the_same_key_the_log_matcher_builds():
    """One formatter of `ip:port` (logs.join_addr) for curl's address and the proxies' records, IPv6 bracketed."""
    def result(ip: str, port: str) -> ProbeResult:
        return ProbeResult(0, 0, {"local_ip": ip, "local_port": port}, "", "")

    assert result("10.244.0.7", "41000").local_address == "10.244.0.7:41000"
    assert result("fd00::7", "41000").local_address == "[fd00::7]:41000"
    assert result("10.244.0.7", "0").local_address is None and result("", "41000").local_address is None
