"""The workload app of the local mesh: answers any method and path with its name and what it received.

A probe passes as `allowed` only when the destination app itself answered (conformance/probe.py): the
body's first line is `<ns>/<name> responding`, and a JSON echo follows with the method, path, query and
headers the app received (including the caller identity the proxy forwarded, x-forwarded-client-cert)
and the address the connection came from, so a report shows what really arrived.

One process serves the apps of every run of a target (apphost.py starts it once, as a plain script with no
package import), one listener per workload port, each on that workload's own app address in its run's own
loopback block: so each workload keeps its address and its name. Starting a Python process with the HTTP
server's imports cost ~50 ms of CPU per run, about a tenth of `pytest policies`' CPU on two cores. It is told
on stdin, one line per command, `bind <run> <json spec>` (answered `ready <run>` once every socket is
bound, or `error <run> <message>`, having bound none) and `release <run>` (answered `released <run>` once
every socket of that run is closed, so its loopback block can be handed to another run). Pitfalls from
research/envoy-local-mesh.md: the listen backlog is 256 (the default 5 drops SYNs under parallel probes) and
Nagle is off with the whole response written at once (headers and body in separate writes cost ~40 ms with
delayed ACKs).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EchoServer(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ref: str):
        self.ref = ref
        super().__init__(address, EchoHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's `socket.getfqdn()` of the address: a reverse DNS lookup of a loopback
        address that the resolver does not answer waits out its timeout (5 s, measured), once per listener,
        and the app is not ready until every listener is bound."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: EchoServer

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: answer every method the same way.
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _answer(self) -> None:
        self._drain_body()
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        echo = {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": headers,
            "source": f"{self.client_address[0]}:{self.client_address[1]}",
            "listener": "{}:{}".format(*self.server.server_address[:2]),
        }
        body = f"{self.server.ref} responding\n{json.dumps(echo, sort_keys=True)}\n".encode()
        head = (
            f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            f"x-app: {self.server.ref}\r\n\r\n"
        ).encode()
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _drain_body(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit():
            self.rfile.read(int(length))
        elif "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the proxies' access logs are the record; the app stays quiet


class Host:
    """Every run's listeners in one selector, with the control stream (stdin): one thread accepts on every
    listener (each request then gets its own thread, as ThreadingHTTPServer does): a thread per listener, as
    `serve_forever` has it, was 320 idle threads with their stacks for a 200-workload mesh."""

    def __init__(self, control: int, reply: Any) -> None:
        self.control = control
        self.reply = reply
        self.runs: dict[str, list[EchoServer]] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)
        self.pending = b""

    def serve(self) -> None:
        """Until stdin closes (the target closed it, or its process died): then every socket is closed."""
        while True:
            for key, _ in self.selector.select():
                if key.fileobj == self.control:
                    data = os.read(self.control, 1 << 16)
                    if not data:
                        return
                    self.pending += data
                    while b"\n" in self.pending:
                        line, self.pending = self.pending.split(b"\n", 1)
                        self.command(line.decode())
                else:
                    key.fileobj._handle_request_noblock()  # type: ignore[union-attr]  # accept, then a thread

    def command(self, line: str) -> None:
        verb, _, rest = line.partition(" ")
        run, _, payload = rest.partition(" ")
        if verb == "bind":
            self.say(self.bind(run, json.loads(payload)))
        elif verb == "release":
            for server in self.runs.pop(run, []):
                self.selector.unregister(server)
                server.server_close()
            self.say(f"released {run}")
        else:
            self.say(f"error {run} unknown command {verb!r}")

    def bind(self, run: str, spec: list[dict[str, Any]]) -> str:
        servers: list[EchoServer] = []
        try:
            for item in spec:
                servers.append(EchoServer((item["address"], int(item["port"])), item["ref"]))
        except OSError as exc:
            for server in servers:
                server.server_close()
            return f"error {run} cannot bind {item['address']}:{item['port']} for {item['ref']}: {exc}"
        for server in servers:
            self.selector.register(server, selectors.EVENT_READ)
        self.runs.setdefault(run, []).extend(servers)
        return f"ready {run}"

    def say(self, line: str) -> None:
        self.reply.write(line.replace("\n", " ") + "\n")
        self.reply.flush()


if __name__ == "__main__":
    # argv[1] is the host's own temp dir: only so that its command line names it (lifetime.reap_stale)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Host(sys.stdin.fileno(), sys.stdout).serve()
