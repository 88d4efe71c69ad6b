"""The client address an Envoy's RBAC `remote_ip` sees, from X-Forwarded-For: Envoy's rule, in one place.

istiod compiles `remoteIpBlocks` / `notRemoteIpBlocks` / `remote.ip` to RBAC `remote_ip` and `ipBlocks` /
`source.ip` to `direct_remote_ip` (istio/istio@1.30 pilot/pkg/security/authz/model/generator.go remoteIPGenerator,
srcIPGenerator). `direct_remote_ip` is always the connection's peer; `remote_ip` is the address the HTTP connection
manager settles on, which is where X-Forwarded-For comes in. Envoy's code (source/common/http/
conn_manager_utility.cc mutateRequestHeaders; source/common/http/utility.cc getLastAddressFromXFF;
docs/ingress-gateways.md §1.2):

- `use_remote_address: true` (an Istio gateway, gateway.go l.678,700) with N = `xff_num_trusted_hops`
  (= meshConfig gatewayTopology.numTrustedProxies, gateway.go l.720-732): N = 0 → the peer; N > 0 →
  getLastAddressFromXFF(XFF as received, N-1), the peer when that is null. Then the peer is appended to XFF
  (its own local address instead when the peer is loopback; skip_xff_append is unset in Istio).
- `use_remote_address: false` (sidecar inbound, waypoint: listener_inbound.go l.821, listener_waypoint.go
  l.247,918), N = 0: getLastAddressFromXFF(XFF, 0), the right-most entry, the peer when null. Nothing is appended.

getLastAddressFromXFF(headers, skip): no header → null; `skip` times, cut the text from the last ',' on (no ','
left → null); then take the text after the last ',' (the whole text when there is none, or when that ',' is its
last character), trim whitespace, and parse it as an IP address without a port (inet_pton) → that, else null.

Kept apart from the engine's deciders so the one rule is tested by itself (tests/test_engine_gateway.py: the
table of docs/ingress-gateways.md §1.2 and a property test) and so the gateway, sidecar and waypoint all read
it the same way.
"""

from __future__ import annotations

import socket

XFF = "x-forwarded-for"
# StringUtil::ltrim / rtrim (source/common/common/utility.cc): these are the whitespace characters they remove
_WHITESPACE = " \t\f\v\n\r"


def parse_ip(text: str) -> str | None:
    """Network::Utility::parseInternetAddressNoThrow without a port: an IPv4 or IPv6 literal as inet_pton reads it
    (no leading zeros, no port, no brackets, no scope id), in canonical form; None when it is none."""
    if not text or "%" in text:
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    return None


def last_address(xff: str | None, skip: int) -> str | None:
    """Envoy's Utility::getLastAddressFromXFF(headers, skip): the address `skip` entries left of the right-most
    one, or None (no header, too few entries, not an IP)."""
    if xff is None:
        return None
    text = xff
    for _ in range(skip):
        cut = text.rfind(",")
        if cut == -1:
            return None
        text = text[:cut]
    cut = text.rfind(",")
    if cut != -1 and cut + 1 < len(text):
        text = text[cut + 1:]
    return parse_ip(text.strip(_WHITESPACE))


def remote_address(xff: str | None, peer: str, use_remote_address: bool, trusted_hops: int = 0) -> str:
    """The address RBAC `remote_ip` matches at an Envoy whose HCM has `use_remote_address` and
    `xff_num_trusted_hops = trusted_hops`, for a request carrying `xff` (None: no header) from `peer`."""
    if use_remote_address:
        found = last_address(xff, trusted_hops - 1) if trusted_hops > 0 else None
    else:
        found = last_address(xff, trusted_hops)
    return found if found is not None else peer


def appended(xff: str | None, peer: str) -> str:
    """X-Forwarded-For as a `use_remote_address: true` Envoy forwards it: `peer` appended (Utility::appendXff:
    appendForwardedFor(address, ","), HeaderMapImpl::appendToHeader adds the delimiter only to a non-empty value)."""
    return peer if xff is None or xff == "" else f"{xff},{peer}"
