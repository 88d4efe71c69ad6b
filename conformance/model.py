"""The scenario's domain types: workloads, policies as written, probes, expectations, steps.

These are plain data, shared by every part of the suite (engine, targets, plugin, reports). They carry
no Istio semantics: interpreting a policy is the engine's job, compiling it to Envoy is the local
mesh's, and the two must stay independent (DESIGN.md §6), so nothing here decides anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from conformance.pilotenv import PilotFlag
from conformance.pilotenv import value as pilot_flag_value

Mode = Literal["sidecar", "ambient", "waypoint", "mixed"]
MODES: tuple[Mode, ...] = ("sidecar", "ambient", "waypoint", "mixed")
DEFAULT_MODES: tuple[Mode, ...] = ("sidecar", "ambient")
# Mode `mixed` (DESIGN.md §10): one mesh in which each namespace runs the data plane `spec.dataplanes` gives
# it; a namespace it does not list runs sidecars. "waypoint" is ambient capture plus its namespace's waypoint.
DataPlane = Literal["sidecar", "ambient", "waypoint"]
DATAPLANES: tuple[DataPlane, ...] = ("sidecar", "ambient", "waypoint")
DEFAULT_DATAPLANE: DataPlane = "sidecar"
Verdict = Literal["allow", "deny"]
Protocol = Literal["HTTP", "TCP"]
WorkloadKind = Literal["app", "ext-authz", "ingress-gateway"]
WORKLOAD_KINDS: tuple[WorkloadKind, ...] = ("app", "ext-authz", "ingress-gateway")
# The label istiod reads on a Service (or its Namespace) to route an ingress gateway's traffic through the
# service's waypoint instead of straight to the pod (serviceregistry/ambient/services.go@1.30 l.271-290).
INGRESS_USE_WAYPOINT = "istio.io/ingress-use-waypoint"
ExtAuthzKind = Literal["http", "grpc"]
Signature = Literal["valid", "invalid"]

# Outcome forms (DESIGN.md §2, §10); the probe classifier produces them, the engine predicts them.
ALLOWED = "allowed"
DENIED_L7 = "denied-l7"  # 403 `RBAC: access denied` from a sidecar's or waypoint's RBAC filter
DENIED_L4 = "denied-l4"  # connection reset / closed: ztunnel, a TCP chain, STRICT mTLS
DENIED_UPSTREAM = "denied-upstream"  # 503 from a proxy whose upstream (ztunnel) refused
# 401 from the proxy's JWT filter (envoy.filters.http.jwt_authn: invalid, expired, unknown-issuer or badly
# signed token), or its 403 `Audiences in Jwt are not allowed`: RequestAuthentication rejected the token.
DENIED_AUTHN = "denied-authn"
# The external authorizer of a CUSTOM policy said no (its status and body), or could not be reached and
# failOpen is false (statusOnError, default 403, empty body): envoy.filters.http.ext_authz denied.
DENIED_CUSTOM = "denied-custom"
TIMEOUT = "timeout"
ERROR = "error"
DENIAL_FORMS = (DENIED_L7, DENIED_L4, DENIED_UPSTREAM, DENIED_AUTHN, DENIED_CUSTOM)

# The DNS domain of the Services a target creates (`<name>.<namespace>.svc.<domain>`): kind's and the
# suite's clusters use Kubernetes' default. Not the mesh trust domain, which only names identities.
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class ExtensionProvider:
    """One `meshConfig.extensionProviders` entry of kind envoyExtAuthzHttp or envoyExtAuthzGrpc.

    Fields as istio/api mesh/v1alpha1/config.proto (EnvoyExternalAuthorizationHttpProvider /
    ...GrpcProvider) names them, in snake case, each as written (istiod interprets them: a CUSTOM policy
    names the provider by `name`). `None` or empty means the field is unset and Istio's default applies;
    the fields only the HTTP kind has are empty for a gRPC provider (the loader refuses them there).
    """

    name: str  # what a CUSTOM AuthorizationPolicy's provider.name refers to
    kind: ExtAuthzKind  # "http": envoyExtAuthzHttp; "grpc": envoyExtAuthzGrpc
    service: str  # `[<namespace>/]<hostname>`, e.g. ext-authz.ext-authz.svc.cluster.local
    port: int  # the service port the proxies call
    timeout: str | None = None  # protobuf Duration as written ("0.5s"); unset: 600s (extauthz.go timeoutOrDefault)
    fail_open: bool = False  # failOpen: let the request through when the provider cannot be reached or answers 5xx
    status_on_error: str | None = None  # statusOnError ("503"); unset: Envoy's default 403
    include_request_headers_in_check: tuple[str, ...] = ()  # http: headers sent to the provider (exact, x*, *x)
    headers_to_upstream_on_allow: tuple[str, ...] = ()  # http: provider headers added upstream on allow
    headers_to_downstream_on_deny: tuple[str, ...] = ()  # http: provider headers returned on deny (unset: all)
    headers_to_downstream_on_allow: tuple[str, ...] = ()  # http: provider headers returned on allow
    include_additional_headers_in_check: tuple[tuple[str, str], ...] = ()  # http: fixed headers added to the check
    path_prefix: str | None = None  # http: prefix of the check request's path ("/check")

    def mesh_config_entry(self, name: str | None = None, service: str | None = None) -> dict[str, Any]:
        """This provider back in meshConfig's own form (`{name, envoyExtAuthzHttp|envoyExtAuthzGrpc: {...}}`, the
        field names of istio/api mesh/v1alpha1 config.proto), unset fields left out so istiod's defaults apply;
        `name` and `service` replace the scenario's (a cluster session registers its own, meshconfig.py)."""
        config: dict[str, Any] = {"service": self.service if service is None else service, "port": self.port}
        if self.timeout is not None:
            config["timeout"] = self.timeout
        if self.fail_open:
            config["failOpen"] = True
        if self.status_on_error is not None:
            config["statusOnError"] = self.status_on_error
        if self.kind == "http":
            for key, value in (("includeRequestHeadersInCheck", self.include_request_headers_in_check),
                               ("headersToUpstreamOnAllow", self.headers_to_upstream_on_allow),
                               ("headersToDownstreamOnDeny", self.headers_to_downstream_on_deny),
                               ("headersToDownstreamOnAllow", self.headers_to_downstream_on_allow)):
                if value:
                    config[key] = list(value)
            if self.include_additional_headers_in_check:
                config["includeAdditionalHeadersInCheck"] = dict(self.include_additional_headers_in_check)
            if self.path_prefix:
                config["pathPrefix"] = self.path_prefix
        kind = "envoyExtAuthzHttp" if self.kind == "http" else "envoyExtAuthzGrpc"
        return {"name": self.name if name is None else name, kind: config}

    def service_host(self) -> tuple[str | None, str]:
        """`service` split as LookupCluster (pilot/pkg/model/telemetry_logging.go@1.30.3) splits it:
        (namespace or None, hostname)."""
        namespace, sep, host = self.service.partition("/")
        return (namespace, host) if sep else (None, self.service)


