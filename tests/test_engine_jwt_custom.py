"""The verdict engine on JWT (RequestAuthentication, request principals, claims) and CUSTOM (ext_authz), one test per
rule, each naming the Istio source or test it encodes.

Citations: code paths are istio/istio@1.30.3 unless marked Envoy (source/extensions/filters/http/jwt_authn,
ext_authz) or jwt_verify_lib; "jwt_test.go" is tests/integration/security/jwt_test.go, "authz_test.go"
tests/integration/security/authz_test.go, "TestL7JWT" tests/integration/ambient/baseline_test.go; tokens T1/T2/T3/TE
are tests/common/jwt/jwt_token.go's (issuer-1/sub-1 groups [group-1], issuer-2/sub-2 groups [group-2], issuer-3,
expired issuer-1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.engine import Decision, State, decide, explain, state_for_step
from conformance.engine.decide import (
    ALLOW_UNMATCHED,
    DENY_MATCHED,
    EXT_AUTHZ_DENIED,
    EXT_AUTHZ_ERROR,
    JWT_REJECTED,
)
from conformance.engine.jwt import parse_token, sanitize_audience, websafe_base64_unescape
from conformance.engine.proxy import claim_path
from conformance.errors import NotModelled
from conformance.model import (
    ALLOWED,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    Expectation,
    ExtensionProvider,
    Issuer,
    JwtSpec,
    MeshConfig,
    Mode,
    Port,
    Probe,
    Request,
    Scenario,
    Step,
    TokenLocation,
    Waypoint,
    Workload,
)
from conformance.versions import IstioVersion
from tests.engine_world import ADDRESSES, BACKEND, FRONTEND, OUTSIDER, ROGUE, WORKLOADS, ap, policies, wl

V130 = IstioVersion.parse("1.30")
V129 = IstioVersion.parse("1.29")
V127 = IstioVersion.parse("1.27")

ISS1, ISS2, ISS3 = "test-issuer-1@istio.io", "test-issuer-2@istio.io", "test-issuer-3@istio.io"
ISSUERS = (Issuer("one", ISS1), Issuer("two", ISS2), Issuer("three", ISS3))
EXT = Workload("ext-authz", "ext-authz", "ext-authz", {"app": "ext-authz"}, (Port(8000), Port(9000)),
               kind="ext-authz")
SA_A = wl("default/a", sa="a")  # the service account the sample gRPC server allows without the header
WORLD = (*WORKLOADS, EXT, SA_A)
ALL_ADDRESSES = {**ADDRESSES, EXT.ref: "10.0.0.50", SA_A.ref: "10.0.0.51"}
WAYPOINT = Waypoint("waypoint", "default")
HTTP_PROVIDER = ExtensionProvider("ext-authz-http", "http", "ext-authz.ext-authz.svc.cluster.local", 8000,
                                  include_request_headers_in_check=("x-ext-authz",))
GRPC_PROVIDER = ExtensionProvider("ext-authz-grpc", "grpc", "ext-authz.ext-authz.svc.cluster.local", 9000)


# -- a small world ------------------------------------------------------------------------------------------------


def state(text: str = "", *, providers: tuple[ExtensionProvider, ...] = (HTTP_PROVIDER, GRPC_PROVIDER),
          waypoints: tuple[Waypoint, ...] = ()) -> State:
    return State(mesh=MeshConfig(extension_providers=providers), workloads=WORLD, waypoints=waypoints,
                 policies=policies(text), addresses=ALL_ADDRESSES, issuers=ISSUERS)


def ra(name: str, rules: list[dict[str, Any]], ns: str = "default", selector: dict[str, str] | None = None,
       target_refs: list[dict[str, str]] | None = None) -> str:
    spec: dict[str, Any] = {"jwtRules": rules}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if target_refs:
        spec["targetRefs"] = target_refs
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec}) + "---\n"


def rule(issuer: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A jwtRule whose inline JWKS is the suite's issuer `name` (by default the one whose iss is `issuer`)."""
    name = name or next(i.name for i in ISSUERS if i.issuer == issuer)
    return {"issuer": issuer, "jwks": f"${{jwks:{name}}}", **extra}


def tok(issuer: str = "one", sub: str | None = "sub-1", *, aud: str | tuple[str, ...] | None = None,
        azp: str | None = None, claims: dict[str, Any] | None = None, expired: bool = False,
        signature: str = "valid", location: TokenLocation | None = None) -> JwtSpec:
    return JwtSpec(issuer=issuer, sub=sub, aud=aud, azp=azp, claims_json=JwtSpec.canonical_claims(claims or {}),
                   expired=expired, signature=signature,  # type: ignore[arg-type]
                   location=location or TokenLocation())


def raw(text: str, location: TokenLocation | None = None) -> JwtSpec:
    return JwtSpec(raw=text, location=location or TokenLocation())


T1 = tok("one", "sub-1", claims={"groups": ["group-1"]})
T2 = tok("two", "sub-2", claims={"groups": ["group-2"]})
T3 = tok("three", "sub-1")
TE = tok("one", "sub-1", expired=True)


def probe(src: Workload = FRONTEND, dst: Workload = BACKEND, port: int = 8080, *, method: str = "GET",
          path: str = "/", headers: dict[str, str] | None = None, jwt: JwtSpec | None = None) -> Probe:
    p = dst.port(port)
    assert p is not None
    return Probe(src, dst, p, Request(method, path, tuple((headers or {}).items()), jwt))


def run(s: State, p: Probe, mode: Mode = "sidecar", version: IstioVersion = V130) -> Decision:
    return explain(s, p, mode, version)


def outcome(s: State, p: Probe, mode: Mode = "sidecar", version: IstioVersion = V130) -> str:
    return decide(s, p, mode, version).outcome


def custom(name: str, provider: str, rules: list[dict[str, Any]] | None = None, ns: str = "default",
           **spec: Any) -> str:
    body: dict[str, Any] = {"action": "CUSTOM", "provider": {"name": provider}, **spec}
    if rules is not None:
        body["rules"] = rules
    return ap(name, body, ns=ns)


def to_paths(*paths: str) -> list[dict[str, Any]]:
    return [{"to": [{"operation": {"paths": list(paths)}}]}]


GATEWAY_REF = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}]


# -- RequestAuthentication: what the JWT filter does (policy_applier.go convertToEnvoyJwtConfig; Envoy jwt_authn) --

AUTHN_ONLY = ra("jwt", [rule(ISS1), rule(ISS2)])


def test_authn_only_missing_token_passes_jwt_test_authn_only() -> None:
    d = run(state(AUTHN_ONLY), probe())
    assert (d.verdict, d.outcome) == ("allow", ALLOWED)
    assert any("allow_missing" in line for line in d.trace)


