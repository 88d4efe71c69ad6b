"""Envoy configuration for each role of the local mesh: sidecar, "ztunnel", waypoint; listeners and clusters.

This module lays out the plumbing the way Istio's proxies are laid out (research/envoy-local-mesh.md
and envoy-waypoint.md record the shapes that were measured to work with Envoy 1.40); the RBAC filters
inside come from `authz`, the policy compiler, which is the only part that interprets policies.

- sidecar: inbound listener per server port with `tls_inspector` and the filter chains of the port's
  PeerAuthentication mode (filterchain_options.go getFilterChainMatchOptions: STRICT an mTLS chain with the
  identity from the peer certificate, PERMISSIVE that and a plaintext chain, DISABLE the plaintext chain
  only); HTTP ports get Istio's HCM settings (path normalization BASE, XFCC) with the RBAC filters before
  the router, TCP ports network RBAC before `tcp_proxy`. Outbound: one listener per destination port
  (HTTP proxy or `tcp_proxy`), originating mTLS with the workload's certificate, Istio's SNI, and the
  destination's SAN checked, or plaintext to a port whose mode is DISABLE (auto-mTLS, mtls_checker.go):
  both clusters exist from the start, and the listener, re-rendered with the policies, picks one.
- ztunnel: outbound `tcp_proxy` listeners tunnelling HTTP/2 CONNECT over mTLS (HBONE) to the
  destination's :15008 with `:authority` `<dest-ip>:<port>`; inbound :15008 terminating CONNECT, with
  the L4-only RBAC filters; a plaintext listener per port for out-of-mesh clients. One Envoy holds every
  ambient workload's set, each under names scoped by its ref (`ProxyContext.scope`), as one node's ztunnel
  serves all its pods with each pod's own identity.
- waypoint: HBONE terminated on :15008 with the waypoint's own certificate, the client's identity put in
  filter state (`io.istio.peer_principal`, `envoy.hashable_string`), an internal listener per service
  port with the targetRefs policies, then HBONE again to the destination, as the waypoint.

CUSTOM providers: every sidecar has an outbound cluster per workload port, so the `outbound|<port>||<fqdn>`
cluster istiod's ext_authz config names exists (HTTP/2 for a gRPC provider's port, `ProxyContext.codec`); a
waypoint reaches the provider through an internal listener of that name, HBONE to the provider's ztunnel.

Every listener sets `enable_reuse_port: false` (a stale Envoy must make a bind fail, never share a port)
and logs in JSON (`logs.py` reads it back into proofs). Outbound connections are never reused across
requests (`max_requests_per_connection: 1`) so no pooled connection carries an old decision past a
policy change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.mesh.local.addresses import HBONE_PORT, Layout
from conformance.mesh.local.pki import CertFiles
from conformance.mesh.local.rbac import PEER_PRINCIPAL_KEY  # one home: the key the compiler's matchers read
from conformance.model import MeshConfig, Port, Workload
from conformance.probe import CLIENT_HEADER, PROBE_HEADER

_T = "type.googleapis.com/"
HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = _T + "envoy.extensions.filters.http.router.v3.Router"
TLS_INSPECTOR = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_LOG = _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
SET_FILTER_STATE = _T + "envoy.extensions.filters.http.set_filter_state.v3.Config"
INTERNAL_LISTENER = _T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
INTERNAL_UPSTREAM = _T + "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
RAW_BUFFER = _T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"

CLUSTER_DOMAIN = "cluster.local"  # the Kubernetes DNS domain in SNI and FQDNs (not the trust domain)
CLIENT_STATE_KEY = "conformance.client"  # the same, carried through a waypoint's internal listeners
CONNECT_TIMEOUT = "2s"

# One JSON object per line; `logs.py` names the same keys. Fields a record lacks come out as null.
LOG_FORMAT: dict[str, str] = {
    "type": "%ACCESS_LOG_TYPE%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "term": "%CONNECTION_TERMINATION_DETAILS%",
    "peer": "%DOWNSTREAM_PEER_URI_SAN%",
    "remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "direct": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "local": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "chain": "%FILTER_CHAIN_NAME%",
    "tls_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
    "upstream": "%UPSTREAM_HOST%",
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
    "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "probe": f"%REQ({PROBE_HEADER.upper()})%",  # the suite's own probe id (probe.PROBE_HEADER)
    "start": "%START_TIME(%s.%6f)%",  # when this proxy saw the connection or request start (epoch seconds)
    "duration": "%DURATION%",  # how long it lasted (ms): a connection's upstream lives within it
    "client": "%REQ(X-CONFORMANCE-CLIENT)%",
    "http_rbac": "%DYNAMIC_METADATA(envoy.filters.http.rbac)%",
    "network_rbac": "%DYNAMIC_METADATA(envoy.filters.network.rbac)%",
    "jwt": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn)%",  # the verified token's payload (RequestAuthentication)
    "filter_state_peer": f"%FILTER_STATE({PEER_PRINCIPAL_KEY}:PLAIN)%",
    "client_state": "%FILTER_STATE(conformance.client:PLAIN)%",
}


@dataclass(frozen=True)
class Peer:
    """What every proxy knows about one workload: where it is and who it is."""

    workload: Workload
    address: str
    app_address: str
    spiffe: str | None  # None for out-of-mesh workloads

    @property
    def ref(self) -> str:
        return self.workload.ref

    @property
    def fqdn(self) -> str:
        return f"{self.workload.name}.{self.workload.namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class ProxyContext:
    """Everything one proxy's config depends on except the policies."""

    me: Peer
    certs: CertFiles
    root_cert: Path
    mesh: MeshConfig
    layout: Layout
    peers: Sequence[Peer]
    log_path: Path
    waypoint_for: Mapping[str, Peer] = field(default_factory=dict)  # destination ref -> its waypoint
    # (workload ref, port) of the ext-authz ports a gRPC provider names: clusters to them speak HTTP/2
    grpc_ports: frozenset[tuple[str, int]] = frozenset()
    # the ext-authz services (peer, port) the CUSTOM providers name: a waypoint needs its own way to them
    providers: Sequence[tuple[Peer, Port]] = ()
    # mode mixed: the refs of the ambient-captured peers (ambient and waypoint namespaces), which a sidecar
    # reaches by HBONE straight to the pod (`sidecar_outbound_hbone`), never through a waypoint
    hbone_peers: frozenset[str] = frozenset()
    # the (workload ref, port) this proxy has outbound plumbing for (clusters, listeners), None for every peer
    # port: a client proxy needs it only for the destinations its probes go to (mesh.py adds the others when a
    # probe first needs them), and building it for every peer made a mesh's config grow with the square of its
    # size (200 workloads: 640 TLS clusters and 320 listeners in each of 200 Envoys). No decision depends on
    # it: a destination without plumbing is never probed from here.
    outbound: frozenset[tuple[str, int]] | None = None
    # prefixed to this proxy's listener and cluster names: "" for an Envoy of its own, the workload's ref for a
    # ztunnel, whose Envoy serves every ambient workload of the run (one node's ztunnel serves all its pods),
    # so that each workload's "hbone" listener and "inbound|<port>" clusters keep their own names there
    scope: str = ""

    def named(self, name: str) -> str:
        """`name` as this proxy's resource in its Envoy (see `scope`)."""
        return self.scope + name

    def wants(self, peer: Peer, port: Port) -> bool:
        """Whether this proxy has outbound plumbing for `peer`'s `port`."""
        return self.outbound is None or (peer.ref, port.number) in self.outbound

    def codec(self, ref: str, port: Port) -> str | None:
        """The HTTP codec of a cluster to `ref`'s `port`: h2 for a gRPC ext-authz port, h1 for HTTP, none for TCP."""
        if port.protocol != "HTTP":
            return None
        return "h2" if (ref, port.number) in self.grpc_ports else "h1"