@dataclass(frozen=True)
class MeshConfig:
    """The mesh-wide settings a scenario may change; every default is Istio's."""

    root_namespace: str = "istio-system"
    trust_domain: str = "cluster.local"
    extension_providers: tuple[ExtensionProvider, ...] = ()  # meshConfig.extensionProviders (ext_authz kinds)
    # `mesh.pilotEnv`: istiod's environment (feature flags, pilotenv.py), as written; absent flags take Istio's default
    pilot_env: tuple[tuple[str, str], ...] = ()
    # `mesh.numTrustedProxies`: meshConfig.defaultConfig.gatewayTopology.numTrustedProxies, which istiod writes
    # into every gateway HCM as xff_num_trusted_hops (networking/core/gateway.go@1.30 l.720-732); default 0
    num_trusted_proxies: int = 0

    def pilot_flag(self, flag: PilotFlag) -> bool:
        """The value istiod runs `flag` with for this scenario (its `pilotEnv` entry, else Istio's default)."""
        return pilot_flag_value(self.pilot_env, flag)

    def provider(self, name: str) -> ExtensionProvider | None:
        """The extension provider named `name`, or None: a CUSTOM policy may name one that does not exist
        (Istio accepts the policy and denies the requests its rules match)."""
        return next((p for p in self.extension_providers if p.name == name), None)


