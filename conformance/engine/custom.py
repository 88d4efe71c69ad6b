"""CUSTOM (ext_authz) policies at an Envoy proxy: which provider istiod wires, and what the suite's provider answers.

istiod (istio/istio@1.30.3 `pilot/pkg/security/authz/builder/`):

- extauthz.go processExtensionProvider: every `meshConfig.extensionProviders` entry of an ext_authz kind is
  built or marked broken: an empty or duplicate name, a name that is not a lowercase DNS-1123 label of at most 63
  characters (validateProviderName, from 1.30, istio/istio#58082), a port outside 1..65535, a service
  LookupCluster cannot find (pilot/pkg/model/telemetry_logging.go: `<ns>/<host>` or a host in exactly one
  namespace), a statusOnError that is not a status code, a pathPrefix without a leading `/`, a lone `*` in a
  header list (buildExtAuthzHTTP checkWildcard). getExtAuthz fails for a name that is undefined or broken.
- builder.go buildHTTP / buildTCP: the CUSTOM policies of a workload are grouped by provider (sorted). More
  than one provider without PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (default false,
  pilot/pkg/features/security.go), or a provider getExtAuthz rejects, gives an RBAC filter that DENIES the
  requests the rules match (getBadCustomDenyRules: `…-deny-due-to-bad-CUSTOM-action`, `403 RBAC: access
  denied`). Otherwise a shadow RBAC filter evaluates the rules and ext_authz (filter_enabled_metadata on the
  shadow effective policy id) is called only for a request they match. Rules are generated as for a DENY
  (build(customPolicies, RBAC_DENY)): on a TCP chain an HTTP-only attribute drops the condition, not the rule.
  An HTTP provider has no TCP filter ("ignored CUSTOM action with HTTP provider on TCP filter chain").
  Before 1.30 (#58082) two providers on one workload were an error of getExtAuthz (notAllTheSame) and one RBAC
  filter denied the rules of all of them.
- Envoy ext_authz (source/extensions/filters/http/ext_authz, filters/common/ext_authz): an HTTP server gets only
  the request headers `allowed_headers` lets through (istiod: includeRequestHeadersInCheck, case-insensitive
  exact / `x*` / `*x`) plus Authorization, :method, :path and :authority (CheckRequestUtils::toRequestMatchers),
  and headers_to_add (includeAdditionalHeadersInCheck) overriding the client's; a gRPC server gets every header
  (istiod sets no allowed_headers for gRPC) and the peer's certificate URI SAN as the source principal. 200
  allows, 5xx or no answer is an error (failOpen: let through; else statusOnError, default 403, empty body),
  anything else denies with the server's status and body.

The suite's provider is Istio's sample (samples/extauthz/cmd/extauthz/main.go@1.30.3): over HTTP it allows iff
the check carries `x-ext-authz: allow` (Go's Header.Get: the first value, but Envoy sends a repeated header as one,
its values joined with `,`: CheckRequestUtils::setHttpRequest coalesces them into the CheckRequest's header map, from
which the HTTP client copies the check's headers); over gRPC the same when the header is present (the same map),
and when it is absent iff the source principal ends in `/sa/a` (`-allow_service_account`, default `a`): that is how
Istio tests CUSTOM on TCP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conformance.engine.matchers import pattern_kind
from conformance.model import CLUSTER_DOMAIN, ExtensionProvider, Probe, Workload
from conformance.versions import EXT_AUTHZ_PROVIDER_NAME_CHECK, IstioVersion

CHECK_HEADER = "x-ext-authz"
ALLOWED_VALUE = "allow"
ALLOWED_SERVICE_ACCOUNT = "a"
RESULT_HEADER = "x-ext-authz-check-result"
RECEIVED_HEADER = "x-ext-authz-check-received"
OVERRIDE_HEADER = "x-ext-authz-additional-header-override"
OVERRIDE_GRPC_VALUE = "grpc-additional-header-override-value"
RECEIVED_TEXT = "\u2039what the ext_authz server received\u203a"  # its log line: nothing a policy can know
# CheckRequestUtils::toRequestMatchers(add_http_headers=true): always sent to an HTTP server
ALWAYS_SENT = frozenset({"authorization", ":method", ":path", ":authority", "host"})


def provider_name_problem(name: str) -> str | None:
    """extauthz.go validateProviderName@1.30.0."""
    if len(name) == 0:
        return "provider name cannot be empty"
    if len(name) > 63:
        return f"provider name too long (max 63 characters): {len(name)}"
    for i, c in enumerate(name):
        if "a" <= c <= "z" or "0" <= c <= "9" or c == "-":
            continue
        if "A" <= c <= "Z":
            return f"uppercase letters not allowed (use lowercase): character {c!r} at position {i}"
        return f"invalid character {c!r} at position {i} (only lowercase letters, digits, and hyphens allowed)"
    if name[0] == "-" or name[-1] == "-":
        return "provider name cannot start or end with hyphen"
    return None


def lookup_service(provider: ExtensionProvider, workloads: Sequence[Workload]) -> Workload | None:
    """LookupCluster (telemetry_logging.go@1.30.3): `<namespace>/<hostname>` must be a Service of that namespace;
    a bare hostname must name a Service in exactly one namespace. The suite's Services are
    `<name>.<namespace>.svc.cluster.local`."""
    namespace, sep, host = provider.service.partition("/")
    if not sep:
        namespace, host = "", provider.service
    found = [w for w in workloads if f"{w.name}.{w.namespace}.svc.{CLUSTER_DOMAIN}" == host
             and (not sep or w.namespace == namespace)]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class ProviderView:
    """What istiod made of the provider a CUSTOM policy names."""

    name: str
    provider: ExtensionProvider | None
    workload: Workload | None
    defects: tuple[str, ...]  # why getExtAuthz fails for it; empty: usable

    @property
    def usable(self) -> bool:
        return not self.defects

    @property
    def reachable(self) -> bool:
        """Its port is one its Service serves: istiod does not check (LookupCluster builds the cluster name
        `outbound|<port>||<host>` whatever the port), and Envoy has no such cluster to call."""
        return (self.provider is not None and self.workload is not None
                and self.workload.port(self.provider.port) is not None)


def resolve(name: str, providers: Sequence[ExtensionProvider], workloads: Sequence[Workload],
            version: IstioVersion) -> ProviderView:
    named = [p for p in providers if p.name == name]
    if not named:
        known = sorted({p.name for p in providers})
        return ProviderView(name, None, None, (f"available providers are {known} but found {name!r}",))
    provider = named[-1]  # processExtensionProvider: a later duplicate overwrites, with its error
    defects: list[str] = []
    if len(named) > 1:
        defects.append(f"extension provider name must be unique, found duplicate: {name}")
    if version.has(EXT_AUTHZ_PROVIDER_NAME_CHECK):
        problem = provider_name_problem(name)
        if problem:
            defects.append(f"invalid provider name {name!r}: {problem}")
    if not 1 <= provider.port <= 65535:
        defects.append(f"port must be in the range [1, 65535], found: {provider.port}")
    workload = lookup_service(provider, workloads)
    if workload is None:
        defects.append(f"could not find service {provider.service} in Istio service registry")
    status = provider.status_on_error
    if status not in (None, "") and not status.lstrip("+-").isdigit():
        defects.append(f"invalid statusOnError {status!r}")
    if provider.kind == "http":
        if provider.path_prefix and not provider.path_prefix.startswith("/"):
            defects.append(f"pathPrefix must begin with `/`, found: {provider.path_prefix!r}")
        for field, values in (("IncludeRequestHeadersInCheck", provider.include_request_headers_in_check),
                              ("HeadersToDownstreamOnDeny", provider.headers_to_downstream_on_deny),
                              ("HeadersToDownstreamOnAllow", provider.headers_to_downstream_on_allow),
                              ("HeadersToUpstreamOnAllow", provider.headers_to_upstream_on_allow)):
            if "*" in values:
                defects.append(f"a single wildcard (\"*\") is not supported, change it to either prefix or "
                               f"suffix match: {field}")
    return ProviderView(name, provider, workload, tuple(defects))


def _header_allowed(name: str, patterns: Sequence[str]) -> bool:
    """What an HTTP check carries: the always-sent headers and those includeRequestHeadersInCheck matches."""
    return name in ALWAYS_SENT or _header_matches(name, patterns)


def _header_matches(name: str, patterns: Sequence[str]) -> bool:
    """generateHeaders: each entry an ignore-case exact, prefix (`x*`) or suffix (`*x`) matcher on the name."""
    for p in patterns:
        kind = pattern_kind(p)
        lp = p.lower()
        if (kind == "prefix" and name.startswith(lp[:-1])) or (kind == "suffix" and name.endswith(lp[1:])) \
                or (kind == "exact" and name == lp):
            return True
    return False


@dataclass(frozen=True)
class Answer:
    verdict: str  # "allow" | "deny" | "error"
    why: str
    # on allow, the headers the request carries on afterwards (RBAC's request.headers sees them): the sample's
    # response headers Envoy copies upstream, overriding the client's (HTTP: those headersToUpstreamOnAllow
    # lists, AuthorizationResponse allowed_upstream_headers; gRPC: every OkHttpResponse header)
    upstream: tuple[tuple[str, str], ...] = ()


def ask(view: ProviderView, probe: Probe, source_principal: str | None, tcp: bool) -> Answer:
    """The provider's answer to the proxy's check for `probe` (`source_principal`: the peer certificate's URI
    SAN, `spiffe://...`, None for plaintext)."""
    provider = view.provider
    assert provider is not None
    if not view.reachable:
        return Answer("error", f"port {provider.port} is not a port of its Service {provider.service}: Envoy has no "
                               f"cluster outbound|{provider.port}||{provider.service.rpartition('/')[2]} to call")
    if provider.kind == "http":
        override = next((v for k, v in provider.include_additional_headers_in_check if k.lower() == CHECK_HEADER),
                        None)
        if override is not None:
            value: str | None = override
            sent = f"includeAdditionalHeadersInCheck sets `{CHECK_HEADER}: {override}`"
        elif _header_allowed(CHECK_HEADER, provider.include_request_headers_in_check):
            # the check is built from CheckRequest's header map, where repeated headers are coalesced into one
            # value joined with `,` (check_request_utils.cc setHttpRequest; ext_authz_http_impl.cc copies the map):
            # `x-ext-authz: allow` twice reaches the server as `allow,allow`, which the sample denies
            repeated = [v for k, v in probe.request.headers if k.lower() == CHECK_HEADER]
            value = ",".join(repeated) if repeated else None
            sent = (f"the request's `{CHECK_HEADER}: {value}` is sent (includeRequestHeadersInCheck)"
                    if value is not None else f"the request has no `{CHECK_HEADER}` header")
        else:
            value = None
            sent = (f"`{CHECK_HEADER}` is not in includeRequestHeadersInCheck, so Envoy does not send it (an HTTP "
                    "check carries only the listed headers plus Authorization, :method, :path, :authority)")
        if value == ALLOWED_VALUE:
            override_value = next((v for k, v in provider.include_additional_headers_in_check
                                   if k.lower() == OVERRIDE_HEADER), None)
            if override_value is None and _header_allowed(OVERRIDE_HEADER, provider.include_request_headers_in_check):
                override_value = next((v for k, v in probe.request.headers if k.lower() == OVERRIDE_HEADER), None)
            answered = ((RESULT_HEADER, "allowed"), (OVERRIDE_HEADER, override_value or ""),
                        (RECEIVED_HEADER, RECEIVED_TEXT))
            upstream = tuple((k, v) for k, v in answered
                             if _header_matches(k, provider.headers_to_upstream_on_allow))
            return Answer("allow", f"{sent}: the sample server allows", upstream)
        return Answer("deny", f"{sent}: the sample server answers 403 `denied by ext_authz for not found header "
                              f"`{CHECK_HEADER}: {ALLOWED_VALUE}` in the request`")
    # gRPC: every request header, and the source principal
    values = [] if tcp else [v for k, v in probe.request.headers if k.lower() == CHECK_HEADER]
    granted = ((RESULT_HEADER, "allowed"), (RECEIVED_HEADER, RECEIVED_TEXT),
               (OVERRIDE_HEADER, OVERRIDE_GRPC_VALUE))
    if values:
        joined = ",".join(values)
        if joined == ALLOWED_VALUE:
            return Answer("allow", f"the gRPC check carries `{CHECK_HEADER}: {joined}`: the sample server allows",
                          () if tcp else granted)
        return Answer("deny", f"the gRPC check carries `{CHECK_HEADER}: {joined}`: the sample server denies (403)")
    suffix = f"/sa/{ALLOWED_SERVICE_ACCOUNT}"
    what = "a TCP connection has no headers" if tcp else f"the request has no `{CHECK_HEADER}` header"
    if source_principal is not None and source_principal.endswith(suffix):
        return Answer("allow", f"{what}; the source principal {source_principal} ends in {suffix}: the sample "
                               "server allows", () if tcp else granted)
    return Answer("deny", f"{what}; the source principal {source_principal or '(none: plaintext)'} does not end in "
                          f"{suffix}: the sample server denies")


def status_on_error(provider: ExtensionProvider) -> int:
    """The status a client gets when the check fails and failOpen is false (Envoy's default 403)."""
    s = provider.status_on_error
    return int(s) if s not in (None, "") and s.lstrip("+-").isdigit() else 403