# --- small builders ---------------------------------------------------------------------------------

def access_log(path: Path, tag: str) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG, "path": str(path),
            "log_format": {"json_format": {"tag": tag, **LOG_FORMAT}},
        },
    }]


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def downstream_tls(certs: CertFiles, root: Path, trust_domain: str, alpn: Sequence[str] = ()) -> dict[str, Any]:
    """Server side of Istio mTLS: client certificate required, chained to our root, SPIFFE URI SAN."""
    ctx: dict[str, Any] = {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [_cert(certs)],
            "validation_context": {
                "trusted_ca": {"filename": str(root)},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": f"spiffe://{trust_domain}/"}}
                ],
            },
        },
    }
    if alpn:
        ctx["common_tls_context"]["alpn_protocols"] = list(alpn)
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def upstream_tls(certs: CertFiles, root: Path, peer_spiffe: str, sni: str | None,
                 alpn: Sequence[str] = ()) -> dict[str, Any]:
    """Client side of Istio mTLS: our certificate, and the server's exact SPIFFE identity verified."""
    ctx: dict[str, Any] = {
        "@type": UPSTREAM_TLS,
        "common_tls_context": {
            "tls_certificates": [_cert(certs)],
            "validation_context": {
                "trusted_ca": {"filename": str(root)},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_spiffe}}],
            },
        },
    }
    if sni:
        ctx["sni"] = sni
    if alpn:
        ctx["common_tls_context"]["alpn_protocols"] = list(alpn)
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def _cert(certs: CertFiles) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(certs.cert)}, "private_key": {"filename": str(certs.key)}}