@dataclass(frozen=True)
class Issuer:
    """A JWT issuer the suite plays: a signing key made per run, its JWKS, the tokens probes carry.

    `name` is the scenario's handle for it (`request.jwt.issuer`, `${jwks:<name>}`); `issuer` is the `iss`
    claim its tokens carry, what a RequestAuthentication jwtRule's `issuer` and a request principal's
    `<iss>/<sub>` match.
    """

    name: str
    issuer: str


@dataclass(frozen=True)
class Port:
    number: int
    protocol: Protocol = "HTTP"


@dataclass(frozen=True)
class GatewayRoute:
    """One Host route of an ingress gateway (`routes: [{host, to: ns/name:port}]`): what a Gateway server plus
    a VirtualService give istiod, one RDS vhost per host (gateway.go@1.30 l.488-511)."""

    host: str  # lower case; `*.suffix` or `*` wildcards as an Envoy vhost domain
    to: str  # the destination workload's "ns/name"
    port: int  # its (Service) port

    @property
    def canary_host(self) -> str:
        """A Host this route's vhost domain takes (for the targets' canaries): `*.b.com` -> `canary.b.com`, `*` ->
        `canary.example` (a route's host is exact, `*.suffix` or `*`, which Envoy matches by suffix: RouteMatcher
        findVirtualHost; scenario validation allows nothing else, as Istio's for Gateway hosts)."""
        if self.host == "*":
            return "canary.example"
        return "canary" + self.host[1:] if self.host.startswith("*") else self.host


@dataclass(frozen=True)
class Workload:
    """A pod and its Service. Identity: `<trustDomain>/ns/<namespace>/sa/<serviceAccount>`."""

    name: str
    namespace: str
    service_account: str
    labels: Mapping[str, str]
    ports: tuple[Port, ...] = ()
    in_mesh: bool = True
    # "app": the suite's echo app (answers `<ns>/<name> responding`). "ext-authz": the suite's external
    # authorizer, with the behaviour of Istio's samples/extauthz: it allows a check iff the request carries
    # `x-ext-authz: allow`, answering 403 and `denied by ext_authz for not found header ...` otherwise, and
    # logs each decision. Its ports speak the ext_authz protocol of the providers naming them (gRPC for an
    # envoyExtAuthzGrpc provider's port, HTTP for every other); it is no probe source or destination.
    kind: WorkloadKind = "app"
    # kind ingress-gateway: an Istio ingress gateway (its own Envoy, its identity, HTTP ports), forwarding by Host
    routes: tuple[GatewayRoute, ...] = ()

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def identity(self, trust_domain: str) -> str:
        return f"{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)

    @property
    def is_gateway(self) -> bool:
        return self.kind == "ingress-gateway"

    def route_for(self, authority: str) -> GatewayRoute | None:
        """The route a gateway picks for a request's Host, as Envoy's RDS does with istiod's settings: the port is
        ignored (ignore_port_in_host_matching, gateway.go@1.30 l.572), case too; an exact domain wins over the
        longest `*.suffix`, which wins over `*` (Envoy RouteMatcher::findVirtualHost)."""
        host = authority.lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1] if "]" in host else host
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        exact = next((r for r in self.routes if r.host == host), None)
        if exact is not None:
            return exact
        suffixes = sorted((r for r in self.routes if r.host.startswith("*") and r.host != "*"
                           and host.endswith(r.host[1:]) and len(host) > len(r.host) - 1),
                          key=lambda r: -len(r.host))
        if suffixes:
            return suffixes[0]
        return next((r for r in self.routes if r.host == "*"), None)

    def __hash__(self) -> int:
        return hash(self.ref)


@dataclass(frozen=True)
class Waypoint:
    """A waypoint proxy serving every Service of its namespace; its service account is its name."""

    name: str
    namespace: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_account(self) -> str:
        return self.name

    def identity(self, trust_domain: str) -> str:
        return f"{trust_domain}/ns/{self.namespace}/sa/{self.name}"


