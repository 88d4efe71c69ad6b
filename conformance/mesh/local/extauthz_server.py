"""The suite's external authorizer (`kind: ext-authz` workloads): Istio's samples/extauthz, in Python.

Behaviour, as istio/istio@1.30.3 samples/extauthz/cmd/extauthz/main.go has it:

- HTTP (what an envoyExtAuthzHttp provider calls; Envoy forwards the request's method and path, prefixed
  with the provider's pathPrefix, and the headers it is allowed to send): `x-ext-authz: allow` → 200 with
  `x-ext-authz-check-result: allowed`; anything else → 403 with `x-ext-authz-check-result: denied` and the
  body ``denied by ext_authz for not found header `x-ext-authz: allow` in the request``. Both answers echo
  `x-ext-authz-additional-header-override` and carry `x-ext-authz-check-received` (what was checked).
- gRPC (envoy.service.auth.v3.Authorization/Check, for envoyExtAuthzGrpc providers, HTTP and TCP): the same
  header rule when the request has an `x-ext-authz` header; without one (a TCP connection has none) it
  allows iff the source principal ends in `/sa/a` (the sample's `-allow_service_account` default). A denial
  is a DeniedHttpResponse 403 with the same body and headers, status PERMISSION_DENIED.

Each decision is appended to a JSON-lines log (workload, protocol, decision, what was checked), which the
local mesh keeps with the run's files. One process serves every ext-authz port of a run, each on its
workload's own address; it prints `ready` once every socket is bound. gRPC needs `grpcio` and Envoy's
generated protos (`xds-protos`): imported only when a gRPC port is asked for.
"""

from __future__ import annotations

import json
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHECK_HEADER = "x-ext-authz"
ALLOWED_VALUE = "allow"
RESULT_HEADER = "x-ext-authz-check-result"
RECEIVED_HEADER = "x-ext-authz-check-received"
OVERRIDE_HEADER = "x-ext-authz-additional-header-override"
OVERRIDE_GRPC_VALUE = "grpc-additional-header-override-value"
RESULT_ALLOWED = "allowed"
RESULT_DENIED = "denied"
ALLOW_SERVICE_ACCOUNT = "a"
DENY_BODY = f"denied by ext_authz for not found header `{CHECK_HEADER}: {ALLOWED_VALUE}` in the request"

_log_lock = threading.Lock()


class DecisionLog:
    """Appends one JSON line per decision (flushed at once: the mesh may read it while probes run)."""

    def __init__(self, path: str):
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def write(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        with _log_lock:
            self._fh.write(json.dumps(record, sort_keys=True) + "\n")


def _one_line(text: str) -> str:
    """A header value as Go's net/http writes it (newlines become spaces)."""
    return text.replace("\r", " ").replace("\n", " ")


class HttpCheckServer(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ref: str, log: DecisionLog):
        self.ref = ref
        self.log = log
        super().__init__(address, HttpCheckHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (app.py EchoServer says why)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class HttpCheckHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: HttpCheckServer

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._check
        raise AttributeError(name)

    def _check(self) -> None:
        length = self.headers.get("content-length")
        body = self.rfile.read(int(length)) if length and length.isdigit() else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        seen = (f"{self.command} {headers.get('host', '')}{self.path}, headers: {headers}, "
                f"body: [{body.decode(errors='replace')}]")
        allowed = headers.get(CHECK_HEADER) == ALLOWED_VALUE
        self.server.log.write({"workload": self.server.ref, "protocol": "http",
                               "decision": RESULT_ALLOWED if allowed else RESULT_DENIED,
                               "method": self.command, "path": self.path, "headers": headers})
        payload = b"" if allowed else DENY_BODY.encode()
        status = "200 OK" if allowed else "403 Forbidden"
        head = (f"HTTP/1.1 {status}\r\n"
                f"{RESULT_HEADER}: {RESULT_ALLOWED if allowed else RESULT_DENIED}\r\n"
                f"{OVERRIDE_HEADER}: {_one_line(headers.get(OVERRIDE_HEADER, ''))}\r\n"
                f"{RECEIVED_HEADER}: {_one_line(seen)[:4000]}\r\n"
                f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(payload)}\r\n\r\n")
        self.wfile.write(head.encode() + payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # decisions go to the decision log


def _grpc_server(item: dict[str, Any], log: DecisionLog) -> Any:
    """A grpc.Server with envoy.service.auth.v3.Authorization on the item's address."""
    from concurrent import futures

    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from envoy.type.v3 import http_status_pb2
    from google.rpc import code_pb2, status_pb2

    def headers(request: Any, result: str) -> list[Any]:
        return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v)) for k, v in (
            (RESULT_HEADER, result),
            (RECEIVED_HEADER, _one_line(str(request.attributes))[:4000]),
            (OVERRIDE_HEADER, OVERRIDE_GRPC_VALUE),
        )]

    class Authorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        def Check(self, request: Any, context: Any) -> Any:
            attrs = request.attributes
            http = attrs.request.http
            if CHECK_HEADER in http.headers:
                allow = http.headers[CHECK_HEADER] == ALLOWED_VALUE
            else:
                allow = attrs.source.principal.endswith("/sa/" + ALLOW_SERVICE_ACCOUNT)
            log.write({"workload": item["ref"],
                       "protocol": "grpc", "decision": RESULT_ALLOWED if allow else RESULT_DENIED,
                       "method": http.method, "path": http.path, "headers": dict(http.headers),
                       "source_principal": attrs.source.principal})
            if allow:
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=code_pb2.OK),
                    ok_response=external_auth_pb2.OkHttpResponse(headers=headers(request, RESULT_ALLOWED)))
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                    body=DENY_BODY, headers=headers(request, RESULT_DENIED)))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authorization(), server)
    if not server.add_insecure_port(f"{item['address']}:{int(item['port'])}"):
        raise OSError(f"cannot bind {item['address']}:{item['port']}")
    server.start()
    return server


def serve(spec: dict[str, Any]) -> None:
    """Bind every item of `spec["items"]` ([{ref, address, port, protocol: http|grpc}]), log decisions to
    `spec["log"]`, say `ready`, serve until terminated."""
    log = DecisionLog(spec["log"])
    items = spec["items"]
    for item in items:
        if item["protocol"] == "http":
            srv = HttpCheckServer((item["address"], int(item["port"])), item["ref"], log)
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 3600}, daemon=True).start()
    keep = [_grpc_server(i, log) for i in items if i["protocol"] == "grpc"]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()
    del keep


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        serve(json.load(fh))