def test_authn_only_valid_token_passes_jwt_test_authn_only() -> None:
    assert run(state(AUTHN_ONLY), probe(jwt=T1)).verdict == "allow"
    assert run(state(AUTHN_ONLY), probe(jwt=T2)).verdict == "allow"


def test_authn_only_expired_token_is_401_jwt_test_authn_only() -> None:
    d = run(state(AUTHN_ONLY), probe(jwt=TE))
    assert (d.verdict, d.outcome, d.reason, d.detail, d.policy) == (
        "deny", DENIED_AUTHN, JWT_REJECTED, "Jwt is expired", "default/jwt")
    assert any("401 `Jwt is expired`" in line for line in d.trace)


def test_unknown_issuer_is_401_not_configured_test_l7_jwt_issuer_3() -> None:
    d = run(state(AUTHN_ONLY), probe(jwt=T3))
    assert (d.outcome, d.detail) == (DENIED_AUTHN, "Jwt issuer is not configured")


def test_bad_signature_is_jwt_verification_fails_authenticator_verify_key() -> None:
    d = run(state(AUTHN_ONLY), probe(jwt=tok(signature="invalid")))
    assert (d.outcome, d.detail) == (DENIED_AUTHN, "Jwt verification fails")


@pytest.mark.parametrize("text, message", [
    # jwt_verify_lib status.cc as Envoy has it since envoyproxy/envoy#11309 (2020): research note §1.3 quotes the
    # older "Jwt is not in the form of Header.Payload.Signature" and "...Base64url input or an invalid JSON"
    ("deadbeef", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("invalidToken", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("a..b", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("some.invalid.token", "Jwt header is an invalid JSON"),  # `some` is base64url; its bytes are not JSON
    ("so*e.invalid.token", "Jwt header is an invalid Base64url encoded"),
    ("eyJ0eXAiOiJKV1QifQ.e30.c2ln", "Jwt header [alg] field is required and must be a string"),
    ("eyJhbGciOiJub25lIn0.e30.c2ln", "Jwt header [alg] is not supported"),
    ("eyJhbGciOiJSUzI1NiJ9.e30xx.c2ln", "Jwt payload is an invalid Base64url encoded"),
    ("eyJhbGciOiJSUzI1NiJ9.e30x.c2ln", "Jwt payload is an invalid JSON"),
])
def test_malformed_raw_tokens_jwt_verify_lib_parse_from_string(text: str, message: str) -> None:
    d = run(state(AUTHN_ONLY), probe(jwt=raw(text)))
    assert (d.verdict, d.outcome, d.detail) == ("deny", DENIED_AUTHN, message)


def test_a_parsable_literal_token_is_rejected_in_unknown_words() -> None:
    # signed by no key the run makes: rejected; the wording depends on the keys' kid (verify.cc)
    parsed = "eyJhbGciOiJSUzI1NiJ9." + "eyJpc3MiOiJ0ZXN0LWlzc3Vlci0xQGlzdGlvLmlvIn0" + ".c2ln"
    assert parse_token(parsed)[0].ok
    d = run(state(AUTHN_ONLY), probe(jwt=raw(parsed)))
    assert (d.outcome, d.detail) == (DENIED_AUTHN, None)


def test_absl_websafe_base64_padding_and_whitespace() -> None:
    assert websafe_base64_unescape("e30") == b"{}"
    assert websafe_base64_unescape("e30=") == b"{}"
    assert websafe_base64_unescape("e30==") is None  # wrong padding count
    assert websafe_base64_unescape("e") is None  # 6 bits left over
    assert websafe_base64_unescape("e3 0") == b"{}"  # whitespace skipped
    assert websafe_base64_unescape("e3+0") is None  # not the URL-safe alphabet


def test_invalid_token_is_rejected_before_rbac_even_on_an_open_path() -> None:
    # the JWT filter runs before RBAC (listener_builder.go: authn filters before authz), research note §1.1
    s = state(AUTHN_ONLY + ap("open", {"rules": [{"to": [{"operation": {"paths": ["/healthz"]}}]}]}))
    assert run(s, probe(path="/healthz")).verdict == "allow"
    assert run(s, probe(path="/healthz", jwt=TE)).outcome == DENIED_AUTHN


AUTHN_AUTHZ = AUTHN_ONLY + ap("require", {"rules": [{"from": [{"source": {"requestPrincipals": [f"{ISS1}/sub-1"]}}],
                                                      "to": [{"operation": {"methods": ["GET"]}}]}]})


@pytest.mark.parametrize("jwt, result", [(T1, ALLOWED), (TE, DENIED_AUTHN), (None, DENIED_L7), (T2, DENIED_L7)])
def test_authn_authz_jwt_test_authn_authz(jwt: JwtSpec | None, result: str) -> None:
    d = run(state(AUTHN_AUTHZ), probe(jwt=jwt))
    assert d.outcome == result
    if result == DENIED_L7:
        assert d.reason == ALLOW_UNMATCHED


def test_audiences_per_rule_jwt_test_aud() -> None:
    # issuer-1 with audiences [foo]; issuer-2 in two RequestAuthentications, one without audiences
    s = state(ra("aud1", [rule(ISS1, audiences=["foo"])]) + ra("aud2", [rule(ISS2, audiences=["bar"])])
              + ra("noaud2", [rule(ISS2)]))
    d = run(s, probe(jwt=tok("one")))
    assert (d.outcome, d.detail) == (DENIED_AUTHN, "Audiences in Jwt are not allowed")  # a 403, not a 401
    assert run(s, probe(jwt=tok("one", aud="foo"))).verdict == "allow"
    assert run(s, probe(jwt=tok("one", aud=("x", "foo")))).verdict == "allow"
    assert run(s, probe(jwt=tok("two"))).verdict == "allow"  # the rule without audiences accepts it
    assert run(s, probe(jwt=tok("two", aud="zzz"))).verdict == "allow"


def test_audience_sanitized_scheme_and_slash_check_audience_cc() -> None:
    assert sanitize_audience("https://foo.com/") == "foo.com"
    s = state(ra("aud", [rule(ISS1, audiences=["http://foo.com"])]))
    assert run(s, probe(jwt=tok("one", aud="https://foo.com/"))).verdict == "allow"


def test_check_order_expired_before_audience_authenticator_start_verify() -> None:
    s = state(ra("aud", [rule(ISS1, audiences=["foo"])]))
    assert run(s, probe(jwt=tok("one", expired=True))).detail == "Jwt is expired"
    assert run(s, probe(jwt=tok("one", signature="invalid"))).detail == "Audiences in Jwt are not allowed"


HEADERS_PARAMS = ra("jwt", [rule(ISS1, fromHeaders=[{"name": "x-jwt-token", "prefix": "Value "},
                                                    {"name": "auth-token", "prefix": "Token "}],
                                 fromParams=["token", "secondary_token"])]) \
    + ap("require", {"rules": [{"from": [{"source": {"requestPrincipals": [f"{ISS1}/sub-1"]}}]}]})


@pytest.mark.parametrize("location, result", [
    (TokenLocation(param="token"), ALLOWED),
    (TokenLocation(param="secondary_token"), ALLOWED),
    (TokenLocation(header="x-jwt-token", prefix="Value "), ALLOWED),
    (TokenLocation(header="Auth-Token", prefix="Token "), ALLOWED),
    (TokenLocation(param="token_value"), DENIED_L7),  # not a location: the token is not even extracted
    (TokenLocation(header="Auth-Header-Param", prefix="Bearer "), DENIED_L7),
    (TokenLocation(), DENIED_L7),  # fromHeaders / fromParams replace the default Authorization location
])
def test_token_locations_jwt_test_headers_params(location: TokenLocation, result: str) -> None:
    assert outcome(state(HEADERS_PARAMS), probe(jwt=tok("one", location=location))) == result


def test_header_prefix_mismatch_is_no_token_extractor_cc() -> None:
    # the prefix is not in the value: this location yields nothing, so the token counts as missing
    s = state(HEADERS_PARAMS)
    assert outcome(s, probe(jwt=tok("one", location=TokenLocation(header="x-jwt-token", prefix="Bearer ")))) \
        == DENIED_L7


def test_every_extracted_token_must_be_valid_jwt_test_headers_params() -> None:
    # ?token=T1&secondary_token=<bad>: 401 (authenticator.cc: all tokens must verify)
    s = state(HEADERS_PARAMS)
    t1 = tok("one", location=TokenLocation(param="token"))
    d = run(s, probe(path="/?secondary_token=some.invalid.token", jwt=t1))
    assert (d.outcome, d.detail) == (DENIED_AUTHN, "Jwt header is an invalid JSON")


def test_token_header_from_scenario_headers_is_extracted_too() -> None:
    s = state(AUTHN_ONLY)
    d = run(s, probe(headers={"Authorization": "Bearer deadbeef"}))
    assert d.detail == "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    assert outcome(s, probe(headers={"Authorization": "Basic dXNlcjpwYXNz"})) == ALLOWED  # no `Bearer `


def test_cors_preflight_bypasses_jwt_jwt_test_authn_only_options() -> None:
    s = state(AUTHN_ONLY)
    pre = {"Origin": "https://example.com", "Access-Control-Request-Method": "GET"}
    assert outcome(s, probe(method="OPTIONS", headers=pre, jwt=TE)) == ALLOWED
    assert outcome(s, probe(method="OPTIONS", headers={"Origin": "https://example.com"}, jwt=TE)) == DENIED_AUTHN


def test_token_removed_after_validation_unless_forwarded_authenticator_handle_good_jwt() -> None:
    # forwardOriginalToken false (default): Envoy removes the token's header before RBAC (jwt_test.go authn-only
    # expects the backend to see `Authorization: ""`)
    needs_header = ap("needs-header", {"rules": [{"when": [{"key": "request.headers[authorization]",
                                                              "values": ["Bearer *"]}]}]})
    assert outcome(state(ra("jwt", [rule(ISS1)]) + needs_header), probe(jwt=T1)) == DENIED_L7
    assert outcome(state(ra("jwt", [rule(ISS1, forwardOriginalToken=True)]) + needs_header), probe(jwt=T1)) == ALLOWED
    assert outcome(state(needs_header), probe(jwt=T1)) == ALLOWED  # no JWT filter: the header stays


def test_output_claim_to_headers_and_sanitizing_extractor_cc() -> None:
    rules = [rule(ISS1, outputClaimToHeaders=[{"header": "x-jwt-iss", "claim": "iss"}])]
    needs = ap("needs", {"rules": [{"when": [{"key": "request.headers[x-jwt-iss]", "values": [ISS1]}]}]})
    s = state(ra("jwt", rules) + needs)
    assert outcome(s, probe(jwt=T1)) == ALLOWED
    assert outcome(s, probe(headers={"x-jwt-iss": ISS1})) == DENIED_L7  # a client's own copy is removed


# -- AuthorizationPolicy JWT fields (generator.go requestPrincipalGenerator, requestClaimGenerator; util.go) --------

TESTAUTHZ_JWT = ra("default", [rule(ISS1), rule(ISS2)]) + ap("jwt", {"rules": [
    {"to": [{"operation": {"paths": ["/token1"]}}], "from": [{"source": {"requestPrincipals": [f"{ISS1}/sub-1"]}}]},
    {"to": [{"operation": {"paths": ["/token2"]}}], "when": [{"key": "request.auth.claims[groups]",
                                                              "values": ["group-2"]}]},
    {"to": [{"operation": {"paths": ["/token3"]}}], "from": [{"source": {"notRequestPrincipals": [f"{ISS1}/sub-1"]}}]},
    {"to": [{"operation": {"paths": ["/tokenAny"]}}], "from": [{"source": {"requestPrincipals": ["*"]}}]},
    {"to": [{"operation": {"paths": ["/permission"]}}], "when": [{"key": "request.auth.claims[permission]",
                                                                  "values": ["write", "append"]}]},
    {"to": [{"operation": {"paths": ["/nested-key1"]}}], "when": [{"key": "request.auth.claims[nested][key1]",
                                                                   "values": ["valueB"]}]},
    {"to": [{"operation": {"paths": ["/nested-non-exist"]}}], "when": [
        {"key": "request.auth.claims[nested][non-exist]", "values": ["valueC"]}]},
    {"to": [{"operation": {"paths": ["/valid-jwt"]}}], "when": [{"key": "request.auth.principal", "values": ["*"]}]},
    {"to": [{"operation": {"paths": ["*/presenter"]}}], "when": [{"key": "request.auth.presenter",
                                                                  "values": ["bar"]}]},
    {"to": [{"operation": {"paths": ["*/audiences"]}}], "when": [{"key": "request.auth.audiences",
                                                                  "values": ["foo"]}]},
]})
NESTED_1 = tok("one", claims={"nested": {"key1": "valueB"}})
NESTED_2 = tok("one", claims={"nested": {"key1": "valueA", "key2": "valueC"}})
PERMISSION = tok("two", "sub-2", claims={"permission": "read write"})


@pytest.mark.parametrize("path, jwt, allowed", [
    ("/token1", T1, True), ("/token1", T2, False), ("/token1", None, False),
    ("/token2", T2, True), ("/token2", T1, False), ("/token2", None, False),
    ("/token3", T2, True), ("/token3", T1, False), ("/token3", None, True),
    ("/tokenAny", T1, True), ("/tokenAny", T2, True), ("/tokenAny", None, False),
    ("/permission", PERMISSION, True), ("/permission", T1, False), ("/permission", T2, False),
    ("/nested-key1", NESTED_1, True), ("/nested-key1", NESTED_2, False),
    ("/nested-non-exist", NESTED_2, False), ("/nested-non-exist", T1, False),
    ("/valid-jwt", T1, True), ("/valid-jwt", None, False),
    ("/x/presenter", tok("one", azp="bar"), True), ("/x/presenter", T1, False),
    ("/x/audiences", tok("one", aud="foo"), True), ("/x/audiences", tok("one", aud=("foo", "baz")), True),
    ("/x/audiences", tok("one", aud="bar"), False),
])
def test_testauthz_jwt_authz_test(path: str, jwt: JwtSpec | None, allowed: bool) -> None:
    d = run(state(TESTAUTHZ_JWT), probe(path=path, jwt=jwt))
    assert d.verdict == ("allow" if allowed else "deny"), d.trace


@pytest.mark.parametrize("value, jwt, matches", [
    ("*", T1, True),
    ("*", tok("one", sub=None), False),  # `*` needs a non-empty iss AND sub (regex .+)
    (f"{ISS1}/*", T1, True), (f"{ISS1}/*", T2, False),
    ("*/sub-1", T1, True), ("*/sub-1", T2, False),
    ("*-1@istio.io/sub-1", T1, True), ("*-2@istio.io/sub-1", T1, False),
    (f"{ISS1}/sub*", T1, True), (f"{ISS1}/x*", T1, False),
    ("test-issuer-1*", T1, True), ("test-issuer-2*", T1, False),  # no `/`: iss prefix, any sub
    ("*sub-1", T1, True), ("*sub-2", T1, False),  # no `/`: any iss, sub suffix
    (ISS1, T1, False),  # no `/`: sub must be exactly "" (research note §1.4)
    (f"{ISS1}/sub-1", T1, True), (f"{ISS1}/sub-1", None, False),
])
def test_request_principal_forms_generator_request_principal(value: str, jwt: JwtSpec | None, matches: bool) -> None:
    s = state(AUTHN_ONLY + ap("rp", {"rules": [{"from": [{"source": {"requestPrincipals": [value]}}]}]}))
    assert run(s, probe(jwt=jwt)).verdict == ("allow" if matches else "deny")


def test_request_principal_splits_at_the_last_slash_url_issuer() -> None:
    url_iss = Issuer("url", "https://issuer.example.com/realms/x")
    s = State(mesh=MeshConfig(), workloads=WORLD, waypoints=(), addresses=ALL_ADDRESSES, issuers=(url_iss,),
              policies=policies(ra("jwt", [rule(url_iss.issuer, name="url")])
                                + ap("rp", {"rules": [{"from": [{"source": {"requestPrincipals": [
                                    "https://issuer.example.com/realms/x/alice"]}}]}]})))
    assert decide(s, probe(jwt=tok("url", "alice")), "sidecar", V130).verdict == "allow"
    assert decide(s, probe(jwt=tok("url", "bob")), "sidecar", V130).verdict == "deny"


def test_not_request_principals_star_denies_no_token_authn_policy_task() -> None:
    s = state(AUTHN_ONLY + ap("deny-no-token", {"action": "DENY", "rules": [
        {"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}))
    d = run(s, probe())
    assert (d.verdict, d.outcome, d.reason, d.policy) == ("deny", DENIED_L7, DENY_MATCHED, "default/deny-no-token")
    assert run(s, probe(jwt=T1)).verdict == "allow"


def test_claims_list_or_string_and_non_strings_never_match() -> None:
    s = state(AUTHN_ONLY + ap("g", {"rules": [{"when": [{"key": "request.auth.claims[level]", "values": ["3"]}]}]}))
    assert run(s, probe(jwt=tok(claims={"level": "3"}))).verdict == "allow"
    assert run(s, probe(jwt=tok(claims={"level": ["1", "3"]}))).verdict == "allow"
    assert run(s, probe(jwt=tok(claims={"level": 3}))).verdict == "deny"  # a number: no string match
    assert run(s, probe(jwt=tok(claims={"level": [3]}))).verdict == "deny"
    assert run(s, probe(jwt=tok(claims={"level": True}))).verdict == "deny"


def test_claim_patterns_use_istio_string_forms() -> None:
    s = state(AUTHN_ONLY + ap("g", {"rules": [{"when": [{"key": "request.auth.claims[team]",
                                                           "values": ["eng-*"], "notValues": ["*-ops"]}]}]}))
    assert run(s, probe(jwt=tok(claims={"team": "eng-web"}))).verdict == "allow"
    assert run(s, probe(jwt=tok(claims={"team": "eng-ops"}))).verdict == "deny"
    assert run(s, probe(jwt=tok(claims={"team": "sales"}))).verdict == "deny"


def test_scope_space_delimited_but_nested_claims_are_not_authenticator_set_payload_metadata() -> None:
    s = state(AUTHN_ONLY + ap("g", {"rules": [{"when": [{"key": "request.auth.claims[scope]", "values": ["write"]}]},
                                              {"when": [{"key": "request.auth.claims[a][scope]", "values": ["w"]}]}]}))
    assert run(s, probe(jwt=tok(claims={"scope": "read write"}))).verdict == "allow"
    assert run(s, probe(jwt=tok(claims={"a": {"scope": "r w"}}))).verdict == "deny"
    whole = state(AUTHN_ONLY + ap("g", {"rules": [{"when": [{"key": "request.auth.claims[scope]",
                                                               "values": ["read write"]}]}]}))
    assert run(whole, probe(jwt=tok(claims={"scope": "read write"}))).verdict == "deny"  # now a list


def test_space_delimited_claims_rule_field_from_1_28_build_space_delimited_claims() -> None:
    s = state(ra("jwt", [rule(ISS1, spaceDelimitedClaims=["roles"])])
              + ap("g", {"rules": [{"when": [{"key": "request.auth.claims[roles]", "values": ["admin"]}]}]}))
    t = tok(claims={"roles": "admin dev"})
    assert decide(s, probe(jwt=t), "sidecar", V130).verdict == "allow"
    assert decide(s, probe(jwt=t), "sidecar", V127).verdict == "deny"


def test_claim_key_parsing_extract_name_in_nested_brackets() -> None:
    assert claim_path("request.auth.claims[a][b]") == ["a", "b"]
    assert claim_path("request.auth.claims[a.b]") == ["a.b"]
    assert claim_path("request.auth.claims[a[b]]") == ["a[b]"]
    assert claim_path("request.auth.claims.a") is None


def test_jwt_fields_on_tcp_allow_drops_rule_deny_drops_condition_model_go_check_error() -> None:
    allow = state(AUTHN_ONLY + ap("rp", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}))
    assert outcome(allow, probe(port=9000)) == DENIED_L4
    deny = state(ap("d", {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                                                        "to": [{"operation": {"ports": ["9000"]}}]}]}))
    d = run(deny, probe(port=9000))
    assert (d.outcome, d.reason) == (DENIED_L4, DENY_MATCHED)  # the whole TCP port denied
    assert run(deny, probe(port=8080)).verdict == "allow"


def test_no_jwt_filter_on_a_tcp_chain() -> None:
    d = run(state(AUTHN_ONLY), probe(port=9000))
    assert d.verdict == "allow"


# -- where RequestAuthentication applies --------------------------------------------------------------------------


def test_sidecar_selector_namespace_and_root_request_authentication() -> None:
    assert outcome(state(ra("jwt", [rule(ISS1)], selector={"app": "backend"})), probe(jwt=TE)) == DENIED_AUTHN
    assert outcome(state(ra("jwt", [rule(ISS1)], selector={"app": "other"})), probe(jwt=TE)) == ALLOWED
    assert outcome(state(ra("jwt", [rule(ISS1)], ns="istio-system")), probe(jwt=TE)) == DENIED_AUTHN
    assert outcome(state(ra("jwt", [rule(ISS1)], ns="finance")), probe(jwt=TE)) == ALLOWED
    assert outcome(state(ra("jwt", [rule(ISS1)], target_refs=GATEWAY_REF)), probe(jwt=TE)) == ALLOWED


L7JWT = ra("gw", [rule(ISS1), rule(ISS2)], target_refs=GATEWAY_REF) \
    + ra("ignored", [rule(ISS3)], selector={"gateway.networking.k8s.io/gateway-name": "waypoint"}) \
    + ap("allow", {"targetRefs": GATEWAY_REF, "rules": [
        {"from": [{"source": {"requestPrincipals": [f"{ISS1}/sub-1", f"{ISS3}/sub-1"]}}]},
        {"to": [{"operation": {"paths": ["/healthz"]}}]}]})


@pytest.mark.parametrize("jwt, path, result", [
    (None, "/", DENIED_L7), (T1, "/", ALLOWED), (T3, "/", DENIED_AUTHN), (T2, "/", DENIED_L7), (TE, "/", DENIED_AUTHN),
    (None, "/healthz", ALLOWED),
])
def test_waypoint_target_refs_only_test_l7_jwt(jwt: JwtSpec | None, path: str, result: str) -> None:
    d = run(state(L7JWT, waypoints=(WAYPOINT,)), probe(path=path, jwt=jwt), "waypoint")
    assert d.outcome == result
    if result != ALLOWED:
        assert (d.layer, d.waypoint) == ("waypoint", "default/waypoint")
    if result == DENIED_AUTHN and jwt is T3:
        assert d.detail == "Jwt issuer is not configured"  # the selector RequestAuthentication is ignored


def test_ztunnel_ignores_request_authentication_research_2() -> None:
    s = state(AUTHN_ONLY)
    d = run(s, probe(jwt=TE), "ambient")
    assert d.verdict == "allow"
    assert any("ztunnel has no JWT filter" in line for line in d.trace)


def test_ztunnel_drops_allow_rule_with_request_principals_research_tc_10() -> None:
    s = state(AUTHN_ONLY + ap("rp", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}))
    d = run(s, probe(jwt=T1), "ambient")
    assert (d.verdict, d.outcome, d.reason) == ("deny", DENIED_L4, ALLOW_UNMATCHED)


def test_ztunnel_deny_not_request_principals_star_is_a_no_op_research_tc_10() -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}))
    assert run(s, probe(), "ambient").verdict == "allow"
    claims = state(ap("d", {"action": "DENY", "rules": [{"when": [{"key": "request.auth.claims[groups]",
                                                                    "values": ["x"]}]}]}))
    assert run(claims, probe(), "ambient").verdict == "allow"


def test_waypoint_then_ztunnel_for_selector_jwt_policy() -> None:
    # a selector ALLOW with requestPrincipals is ignored by the waypoint and dropped by ztunnel: denied upstream
    s = state(AUTHN_ONLY + ap("rp", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
              waypoints=(WAYPOINT,))
    d = run(s, probe(jwt=T1), "waypoint")
    assert (d.outcome, d.layer) == (DENIED_UPSTREAM, "ztunnel")


# -- CUSTOM (builder.go buildHTTP / buildTCP, extauthz.go; samples/extauthz) ------------------------------------

CUSTOM_SERVER = custom("ext-authz", "ext-authz-http", to_paths("/custom"))


def test_custom_server_allows_with_header_test_authz_custom_server() -> None:
    d = run(state(CUSTOM_SERVER), probe(path="/custom", headers={"x-ext-authz": "allow"}))
    assert (d.verdict, d.reason) == ("allow", "no-allow-policy")


def test_custom_server_denies_without_header_test_authz_custom_server() -> None:
    for headers in ({"x-ext-authz": "deny"}, {}):
        d = run(state(CUSTOM_SERVER), probe(path="/custom", headers=headers))
        assert (d.verdict, d.outcome, d.reason, d.policy, d.rule) == (
            "deny", DENIED_CUSTOM, EXT_AUTHZ_DENIED, "default/ext-authz", 0)


def test_custom_only_for_requests_its_rules_match_test_authz_custom_server_health() -> None:
    d = run(state(CUSTOM_SERVER), probe(path="/health", headers={"x-ext-authz": "deny"}))
    assert d.verdict == "allow"
    assert any("ext_authz is not called" in line for line in d.trace)


def test_header_not_in_include_request_headers_in_check_is_never_sent() -> None:
    bare = ExtensionProvider("ext-authz-http", "http", "ext-authz.ext-authz.svc.cluster.local", 8000)
    s = state(CUSTOM_SERVER, providers=(bare,))
    d = run(s, probe(path="/custom", headers={"x-ext-authz": "allow"}))
    assert d.outcome == DENIED_CUSTOM
    assert any("does not send it" in line for line in d.trace)
    prefixed = ExtensionProvider("ext-authz-http", "http", "ext-authz.ext-authz.svc.cluster.local", 8000,
                                 include_request_headers_in_check=("X-Ext-*",))
    assert outcome(state(CUSTOM_SERVER, providers=(prefixed,)), probe(path="/custom",
                                                                       headers={"x-ext-authz": "allow"})) == ALLOWED


def test_include_additional_headers_override_the_request_headers_to_add() -> None:
    always = ExtensionProvider("ext-authz-http", "http", "ext-authz.ext-authz.svc.cluster.local", 8000,
                               include_additional_headers_in_check=(("x-ext-authz", "allow"),))
    assert outcome(state(CUSTOM_SERVER, providers=(always,)), probe(path="/custom")) == ALLOWED


def test_provider_headers_reach_rbac_on_allow_test_authz_custom_server_upstream() -> None:
    # the upstream sees x-ext-authz-check-result (TestAuthz_CustomServer); RBAC runs after ext_authz, so it does too
    needs = ap("needs", {"rules": [{"when": [{"key": "request.headers[x-ext-authz-check-result]",
                                               "values": ["allowed"]}]}]})
    listed = ExtensionProvider("ext-authz-http", "http", HTTP_PROVIDER.service, 8000,
                               include_request_headers_in_check=("x-ext-authz",),
                               headers_to_upstream_on_allow=("x-ext-authz-check-result",))
    allowed = probe(path="/custom", headers={"x-ext-authz": "allow"})
    assert outcome(state(CUSTOM_SERVER + needs, providers=(listed,)), allowed) == ALLOWED
    assert outcome(state(CUSTOM_SERVER + needs), allowed) == DENIED_L7  # not listed: not copied upstream
    grpc = state(custom("g", "ext-authz-grpc", to_paths("/custom")) + needs)
    assert outcome(grpc, allowed) == ALLOWED  # a gRPC OkHttpResponse's headers always go upstream


def test_custom_allow_still_goes_through_deny_and_allow_authz_custom_task() -> None:
    allowed = {"x-ext-authz": "allow"}
    deny = state(CUSTOM_SERVER + ap("d", {"action": "DENY", "rules": to_paths("/custom")}))
    d = run(deny, probe(path="/custom", headers=allowed))
    assert (d.outcome, d.reason, d.policy) == (DENIED_L7, DENY_MATCHED, "default/d")
    only = state(CUSTOM_SERVER + ap("a", {"rules": to_paths("/other")}))
    assert run(only, probe(path="/custom", headers=allowed)).reason == ALLOW_UNMATCHED


def test_custom_comes_before_jwt() -> None:
    s = state(CUSTOM_SERVER + AUTHN_ONLY)
    assert outcome(s, probe(path="/custom", jwt=TE)) == DENIED_CUSTOM
    assert outcome(s, probe(path="/custom", headers={"x-ext-authz": "allow"}, jwt=TE)) == DENIED_AUTHN


@pytest.mark.parametrize("provider_name, providers", [
    ("undefined", (HTTP_PROVIDER,)),  # getExtAuthz: not in the mesh config
    ("ext-authz-http", (ExtensionProvider("ext-authz-http", "http", "nowhere.default.svc.cluster.local", 8000),)),
    ("ext-authz-http", (HTTP_PROVIDER, HTTP_PROVIDER)),  # processExtensionProvider: duplicate name
    ("ext-authz-http", (ExtensionProvider("ext-authz-http", "http", HTTP_PROVIDER.service, 8000,
                                          include_request_headers_in_check=("*",)),)),  # checkWildcard
])
def test_bad_provider_is_an_rbac_deny_of_matching_requests_golden_custom_bad(
        provider_name: str, providers: tuple[ExtensionProvider, ...]) -> None:
    s = state(custom("ext-authz", provider_name, to_paths("/custom")), providers=providers)
    d = run(s, probe(path="/custom", headers={"x-ext-authz": "allow"}))
    assert (d.verdict, d.outcome, d.reason, d.policy) == ("deny", DENIED_L7, DENY_MATCHED, "default/ext-authz")
    assert any("deny-due-to-bad-CUSTOM-action" in line for line in d.trace)
    assert run(s, probe(path="/other")).verdict == "allow"


def test_bad_provider_denies_whatever_fail_open_says() -> None:
    broken = ExtensionProvider("ext-authz-http", "http", "nowhere.default.svc.cluster.local", 8000, fail_open=True)
    assert outcome(state(CUSTOM_SERVER, providers=(broken,)), probe(path="/custom")) == DENIED_L7


def test_provider_name_rule_from_1_30_validate_provider_name() -> None:
    upper = ExtensionProvider("Ext_Authz", "http", HTTP_PROVIDER.service, 8000,
                              include_request_headers_in_check=("x-ext-authz",))
    s = state(custom("ext-authz", "Ext_Authz", to_paths("/custom")), providers=(upper,))
    p = probe(path="/custom", headers={"x-ext-authz": "allow"})
    assert decide(s, p, "sidecar", V130).outcome == DENIED_L7
    assert decide(s, p, "sidecar", V129).outcome == ALLOWED


def test_two_providers_on_one_workload_deny_golden_custom_bad_multiple_providers() -> None:
    s = state(custom("c1", "ext-authz-http", to_paths("/a")) + custom("c2", "ext-authz-grpc", to_paths("/b")))
    for path, policy in (("/a", "default/c1"), ("/b", "default/c2")):
        d = run(s, probe(path=path, headers={"x-ext-authz": "allow"}))
        assert (d.outcome, d.reason, d.policy) == (DENIED_L7, DENY_MATCHED, policy)
        assert decide(s, probe(path=path), "sidecar", V129).outcome == DENIED_L7
    assert run(s, probe(path="/c")).verdict == "allow"


def test_two_policies_one_provider_are_one_check() -> None:
    s = state(custom("c1", "ext-authz-http", to_paths("/a")) + custom("c2", "ext-authz-http", to_paths("/b")))
    assert outcome(s, probe(path="/b", headers={"x-ext-authz": "allow"})) == ALLOWED
    assert run(s, probe(path="/b")).policy == "default/c2"


def test_unreachable_provider_fail_open_and_status_on_error_ext_authz_cc() -> None:
    closed = ExtensionProvider("ext-authz-http", "http", HTTP_PROVIDER.service, 8001, status_on_error="503")
    d = run(state(CUSTOM_SERVER, providers=(closed,)), probe(path="/custom"))
    assert (d.outcome, d.reason, d.policy) == (DENIED_CUSTOM, EXT_AUTHZ_ERROR, "default/ext-authz")
    assert any("503" in line for line in d.trace)
    opened = ExtensionProvider("ext-authz-http", "http", HTTP_PROVIDER.service, 8001, fail_open=True)
    assert outcome(state(CUSTOM_SERVER, providers=(opened,)), probe(path="/custom")) == ALLOWED


def test_grpc_provider_http_header_then_source_principal_sample_main_go() -> None:
    s = state(custom("g", "ext-authz-grpc", to_paths("/custom")))
    assert outcome(s, probe(path="/custom", headers={"x-ext-authz": "allow"})) == ALLOWED
    assert outcome(s, probe(path="/custom", headers={"x-ext-authz": "deny"})) == DENIED_CUSTOM
    assert outcome(s, probe(SA_A, path="/custom")) == ALLOWED  # no header: /sa/a is allowed
    assert outcome(s, probe(SA_A, path="/custom", headers={"x-ext-authz": "no"})) == DENIED_CUSTOM
    assert outcome(s, probe(FRONTEND, path="/custom")) == DENIED_CUSTOM
    assert outcome(s, probe(OUTSIDER, path="/custom")) == DENIED_CUSTOM  # plaintext: no principal


def test_tcp_grpc_provider_checks_the_connection_test_authz_custom_server_tcp() -> None:
    s = state(custom("g", "ext-authz-grpc", [{"to": [{"operation": {"ports": ["9000"]}}]}]))
    assert outcome(s, probe(SA_A, port=9000)) == ALLOWED
    d = run(s, probe(ROGUE, port=9000))
    assert (d.outcome, d.reason, d.policy) == (DENIED_L4, EXT_AUTHZ_DENIED, "default/g")


def test_tcp_http_provider_is_skipped_builder_build_tcp() -> None:
    s = state(custom("h", "ext-authz-http", [{"to": [{"operation": {"ports": ["9000"]}}]}]))
    d = run(s, probe(ROGUE, port=9000))
    assert d.verdict == "allow"
    assert any("ignored CUSTOM action with HTTP provider on TCP filter chain" in line for line in d.trace)


def test_tcp_custom_rule_drops_http_fields_like_a_deny_golden_custom_both_http_tcp() -> None:
    # rule[0] of custom-both-http-tcp: `methods: [GET]` only becomes `any` on the TCP chain
    s = state(custom("g", "ext-authz-grpc", [{"to": [{"operation": {"methods": ["GET"]}}]}]))
    assert outcome(s, probe(ROGUE, port=9000)) == DENIED_L4
    assert outcome(s, probe(SA_A, port=9000)) == ALLOWED


def test_ztunnel_ignores_custom_research_3_5() -> None:
    s = state(custom("c", "ext-authz-http", [{}]) + custom("bad", "undefined", [{}], ns="finance"))
    d = run(s, probe(), "ambient")
    assert d.verdict == "allow"
    assert any("ztunnel does not support the CUSTOM action" in line for line in d.trace)


def test_waypoint_applies_target_ref_custom_only_research_3_5() -> None:
    bound = state(custom("c", "ext-authz-http", to_paths("/custom"), targetRefs=GATEWAY_REF), waypoints=(WAYPOINT,))
    d = run(bound, probe(path="/custom"), "waypoint")
    assert (d.outcome, d.layer, d.waypoint, d.reason) == (DENIED_CUSTOM, "waypoint", "default/waypoint",
                                                          EXT_AUTHZ_DENIED)
    assert outcome(bound, probe(path="/custom", headers={"x-ext-authz": "allow"}), "waypoint") == ALLOWED
    assert outcome(bound, probe(path="/custom"), "sidecar") == ALLOWED  # targetRefs never reach a sidecar
    selector = state(CUSTOM_SERVER, waypoints=(WAYPOINT,))
    assert outcome(selector, probe(path="/custom"), "waypoint") == ALLOWED


# -- the guard (state_for_step) ---------------------------------------------------------------------------------


def _scenario(docs: str, probes: tuple[Probe, ...] = (), modes: tuple[Mode, ...] = ("sidecar", "waypoint"),
              providers: tuple[ExtensionProvider, ...] = (HTTP_PROVIDER, GRPC_PROVIDER)) -> tuple[Scenario, Step]:
    step = Step("s", policies(docs), tuple(Expectation(i, p, {}) for i, p in enumerate(probes)))
    scenario = Scenario("t", "", "t.yaml", modes, MeshConfig(extension_providers=providers), WORLD, (WAYPOINT,),
                        (step,), issuers=ISSUERS)
    return scenario, step


def test_guard_models_jwt_and_custom_now() -> None:
    s, step = _scenario(TESTAUTHZ_JWT + CUSTOM_SERVER, (probe(jwt=T1),))
    st_ = state_for_step(s, step)
    assert st_.issuers == ISSUERS and decide(st_, probe(path="/token1", jwt=T1), "sidecar", V130).verdict == "allow"


@pytest.mark.parametrize("docs, field", [
    (ap("dry", {"action": "CUSTOM", "provider": {"name": "ext-authz-http"}, "rules": [{}]},
        annotations={"istio.io/dry-run": "true"}), "metadata.annotations"),
    (custom("g", "ext-authz-grpc", [{}], targetRefs=GATEWAY_REF), "spec.provider.name"),
    (custom("c", "ext-authz-http", [{}]) + ap("lock", {}, ns="ext-authz"), "spec.provider.name"),
    # a RequestAuthentication at the provider's own sidecar checks the check requests (found by the differential
    # test: a mesh-wide jwtRule with audiences made the provider's sidecar answer 403 and ext_authz relayed it)
    (custom("c", "ext-authz-http", [{}]) + ra("mesh", [rule(ISS1)], ns="istio-system"), "spec.provider.name"),
])
def test_guard_refuses_what_depends_on_the_unknown(docs: str, field: str) -> None:
    s, step = _scenario(docs)
    with pytest.raises(NotModelled, match=f"field {field}"):
        state_for_step(s, step)


def test_guard_refuses_a_provider_that_is_not_the_suite_server() -> None:
    app = ExtensionProvider("ext-authz-http", "http", "backend.default.svc.cluster.local", 8080)
    s, step = _scenario(CUSTOM_SERVER, providers=(app,))
    with pytest.raises(NotModelled, match="not a workload of kind ext-authz"):
        state_for_step(s, step)


def test_guard_refuses_iat_and_nbf_claims_and_scopes_by_mode() -> None:
    nbf = probe(jwt=tok(claims={"nbf": 1}))
    s, step = _scenario(AUTHN_ONLY, (nbf,))
    with pytest.raises(NotModelled, match=r"request.jwt.claims.nbf"):
        state_for_step(s, step)
    ambient, step = _scenario(AUTHN_ONLY, (nbf,), modes=("ambient",))
    state_for_step(ambient, step)  # ztunnel ignores RequestAuthentication: nothing to refuse
    waypoint_only, step = _scenario(CUSTOM_SERVER.replace("ext-authz-http", "ext-authz-grpc")
                                    + ap("lock", {}, ns="ext-authz"), modes=("waypoint",))
    state_for_step(waypoint_only, step)  # a selector CUSTOM policy never reaches a waypoint


# -- explain words each step ----------------------------------------------------------------------------------


def test_explain_words_custom_jwt_and_rbac_in_order() -> None:
    s = state(CUSTOM_SERVER + AUTHN_AUTHZ)
    d = run(s, probe(path="/custom", headers={"x-ext-authz": "allow"}, jwt=T1))
    text = "\n".join(d.trace)
    custom_at = text.index("CUSTOM (external authorization) comes first")
    jwt_at = text.index("RequestAuthentication: the JWT filter checks tokens")
    rbac_at = text.index("RBAC (AuthorizationPolicy DENY, then ALLOW)")
    assert custom_at < jwt_at < rbac_at
    assert "the sample server allows" in text and "origins-0 from default/jwt" in text
    assert f"request principal {ISS1}/sub-1" in text


def test_explain_cli_prints_the_jwt_message(tmp_path: Path) -> None:
    import io

    from conformance.cli import main

    scenario = {
        "apiVersion": "authz-conformance/v1", "kind": "Scenario",
        "metadata": {"name": "jwt-explain", "description": "explain a JWT rejection"},
        "spec": {
            "modes": ["sidecar", "ambient"],
            "issuers": [{"name": "one", "issuer": ISS1}],
            "workloads": [{"name": "api", "namespace": "shop", "ports": [8080]}, {"name": "curl", "namespace": "shop"}],
            "steps": [{"name": "s", "policies": [yaml.safe_load(ra("jwt", [rule(ISS1)], ns="shop")[:-4])],
                       "expect": [{"from": "shop/curl", "to": "shop/api",
                                   "request": {"jwt": {"issuer": "one", "expired": True}}}]}],
        },
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(out):
        code = main(["explain", str(path), "--step", "s", "--probe", "0"])
    text = out.getvalue()
    assert code == 0, text
    assert "[sidecar] DENY (denied-authn: `Jwt is expired`)" in text
    assert "[ambient] ALLOW (allowed)" in text and "ztunnel has no JWT filter" in text


# -- properties (hypothesis) --------------------------------------------------------------------------------------

CLIENTS = [FRONTEND, ROGUE, OUTSIDER, SA_A]
tokens = st.sampled_from([None, T1, T2, T3, TE, tok(signature="invalid"), raw("deadbeef"),
                          tok("one", aud="foo"), tok("two", claims={"scope": "a b"})])
header_sets = st.sampled_from([{}, {"x-ext-authz": "allow"}, {"x-ext-authz": "deny"}])
paths = st.sampled_from(["/", "/a", "/b", "/custom"])


@st.composite
def ap_rule(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = {}
    kind = draw(st.sampled_from(["paths", "rp", "nrp", "claim", "principal", "port", "empty"]))
    if kind == "paths":
        r["to"] = [{"operation": {"paths": draw(st.lists(paths, min_size=1, max_size=2, unique=True))}}]
    elif kind == "rp":
        r["from"] = [{"source": {"requestPrincipals": [draw(st.sampled_from(["*", f"{ISS1}/*", "*/sub-2"]))]}}]
    elif kind == "nrp":
        r["from"] = [{"source": {"notRequestPrincipals": ["*"]}}]
    elif kind == "claim":
        r["when"] = [{"key": "request.auth.claims[groups]", "values": [draw(st.sampled_from(["group-1", "group-2"]))]}]
    elif kind == "principal":
        r["from"] = [{"source": {"principals": ["cluster.local/ns/default/sa/frontend"]}}]
    elif kind == "port":
        r["to"] = [{"operation": {"ports": ["9000"]}}]
    return r


@st.composite
def policy_set(draw: st.DrawFn) -> str:
    out = []
    for i in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["ALLOW", "DENY"]))
        out.append(ap(f"p{i}", {"action": action, "rules": draw(st.lists(ap_rule(), min_size=1, max_size=2))}))
    if draw(st.booleans()):
        out.append(AUTHN_ONLY)
    return "".join(out)


@st.composite
def custom_policy(draw: st.DrawFn) -> str:
    provider = draw(st.sampled_from(["ext-authz-http", "ext-authz-grpc", "undefined"]))
    return custom("added-custom", provider, draw(st.lists(ap_rule(), min_size=1, max_size=2)))


probes = st.builds(lambda c, port, h, path, t: probe(c, port=port, headers=h if port != 9000 else None,
                                                     path=path if port != 9000 else "/",
                                                     jwt=t if port != 9000 else None),
                   st.sampled_from(CLIENTS), st.sampled_from([8080, 9000]), header_sets, paths, tokens)
modes = st.sampled_from(["sidecar", "ambient", "waypoint"])


@settings(max_examples=300, deadline=None)
@given(policy_set(), custom_policy(), probes, modes)
def test_adding_a_custom_policy_never_turns_a_deny_into_an_allow(ps: str, c: str, p: Probe, mode: Mode) -> None:
    waypoints = (WAYPOINT,)
    before = decide(state(ps, waypoints=waypoints), p, mode, V130)
    after = decide(state(ps + c, waypoints=waypoints), p, mode, V130)
    assert not (before.verdict == "deny" and after.verdict == "allow")


@settings(max_examples=300, deadline=None)
@given(policy_set(), st.one_of(st.just(""), custom_policy()), probes, modes)
def test_a_probe_without_a_token_is_never_denied_authn(ps: str, c: str, p: Probe, mode: Mode) -> None:
    p = Probe(p.source, p.destination, p.port, Request(p.request.method, p.request.path, p.request.headers, None))
    assert decide(state(ps + c, waypoints=(WAYPOINT,)), p, mode, V130).outcome != DENIED_AUTHN


@settings(max_examples=300, deadline=None)
@given(policy_set(), st.one_of(st.just(""), custom_policy()), probes)
def test_ztunnel_never_yields_denied_authn_or_denied_custom(ps: str, c: str, p: Probe) -> None:
    d = decide(state(ps + c), p, "ambient", V130)
    assert d.outcome not in (DENIED_AUTHN, DENIED_CUSTOM) and d.layer in ("ztunnel", None)


@settings(max_examples=300, deadline=None)
@given(policy_set(), probes)
def test_a_rejected_token_is_rejected_whatever_the_authorization_policies(ps: str, p: Probe) -> None:
    # the JWT filter runs before RBAC (listener_builder.go): ALLOW and DENY policies cannot change a 401/403
    base = decide(state(AUTHN_ONLY), p, "sidecar", V130)
    if base.outcome == DENIED_AUTHN:
        d = decide(state(AUTHN_ONLY + ps), p, "sidecar", V130)
        assert (d.outcome, d.detail) == (DENIED_AUTHN, base.detail)


def test_tokens_are_part_of_decisions_json_safe() -> None:
    # the decision for a probe with a token is stable and its detail is plain text
    d = decide(state(AUTHN_ONLY), probe(jwt=TE), "sidecar", V130)
    assert json.loads(json.dumps({"detail": d.detail})) == {"detail": "Jwt is expired"}
