"""The path a probe takes through the mesh: which proxies are on it, what each presents and sees, who decides.

Topology as data (STYLE.md): every mode is a choice of data plane for the source's and the destination's
namespace (sidecar mode: both sidecar; ambient: both ambient; waypoint: the destination `waypoint`; mode
`mixed`: what `spec.dataplanes` says per namespace, DESIGN.md §10), and the crossing of the two planes fixes
the hops. `decide` evaluates the deciding hop; `explain` and `compare --dataplanes` print the hops.

What Istio 1.30.3 does on each crossing (istio/istio@1.30.3, istio/ztunnel@1.30.3):
- sidecar → sidecar: legacy Istio mTLS to the pod's port, not HBONE: istiod's EDS tunnels only when the endpoint
  has no `tlsMode: istio` or PILOT_PREFER_SENDING_HBONE is set (default false; xds/endpoints/endpoint_builder.go
  buildEnvoyLbEndpoint L708-713, features/ambient.go L51-54). The server sidecar sees the client's identity
  unless the port is DISABLE (auto-mTLS sends plaintext there, mtls_checker.go).
- sidecar → ambient pod (with or without a waypoint): HBONE with the sidecar's own certificate straight to the
  pod (the ambient endpoint has no tlsMode label, so supportTunnel L808-833 and the tunnel branch L723-770).
  Service waypoints are deliberately not used by sidecars ("We intentionally do not take into account waypoints
  here", L742-752; findServiceWaypoint L896-901 serves routers and east-west gateways only; TestIngressToWaypoint
  sidecar case 200 despite a deny-all waypoint). The destination ztunnel sees the sidecar's SPIFFE identity and
  is the only enforcer (L4). When it refuses, the client sidecar's HTTP router answers 503 (upstream reset).
- ambient client → sidecar pod: the source ztunnel sends HBONE to pod:15008 with the client's identity, since
  injected pods carry `networking.istio.io/tunnel: http` in the ambient profile (serviceregistry/ambient/
  workloads.go setTunnelProtocol L1199-1214; ztunnel src/proxy/outbound.rs build_request). The sidecar
  terminates it (networking/core/listener_waypoint.go buildConnectTerminateListener L316-355: client certificate
  required) and applies its own policies on `main_internal` chains (listener_inbound.go
  buildInboundHBONEListeners L136-200): the principal from filter state (authz.NewBuilder(..., true)), the
  chain itself plaintext (`Mode: MTLSDisable`, L167-168), so PeerAuthentication never refuses HBONE and a
  DISABLE port still sees the caller's identity; the direct remote address is the internal listener's, as at a
  waypoint (positive `ipBlocks` fail), and there is no SNI. The client gets the sidecar's own answer (403).
- ambient client → ambient pod: ztunnel to ztunnel; with a waypoint for the destination's namespace, through it
  (the waypoint mode of this engine).
- out-of-mesh client: plaintext to the pod; a sidecar's PERMISSIVE chain or ztunnel's inbound passthrough
  decides with no identity; a waypoint is never on the path (nothing captured the client).
- out-of-mesh client → ingress gateway → a route's destination (docs/ingress-gateways.md §2): the
  gateway decides first (its own RBAC, remote_ip from X-Forwarded-For), then sends on with its own certificate:
  Istio mTLS to a sidecar pod (endpoint_builder.go L708-717, even in the ambient profile), HBONE straight to an
  ambient pod, bypassing its waypoint (L372-381, L742-752, L896-919; TestIngressToWaypoint "endpoint routing"),
  or, when the service carries istio.io/ingress-use-waypoint=true, HBONE to the waypoint (findServiceWaypoint
  serves routers), which then connects on as itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from conformance.model import DataPlane, Mode, Probe, Waypoint, Workload

SourcePlane = Literal["outside", "sidecar", "ambient"]

# The crossings, as codes (reports, compare) — `<source plane>-><destination plane>`.
SIDECAR_TO_SIDECAR = "sidecar->sidecar"
SIDECAR_TO_AMBIENT = "sidecar->ambient"  # also to a waypoint namespace: sidecars bypass service waypoints
AMBIENT_TO_SIDECAR = "ambient->sidecar"
AMBIENT_TO_AMBIENT = "ambient->ambient"
AMBIENT_TO_WAYPOINT = "ambient->waypoint"
OUTSIDE_TO_SIDECAR = "outside->sidecar"
OUTSIDE_TO_AMBIENT = "outside->ambient"  # also to a waypoint namespace: nothing captured the client
# Through an ingress gateway: `outside->gateway->` + the destination's plane (`waypoint` only when the gateway is
# routed through it: istio.io/ingress-use-waypoint; a bypassed waypoint namespace is `ambient`).
INGRESS_TO_SIDECAR = "outside->gateway->sidecar"
INGRESS_TO_AMBIENT = "outside->gateway->ambient"
INGRESS_TO_WAYPOINT = "outside->gateway->waypoint"


@dataclass(frozen=True)
class Hop:
    """One proxy on a probe's path."""

    proxy: str  # "sidecar" | "ztunnel" | "waypoint"
    ref: str  # the workload (or waypoint) whose proxy it is, "ns/name"
    sees: str | None  # the peer identity this proxy authenticates (None: plaintext, no identity; "" : n/a)
    presents: str | None  # the identity it presents onwards (None: plaintext)
    enforces: str  # what it applies, in words ("nothing (client side)" for a client's own proxy)
    decides: bool = False  # an enforcer whose policies can decide this probe