def static_cluster(name: str, address: str, port: int, *, bind: str | None = None,
                   tls: Mapping[str, Any] | None = None, http: str | None = None,
                   one_request_per_connection: bool = False) -> dict[str, Any]:
    """A STATIC cluster with one endpoint; `http` is "h1" or "h2" when it carries HTTP."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(address, port)}}]}],
        },
    }
    if bind:
        # A bare SocketAddress here (research pitfall: `socket_address:` nesting is rejected).
        cluster["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    if tls:
        cluster["transport_socket"] = dict(tls)
    if http:
        options: dict[str, Any] = {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": (
                {"http2_protocol_options": {}} if http == "h2" else {"http_protocol_options": {}}
            ),
        }
        if one_request_per_connection:
            options["common_http_protocol_options"] = {"max_requests_per_connection": 1}
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
        }
    return cluster


def router() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}


def http_connection_manager(stat_prefix: str, routes: Sequence[Mapping[str, Any]],
                            http_filters: Sequence[Mapping[str, Any]], log: list[dict[str, Any]], *,
                            xfcc: bool = False, connect: bool = False) -> dict[str, Any]:
    """An HCM with Istio's sidecar settings (pilot/pkg/networking/core listener_builder.go).

    Path normalization BASE: `normalize_path`, no slash merging, escaped slashes kept, so that
    `/public/../private` is decided as `/private` while `/public%2F..%2Fprivate` stays as sent.
    `preserve_external_request_id` keeps the probe's x-request-id, by which its proof is found.
    """
    config: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "HTTP2" if connect else "AUTO",
        "normalize_path": True,
        "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "preserve_external_request_id": True,
        "access_log": log,
        "route_config": {
            # Outbound and waypoint listeners live in the bootstrap, loaded before CDS delivers the
            # clusters they route to; Envoy is LIVE only once CDS is in, so nothing routes too early.
            "validate_clusters": False,
            "name": stat_prefix,
            "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": list(routes)}],
        },
        "http_filters": [*http_filters, router()],
    }
    if xfcc:
        # The app sees the caller's identity the way Istio forwards it (x-forwarded-client-cert, URI).
        config["forward_client_cert_details"] = "SANITIZE_SET"
        config["set_current_client_cert_details"] = {"uri": True}
    if connect:
        config["http2_protocol_options"] = {"allow_connect": True}
        config["upgrade_configs"] = [{"upgrade_type": "CONNECT"}]
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def route_to(cluster: str) -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}


def connect_route(authority: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {
            "connect_matcher": {},
            "headers": [{"name": ":authority", "string_match": {"exact": authority}}],
        },
        "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
    }


def tcp_proxy(stat_prefix: str, cluster: str, log: list[dict[str, Any]] | None = None,
              tunnel_authority: str | None = None,
              client: str = "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%") -> dict[str, Any]:
    """A tcp_proxy; with `tunnel_authority`, an HBONE client: HTTP/2 CONNECT to that `:authority`.

    The CONNECT carries `x-conformance-client` (curl's own address, or what a waypoint got from its
    client) so that the enforcing proxy's record can be matched to the probe; policies never see it
    as the app's request header, and ztunnel RBAC does not look at headers other than `:authority`.
    """
    config: dict[str, Any] = {"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster}
    if log:
        config["access_log"] = log
    if tunnel_authority:
        config["tunneling_config"] = {
            "hostname": tunnel_authority,
            "headers_to_add": [{"header": {"key": CLIENT_HEADER, "value": client}}],
        }
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def listener(name: str, address: str, port: int, filter_chains: Sequence[Mapping[str, Any]], *,
             log: list[dict[str, Any]] | None = None, tls_inspector: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "address": socket_address(address, port),
        "enable_reuse_port": False,
        "filter_chains": list(filter_chains),
    }
    if tls_inspector:
        doc["listener_filters"] = [
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
        ]
    if log:
        doc["access_log"] = log
    return doc


def istio_sni(peer: Peer, port: int) -> str:
    """Istio's outbound SNI: `outbound_.<port>_._.<service FQDN>` (pilot/pkg/model/service.go BuildSubsetKey)."""
    return f"outbound_.{port}_._.{peer.fqdn}"


def outbound_cluster_name(peer: Peer, port: int) -> str:
    return f"outbound|{port}||{peer.fqdn}"


def plaintext_cluster_name(peer: Peer, port: int) -> str:
    """The same destination without TLS: what Istio's one cluster does (transport_socket_matches on the
    endpoint's `tlsMode` label, which EDS drops for a DISABLE port) as a second static cluster, so that a
    policy change is an LDS change only."""
    return f"outbound-plaintext|{port}||{peer.fqdn}"


def hbone_cluster_name(ctx: ProxyContext, ref: str) -> str:
    """`hbone|<ref>`: this proxy's HBONE cluster to `ref`'s :15008 (its ztunnel's or waypoint's), in its scope."""
    return ctx.named(f"hbone|{ref}")


def hbone_cluster(ctx: ProxyContext, peer: Peer) -> dict[str, Any]:
    """`hbone|<ref>`: HTTP/2 over mTLS (this proxy's certificate, the peer's exact SPIFFE identity verified) to the
    peer's :15008, one CONNECT per connection, so that no tunnel opened under an old policy is reused after a change."""
    assert peer.spiffe is not None
    return static_cluster(hbone_cluster_name(ctx, peer.ref), peer.address, HBONE_PORT, bind=ctx.me.address,
                          tls=upstream_tls(ctx.certs, ctx.root_cert, peer.spiffe, None, alpn=("h2",)),
                          http="h2", one_request_per_connection=True)


# --- sidecar ----------------------------------------------------------------------------------------

