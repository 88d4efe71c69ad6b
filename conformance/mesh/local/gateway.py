"""Envoy configuration of an ingress gateway in the local mesh: its HTTP listeners and the ways on to its routes.

An Istio ingress gateway is an Envoy of its own (istio/istio@1.30 pilot/pkg/networking/core/gateway.go): a plaintext
HTTP listener per server port whose HCM has `use_remote_address: true` and `xff_num_trusted_hops` from the proxy's
gatewayTopology.numTrustedProxies (buildGatewayConnectionManager l.678-732, here `mesh.numTrustedProxies`), the
authz / authn filters every listener gets (listener_builder.go buildHTTPConnectionManager l.395-411: CUSTOM, the JWT
filter, RBAC), and one RDS virtual host per routed host with `ignore_port_in_host_matching` (l.567-575). It forwards
with its own certificate: Istio mTLS to a sidecar pod (auto-mTLS: plaintext to a DISABLE port), HBONE straight to an
ambient pod (xds/endpoints/endpoint_builder.go l.708-770, bypassing a service waypoint, l.742-752), or HBONE to the
service's waypoint when the Service carries istio.io/ingress-use-waypoint=true (findServiceWaypoint l.896-919, which
serves routers only). Which of these a route takes is decided by the session (mesh.py), from the data planes.

One emulation, because every address here is loopback: Envoy appends to X-Forwarded-For not the peer but its own
configured local address when the peer is a loopback address (source/common/http/conn_manager_utility.cc
mutateRequestHeaders: `isLoopbackAddress(remote) ? localAddress() : remote`), so on 127.0.0.0/8 the backend would
see this machine's address, not the client's, as its right-most entry. The gateway therefore appends the peer
itself, before anything reads the header (an early header mutation, which runs first in mutateRequestHeaders),
skips Envoy's own append, and trusts one hop more: getLastAddressFromXFF(XFF + peer, N) is
getLastAddressFromXFF(XFF, N - 1) for N > 0, and the peer for N = 0, which is exactly what Envoy settles on with
N trusted hops and the header as received (conformance/engine/xff.py states the rule; docs/ingress-gateways.md §4;
tests/mesh_local/test_gateway.py checks both). Filters and the backend then see the same header and the same
`remote_ip` as behind a real gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conformance.mesh.local import config
from conformance.mesh.local.config import Peer, ProxyContext
from conformance.model import Port

EARLY_HEADER_MUTATION = ("type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3."
                         "HeaderMutation")
XFF = "x-forwarded-for"

# How a gateway reaches a route's backend (mesh.py decides, from the backend namespace's data plane)
MTLS = "mtls"  # Istio mTLS to the sidecar pod's port (plaintext to a DISABLE port: auto-mTLS)
HBONE = "hbone"  # HBONE with the gateway's certificate to the pod's ztunnel (:15008)
VIA_WAYPOINT = "waypoint"  # HBONE to the service's waypoint, `:authority` the service


@dataclass(frozen=True)
class Onward:
    """One route's backend as the gateway reaches it: the workload, its port, the way, and the waypoint if any."""

    host: str  # the vhost domain (lower case; `*.suffix`, `prefix.*` or `*` as Envoy reads them)
    peer: Peer
    port: Port
    way: str  # MTLS, HBONE or VIA_WAYPOINT
    waypoint: Peer | None = None

    def cluster(self, plaintext: bool) -> str:
        """The cluster the route names: the sidecar's mTLS (or plaintext) one, or the internal HBONE origination."""
        if self.way == MTLS:
            return (config.plaintext_cluster_name(self.peer, self.port.number) if plaintext and self.peer.spiffe
                    else config.outbound_cluster_name(self.peer, self.port.number))
        return originate_name(self)


def originate_name(onward: Onward) -> str:
    via = f"{onward.waypoint.ref}>" if onward.way == VIA_WAYPOINT and onward.waypoint is not None else ""
    return f"gateway_originate|{via}{onward.peer.ref}|{onward.port.number}"


def _hbone_target(onward: Onward) -> Peer:
    return onward.waypoint if onward.way == VIA_WAYPOINT and onward.waypoint is not None else onward.peer