@dataclass(frozen=True)
class Route:
    """The hops of one probe and the crossing they make; `why` cites the Istio source for it."""

    crossing: str
    source_plane: SourcePlane
    destination_plane: DataPlane
    hops: tuple[Hop, ...]
    why: str

    def describe(self) -> str:
        """`sidecar finance/curl =[HBONE as …]=> ztunnel shop/api (decides)`."""
        parts = []
        for hop in self.hops:
            mark = " (decides)" if hop.decides else ""
            parts.append(f"{hop.proxy} {hop.ref}{mark}")
        return " → ".join(parts) if parts else "no proxy"

    @property
    def deciders(self) -> tuple[Hop, ...]:
        return tuple(h for h in self.hops if h.decides)


def planes(probe: Probe, mode: Mode, dataplanes: dict[str, DataPlane] | None) -> tuple[SourcePlane, DataPlane]:
    """The source's and the destination's data plane in `mode` (mixed: `dataplanes`, unlisted = sidecar)."""
    src, dst = probe.source, probe.destination
    if mode == "mixed":
        table = dataplanes or {}
        dst_plane: DataPlane = table.get(dst.namespace, "sidecar")
        src_plane: SourcePlane = "outside"
        if src.in_mesh:
            src_plane = "sidecar" if table.get(src.namespace, "sidecar") == "sidecar" else "ambient"
        return src_plane, dst_plane
    dst_plane = "sidecar" if mode == "sidecar" else ("waypoint" if mode == "waypoint" else "ambient")
    if not src.in_mesh:
        return "outside", dst_plane
    return ("sidecar" if mode == "sidecar" else "ambient"), dst_plane


def crossing(src_plane: SourcePlane, dst_plane: DataPlane) -> str:
    """The crossing code for two planes (a waypoint destination is bypassed by sidecars and outsiders)."""
    if dst_plane == "sidecar":
        return {"outside": OUTSIDE_TO_SIDECAR, "sidecar": SIDECAR_TO_SIDECAR, "ambient": AMBIENT_TO_SIDECAR}[src_plane]
    if src_plane == "outside":
        return OUTSIDE_TO_AMBIENT
    if src_plane == "sidecar":
        return SIDECAR_TO_AMBIENT
    return AMBIENT_TO_WAYPOINT if dst_plane == "waypoint" else AMBIENT_TO_AMBIENT