@dataclass(frozen=True)
class Manifest:
    """One Istio policy document exactly as the user wrote it (before address placeholders are filled).

    `origin` says where it came from, for error messages: the scenario step, or a referenced file and
    the document's index in it.
    """

    kind: str
    api_version: str
    name: str
    namespace: str
    body: Mapping[str, Any]
    origin: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def annotations(self) -> Mapping[str, str]:
        meta = self.body.get("metadata") or {}
        ann = meta.get("annotations") if isinstance(meta, Mapping) else None
        return ann if isinstance(ann, Mapping) else {}

    @property
    def jwks_issuers(self) -> tuple[str, ...]:
        """The issuer names of the `${jwks:<name>}` placeholders in this document, in order, each once."""
        return tuple(dict.fromkeys(m.group(1) for m in JWKS_PLACEHOLDER.finditer(_text_of(self.body))))

    def rendered(self, addresses: Mapping[str, str], jwks: Mapping[str, str] | None = None) -> Manifest:
        """This manifest with `${ip:ns/name}` placeholders replaced by the workloads' addresses, and, when
        `jwks` (issuer name -> JWKS JSON) is given, `${jwks:<name>}` placeholders by those JWKS.

        The JWKS exist only once a target has made the issuers' keys, so the engine, which needs no key,
        renders without `jwks` and reads the placeholders themselves (`jwks_issuers`, `JWKS_PLACEHOLDER`).
        """
        body = fill_addresses(self.body, addresses)
        if jwks is not None:
            body = fill_jwks(body, jwks)
        return Manifest(self.kind, self.api_version, self.name, self.namespace, body, self.origin)


ADDRESS_PLACEHOLDER = re.compile(r"\$\{ip:([a-z0-9.-]+/[a-z0-9.-]+)\}")
# `${jwks:<issuer name>}`: the JWKS (public keys) of one of the scenario's issuers, as a RequestAuthentication
# jwtRule's whole `jwks` value. The loader checks the name and the place; a target fills it in (fill_jwks).
JWKS_PLACEHOLDER = re.compile(r"\$\{jwks:([a-z0-9]([-a-z0-9]*[a-z0-9])?)\}")


def fill_jwks(value: Any, jwks: Mapping[str, str]) -> Any:
    """Replace every `${jwks:<name>}` in strings nested in `value` with that issuer's JWKS (JSON text);
    names missing from `jwks` are left as they are."""
    if isinstance(value, str):
        return JWKS_PLACEHOLDER.sub(lambda m: jwks.get(m.group(1), m.group(0)), value)
    if isinstance(value, Mapping):
        return {k: fill_jwks(v, jwks) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_jwks(v, jwks) for v in value]
    return value


