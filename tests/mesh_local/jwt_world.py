"""The world of the JWT and CUSTOM local-mesh tests: issuers, the suite's ext-authz server, its providers.

Built by hand (no scenario loader) so that these tests pin the local target alone. Providers cover what
the target must handle: the sample HTTP server (with headersToUpstreamOnAllow), the gRPC one, a provider
whose service does not exist (istiod's RBAC deny), and two whose port the ext-authz workload does not
serve (unreachable: fail closed with statusOnError 503, and fail open).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conformance.model import (
    ExtensionProvider,
    Issuer,
    JwtSpec,
    Manifest,
    MeshConfig,
    Port,
    Probe,
    Request,
    Scenario,
    TokenLocation,
    Waypoint,
    Workload,
)


def wl(ref: str, *ports: Port, kind: str = "app", sa: str | None = None) -> Workload:
    ns, name = ref.split("/")
    return Workload(name, ns, sa or name, {"app": name}, ports, kind=kind)  # type: ignore[arg-type]


FRONTEND = wl("default/frontend", Port(8080))
BACKEND = wl("default/backend", Port(80), Port(9100, "TCP"))
CLIENT_A = wl("other/client", sa="a")  # the service account the sample's gRPC server allows without a header
AUTHZ = wl("ext-authz/ext-authz", Port(8000), Port(9000), kind="ext-authz")
AUTHZ_HOST = "ext-authz.ext-authz.svc.cluster.local"
PROVIDERS = (
    ExtensionProvider("http", "http", AUTHZ_HOST, 8000, include_request_headers_in_check=("x-ext-authz",),
                      headers_to_upstream_on_allow=("x-ext-authz-check-result",)),
    ExtensionProvider("grpc", "grpc", f"ext-authz/{AUTHZ_HOST}", 9000),
    ExtensionProvider("missing", "http", "nowhere.ext-authz.svc.cluster.local", 8000),
    ExtensionProvider("closed", "http", AUTHZ_HOST, 8009, status_on_error="503"),
    ExtensionProvider("open", "http", AUTHZ_HOST, 8009, fail_open=True),
)
ISSUER = "testing@secure.istio.io"
ISSUERS = (Issuer("example", ISSUER), Issuer("other", "other@example.com"))
WAYPOINT = Waypoint("waypoint", "default")
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
BACKEND_SELECTOR = {"selector": {"matchLabels": {"app": "backend"}}}
TO_WAYPOINT = {"targetRefs": [GATEWAY_REF]}


def scenario(waypoints: tuple[Waypoint, ...] = ()) -> Scenario:
    return Scenario("jwt-custom", "", "jwt-custom.yaml", ("sidecar", "ambient", "waypoint"),
                    MeshConfig(extension_providers=PROVIDERS), (FRONTEND, BACKEND, CLIENT_A, AUTHZ), waypoints, (),
                    issuers=ISSUERS)


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "default",
        annotations: dict[str, str] | None = None) -> Manifest:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    body = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec}
    return Manifest(kind, "security.istio.io/v1", name, namespace, body, f"test {name}")


def request_authentication(name: str = "jwt", attach: dict[str, Any] | None = None, **rule: Any) -> Manifest:
    return doc("RequestAuthentication", name, {
        **(BACKEND_SELECTOR if attach is None else attach),
        "jwtRules": [{"issuer": ISSUER, "jwks": "${jwks:example}", **rule}]})


def policy(name: str, spec: dict[str, Any], attach: dict[str, Any] | None = None, **kw: Any) -> Manifest:
    return doc("AuthorizationPolicy", name, {**(BACKEND_SELECTOR if attach is None else attach), **spec}, **kw)


def custom(provider: str, paths: Iterable[str] = ("/headers",), attach: dict[str, Any] | None = None,
           name: str | None = None, **kw: Any) -> Manifest:
    return policy(name or f"ext-{provider}", {"action": "CUSTOM", "provider": {"name": provider},
                                              "rules": [{"to": [{"operation": {"paths": list(paths)}}]}]},
                  attach, **kw)


def token(sub: str | None = "alice", issuer: str = "example", **kw: Any) -> JwtSpec:
    return JwtSpec(issuer=issuer, sub=sub, **kw)


def in_header(name: str, prefix: str = "") -> TokenLocation:
    return TokenLocation(header=name, prefix=prefix)


def in_param(name: str) -> TokenLocation:
    return TokenLocation(header=None, prefix="", param=name)


def probe(path: str = "/", headers: Iterable[tuple[str, str]] = (), jwt: JwtSpec | None = None,
          src: Workload = FRONTEND, dst: Workload = BACKEND, port: int = 80, method: str = "GET") -> Probe:
    chosen = dst.port(port)
    assert chosen is not None
    return Probe(src, dst, chosen, Request(method, path, tuple(headers), jwt))