_WHY = {
    SIDECAR_TO_SIDECAR: "sidecar to sidecar is Istio mTLS to the pod's port (EDS tunnels only without tlsMode or "
                        "with PILOT_PREFER_SENDING_HBONE, default false: endpoint_builder.go L708-713)",
    SIDECAR_TO_AMBIENT: "a sidecar sends HBONE with its own certificate straight to an ambient pod "
                        "(endpoint_builder.go supportTunnel and L723-770) and never to a service waypoint "
                        "(L742-752; findServiceWaypoint serves gateways only, L896-901): only the destination's "
                        "ztunnel enforces",
    AMBIENT_TO_SIDECAR: "ztunnel sends HBONE to the sidecar's port 15008 with the client's identity "
                        "(workloads.go setTunnelProtocol: injected pods carry networking.istio.io/tunnel=http); "
                        "the sidecar applies its own policies on its HBONE chains (listener_inbound.go "
                        "buildInboundHBONEListeners: principal from filter state, no PeerAuthentication)",
    AMBIENT_TO_AMBIENT: "ztunnel to ztunnel (HBONE); the destination ztunnel enforces L4 policy",
    AMBIENT_TO_WAYPOINT: "the source ztunnel sends the destination service's traffic to its waypoint, which "
                         "applies targetRefs policies and connects on as itself; the destination ztunnel enforces "
                         "L4 policy on the waypoint's connection",
    OUTSIDE_TO_SIDECAR: "plaintext to the sidecar's inbound listener (PERMISSIVE: no identity; STRICT: no chain)",
    OUTSIDE_TO_AMBIENT: "plaintext to the pod, captured by its ztunnel's inbound passthrough with no identity "
                        "(ztunnel inbound_passthrough.rs); no waypoint is on the path",
    INGRESS_TO_SIDECAR: "the gateway sends Istio mTLS with its own certificate to the sidecar pod (endpoint_builder.go "
                        "L708-717: an endpoint with tlsMode istio gets mTLS, PILOT_PREFER_SENDING_HBONE is false)",
    INGRESS_TO_AMBIENT: "the gateway sends HBONE with its own certificate straight to the ambient pod "
                        "(endpoint_builder.go supportTunnel L808-835); a service waypoint is bypassed unless the "
                        "service opts in with istio.io/ingress-use-waypoint (findServiceWaypoint L896-919, "
                        "TestIngressToWaypoint): only the destination ztunnel enforces, and sees the gateway",
    INGRESS_TO_WAYPOINT: "istio.io/ingress-use-waypoint is true on the service: the gateway sends HBONE to the "
                         "service's waypoint (endpoint_builder.go L376-379, L719-741), which applies its targetRefs "
                         "policies seeing the gateway, and connects on as itself to the destination ztunnel",
}