def sidecar_clusters(ctx: ProxyContext) -> list[dict[str, Any]]:
    clusters: list[dict[str, Any]] = []
    for peer in ctx.peers:
        for port in peer.workload.ports:
            if not ctx.wants(peer, port):
                continue
            tls = (
                upstream_tls(ctx.certs, ctx.root_cert, peer.spiffe, istio_sni(peer, port.number))
                if peer.spiffe else None  # an out-of-mesh destination is sent plaintext, like Istio's auto-mTLS
            )
            clusters.append(static_cluster(
                outbound_cluster_name(peer, port.number), peer.address, ctx.layout.real(port.number),
                bind=ctx.me.address, tls=tls, http=ctx.codec(peer.ref, port), one_request_per_connection=True,
            ))
            if tls is not None:
                clusters.append(static_cluster(
                    plaintext_cluster_name(peer, port.number), peer.address, ctx.layout.real(port.number),
                    bind=ctx.me.address, http=ctx.codec(peer.ref, port), one_request_per_connection=True,
                ))
    for port in ctx.me.workload.ports:
        clusters.append(_inbound_app_cluster(ctx, port))
    return clusters


def _inbound_app_cluster(ctx: ProxyContext, port: Port) -> dict[str, Any]:
    # Bound to the workload's address so that the app sees it as the source (research pitfall 9).
    return static_cluster(
        f"inbound|{port.number}", ctx.me.app_address, ctx.layout.real(port.number),
        bind=ctx.me.address, http=ctx.codec(ctx.me.ref, port),
    )


def sidecar_outbound_listeners(ctx: ProxyContext,
                               plaintext: frozenset[tuple[str, int]] = frozenset()) -> list[dict[str, Any]]:
    """One listener per destination port; `plaintext` holds the (workload ref, port) whose mode is DISABLE,
    which the client sidecar reaches without TLS (mtls_checker.go checkMtlsEnabled). A peer in
    `ctx.hbone_peers` (mode mixed) is reached by HBONE whatever its PeerAuthentication says
    (`sidecar_outbound_hbone`)."""
    listeners: list[dict[str, Any]] = []
    for peer in ctx.peers:
        for port in peer.workload.ports:
            if not ctx.wants(peer, port):
                continue
            if peer.ref in ctx.hbone_peers:
                listeners.append(sidecar_outbound_hbone(ctx, peer, port))
                continue
            cluster = outbound_cluster_name(peer, port.number)
            name = cluster
            if peer.spiffe and (peer.ref, port.number) in plaintext:
                cluster = plaintext_cluster_name(peer, port.number)
            tag = f"outbound {peer.ref}:{port.number}"
            lport = ctx.layout.outbound[(peer.ref, port.number)]
            if port.protocol == "HTTP":
                chain = {"filters": [http_connection_manager(
                    f"outbound_{lport}", [route_to(cluster)], [], access_log(ctx.log_path, tag),
                )]}
            else:
                chain = {"filters": [tcp_proxy(f"outbound_{lport}", cluster, access_log(ctx.log_path, tag))]}
            listeners.append(listener(name, ctx.me.address, lport, [chain]))
    return listeners


def sidecar_inbound_listener(ctx: ProxyContext, port: Port, filters: Sequence[Mapping[str, Any]],
                             mode: str) -> dict[str, Any]:
    """The inbound listener of one server port with the chains of its mTLS `mode`
    (filterchain_options.go getFilterChainMatchOptions@1.30.3): STRICT the mTLS chain only, PERMISSIVE the
    mTLS and the plaintext chain, DISABLE the plaintext chain only (`inboundPlainText*FilterChainMatchOptions`:
    raw_buffer, no TLS context), so a DISABLE port never learns a peer identity.

    `filters` are the RBAC filters from `authz` (HTTP filters for HTTP ports, network filters for TCP
    ports), the same on both chains, as istiod builds them.
    """
    if mode not in ("STRICT", "PERMISSIVE", "DISABLE"):
        raise ValueError(f"unknown mTLS mode {mode!r}")
    real = ctx.layout.real(port.number)
    cluster = f"inbound|{port.number}"
    chains = []
    for chain_name, tls in (("inbound-tls", True), ("inbound-plaintext", False)):
        if (mode == "STRICT" and not tls) or (mode == "DISABLE" and tls):
            continue
        prefix = f"inbound_{port.number}" + ("" if tls else "_plaintext")
        if port.protocol == "HTTP":
            body = [http_connection_manager(
                prefix, [route_to(cluster)], filters, access_log(ctx.log_path, f"inbound http {port.number}"),
                xfcc=True,
            )]
        else:
            body = [*filters, tcp_proxy(prefix, cluster)]
        chain: dict[str, Any] = {
            "name": chain_name,
            "filter_chain_match": {"transport_protocol": "tls" if tls else "raw_buffer"},
            "filters": body,
        }
        if tls:
            chain["transport_socket"] = downstream_tls(ctx.certs, ctx.root_cert, ctx.mesh.trust_domain)
        chains.append(chain)
    return listener(
        f"inbound|{port.number}", ctx.me.address, real, chains, tls_inspector=True,
        log=access_log(ctx.log_path, f"inbound listener {port.number}"),
    )


