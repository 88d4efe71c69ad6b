"""Tests of conformance/validation.py for JWT and CUSTOM (issue 11): RequestAuthentication, the CUSTOM rules of
AuthorizationPolicy, request principals, and the mesh config's ext_authz extension providers.

Each rule cites the Istio source it ports, at tag 1.30.3 unless a tag is named: `validation.go` is
pkg/config/validation/validation.go (ValidateRequestAuthentication, validateJwtRule, warnPrivateJwksKeys,
ValidateAuthorizationPolicy), `extensionprovider.go` is pkg/config/validation/agent/extensionprovider.go
(validateExtensionProvider, ValidateExtensionProviderEnvoyExtAuthzHTTP/GRPC), `extauthz.go` is
pilot/pkg/security/authz/builder/extauthz.go (processExtensionProvider, validateProviderName, buildExtAuthzHTTP),
`CRD` is manifests/charts/base/files/crd-all.gen.yaml. Istio's own test tables (TestValidateRequestAuthentication,
TestValidateExtensionProviderService) are replayed at every vendored tag (tests/data/istio-validation).
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.model import ExtensionProvider
from conformance.validation import (
    ERROR,
    UNSUPPORTED,
    WARNING,
    has_errors,
    provider_defects,
    validate_extension_provider,
)
from conformance.versions import IstioVersion
from tests.test_validation import (
    COND,
    SRC,
    TAGS,
    VALIDATION_TEST,
    _go_cases,
    _go_to_yaml,
    ap,
    fields,
    messages,
    run,
    source,
    when,
)

JWKS = "${jwks:example}"
RULE = "spec.jwtRules[0]"


def ra(spec: Any = None, **meta: Any) -> dict[str, Any]:
    doc = ap(spec, **meta)
    doc["kind"] = "RequestAuthentication"
    return doc


def rule(**fields_: Any) -> dict[str, Any]:
    return {"jwtRules": [{"issuer": "testing@secure.istio.io", "jwks": JWKS, **fields_}]}


# --------------------------------------------------------------------------------------------------
# RequestAuthentication


@pytest.mark.parametrize("api_version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_request_authentication_served_versions(api_version: str) -> None:
    # CRD: RequestAuthentication serves v1 and v1beta1 at every tag 1.22 ... 1.30.
    doc = ra(rule()) | {"apiVersion": api_version}
    assert run(doc) == []


def test_a_full_jwt_rule_is_accepted() -> None:
    doc = ra({"selector": {"matchLabels": {"app": "api"}}, **rule(
        audiences=["a", "b"], fromHeaders=[{"name": "x-jwt", "prefix": "Bearer "}], fromParams=["token"],
        fromCookies=["session"], outputPayloadToHeader="x-payload", forwardOriginalToken=True,
        outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}], timeout="5s",
        spaceDelimitedClaims=["scope"])})
    assert run(doc) == []


def test_issuer_required_before_1_27_then_issuer_or_jwks_uri() -> None:
    # validateJwtRule@1.26.8 "issuer must be set" (and the CRD's required: [issuer]); from 1.27.0 (#56158)
    # "issuer or jwksUri must be non-empty string".
    doc = ra({"jwtRules": [{"jwks": JWKS}]})
    assert fields(doc, version="1.26") == {f"{RULE}.issuer"}
    assert "issuer or jwksUri" in messages(doc, version="1.27.0")
    empty = ra({"jwtRules": [{"issuer": "", "jwks": JWKS}]})
    assert fields(empty, version="1.22") == {f"{RULE}.issuer"}
    assert fields(empty) == {f"{RULE}.issuer"}  # CRD minLength 1 (1.23+)
    with_uri = ra({"jwtRules": [{"jwksUri": "https://example.com/jwks"}]})
    assert fields(with_uri, version="1.27") == set()
    assert fields(with_uri, version="1.26") == {f"{RULE}.issuer"}


def test_jwks_uri_scheme_and_port() -> None:
    # security.ParseJwksURI: http or https, a numeric port (and the CRD's CEL url(self).getScheme(), 1.23+).
    for uri in ("foo.com", "ftp://foo.com/jwks", "https://foo.com:not-a-number"):
        assert fields(ra({"jwtRules": [{"issuer": "i", "jwksUri": uri}]})) == {f"{RULE}.jwksUri"}, uri
    ok = ra({"jwtRules": [{"issuer": "i", "jwksUri": "https://foo.com:8443/jwks"}]})
    assert fields(ok) == set()


def test_jwks_uri_is_valid_istio_but_not_supported_yet() -> None:
    # The suite serves no JWKS endpoint: keys come inline (${jwks:<issuer>}); a rule with neither is OIDC discovery.
    with_uri = ra({"jwtRules": [{"issuer": "i", "jwksUri": "https://foo.com/jwks"}]})
    assert fields(with_uri, UNSUPPORTED) == {f"{RULE}.jwksUri"}
    assert fields(ra({"jwtRules": [{"issuer": "i"}]}), UNSUPPORTED) == {RULE}
    assert fields(ra(rule()), UNSUPPORTED) == set()


def test_jwks_and_jwks_uri_are_exclusive_from_1_23() -> None:
    # CRD CEL on JWTRule (1.23+): "only one of jwks or jwksUri can be set"; validation.go never checks it.
    doc = ra(rule(jwksUri="https://foo.com/jwks"))
    assert fields(doc) == {RULE}
    assert "only one of jwks or jwksUri" in messages(doc)
    assert RULE not in fields(doc, version="1.22")


def test_jwks_must_parse() -> None:
    # validateJwtRule: jwk.Parse(rule.Jwks) -> "jwks parse error"; the ${jwks:...} placeholder is the suite's JWKS.
    for bad in ("foo", "[]", '{"keys": [{"kty": "RSA"}]}', '{"keys": [{"kty": "XYZ"}]}',
                '{"kty": "EC", "crv": "P-256"}'):
        doc = ra({"jwtRules": [{"issuer": "i", "jwks": bad}]})
        assert fields(doc) == {f"{RULE}.jwks"}, bad
        assert "jwks parse error" in messages(doc)
    good = '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "xAE7eB6q"}]}'
    assert run(ra({"jwtRules": [{"issuer": "i", "jwks": good}]})) == []


def test_private_jwks_keys_warn_from_1_30_3() -> None:
    # warnPrivateJwksKeys (istio/istio#60727, 1.30.3): RSA/EC/OKP private keys and symmetric keys warn.
    private = '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "xAE7", "d": "jJVK"}, {"kty": "oct", "k": "AAAA"}]}'
    doc = ra({"jwtRules": [{"issuer": "i", "jwks": private}]})
    assert [f.message for f in run(doc, "1.30.3") if f.severity == WARNING] == [
        "Istio warns: jwks key at index 0 contains private key material; only public keys are used for verification",
        "Istio warns: jwks key at index 1 contains private key material; only public keys are used for verification"]
    assert fields(doc, WARNING, "1.30.2") == set()
    assert not has_errors(run(doc))


@pytest.mark.parametrize(("spec", "field", "text"), [
    (rule(audiences=[""]), f"{RULE}.audiences[0]", ""),
    (rule(fromHeaders=[{"name": ""}]), f"{RULE}.fromHeaders[0].name", ""),
    (rule(fromHeaders=[None]), f"{RULE}.fromHeaders[0]", "not null"),  # the CRD's type, before validation.go
    (rule(fromParams=[""]), f"{RULE}.fromParams[0]", ""),
    (rule(fromCookies=["", "foo"]), f"{RULE}.fromCookies[0]", ""),
    (rule(outputClaimToHeaders=[None]), f"{RULE}.outputClaimToHeaders[0]", "not null"),
    (rule(outputClaimToHeaders=[{"header": "x-a"}]), f"{RULE}.outputClaimToHeaders[0].claim", "must be non-empty"),
    (rule(outputClaimToHeaders=[{"header": "abc%123", "claim": "sub"}]), f"{RULE}.outputClaimToHeaders[0].header", ""),
])
def test_jwt_rule_locations_and_outputs(spec: dict[str, Any], field: str, text: str) -> None:
    # validateJwtRule (fromHeaders, fromParams, fromCookies, outputClaimToHeaders) and the CRD's minLength,
    # required [header, claim] and header pattern (1.23+): one error, at the field.
    found = {f.field: f.message for f in run(ra(spec)) if f.severity == ERROR}
    assert list(found) == [field]
    assert text in found[field]


def test_output_claim_header_names_by_version() -> None:
    # 1.22 checks the header *name* as a header value (ValidateHTTPHeaderValue: control characters, %VAR%); from
    # 1.23.0 (#51343) as a name, ^[-_A-Za-z0-9]+$ (ValidateHTTPHeaderName, ValidateStrictHTTPHeaderName from 1.24.4).
    dotted = ra(rule(outputClaimToHeaders=[{"header": "x.sub", "claim": "sub"}]))
    assert fields(dotted, version="1.22") == set()
    assert fields(dotted, version="1.23") == {f"{RULE}.outputClaimToHeaders[0].header"}
    percent = ra(rule(outputClaimToHeaders=[{"header": "abc%123", "claim": "sub"}]))
    assert fields(percent, version="1.22") == {f"{RULE}.outputClaimToHeaders[0].header"}
    variable = ra(rule(outputClaimToHeaders=[{"header": "x-%HOSTNAME%", "claim": "sub"}]))
    assert fields(variable, version="1.22") == set()


@pytest.mark.parametrize(("timeout", "v122", "v130"), [
    ("5s", True, True), ("500ms", True, True), ("1h2m", True, True), ("1.5s", True, True),
    ("0.5ms", True, False), ("1500us", True, False), ("0s", True, False),
    ("5 s", False, False), ("5", False, False), ("soon", False, False),
])
def test_jwt_rule_timeout(timeout: str, v122: bool, v130: bool) -> None:
    # jsonpb decodes a Duration with time.ParseDuration ("bad Duration"); from 1.23.0 (#51946) validateJwtRule adds
    # agent.ValidateDuration: at least 1ms, ms precision (the CRD's CEL duration(self) >= duration('1ms') agrees).
    doc = ra(rule(timeout=timeout))
    assert (fields(doc, version="1.22") == set()) is v122
    assert (fields(doc) == set()) is v130


def test_space_delimited_claims_exist_from_1_28() -> None:
    # CRD@1.28.0: jwtRules[].spaceDelimitedClaims; older CRDs reject it as an unknown field (strict validation).
    doc = ra(rule(spaceDelimitedClaims=["scope"]))
    assert fields(doc, version="1.28") == set()
    assert fields(doc, version="1.27") == {f"{RULE}.spaceDelimitedClaims"}
    assert "exists from Istio 1.28" in messages(doc, version="1.27")


def test_request_authentication_selector_and_target_refs() -> None:
    # validateOneOfSelectorType, validateWorkloadSelector, validatePolicyTargetReference(s): shared with
    # AuthorizationPolicy (ValidateRequestAuthentication calls the same functions).
    both = ra({"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Service", "group": "", "name": "a"}],
               **rule()})
    assert fields(both) == {"spec.selector"}
    wrong_kind = ra({"targetRefs": [{"kind": "Deployment", "group": "apps", "name": "a"}], **rule()})
    assert fields(wrong_kind) == {"spec.targetRefs[0].kind"}
    gateway = ra({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                  **rule()})
    assert run(gateway) == []
    assert fields(ra({"selector": {"matchLabels": {"app": "a*"}}, **rule()})) == {"spec.selector.matchLabels[app]"}


def test_request_authentication_takes_no_dry_run() -> None:
    # checkDryRunAnnotation: only AuthorizationPolicy supports istio.io/dry-run.
    doc = ra(rule(), annotations={"istio.io/dry-run": "true"})
    assert fields(doc) == {"metadata.annotations[istio.io/dry-run]"}


# Istio's Go test builds the proto and calls ValidateRequestAuthentication directly; kubectl apply goes through the
# CRD first, whose jwtRules[].issuer has minLength 1 (1.23+): `issuer: ""` is refused there (leaving it out passes).
RA_GO_DIVERGENCES = {"empty issuer and set jwksUri"}


@pytest.mark.parametrize("tag", TAGS)
def test_istio_validate_request_authentication_cases(tag: str) -> None:
    # TestValidateRequestAuthentication (validation_test.go) at each tag, against validate_manifest at that tag:
    # valid or not, and whether Istio warns (a selector without labels; private JWKS keys from 1.30.3).
    failures = []
    for case in _go_cases(tag, VALIDATION_TEST, "TestValidateRequestAuthentication"):
        meta: dict[str, Any] = {"name": case.get("configName") or "name", "namespace": "namespace"}
        if case.get("annotations"):
            meta["annotations"] = case["annotations"]
        doc = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": meta,
               "spec": _go_to_yaml(case["in"])}
        found = run(doc, tag)
        valid = not has_errors(found)
        warns = any(f.severity == WARNING and f.message.startswith("Istio warns") for f in found)
        want_valid = case["valid"] and case["name"] not in RA_GO_DIVERGENCES
        if (valid, warns) != (want_valid, bool(case.get("warning"))):
            failures.append((case["name"], valid, warns, [(f.field, f.message) for f in found]))
        if case["name"] in RA_GO_DIVERGENCES:  # the same rule without the empty issuer passes, as in Go
            del doc["spec"]["jwtRules"][0]["issuer"]
            assert not has_errors(run(doc, tag))
    assert failures == []


# --------------------------------------------------------------------------------------------------
# AuthorizationPolicy: CUSTOM and request principals


def custom(rules: Any, provider: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": "CUSTOM", "rules": rules}
    spec["provider"] = {"name": "ext-authz"} if provider is None else provider
    return ap(spec)


def test_custom_needs_rules_and_a_provider_name() -> None:
    # ValidateAuthorizationPolicy: CUSTOM without rules never triggers; with rules, provider.name must be set.
    assert fields(ap({"action": "CUSTOM", "provider": {"name": "x"}})) == {"spec.rules"}
    assert fields(custom([{}], provider={})) == {"spec.provider.name"}
    assert fields(custom([{}], provider={"name": ""})) == {"spec.provider.name"}
    assert run(custom([{}])) == []


@pytest.mark.parametrize("action", ["ALLOW", "DENY", "AUDIT"])
def test_provider_only_with_custom(action: str) -> None:
    # ValidateAuthorizationPolicy: "`provider` must not be with non CUSTOM action".
    doc = ap({"action": action, "provider": {"name": "x"}, "rules": [{}]})
    assert fields(doc) == {"spec.provider"}


@pytest.mark.parametrize("name", ["principals", "notPrincipals", "namespaces", "notNamespaces", "requestPrincipals",
                                  "notRequestPrincipals", "serviceAccounts", "notServiceAccounts", "trustDomains",
                                  "notTrustDomains"])
def test_custom_rules_may_not_use_identity_fields(name: str) -> None:
    # ValidateAuthorizationPolicy: "From.<Field> is currently not supported with CUSTOM action" (ext_authz runs
    # before the JWT filter and is no identity check); ipBlocks stay allowed.
    value = "ns/sa" if "erviceAccounts" in name else "td" if "rustDomains" in name else "a/b"
    doc = custom(source(**{name: [value]})["rules"])
    assert f"{SRC}.{name}" in fields(doc)
    assert "not supported with CUSTOM action" in messages(doc)
    assert fields(custom(source(ipBlocks=["10.0.0.0/8"], notIpBlocks=["10.1.0.0/16"])["rules"])) == set()


@pytest.mark.parametrize("key", ["source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain",
                                 "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
                                 "request.auth.claims[groups]"])
def test_custom_rules_may_not_use_identity_when_keys(key: str) -> None:
    # ValidateAuthorizationPolicy: the same check on `when` keys, request.auth.* by prefix.
    value = "ns/sa" if key == "source.serviceAccount" else "v"
    assert fields(custom(when(key, [value])["rules"])) == {f"{COND}.key"}
    assert fields(custom(when("source.ip", ["10.0.0.1"])["rules"])) == set()


@pytest.mark.parametrize("key", ["request.auth.principal", "request.auth.audiences", "request.auth.presenter",
                                 "request.auth.claims[groups]", "request.auth.claims[a][b]"])
def test_jwt_when_keys_are_accepted(key: str) -> None:
    # security.ValidateAttribute knows them (claims[...] through validateMapKey, nested brackets included).
    assert run(ap(when(key, ["x/y"]))) == []


def test_bad_claims_keys() -> None:
    # validateMapKey: `request.auth.claims[b]` needs a non-empty name in brackets.
    for key in ("request.auth.claims", "request.auth.claims[]", "request.auth.claims[a"):
        assert fields(ap(when(key, ["v"]))) == {f"{COND}.key"}, key


def test_request_principals_values() -> None:
    # CheckEmptyValues is all Istio's validation checks; the rest are warnings about what
    # requestPrincipalGenerator (authz/model/generator.go) makes of a value: split at the LAST '/', one
    # leading or trailing '*'.
    for name in ("requestPrincipals", "notRequestPrincipals"):
        assert fields(ap(source(**{name: [""]}))) == {f"{SRC}.{name}[0]"}
    good = ap(source(requestPrincipals=["*", "iss/*", "*/sub", "https://a.b/c/sub", "abc*", "*abc", "iss/sub"]))
    assert run(good) == []
    doc = ap(source(requestPrincipals=["x", "iss/", "*a/b*"]))
    found = {f.field: f.message for f in run(doc) if f.severity == WARNING}
    assert "has no '/'" in found[f"{SRC}.requestPrincipals[0]"]
    assert "ends with '/'" in found[f"{SRC}.requestPrincipals[1]"]
    assert "matched literally" in found[f"{SRC}.requestPrincipals[2]"]
    assert fields(ap(when("request.auth.principal", ["nope"])), WARNING) == {f"{COND}.values[0]"}


# --------------------------------------------------------------------------------------------------
# meshConfig.extensionProviders (ext_authz kinds)


def provider(kind: str = "envoyExtAuthzHttp", name: str = "ext-authz", **config: Any) -> dict[str, Any]:
    return {"name": name, kind: {"service": "ext-authz.ext-authz.svc.cluster.local", "port": 8000, **config}}


def check(doc: dict[str, Any], version: str = "1.30", severity: str = ERROR) -> dict[str, str]:
    return {f.field: f.message for f in validate_extension_provider(doc, IstioVersion.parse(version))
            if f.severity == severity}


def test_a_full_http_provider_is_accepted() -> None:
    doc = provider(timeout="0.5s", pathPrefix="/check", failOpen=True, statusOnError="503",
                   includeRequestHeadersInCheck=["x-ext-authz", "x-b*"], includeAdditionalHeadersInCheck={"x-a": "b"},
                   headersToUpstreamOnAllow=["x-up"], headersToDownstreamOnDeny=["x-down*"],
                   headersToDownstreamOnAllow=["*-ok"])
    assert validate_extension_provider(doc, IstioVersion.parse("1.30")) == []
    assert validate_extension_provider(provider("envoyExtAuthzGrpc", port=9000), IstioVersion.parse("1.30")) == []


def test_provider_name_empty_is_rejected() -> None:
    # validateExtensionProvider (ValidateMeshConfig): "empty extension provider name".
    assert check(provider(name="")) == {"name": "empty extension provider name"}


@pytest.mark.parametrize("name", ["Ext-Authz", "ext_authz", "-ext", "ext-", "a" * 64, "ext.authz"])
def test_provider_name_not_a_dns_label_breaks_the_provider_from_1_30(name: str) -> None:
    # extauthz.go validateProviderName (istio/istio#58082, 1.30.0): not mesh config validation (the research note
    # §3.1 lists it as validation): istiod accepts the mesh config and treats the provider as invalid, so CUSTOM
    # policies naming it deny. A warning, from 1.30.0 only.
    doc = provider(name=name)
    assert check(doc) == {}
    assert "name" in check(doc, severity=WARNING)
    assert "denies the requests its rules match" in check(doc, severity=WARNING)["name"]
    assert check(doc, "1.29", WARNING) == {}
    p = ExtensionProvider(name, "http", "ext-authz.ext-authz.svc.cluster.local", 8000)
    assert provider_defects(p, IstioVersion.parse("1.30")) and not provider_defects(p, IstioVersion.parse("1.29"))


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_provider_port_range(port: int) -> None:
    # agent.ValidatePort via ValidateExtensionProviderEnvoyExtAuthzHTTP / GRPC.
    assert list(check(provider(port=port))) == ["envoyExtAuthzHttp.port"]
    assert list(check(provider("envoyExtAuthzGrpc", port=port))) == ["envoyExtAuthzGrpc.port"]


@pytest.mark.parametrize("status", ["999", "abc", "-1", "306"])
def test_provider_status_on_error(status: str) -> None:
    # validateExtensionProviderEnvoyExtAuthzStatusOnError: strconv.ParseInt, then envoy.type.v3.StatusCode_name.
    assert list(check(provider(statusOnError=status))) == ["envoyExtAuthzHttp.statusOnError"]
    assert check(provider(statusOnError="503")) == {}


def test_provider_status_on_error_zero_is_accepted_by_istio_but_not_by_envoy() -> None:
    # StatusCode_name holds 0 ("Empty"), so Istio accepts "0"; Envoy's HttpStatus says not_in: 0.
    found = validate_extension_provider(provider(statusOnError="0"), IstioVersion.parse("1.30"))
    assert [(f.field, f.severity) for f in found] == [("envoyExtAuthzHttp.statusOnError", UNSUPPORTED)]


def test_provider_path_prefix_starts_with_a_slash() -> None:
    # ValidateExtensionProviderEnvoyExtAuthzHTTP: "pathPrefix should begin with `/`".
    assert list(check(provider(pathPrefix="check"))) == ["envoyExtAuthzHttp.pathPrefix"]
    assert check(provider(pathPrefix="/check")) == {}


@pytest.mark.parametrize("field", ["includeRequestHeadersInCheck", "headersToUpstreamOnAllow",
                                   "headersToDownstreamOnDeny", "headersToDownstreamOnAllow"])
def test_provider_lone_wildcard_breaks_the_provider(field: str) -> None:
    # buildExtAuthzHTTP checkWildcard (every tag 1.22 ... 1.30): a lone "*" is not mesh config validation (the
    # research note says "rejected"): istiod accepts it and marks the provider invalid, so CUSTOM policies deny.
    doc = provider(**{field: ["x-a", "*"]})
    assert check(doc) == {}
    assert list(check(doc, severity=WARNING)) == [f"envoyExtAuthzHttp.{field}[1]"]
    assert check(provider(**{field: ["x-*", "*-y"]}), severity=WARNING) == {}


def test_provider_timeout_is_a_go_duration() -> None:
    assert list(check(provider(timeout="5 s"))) == ["envoyExtAuthzHttp.timeout"]
    assert check(provider(timeout="250ms")) == {}


@pytest.mark.parametrize(("service", "valid"), [
    ("ext-authz.ext-authz.svc.cluster.local", True), ("ext-authz", True), ("10.0.0.1", True), ("ns/a.b.c", True),
    ("ns/*", True), ("ns/*.b.c", True), ("", False), ("ns/ext-authz", False), ("ns/a*.b", False), ("a.b:3000", False),
    ("a.123", False), ("Bad_Ns/a.b", False),
])
def test_provider_service(service: str, valid: bool) -> None:
    # validateExtensionProviderService: an FQDN or an IP, or <namespace>/<hostname> (ValidateNamespaceSlashWildcard-
    # Hostname: a DNS label or * . ~ as namespace, an FQDN hostname, a wildcard only as the first label).
    assert (check(provider(service=service)) == {}) is valid


@pytest.mark.parametrize("tag", TAGS)
def test_istio_validate_extension_provider_service_cases(tag: str) -> None:
    # TestValidateExtensionProviderService (agent/extensionprovider_test.go) at each tag.
    for case in _go_cases(tag, "pkg/config/validation/agent/extensionprovider_test.go",
                          "TestValidateExtensionProviderService"):
        assert (check(provider(service=case["service"]), tag) == {}) is case["valid"], case