def _text_of(value: Any) -> str:
    """Every string nested in `value`, joined (to find placeholders)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(_text_of(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    return ""


def fill_addresses(value: Any, addresses: Mapping[str, str]) -> Any:
    """Replace every `${ip:ns/name}` in strings nested in `value` with that workload's address.

    Pod and loopback addresses are only known once a target has placed the workloads, so a scenario
    names them symbolically; unknown names are left as they are (the loader reports them).
    """
    if isinstance(value, str):
        return ADDRESS_PLACEHOLDER.sub(lambda m: addresses.get(m.group(1), m.group(0)), value)
    if isinstance(value, Mapping):
        return {k: fill_addresses(v, addresses) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_addresses(v, addresses) for v in value]
    return value


@dataclass(frozen=True)
class TokenLocation:
    """Where a probe carries its JWT: a request header (its value `prefix` + token) or a query parameter.

    Exactly one of `header` and `param` is set. The default is Envoy's and Istio's default location,
    `Authorization: Bearer <token>`; the others are where a jwtRule's fromHeaders / fromParams look.
    """

    header: str | None = "Authorization"
    prefix: str = "Bearer "  # only with `header`; written `in: {header: NAME}` it defaults to "" (fromHeaders)
    param: str | None = None  # `?<param>=<token>` appended to the request path

    def describe(self) -> str:
        if self.param is not None:
            return f"?{self.param}="
        return f"{self.header}: {self.prefix}" if self.prefix else f"{self.header}:"


DEFAULT_TOKEN_LOCATION = TokenLocation()

# The JWT claims `JwtSpec` sets through its own fields; `claims` may not set them.
RESERVED_CLAIMS = ("iss", "sub", "aud", "azp", "exp")


@dataclass(frozen=True)
class JwtSpec:
    """The JWT a probe carries, minted per probe by the target with the issuer's key (DESIGN.md §10).

    Either a token made from claims (`issuer` and the rest), or `raw`, a literal string sent as the token
    as it is (`deadbeef`, `invalidToken`: Istio's malformed-token cases), never both. A claim left None is
    absent from the token (no `sub`, no `aud`); the target adds `iat` and an `exp` (in the past, beyond
    Envoy's 60 s clock skew, when `expired`).
    """

    issuer: str | None = None  # the name of one of the scenario's `issuers` (its key signs, its `issuer` is iss)
    sub: str | None = None
    aud: str | tuple[str, ...] | None = None  # a string, a list (kept apart: the token says which), or absent
    azp: str | None = None  # the presenter (`request.auth.presenter`)
    claims_json: str = "{}"  # further claims, canonical JSON (sorted keys) of a mapping: nested maps and lists
    expired: bool = False
    signature: Signature = "valid"  # "invalid": signed by a key the issuer's JWKS does not hold
    location: TokenLocation = DEFAULT_TOKEN_LOCATION  # `in`
    raw: str | None = None  # a literal token; exclusive with issuer, sub, aud, azp, claims, expired, signature

    @staticmethod
    def canonical_claims(claims: Mapping[str, Any]) -> str:
        """`claims_json` for a mapping of claims (what the loader stores)."""
        return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def claims(self) -> dict[str, Any]:
        """The further claims as a fresh JSON value (nested dicts and lists)."""
        value: dict[str, Any] = json.loads(self.claims_json)
        return value

    def payload(self) -> dict[str, Any]:
        """The claims this spec writes: `claims` plus sub, aud and azp when set. A target adds `iss` (the
        issuer's `issuer`), `iat` and `exp` when it mints; meaningless for a `raw` token."""
        out = dict(self.claims)
        for name, value in (("sub", self.sub), ("azp", self.azp)):
            if value is not None:
                out[name] = value
        if self.aud is not None:
            out["aud"] = self.aud if isinstance(self.aud, str) else list(self.aud)
        return out

    @property
    def canonical(self) -> str:
        """One deterministic string for the whole spec: the probe's truth-table key part, JSON-safe."""
        return json.dumps({
            "issuer": self.issuer, "sub": self.sub,
            "aud": self.aud if self.aud is None or isinstance(self.aud, str) else list(self.aud),
            "azp": self.azp, "claims": self.claims, "expired": self.expired, "signature": self.signature,
            "in": [self.location.header, self.location.prefix, self.location.param], "raw": self.raw,
        }, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def describe(self) -> str:
        """A short label: `jwt[example sub=alice aud=[a,b] expired]`, `jwt[raw 'deadbeef']`."""
        parts: list[str] = []
        if self.raw is not None:
            parts.append(f"raw {self.raw!r}")
        else:
            parts.append(str(self.issuer))
            if self.sub is not None:
                parts.append(f"sub={self.sub}")
            if self.aud is not None:
                parts.append(f"aud={self.aud}" if isinstance(self.aud, str) else f"aud=[{','.join(self.aud)}]")
            if self.azp is not None:
                parts.append(f"azp={self.azp}")
            if self.claims_json != "{}":
                parts.append(f"claims={self.claims_json}")
            if self.expired:
                parts.append("expired")
            if self.signature != "valid":
                parts.append(f"signature={self.signature}")
        if self.location != DEFAULT_TOKEN_LOCATION:
            parts.append(f"in {self.location.describe()}")
        return f"jwt[{' '.join(parts)}]"


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    jwt: JwtSpec | None = None  # the token the probe carries, if any (the target mints it and places it)

    def header(self, name: str) -> str | None:
        """The value of a header (names are case-insensitive); repeated headers joined with commas.

        Only the scenario's `headers`: a token `jwt` puts in a header is minted by the target at run time.
        """
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class Probe:
    """One request from a source workload to a destination workload's port."""

    source: Workload
    destination: Workload
    port: Port
    request: Request = field(default_factory=Request)

    @property
    def authority(self) -> str:
        """The Host a client sends for `http://<name>.<namespace>:<port>` (curl omits port 80)."""
        host = self.request.header("host")
        if host is not None:
            return host
        base = f"{self.destination.name}.{self.destination.namespace}"
        return base if self.port.number == 80 else f"{base}:{self.port.number}"

    @property
    def key(self) -> tuple[str, str, int, str, str, tuple[tuple[str, str], ...], str | None]:
        """The truth-table key: the whole probe, not only source and destination (its token included)."""
        r = self.request
        return (self.source.ref, self.destination.ref, self.port.number, r.method, r.path, r.headers,
                r.jwt.canonical if r.jwt is not None else None)

    def describe(self) -> str:
        hdrs = "".join(f" -H '{k}: {v}'" for k, v in self.request.headers)
        jwt = f" {self.request.jwt.describe()}" if self.request.jwt is not None else ""
        return (
            f"{self.source.ref} → {self.destination.ref}:{self.port.number} "
            f"{self.request.method} {self.request.path}{hdrs}{jwt}"
        )


@dataclass(frozen=True)
class Expectation:
    """A probe and its expected verdict per mode; `None` means: take the engine's prediction (auto)."""

    index: int
    probe: Probe
    verdicts: Mapping[Mode, Verdict | None]

    def verdict(self, mode: Mode) -> Verdict | None:
        return self.verdicts.get(mode)


@dataclass(frozen=True)
class Step:
    name: str
    policies: tuple[Manifest, ...]
    expectations: tuple[Expectation, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    modes: tuple[Mode, ...]
    mesh: MeshConfig
    workloads: tuple[Workload, ...]
    waypoints: tuple[Waypoint, ...]
    steps: tuple[Step, ...]
    waypoints_explicit: bool = False
    issuers: tuple[Issuer, ...] = ()  # the JWT issuers the suite plays (`spec.issuers`)
    # `spec.dataplanes` (mode mixed only): namespace -> its data plane; unlisted namespaces run sidecars
    dataplanes: Mapping[str, DataPlane] = field(default_factory=dict)

    def dataplane(self, namespace: str) -> DataPlane:
        """The data plane of `namespace` in mode mixed (`spec.dataplanes`, default sidecar)."""
        return self.dataplanes.get(namespace, DEFAULT_DATAPLANE)

    def workload(self, ref: str) -> Workload | None:
        return next((w for w in self.workloads if w.ref == ref), None)

    def issuer(self, name: str) -> Issuer | None:
        return next((i for i in self.issuers if i.name == name), None)

    def provider_workload(self, provider: ExtensionProvider) -> Workload | None:
        """The workload whose Service an extension provider's `service` names, as istiod finds it
        (LookupCluster, pilot/pkg/model/telemetry_logging.go@1.30.3): `<ns>/<host>` or `<host>`, the host
        being the Service's `<name>.<namespace>.svc.cluster.local`, exactly; None when it names none of the
        scenario's (istiod then builds a deny for the CUSTOM rules naming the provider)."""
        namespace, host = provider.service_host()
        return next((w for w in self.workloads
                     if f"{w.name}.{w.namespace}.svc.{CLUSTER_DOMAIN}" == host
                     and (namespace is None or namespace == w.namespace)), None)

    def grpc_check_ports(self) -> frozenset[tuple[str, int]]:
        """(workload ref, port) of the ext-authz ports a gRPC provider calls (every other ext-authz port speaks the
        HTTP check protocol): the ext_authz protocol of a port is the provider's that names it."""
        out = set()
        for provider in self.mesh.extension_providers:
            target = self.provider_workload(provider)
            if provider.kind == "grpc" and target is not None and target.port(provider.port) is not None:
                out.add((target.ref, provider.port))
        return frozenset(out)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.namespace for w in self.workloads))


def default_addresses(scenario: Scenario) -> dict[str, str]:
    """Synthetic addresses for predicting without a target: one per workload and waypoint.

    They come from TEST-NET-2 (198.51.100.0/24, RFC 5737) and the ones after it, so they can never be
    mistaken for a real target's addresses; a target passes its own.
    """
    refs = [w.ref for w in scenario.workloads] + [w.ref for w in scenario.waypoints]
    return {ref: f"198.51.{100 + i // 250}.{i % 250 + 1}" for i, ref in enumerate(refs)}
