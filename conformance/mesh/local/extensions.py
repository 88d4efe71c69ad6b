"""The Envoy extensions that no config of the local mesh names, disabled in every Envoy it starts.

Why: Envoy registers every extension it was built with (516 in 1.40.0), and each registered factory holds heap in every
process. A sidecar is one Envoy per workload, so that is memory per workload: an Envoy with only an admin listener had
5.66 MB allocated and 13.6 MiB private; with the extensions below disabled (`--disable-extensions`, Envoy's
`OptionsImplBase::disableExtensions` removes their factories from the registry) 4.5 MB and 12.2 MiB (admin `/memory`
and `smaps_rollup`, measured here).

Why it changes no decision: a disabled extension is one the config cannot use. A listener or cluster naming one is
rejected by Envoy, as an unknown type is, which the mesh reports as a config rejection naming the proxy (loud, never a
silent difference), and every config shape the mesh generates runs in the tests. So only whole families the mesh never
writes are disabled (tracers, stats sinks, Wasm, QUIC, compression, thrift/dubbo/redis-style proxies, caches, ...), and
in the families it writes, every extension but the ones it names (`KEPT`). The machinery Envoy uses by default (xDS
subscriptions, the RDS factory, request ids, header validation, load balancing, cluster types, socket interfaces,
resolvers, filter-state objects, TLS handshakers and validators) is left alone whatever the mesh names.

`envoy-extensions.json` is what Envoy 1.40.0's admin `/server_info` lists (node.extensions);
tests/mesh_local/test_extensions.py checks it against the installed Envoy, so an upgrade shows up there.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

REGISTERED = Path(__file__).with_name("envoy-extensions.json")

# Families no generated config writes: every extension of a category starting with one of these.
DISABLED_FAMILIES = (
    "envoy.access_loggers.extension_filters", "envoy.common.key_value", "envoy.compression.", "envoy.config.validators",
    "envoy.content_parsers", "envoy.dubbo_proxy.", "envoy.filters.udp", "envoy.formatter", "envoy.generic_proxy.",
    "envoy.geoip_providers", "envoy.guarddog_actions", "envoy.health_check", "envoy.http.ai_filters",
    "envoy.http.cache", "envoy.http.custom_response", "envoy.http.ext_proc.", "envoy.http.injected_credentials",
    "envoy.http.stateful_header_formatters", "envoy.http.stateful_session", "envoy.internal_redirect_predicates",
    # the generic matching API (`matcher` fields): the mesh's RBAC is `rules`, its filter chains `filter_chain_match`
    "envoy.matching.", "envoy.path.rewrite", "envoy.quic.", "envoy.rate_limit_descriptors", "envoy.rbac.matchers",
    "envoy.resource_monitors", "envoy.retry_", "envoy.router.cluster_specifier_plugin", "envoy.router.route_specifiers",
    "envoy.stats_sinks", "envoy.string_matcher", "envoy.thrift_proxy.", "envoy.tracers", "envoy.udp_packet_writer",
    "envoy.wasm.runtime", "quic.",
)

# Families the mesh writes: everything but these (matched by the name's last dot-separated part, so that Envoy's
# deprecated aliases of a kept extension, such as `envoy.router` or the bare `tls`, are kept with it).
KEPT: dict[str, frozenset[str]] = {
    # config.access_log
    "envoy.access_loggers": frozenset({"file", "envoy.file_access_log"}),
    # authz.py, authn.py, config.py (waypoint filter state), the router everywhere
    "envoy.filters.http": frozenset({"router", "rbac", "ext_authz", "jwt_authn", "set_filter_state"}),
    # the terminal upstream HTTP filter every router uses by default
    "envoy.filters.http.upstream": frozenset({"upstream_codec"}),
    "envoy.filters.network": frozenset({"http_connection_manager", "tcp_proxy", "rbac", "ext_authz"}),
    "envoy.filters.listener": frozenset({"tls_inspector", "original_dst"}),
    "envoy.transport_sockets.downstream": frozenset({"tls", "raw_buffer", "internal_upstream"}),
    "envoy.transport_sockets.upstream": frozenset({"tls", "raw_buffer", "internal_upstream"}),
    # every cluster is STATIC (config.static_cluster, xds.py), balanced by the default round robin
    "envoy.clusters": frozenset({"static"}),
    "envoy.load_balancing_policies": frozenset({"round_robin", "cluster_provided"}),
    # the default validator checks the peers' SPIFFE SANs (`match_typed_subject_alt_names`); XFF is HCM's default
    "envoy.tls.cert_validator": frozenset({"default"}),
    "envoy.http.original_ip_detection": frozenset({"xff"}),
    # the internal listeners of waypoints, gateways and mixed mode; the default socket interface
    "envoy.bootstrap": frozenset({"internal_listener", "default_socket_interface"}),
}


def disabled(registered: list[tuple[str, str]]) -> list[str]:
    """`category/name` of each registered extension the mesh never uses (the rules above), in order."""
    out = []
    for category, name in registered:
        kept = KEPT.get(category)
        if category.startswith(DISABLED_FAMILIES) or (
                kept is not None and name not in kept and name.rsplit(".", 1)[-1] not in kept):
            out.append(f"{category}/{name}")
    return out


def registered() -> list[tuple[str, str]]:
    """Envoy 1.40.0's extensions, as its admin `/server_info` lists them (`REGISTERED`)."""
    return [(c, n) for c, n in json.loads(REGISTERED.read_text())["extensions"]]


@functools.cache
def disable_flag() -> tuple[str, ...]:
    """Envoy's command-line option disabling them."""
    names = disabled(registered())
    return ("--disable-extensions", ",".join(names)) if names else ()