def route(probe: Probe, mode: Mode, dataplanes: dict[str, DataPlane] | None, trust_domain: str,
          waypoint: Waypoint | None, plaintext_port: bool = False) -> Route:
    """The hops of `probe` in `mode`. `waypoint`: the waypoint of the destination's namespace, if it has one;
    `plaintext_port`: the destination port's PeerAuthentication mode is DISABLE (a sidecar client then sends
    plaintext, mtls_checker.go checkMtlsEnabled)."""
    src, dst = probe.source, probe.destination
    src_plane, dst_plane = planes(probe, mode, dataplanes)
    kind = crossing(src_plane, dst_plane)
    me = src.identity(trust_domain) if src.in_mesh else None
    hops: list[Hop] = []
    if src_plane == "sidecar":
        sends = None if kind == SIDECAR_TO_SIDECAR and plaintext_port else me
        hops.append(Hop("sidecar", src.ref, "", sends, "nothing (client side)"))
    elif src_plane == "ambient":
        hops.append(Hop("ztunnel", src.ref, "", me, "nothing (client side; ztunnel enforces inbound only)"))
    if kind == SIDECAR_TO_SIDECAR:
        hops.append(Hop("sidecar", dst.ref, hops[0].presents, None,
                        "selector, namespace and root-namespace policies (L7), RequestAuthentication, CUSTOM",
                        decides=True))
    elif kind == OUTSIDE_TO_SIDECAR:
        hops.append(Hop("sidecar", dst.ref, None, None,
                        "selector, namespace and root-namespace policies (L7), RequestAuthentication, CUSTOM",
                        decides=True))
    elif kind == AMBIENT_TO_SIDECAR:
        hops.append(Hop("sidecar", dst.ref, me, None, "its own policies on its HBONE chains (L7), "
                        "RequestAuthentication, CUSTOM; PeerAuthentication does not apply to HBONE", decides=True))
    elif kind == AMBIENT_TO_WAYPOINT and waypoint is not None:
        wid = waypoint.identity(trust_domain)
        hops.append(Hop("waypoint", waypoint.ref, me, wid, "targetRefs policies (L7)", decides=True))
        hops.append(Hop("ztunnel", dst.ref, wid, None, "selector, namespace and root-namespace policies (L4 only)",
                        decides=True))
    else:  # the destination's ztunnel alone: ambient, a bypassed waypoint, sidecar or out-of-mesh clients
        sees = hops[0].presents if hops else None
        hops.append(Hop("ztunnel", dst.ref, sees, None, "selector, namespace and root-namespace policies (L4 only)",
                        decides=True))
    why = _WHY[kind]
    if kind in (SIDECAR_TO_AMBIENT, OUTSIDE_TO_AMBIENT) and dst_plane == "waypoint" and waypoint is not None:
        why += f"; waypoint {waypoint.ref} is bypassed, so its targetRefs policies do not apply"
    return Route(kind, src_plane, dst_plane, tuple(hops), why)


def ingress_route(probe: Probe, backend: Workload, backend_plane: DataPlane, trust_domain: str,
                  waypoint: Waypoint | None, use_waypoint: bool) -> Route:
    """The hops of `probe` to an ingress gateway that routes it to `backend`, whose namespace runs `backend_plane`
    (sidecar, or ambient / waypoint capture). `waypoint`: the backend namespace's waypoint, if any; `use_waypoint`:
    istio.io/ingress-use-waypoint holds for the backend's service (with a waypoint, Istio 1.30 then routes the
    gateway through it)."""
    gateway = probe.destination
    gid = gateway.identity(trust_domain)
    hops = [Hop("gateway", gateway.ref, None, gid,
                "selector, namespace and root-namespace policies (L7; remoteIpBlocks from X-Forwarded-For), "
                "targetRefs to its Gateway, RequestAuthentication, CUSTOM", decides=True)]
    through = backend_plane == "waypoint" and waypoint is not None and use_waypoint
    if backend_plane == "sidecar":
        kind = INGRESS_TO_SIDECAR
        hops.append(Hop("sidecar", backend.ref, gid, None,
                        "selector, namespace and root-namespace policies (L7), RequestAuthentication, CUSTOM",
                        decides=True))
    elif through and waypoint is not None:
        kind = INGRESS_TO_WAYPOINT
        wid = waypoint.identity(trust_domain)
        hops.append(Hop("waypoint", waypoint.ref, gid, wid, "targetRefs policies (L7)", decides=True))
        hops.append(Hop("ztunnel", backend.ref, wid, None, "selector, namespace and root-namespace policies (L4 only)",
                        decides=True))
    else:
        kind = INGRESS_TO_AMBIENT
        hops.append(Hop("ztunnel", backend.ref, gid, None, "selector, namespace and root-namespace policies "
                        "(L4 only)", decides=True))
    why = _WHY[kind]
    if kind == INGRESS_TO_AMBIENT and backend_plane == "waypoint" and waypoint is not None:
        why += f"; waypoint {waypoint.ref} is bypassed, so its targetRefs policies do not apply"
    return Route(kind, "outside", "waypoint" if through else backend_plane, tuple(hops), why)