# --- ztunnel (ambient) ------------------------------------------------------------------------------

def ztunnel_clusters(ctx: ProxyContext) -> list[dict[str, Any]]:
    clusters: list[dict[str, Any]] = []
    # HBONE to each destination (or the waypoint in front of it) of a wanted port; plaintext per wanted port
    # of an out-of-mesh one
    hops: dict[str, Peer] = {}
    for peer in ctx.peers:
        for port in peer.workload.ports:
            if not ctx.wants(peer, port):
                continue
            if peer.spiffe:
                via = ctx.waypoint_for.get(peer.ref)
                hops.setdefault(peer.ref, peer)
                if via is not None:
                    hops.setdefault(via.ref, via)
            else:
                clusters.append(static_cluster(
                    ctx.named(f"passthrough|{port.number}||{peer.ref}"), peer.address, ctx.layout.real(port.number),
                    bind=ctx.me.address,
                ))
    for peer in hops.values():  # HBONE to the destination's ztunnel (or its waypoint)
        clusters.append(hbone_cluster(ctx, peer))
    for port in ctx.me.workload.ports:
        clusters.append(static_cluster(
            ctx.named(f"inbound|{port.number}"), ctx.me.app_address, ctx.layout.real(port.number), bind=ctx.me.address,
        ))
    return clusters


