"""The local mesh's xDS server: ADS over gRPC on a Unix socket in the run's private directory.

Why not files any more: Envoy watches an xDS file with one inotify instance per subscription (LDS and CDS:
two per Envoy), and Linux allows 128 per user (`fs.inotify.max_user_instances`) for all of that user's
processes together, so a mesh of more than ~60 proxies could not start at all, and two runs of 50 not side
by side. A gRPC stream needs no inotify instance. It is also what istiod does, and it gives the barrier a
signal Envoy pushes instead of one the suite polls for: Envoy acknowledges each DiscoveryResponse on the
stream (ACK: the new version and the response's nonce; NACK: the nonce with `error_detail`, Envoy's own
words for what it rejected) only after it has applied it.

The socket lives in the run's 0700 temp dir, so no other user's process, and no other run, can reach it.
Resources are kept per node (one Envoy each) and type: the state of the world (SotW) each Envoy is sent,
on its first request and whenever it is published anew. `publish()` returns a future that resolves once the
Envoy has acknowledged exactly that version (None) or rejected it (Envoy's message).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import itertools
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_IMPORTED: set[str] = set()
_IMPORT_LOCK = threading.Lock()


class XdsRejected(ValueError):
    """A resource that is no valid Envoy config (caught before sending, in the way Envoy would reject it)."""


def _types(doc: Any) -> Iterator[str]:
    if isinstance(doc, Mapping):
        at = doc.get("@type")
        if isinstance(at, str):
            yield at
        for value in doc.values():
            yield from _types(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _types(value)


def _ensure_type(type_url: str) -> None:
    """Import the generated module(s) of `type_url`'s proto package (xds-protos), so that the JSON parser can
    resolve an Any of that type: every `*_pb2` module of the package's directory (one to a few)."""
    name = type_url.rsplit("/", 1)[-1]
    package = name.rsplit(".", 1)[0]
    with _IMPORT_LOCK:
        if package in _IMPORTED:
            return
        spec = importlib_util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise XdsRejected(f"no generated protos for {name} (xds-protos)")
        for directory in spec.submodule_search_locations:
            for path in sorted(Path(directory).glob("*_pb2.py")):
                importlib.import_module(f"{package}.{path.stem}")
        _IMPORTED.add(package)


def to_any(type_url: str, resource: Mapping[str, Any]) -> Any:
    """The JSON resource as a packed Any, parsed strictly (an unknown field is an error, as Envoy's
    --reject-unknown-dynamic-fields makes it for the files this replaced)."""
    from google.protobuf import any_pb2, json_format, symbol_database

    for t in {type_url, *_types(resource)}:
        _ensure_type(t)
    message_class = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    body = {k: v for k, v in resource.items() if k != "@type"}
    try:
        message = json_format.ParseDict(body, message_class())
    except json_format.ParseError as exc:
        raise XdsRejected(str(exc)) from exc
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class _Node:
    resources: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)  # type -> (version, Anys)
    subscribed: set[str] = field(default_factory=set)
    nonce: dict[str, str] = field(default_factory=dict)  # type -> the nonce of the last response sent
    nonce_version: dict[str, str] = field(default_factory=dict)  # nonce -> the version it carried
    acked: dict[str, str] = field(default_factory=dict)  # type -> the last version Envoy acknowledged
    waiters: dict[tuple[str, str], list[concurrent.futures.Future[str | None]]] = field(default_factory=dict)
    queue: asyncio.Queue[Any] | None = None  # the responses of the node's current stream


class XdsServer:
    """One run's ADS server, on its own event loop thread (one gRPC stream per Envoy, hundreds of them)."""

    def __init__(self, socket_path: Path):
        import grpc

        self.socket_path = socket_path
        self._nodes: dict[str, _Node] = {}  # touched on the loop thread only
        self._nonces = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="authz-xds", daemon=True)
        self._thread.start()
        self._grpc = grpc
        self._server: Any = None
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        grpc = self._grpc
        handler = grpc.method_handlers_generic_handler(_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._stream, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString),
        })
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        await self._server.start()

    def cluster(self, name: str = "xds") -> dict[str, Any]:
        """The static cluster through which an Envoy reaches this server (HTTP/2 over the Unix socket)."""
        return {
            "name": name, "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(self.socket_path)}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }},
        }

    @staticmethod
    def dynamic_resources(cluster: str = "xds") -> dict[str, Any]:
        ads = {"resource_api_version": "V3", "ads": {}}
        return {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}]},
            "lds_config": ads, "cds_config": dict(ads),
        }

    # --- publishing (any thread) ---------------------------------------------------------------------

    def publish(self, node_id: str, type_url: str, version: str,
                resources: Sequence[Any]) -> concurrent.futures.Future[str | None]:
        """Make `resources` (packed Anys: `to_any`) node `node_id`'s state of the world for `type_url` under
        `version`, and send it if the Envoy is connected. The future resolves with None once Envoy acknowledged
        that version, or with Envoy's rejection message."""
        anys = list(resources)
        done: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._publish, node_id, type_url, version, anys, done)
        return done

    def _publish(self, node_id: str, type_url: str, version: str, anys: list[Any],
                 done: concurrent.futures.Future[str | None]) -> None:
        node = self._nodes.setdefault(node_id, _Node())
        node.resources[type_url] = (version, anys)
        node.waiters.setdefault((type_url, version), []).append(done)
        if node.queue is not None and type_url in node.subscribed:
            self._send(node, type_url)

    def _send(self, node: _Node, type_url: str) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        if node.queue is None or type_url not in node.resources:
            return
        version, anys = node.resources[type_url]
        nonce = str(next(self._nonces))
        superseded = node.nonce.get(type_url)
        if superseded is not None:  # its answer is ignored from now on (_on_request): forget it
            node.nonce_version.pop(superseded, None)
        node.nonce[type_url] = nonce
        node.nonce_version[nonce] = version
        node.queue.put_nowait(discovery_pb2.DiscoveryResponse(
            version_info=version, resources=anys, type_url=type_url, nonce=nonce))

    def _resolve(self, node: _Node, type_url: str, version: str, error: str | None) -> None:
        for fut in node.waiters.pop((type_url, version), []):
            if not fut.done():
                fut.set_result(error)

    def _on_request(self, node: _Node, request: Any) -> None:
        type_url = request.type_url
        if request.response_nonce:
            if request.response_nonce != node.nonce.get(type_url):
                return  # an answer to an older response: a newer one is on its way
            sent = node.nonce_version.pop(request.response_nonce, "")
            if request.HasField("error_detail"):
                self._resolve(node, type_url, sent, request.error_detail.message or "rejected")
            elif request.version_info == sent:
                node.acked[type_url] = sent
                self._resolve(node, type_url, sent, None)
            return
        node.subscribed.add(type_url)  # a first request (or one after reconnecting): send what there is
        self._send(node, type_url)

    async def _stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        node: _Node | None = None

        async def read() -> None:
            nonlocal node
            try:
                async for request in requests:
                    if node is None:
                        node = self._nodes.setdefault(request.node.id, _Node())
                        node.queue, node.subscribed, node.nonce = queue, set(), {}
                    self._on_request(node, request)
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await queue.get()) is not None:
                yield response
        finally:
            reader.cancel()
            if node is not None and node.queue is queue:
                node.queue = None

    def close(self) -> None:
        """Stop the server and its loop; waiters still pending are told the server is gone."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                await self._server.stop(0)
            for node in self._nodes.values():
                for (_, _), futs in node.waiters.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result("the xDS server was closed")
                node.waiters.clear()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