def gateway_listener(ctx: ProxyContext, port: Port, filters: Sequence[Mapping[str, Any]],
                     onward: Sequence[Onward], plaintext: frozenset[tuple[str, int]], trusted_hops: int
                     ) -> dict[str, Any]:
    """The gateway's plaintext HTTP listener on one server port: XFF handled as Istio's gateway HCM does (see the
    module docstring for the loopback emulation), the policies' filters, then one vhost per routed host."""
    lport = ctx.layout.real(port.number)
    state = {"name": config.SET_FILTER_STATE_NAME, "typed_config": {"@type": config.SET_FILTER_STATE,
             "on_request_headers": [
                 # curl's address, carried in the HBONE CONNECT so the backend ztunnel's record can be found
                 config.filter_state(config.CLIENT_STATE_KEY, "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "TRANSITIVE",
                               "envoy.hashable_string")]}}
    hcm = config.http_connection_manager(f"gateway_{port.number}", [], [*filters, state],
                                         config.access_log(ctx.log_path, f"gateway http {port.number}"))
    typed = hcm["typed_config"]
    typed["use_remote_address"] = True
    typed["skip_xff_append"] = True
    typed["xff_num_trusted_hops"] = trusted_hops + 1
    typed["early_header_mutation_extensions"] = [{
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {"@type": EARLY_HEADER_MUTATION, "mutations": [{"append": {
            "header": {"key": XFF, "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"},
            "append_action": "APPEND_IF_EXISTS_OR_ADD"}}]},
    }]
    # gateway.go buildGatewayConnectionManager: SANITIZE_SET unless gatewayTopology says otherwise
    typed["forward_client_cert_details"] = "SANITIZE_SET"
    typed["route_config"] = {
        "name": f"http.{port.number}",
        "validate_clusters": False,
        "ignore_port_in_host_matching": True,
        "virtual_hosts": [
            {"name": f"{o.host}:{port.number}", "domains": [o.host],
             "routes": [config.route_to(o.cluster((o.peer.ref, o.port.number) in plaintext))]}
            for o in onward
        ],
    }
    return config.listener(f"gateway|{port.number}", ctx.me.address, lport, [{"filters": [hcm]}])


def gateway_clusters(ctx: ProxyContext, onward: Sequence[Onward]) -> list[dict[str, Any]]:
    """Istio mTLS (and auto-mTLS plaintext) clusters to every in-mesh workload port, as a sidecar has them (CUSTOM
    providers are reached through them too), plus the HBONE ones the routes need: to each ambient backend's ztunnel
    or to the waypoint, and the internal clusters of the originations."""
    clusters = [c for c in config.sidecar_clusters(ctx) if not c["name"].startswith("inbound|")]
    hbone: dict[str, Peer] = {}
    seen: set[str] = set()
    for o in onward:
        if o.way == MTLS or originate_name(o) in seen:
            continue  # two Hosts routed to one backend port share its origination (Envoy refuses a duplicate)
        seen.add(originate_name(o))
        target = _hbone_target(o)
        hbone.setdefault(target.ref, target)
        clusters.append(config.internal_cluster(originate_name(o), http=True, codec=ctx.codec(o.peer.ref, o.port)))
    clusters += [config.hbone_cluster(ctx, peer) for peer in hbone.values()]
    return clusters


def gateway_static_listeners(ctx: ProxyContext, onward: Sequence[Onward]) -> list[dict[str, Any]]:
    """The internal HBONE originations (one per HBONE route): CONNECT to the pod's ztunnel, or to the waypoint,
    with `:authority` `<pod address>:<port>` (the waypoint routes by it to the service's policies)."""
    out = []
    seen: set[str] = set()
    for o in onward:
        name = originate_name(o)
        if o.way == MTLS or name in seen:
            continue
        seen.add(name)
        proxy = config.tcp_proxy(f"originate_{o.port.number}", config.hbone_cluster_name(ctx, _hbone_target(o).ref),
                                 tunnel_authority=f"{o.peer.address}:{o.port.number}",
                                 client=f"%FILTER_STATE({config.CLIENT_STATE_KEY}:PLAIN)%")
        out.append(config.internal_listener(
            name, [proxy], config.access_log(ctx.log_path, f"outbound originate {o.peer.ref}:{o.port.number}"),
            original_dst=False))
    return out