def ztunnel_outbound_listeners(ctx: ProxyContext,
                               only: frozenset[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """The outbound listener of each wanted destination port (`only`: of these alone)."""
    listeners: list[dict[str, Any]] = []
    for peer in ctx.peers:
        for port in peer.workload.ports:
            if not ctx.wants(peer, port) or (only is not None and (peer.ref, port.number) not in only):
                continue
            lport = ctx.layout.outbound[(peer.ref, port.number)]
            log = access_log(ctx.log_path, f"outbound {peer.ref}:{port.number}")
            via = ctx.waypoint_for.get(peer.ref)
            if peer.spiffe:
                # Through the destination's waypoint when it has one: the CONNECT goes to the
                # waypoint, the `:authority` still names the destination (its "service VIP").
                hop = via.ref if via is not None else peer.ref
                proxy = tcp_proxy(f"outbound_{lport}", hbone_cluster_name(ctx, hop), log,
                                  tunnel_authority=f"{peer.address}:{port.number}")
            else:
                proxy = tcp_proxy(f"outbound_{lport}", ctx.named(f"passthrough|{port.number}||{peer.ref}"), log)
            listeners.append(listener(ctx.named(f"outbound|{port.number}||{peer.ref}"), ctx.me.address, lport,
                                      [{"filters": [proxy]}]))
    return listeners


def ztunnel_hbone_listener(ctx: ProxyContext, filters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Inbound HBONE on :15008: mTLS, HTTP/2 CONNECT terminated, one route per served port by authority."""
    routes = [
        connect_route(f"{ctx.me.address}:{p.number}", ctx.named(f"inbound|{p.number}")) for p in ctx.me.workload.ports
    ]
    chain = {
        "name": "hbone",
        "transport_socket": downstream_tls(ctx.certs, ctx.root_cert, ctx.mesh.trust_domain, alpn=("h2",)),
        "filters": [http_connection_manager("hbone", routes, filters, access_log(ctx.log_path, "hbone"),
                                            connect=True)],
    }
    return listener(ctx.named("hbone"), ctx.me.address, HBONE_PORT, [chain],
                    log=access_log(ctx.log_path, "hbone listener"))


def ztunnel_plaintext_listener(ctx: ProxyContext, port: Port,
                               filters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Plaintext from out-of-mesh clients to the pod's port, which ztunnel captures and enforces at L4."""
    proxy = tcp_proxy(f"plaintext_{port.number}", ctx.named(f"inbound|{port.number}"))
    chain = {"name": "plaintext", "filters": [*filters, proxy]}
    return listener(ctx.named(f"plaintext|{port.number}"), ctx.me.address, ctx.layout.real(port.number), [chain],
                    log=access_log(ctx.log_path, f"plaintext {port.number}"))


# --- waypoint ---------------------------------------------------------------------------------------
# research/envoy-waypoint.md: HBONE terminated on :15008 with the waypoint's identity; the client's
# identity (and the original destination, and curl's address for proof lookup) copied into filter state
# shared with the internal listener that applies the L7 policies; then HBONE again, as the waypoint.

SET_FILTER_STATE_NAME = "envoy.filters.http.set_filter_state"
ORIGINAL_DST = _T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"


def waypoint_bootstrap() -> dict[str, Any]:
    return {"bootstrap_extensions": [{
        "name": "envoy.bootstrap.internal_listener", "typed_config": {"@type": INTERNAL_LISTENER},
    }]}


def filter_state(key: str, value: str, shared: str, factory: str | None = None) -> dict[str, Any]:
    return {
        "object_key": key, "factory_key": factory or key, "shared_with_upstream": shared,
        "format_string": {"text_format_source": {"inline_string": value}},
    }


def waypoint_terminate_listener(ctx: ProxyContext, served: Sequence[tuple[Peer, Port]],
                                rbac: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """:15008 of the waypoint: mTLS (its own certificate), CONNECT terminated, routed by `:authority`.

    `envoy.hashable_string` for the identity, never `envoy.string`: non-hashable filter state does not
    partition upstream connection pools, and concurrent clients then swap identities (research
    pitfall 1). The original destination and source are restored in the internal listener by the
    original_dst listener filter from the well-known filter-state keys. `rbac`: the layered termination filters
    (ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES), first in the chain as istiod puts them (listener_waypoint.go
    @1.30.3 l.274-290: authz filters, then the metadata and connect-authority ones).
    """
    state = {"name": SET_FILTER_STATE_NAME, "typed_config": {"@type": SET_FILTER_STATE, "on_request_headers": [
        filter_state(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", "ONCE", "envoy.hashable_string"),
        filter_state("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%", "ONCE"),
        filter_state("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", "ONCE"),
        filter_state(CLIENT_STATE_KEY, f"%REQ({CLIENT_HEADER.upper()})%", "TRANSITIVE", "envoy.hashable_string"),
    ]}}
    routes = [connect_route(f"{peer.address}:{port.number}", waypoint_inner_name(peer, port))
              for peer, port in served]
    chain = {
        "name": "hbone",
        "transport_socket": downstream_tls(ctx.certs, ctx.root_cert, ctx.mesh.trust_domain, alpn=("h2",)),
        "filters": [http_connection_manager("connect_terminate", routes, [*rbac, state],
                                            access_log(ctx.log_path, "waypoint connect"), connect=True)],
    }
    return listener("connect_terminate", ctx.me.address, HBONE_PORT, [chain],
                    log=access_log(ctx.log_path, "waypoint listener"))


def waypoint_inner_name(peer: Peer, port: Port) -> str:
    return f"main_internal|{peer.ref}|{port.number}"


def _originate_name(peer: Peer, port: Port) -> str:
    return f"connect_originate|{peer.ref}|{port.number}"


def internal_listener(name: str, filters: Sequence[Mapping[str, Any]], log: list[dict[str, Any]],
                       original_dst: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name, "internal_listener": {}, "filter_chains": [{"filters": list(filters)}], "access_log": log,
    }
    if original_dst:
        doc["listener_filters"] = [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}
        ]
    return doc


def waypoint_inner_listener(ctx: ProxyContext, peer: Peer, port: Port,
                            filters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The internal listener applying the waypoint's policies for one service port.

    HTTP ports: an HCM with Istio's path normalization, the RBAC filters, then the router to the
    originating internal listener. TCP ports: network RBAC, then a tcp_proxy to the originating internal
    listener, as istiod builds it (listener_waypoint.go buildWaypointNetworkFilters: the service's TCP
    chain proxies to its inbound-vip cluster, whose endpoint is the `connect_originate` internal
    listener, and buildCompleteNetworkFilters puts the network RBAC in front).
    """
    name = waypoint_inner_name(peer, port)
    log = access_log(ctx.log_path, f"waypoint {peer.ref}:{port.number}")
    if port.protocol == "HTTP":
        body = [http_connection_manager(f"waypoint_{port.number}", [route_to(_originate_name(peer, port))],
                                        filters, log)]
        return internal_listener(name, body, access_log(ctx.log_path, f"waypoint conn {peer.ref}:{port.number}"),
                                  original_dst=True)
    proxy = tcp_proxy(f"waypoint_{port.number}", _originate_name(peer, port), log)
    return internal_listener(name, [*filters, proxy], log, original_dst=True)


def waypoint_originate_listener(ctx: ProxyContext, peer: Peer, port: Port) -> dict[str, Any]:
    """`connect_originate`: the waypoint's own HBONE to the destination (its certificate, its identity).

    For a TCP port the origination waits for the first downstream bytes (tcp_proxy
    `upstream_connect_mode: ON_DOWNSTREAM_DATA`), which only arrive once the waypoint's network RBAC in
    front of it let them through. Istio connects at once; a network RBAC filter decides on the first
    data (Envoy rbac_filter.cc onData), while Envoy's tcp_proxy keeps the downstream read-disabled until
    its upstream is connected. Connecting at once therefore races the waypoint's own decision against the
    destination ztunnel's answer to the waypoint: when both deny, either may be the one that logs it. In
    Istio the waypoint nearly always wins (its client's bytes arrive before a new mTLS handshake to the
    destination completes); waiting for the data makes that order certain, so the deciding proxy is the
    first enforcer on the path, as the verdict engine reports it. Decisions are not changed by this.
    """
    client = f"%FILTER_STATE({CLIENT_STATE_KEY}:PLAIN)%"
    proxy = tcp_proxy(f"originate_{port.number}", hbone_cluster_name(ctx, peer.ref),
                      tunnel_authority=f"{peer.address}:{port.number}", client=client)
    if port.protocol == "TCP":
        proxy["typed_config"]["upstream_connect_mode"] = "ON_DOWNSTREAM_DATA"
        proxy["typed_config"]["max_early_data_bytes"] = 65536
    return internal_listener(_originate_name(peer, port), [proxy],
                              access_log(ctx.log_path, f"waypoint originate {peer.ref}:{port.number}"),
                              original_dst=False)


def internal_cluster(name: str, http: bool, codec: str | None = "h1") -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": name}}}},
        ]}]},
        "transport_socket": {"name": "envoy.transport_sockets.internal_upstream", "typed_config": {
            "@type": INTERNAL_UPSTREAM,
            "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}},
        }},
    }
    if http:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}} if codec == "h2" else {"http_protocol_options": {}},
            "common_http_protocol_options": {"max_requests_per_connection": 1},
        }}
    return cluster


def _provider_origination(ctx: ProxyContext, peer: Peer, port: Port) -> dict[str, Any]:
    """The waypoint's way to an ext_authz provider's service (`outbound|<port>||<fqdn>`, the cluster istiod's
    ext_authz config names): an internal listener of that name tunnelling to the provider's ztunnel (HBONE,
    as the waypoint), as the waypoint's own outbound traffic goes in ambient."""
    name = outbound_cluster_name(peer, port.number)
    proxy = tcp_proxy(f"provider_{port.number}", hbone_cluster_name(ctx, peer.ref),
                      tunnel_authority=f"{peer.address}:{port.number}",
                      client=f"%FILTER_STATE({CLIENT_STATE_KEY}:PLAIN)%")
    return internal_listener(name, [proxy], access_log(ctx.log_path, f"waypoint provider {peer.ref}:{port.number}"),
                              original_dst=False)


def waypoint_clusters(ctx: ProxyContext, served: Sequence[tuple[Peer, Port]]) -> list[dict[str, Any]]:
    clusters: list[dict[str, Any]] = []
    hbone = {p.ref: p for p, _ in served}
    hbone.update({p.ref: p for p, _ in ctx.providers if p.spiffe})
    for peer in hbone.values():
        clusters.append(hbone_cluster(ctx, peer))
    for peer, port in served:
        clusters.append(internal_cluster(waypoint_inner_name(peer, port), http=False))
        clusters.append(internal_cluster(_originate_name(peer, port), http=port.protocol == "HTTP"))
    for peer, port in ctx.providers:
        name = outbound_cluster_name(peer, port.number)
        if peer.spiffe:
            clusters.append(internal_cluster(name, http=True, codec=ctx.codec(peer.ref, port)))
        else:  # out of the mesh: plaintext, straight to it
            clusters.append(static_cluster(name, peer.address, ctx.layout.real(port.number), bind=ctx.me.address,
                                           http=ctx.codec(peer.ref, port), one_request_per_connection=True))
    return clusters


def waypoint_static_listeners(ctx: ProxyContext, served: Sequence[tuple[Peer, Port]],
                              layered: bool = False) -> list[dict[str, Any]]:
    """The listeners that never change with policies: HBONE termination (unless `layered`: then it carries policies
    and is LDS, mesh.py) and origination."""
    listeners = [] if layered else [waypoint_terminate_listener(ctx, served)]
    listeners += [waypoint_originate_listener(ctx, peer, port) for peer, port in served]
    listeners += [_provider_origination(ctx, peer, port) for peer, port in ctx.providers if peer.spiffe]
    return listeners


# --- mode mixed: sidecars and ambient pods in one mesh -----------------------------------------------
# A sidecar sends HBONE with its own certificate straight to an ambient pod (istio/istio@1.30.3
# pilot/pkg/xds/endpoints/endpoint_builder.go buildEnvoyLbEndpoint l.708-770: the endpoint has no tlsMode label,
# so it is tunnelled, to `connect_originate` with the pod's address, and service waypoints are deliberately not
# used, l.742-752). An ambient client's ztunnel sends HBONE to the sidecar's port 15008, where the sidecar
# terminates it (listener_waypoint.go buildConnectTerminateListener l.316-355, client certificate required) and
# applies its own policies on `main_internal` chains per port (listener_inbound.go buildInboundHBONEListeners
# l.136-200: no mTLS inside the tunnel, the principal read from filter state).

def hbone_originate_name(peer: Peer, port: Port) -> str:
    return f"connect_originate|{peer.ref}|{port.number}"


def hbone_inner_name(peer: Peer, port: Port) -> str:
    return f"main_internal|{peer.ref}|{port.number}"


def sidecar_outbound_hbone(ctx: ProxyContext, peer: Peer, port: Port) -> dict[str, Any]:
    """The client sidecar's listener for an ambient peer's port: HTTP through the outbound HCM to the
    `connect_originate` internal listener (so that a refused tunnel is the HCM's 503, as in Istio), TCP
    tunnelled by the tcp_proxy itself. Both carry curl's address in the CONNECT (`x-conformance-client`) so that
    the destination ztunnel's record of it can be found."""
    tag = f"outbound {peer.ref}:{port.number}"
    lport = ctx.layout.outbound[(peer.ref, port.number)]
    name = outbound_cluster_name(peer, port.number)
    if port.protocol == "HTTP":
        state = {"name": SET_FILTER_STATE_NAME, "typed_config": {"@type": SET_FILTER_STATE, "on_request_headers": [
            # the direct address: the HCM's remote address is a probe's X-Forwarded-For entry when it sends one
            # (use_remote_address false reads the right-most entry), and curl's address is what the proof needs
            filter_state(CLIENT_STATE_KEY, "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "TRANSITIVE", "envoy.hashable_string"),
        ]}}
        chain = {"filters": [http_connection_manager(
            f"outbound_{lport}", [route_to(hbone_originate_name(peer, port))], [state], access_log(ctx.log_path, tag),
        )]}
    else:
        chain = {"filters": [tcp_proxy(f"outbound_{lport}", hbone_cluster_name(ctx, peer.ref),
                                       access_log(ctx.log_path, tag),
                                       tunnel_authority=f"{peer.address}:{port.number}")]}
    return listener(name, ctx.me.address, lport, [chain])


def sidecar_hbone_clusters(ctx: ProxyContext) -> list[dict[str, Any]]:
    """A mixed-mode sidecar's extra clusters: HBONE to each ambient peer (its own certificate, the pod's identity
    verified), the internal `connect_originate` ones, and its own `main_internal` inner listeners."""
    clusters: list[dict[str, Any]] = []
    for peer in ctx.peers:
        if peer.ref not in ctx.hbone_peers or not peer.spiffe:
            continue
        clusters.append(hbone_cluster(ctx, peer))
        for port in peer.workload.ports:
            if port.protocol == "HTTP":
                clusters.append(internal_cluster(hbone_originate_name(peer, port), http=True,
                                                  codec=ctx.codec(peer.ref, port)))
    for port in ctx.me.workload.ports:
        clusters.append(internal_cluster(hbone_inner_name(ctx.me, port), http=False))
    return clusters


def sidecar_hbone_static_listeners(ctx: ProxyContext) -> list[dict[str, Any]]:
    """The listeners of a mixed-mode sidecar that never change: the `connect_originate` internal listener per
    ambient peer HTTP port, and the HBONE termination on :15008 (routing by `:authority` to the inner listeners)."""
    out = []
    client = f"%FILTER_STATE({CLIENT_STATE_KEY}:PLAIN)%"
    for peer in ctx.peers:
        if peer.ref not in ctx.hbone_peers:
            continue
        for port in peer.workload.ports:
            if port.protocol != "HTTP":
                continue
            proxy = tcp_proxy(f"originate_{port.number}", hbone_cluster_name(ctx, peer.ref),
                              tunnel_authority=f"{peer.address}:{port.number}", client=client)
            out.append(internal_listener(hbone_originate_name(peer, port), [proxy],
                                          access_log(ctx.log_path, f"outbound originate {peer.ref}:{port.number}"),
                                          original_dst=False))
    if ctx.me.workload.ports:
        state = {"name": SET_FILTER_STATE_NAME, "typed_config": {"@type": SET_FILTER_STATE, "on_request_headers": [
            filter_state(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", "ONCE", "envoy.hashable_string"),
            filter_state("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%", "ONCE"),
            filter_state("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", "ONCE"),
            filter_state(CLIENT_STATE_KEY, f"%REQ({CLIENT_HEADER.upper()})%", "TRANSITIVE", "envoy.hashable_string"),
        ]}}
        routes = [connect_route(f"{ctx.me.address}:{port.number}", hbone_inner_name(ctx.me, port))
                  for port in ctx.me.workload.ports]
        chain = {
            "name": "hbone",
            "transport_socket": downstream_tls(ctx.certs, ctx.root_cert, ctx.mesh.trust_domain, alpn=("h2",)),
            "filters": [http_connection_manager("connect_terminate", routes, [state],
                                                access_log(ctx.log_path, "hbone connect"), connect=True)],
        }
        out.append(listener("connect_terminate", ctx.me.address, HBONE_PORT, [chain],
                            log=access_log(ctx.log_path, "hbone listener")))
    return out


def sidecar_hbone_inner_listener(ctx: ProxyContext, port: Port, filters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sidecar's `main_internal` chain for one of its ports: its own policies (compiled with the principal
    read from filter state), then the app. The original_dst listener filter restores `<pod ip>:<port>` and the
    client's address as the remote one; the direct remote address stays Envoy's internal one (as at a waypoint)."""
    name = hbone_inner_name(ctx.me, port)
    cluster = f"inbound|{port.number}"
    log = access_log(ctx.log_path, f"hbone inbound {port.number}")
    if port.protocol == "HTTP":
        body = [http_connection_manager(f"hbone_inbound_{port.number}", [route_to(cluster)], filters, log, xfcc=True)]
        return internal_listener(name, body, access_log(ctx.log_path, f"hbone inbound conn {port.number}"),
                                  original_dst=True)
    return internal_listener(name, [*filters, tcp_proxy(f"hbone_inbound_{port.number}", cluster, log)], log,
                              original_dst=True)
