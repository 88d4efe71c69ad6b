"""The scenario format for JWT and CUSTOM (issue 11, DESIGN.md §10): issuers, mesh.extensionProviders, workloads of
kind ext-authz, request.jwt, RequestAuthentication documents with ${jwks:<issuer>}, CUSTOM policies.

Loading tests/data/jwt/jwt-custom.yaml gives the typed model (conformance/model.py) field by field; each broken
variant gives one line naming the file, the place (step and probe or document, issuer, provider, workload) and
the field; until the engine models JWT and CUSTOM, predicting refuses with the same precision.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import runner
from conformance.engine import state_for_step
from conformance.errors import NotModelled, ScenarioError
from conformance.lint import warnings
from conformance.model import (
    DEFAULT_TOKEN_LOCATION,
    DENIAL_FORMS,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    ExtensionProvider,
    Issuer,
    JwtSpec,
    TokenLocation,
    fill_jwks,
)
from conformance.scenario import check, load
from conformance.truthtable import predict
from conformance.versions import IstioVersion

DATA = Path(__file__).parent / "data" / "jwt"
SCENARIO = DATA / "jwt-custom.yaml"
V130 = IstioVersion.parse("1.30")


def _doc() -> dict[str, Any]:
    return yaml.safe_load(SCENARIO.read_text())


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    (tmp_path / "request-authentication.yaml").write_text((DATA / "request-authentication.yaml").read_text())
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _problems(tmp_path: Path, mutate: Any, version: str = "1.30") -> list[str]:
    doc = _doc()
    mutate(doc)
    _, problems = check(_write(tmp_path, doc), IstioVersion.parse(version))
    return [str(p) for p in problems]


def _step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["spec"]["steps"] if s["name"] == name)


def _expect(doc: dict[str, Any], index: int, step: str = "jwt") -> dict[str, Any]:
    e: dict[str, Any] = _step(doc, step)["expect"][index]
    return e


# --------------------------------------------------------------------------------------------------
# round trip: YAML -> model


def test_issuers_load_in_order() -> None:
    s = load(SCENARIO)
    assert s.issuers == (Issuer("example", "testing@secure.istio.io"), Issuer("other", "https://other.example.com"))
    assert s.issuer("other") == Issuer("other", "https://other.example.com") and s.issuer("nope") is None


def test_extension_providers_load_with_istio_fields() -> None:
    mesh = load(SCENARIO).mesh
    assert mesh.extension_providers == (
        ExtensionProvider(
            name="ext-authz-http", kind="http", service="ext-authz.ext-authz.svc.cluster.local", port=8000,
            timeout="0.5s", fail_open=True, status_on_error="503",
            include_request_headers_in_check=("x-ext-authz",),
            headers_to_upstream_on_allow=("x-ext-authz-check-result",),
            headers_to_downstream_on_deny=("x-ext-authz-check-result",),
            headers_to_downstream_on_allow=("x-ext-*",),
            include_additional_headers_in_check=(("x-ext-authz-additional-header-override", "true"),),
            path_prefix="/check"),
        ExtensionProvider(name="ext-authz-grpc", kind="grpc",
                          service="ext-authz/ext-authz.ext-authz.svc.cluster.local", port=9000),
    )
    assert mesh.provider("ext-authz-grpc") is mesh.extension_providers[1] and mesh.provider("x") is None
    assert mesh.extension_providers[1].service_host() == ("ext-authz", "ext-authz.ext-authz.svc.cluster.local")
    hash(mesh)  # frozen and hashable, like every model type


def test_provider_service_resolves_like_lookup_cluster() -> None:
    # LookupCluster (pilot/pkg/model/telemetry_logging.go): `<ns>/<host>` or `<host>`, the host being
    # <name>.<ns>.svc.cluster.local exactly.
    s = load(SCENARIO)
    authz = s.workload("ext-authz/ext-authz")
    assert authz is not None and authz.kind == "ext-authz"
    assert all(s.provider_workload(p) is authz for p in s.mesh.extension_providers)
    for service in ("ext-authz.ext-authz", "shop/ext-authz.ext-authz.svc.cluster.local", "ext-authz"):
        assert s.provider_workload(ExtensionProvider("p", "http", service, 8000)) is None, service
    assert {w.kind for w in s.workloads if w.ref != "ext-authz/ext-authz"} == {"app"}


def test_request_jwt_loads_every_field() -> None:
    step = load(SCENARIO).step("jwt")
    assert step is not None
    jwts = [e.probe.request.jwt for e in step.expectations]
    assert jwts[0] == JwtSpec(issuer="example", sub="alice", aud=("api", "other"), azp="web",
                              claims_json=JwtSpec.canonical_claims({"groups": ["admin"], "org": {"team": "a"}}))
    assert jwts[0].claims == {"groups": ["admin"], "org": {"team": "a"}}
    assert jwts[0].payload() == {"groups": ["admin"], "org": {"team": "a"}, "sub": "alice", "aud": ["api", "other"],
                                 "azp": "web"}
    assert jwts[0].location == DEFAULT_TOKEN_LOCATION == TokenLocation("Authorization", "Bearer ", None)
    assert jwts[1] == JwtSpec(issuer="example", aud="api", expired=True)  # a string aud stays a string
    assert jwts[2] == JwtSpec(issuer="other", signature="invalid", location=TokenLocation("x-jwt", "Token "))
    assert jwts[3] == JwtSpec(raw="deadbeef", location=TokenLocation(None, "", "token"))
    assert jwts[4] == JwtSpec(issuer="example")  # `in: header` is the default location
    assert jwts[5] is None
    assert len({e.probe.key for e in step.expectations}) == len(step.expectations)  # the token is part of the key
    assert "jwt[example sub=alice aud=[api,other] azp=web" in step.expectations[0].probe.describe()
    assert step.expectations[3].probe.describe().endswith("jwt[raw 'deadbeef' in ?token=]")


def test_jwt_claims_in_header_prefix_default_is_none() -> None:
    # `in: {header: NAME}` carries the bare token, as a fromHeaders entry without prefix expects.
    doc = _doc()
    _expect(doc, 2)["request"]["jwt"]["in"] = {"header": "x-jwt"}
    s, problems = check(_write(Path(_tmpdir()), doc))
    assert s is not None, problems
    step = s.step("jwt")
    assert step is not None and step.expectations[2].probe.request.jwt is not None
    assert step.expectations[2].probe.request.jwt.location == TokenLocation("x-jwt", "")


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="jwt-")


def test_request_authentication_documents_keep_jwks_placeholders() -> None:
    # The body keeps ${jwks:<name>}: the targets make the keys at run time and fill it (Manifest.rendered(jwks=...)).
    step = load(SCENARIO).step("jwt")
    assert step is not None
    inline, from_file = step.policies[0], step.policies[1]
    assert (inline.kind, inline.api_version, inline.ref) == (
        "RequestAuthentication", "security.istio.io/v1", "shop/jwt")
    assert (from_file.kind, from_file.api_version, from_file.ref) == (
        "RequestAuthentication", "security.istio.io/v1beta1", "shop/other")
    assert from_file.origin == "policies[1] request-authentication.yaml document 1"
    assert inline.spec["jwtRules"][0]["jwks"] == "${jwks:example}"
    assert (inline.jwks_issuers, from_file.jwks_issuers) == (("example",), ("other",))
    filled = inline.rendered({}, jwks={"example": '{"keys": []}'})
    assert filled.spec["jwtRules"][0]["jwks"] == '{"keys": []}'
    assert inline.spec["jwtRules"][0]["jwks"] == "${jwks:example}"
    assert inline.rendered({}).body == inline.body
    assert fill_jwks({"a": ["${jwks:x}", "${jwks:y}"]}, {"x": "X"}) == {"a": ["X", "${jwks:y}"]}


def test_custom_policy_loads_with_its_provider() -> None:
    step = load(SCENARIO).step("custom")
    assert step is not None
    (policy,) = step.policies
    assert policy.spec["action"] == "CUSTOM" and policy.spec["provider"] == {"name": "ext-authz-http"}


def test_new_denial_forms() -> None:
    assert (DENIED_AUTHN, DENIED_CUSTOM) == ("denied-authn", "denied-custom")
    assert DENIED_AUTHN in DENIAL_FORMS and DENIED_CUSTOM in DENIAL_FORMS


def test_model_types_are_frozen_and_hashable() -> None:
    s = load(SCENARIO)
    step = s.step("jwt")
    assert step is not None
    for value in (*s.issuers, *s.mesh.extension_providers, *(e.probe for e in step.expectations), s.mesh):
        hash(value)
    with pytest.raises(AttributeError):
        s.issuers[0].name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# errors: one line each, naming file, place and field


def _set(path: str, value: Any) -> Any:
    """A mutation setting the value at a dotted path (`spec.mesh.extensionProviders.0.name`)."""
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _policy(step: str, index: int, mutate: Any) -> Any:
    return lambda d: mutate(_step(d, step)["policies"][index])


RA_RULE = lambda f: _policy("jwt", 0, lambda p: p["spec"]["jwtRules"][0].update(f))  # noqa: E731
JWT = lambda i, f: (lambda d: _expect(d, i)["request"]["jwt"].update(f))  # noqa: E731
PROVIDER = "extension provider 'ext-authz-http': field spec.mesh.extensionProviders[0]"

ERRORS: list[tuple[str, Any, list[str]]] = [
    # spec.issuers
    ("duplicate issuer", lambda d: d["spec"]["issuers"].append({"name": "example", "issuer": "x"}),
     ["issuer 'example': field spec.issuers[2].name", "duplicate issuer name"]),
    ("issuer name not a DNS label", _set("spec.issuers.0.name", "Example"),
     ["field spec.issuers[0].name", "not valid here"]),
    ("issuer without iss", _set("spec.issuers.1.issuer", ""), ["field spec.issuers[1].issuer"]),
    # spec.mesh.extensionProviders
    ("provider without kind", lambda d: d["spec"]["mesh"]["extensionProviders"].append({"name": "x"}),
     ["extension provider 'x': field spec.mesh.extensionProviders[2]", "exactly one of envoyExtAuthzHttp"]),
    ("provider with both kinds", lambda d: d["spec"]["mesh"]["extensionProviders"][1].update(
        envoyExtAuthzHttp={"service": "a.b", "port": 1}), ["field spec.mesh.extensionProviders[1]", "exactly one"]),
    ("provider of another kind", lambda d: d["spec"]["mesh"]["extensionProviders"].append(
        {"name": "z", "zipkin": {"service": "z.z", "port": 9411}}), ["unknown field 'zipkin'"]),
    ("duplicate provider", lambda d: d["spec"]["mesh"]["extensionProviders"][1].update(name="ext-authz-http"),
     ["field spec.mesh.extensionProviders[1].name", "duplicate extension provider name ext-authz-http"]),
    ("empty provider name", _set("spec.mesh.extensionProviders.1.name", ""),
     ["field spec.mesh.extensionProviders[1].name", "empty extension provider name"]),
    ("provider port", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.port", 0),
     [f"{PROVIDER}.envoyExtAuthzHttp.port", "must be in the range 1..65535"]),
    ("provider port type", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.port", "8000"),
     [f"{PROVIDER}.envoyExtAuthzHttp.port", "must be an integer"]),
    ("provider service", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.service", "ns/short"),
     [f"{PROVIDER}.envoyExtAuthzHttp.service", "short names"]),
    ("statusOnError", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.statusOnError", "999"),
     [f"{PROVIDER}.envoyExtAuthzHttp.statusOnError", "unsupported statusOnError value 999"]),
    ("statusOnError number", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.statusOnError", 503),
     [f"{PROVIDER}.envoyExtAuthzHttp.statusOnError", "must be a string"]),
    ("pathPrefix", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.pathPrefix", "check"),
     [f"{PROVIDER}.envoyExtAuthzHttp.pathPrefix", "should begin with `/`"]),
    ("provider timeout", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.timeout", "soon"),
     [f"{PROVIDER}.envoyExtAuthzHttp.timeout", "bad Duration"]),
    ("pathPrefix on grpc", _set("spec.mesh.extensionProviders.1.envoyExtAuthzGrpc.pathPrefix", "/x"),
     ["field spec.mesh.extensionProviders[1].envoyExtAuthzGrpc.pathPrefix", "unknown field 'pathPrefix'"]),
    ("unmodelled provider field", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.includeRequestBodyInCheck",
                                       {"maxRequestBytes": 10}),
     [f"{PROVIDER}.envoyExtAuthzHttp.includeRequestBodyInCheck", "not supported yet"]),
    ("one port, two protocols", _set("spec.mesh.extensionProviders.1.envoyExtAuthzGrpc.port", 8000),
     ["extension provider 'ext-authz-grpc': field spec.mesh.extensionProviders[1].envoyExtAuthzGrpc.port",
      "speaks one protocol per port"]),
    ("provider port declared TCP", _set("spec.workloads.0.ports", [8000, {"port": 9000, "protocol": "TCP"}]),
     ["field spec.mesh.extensionProviders[1].envoyExtAuthzGrpc.port", "declared TCP"]),
    # workloads of kind ext-authz
    ("bad workload kind", _set("spec.workloads.1.kind", "authz"),
     ["workload 'shop/api': field kind", "'authz' is not a valid value"]),
    ("ext-authz without ports", _set("spec.workloads.0.ports", []),
     ["workload 'ext-authz/ext-authz': field spec.workloads[0].ports", "kind ext-authz"]),
    ("probe to ext-authz", lambda d: _expect(d, 0).update(to="ext-authz/ext-authz:8000"),
     ["step 'jwt': probe expect[0]: field to", "kind ext-authz", "no probe source or destination"]),
    ("probe from ext-authz", lambda d: _expect(d, 0).update({"from": "ext-authz/ext-authz"}),
     ["step 'jwt': probe expect[0]: field from", "kind ext-authz"]),
    # request.jwt
    ("unknown issuer", JWT(0, {"issuer": "exmple"}),
     ["step 'jwt': probe expect[0]: field request.jwt.issuer", "unknown issuer 'exmple'", "did you mean 'example'"]),
    ("no issuer", lambda d: _expect(d, 0)["request"]["jwt"].pop("issuer"),
     ["step 'jwt': probe expect[0]: field request.jwt.issuer", "needs an issuer"]),
    ("raw and claims", JWT(3, {"sub": "x"}), ["step 'jwt': probe expect[3]: field request.jwt.raw", "excludes sub"]),
    ("reserved claim", JWT(0, {"claims": {"exp": 1}}),
     ["field request.jwt.claims.exp", "set by request.jwt.expired"]),
    ("claims not JSON", JWT(0, {"claims": {"a": {1: "x"}}}), ["field request.jwt.claims", "not a string"]),
    ("bad signature", JWT(0, {"signature": "bad"}), ["field request.jwt.signature", "valid, invalid"]),
    ("bad aud", JWT(0, {"aud": 3}), ["field request.jwt.aud", "must be a string or a list"]),
    ("bad location", JWT(0, {"in": "cookie"}), ["field request.jwt.in", "must be header"]),
    ("header and param", JWT(0, {"in": {"header": "x", "param": "y"}}),
     ["field request.jwt.in.param", "unknown field 'param'"]),
    ("token header set twice", lambda d: _expect(d, 0)["request"].update(headers={"Authorization": "x"}),
     ["step 'jwt': probe expect[0]: field request.jwt.in", "request.headers sets Authorization"]),
    ("token in a reserved header", JWT(0, {"in": {"header": "x-authz-conformance-probe"}}),
     ["field request.jwt.in.header", "reserved"]),
    ("unknown jwt field", JWT(0, {"nbf": 1}), ["field request.jwt.nbf", "unknown field 'nbf'"]),
    ("token on a TCP port", lambda d: d["spec"]["workloads"][1].update(ports=[{"port": 8080, "protocol": "TCP"}]),
     ["step 'jwt': probe expect[0]: field request", "raw TCP"]),
    # ${jwks:...}
    ("unknown jwks issuer", RA_RULE({"jwks": "${jwks:exampel}"}),
     ["step 'jwt': policies[0] (RequestAuthentication shop/jwt): field spec.jwtRules[0].jwks",
      "${jwks:exampel} names no issuer", "did you mean 'example'"]),
    ("jwks placeholder inside a value", RA_RULE({"jwks": '{"keys": ["${jwks:example}"]}'}),
     ["field spec.jwtRules[0].jwks", "must be the whole value"]),
    ("jwks placeholder in a policy", _policy("jwt", 2, lambda p: p["spec"]["rules"][0]["when"][0].update(
        values=["${jwks:example}"])),
     ["policies[2] (AuthorizationPolicy shop/require-jwt): field spec.rules[0].when[0].values[0]", "whole value"]),
    # RequestAuthentication, validated as Istio does
    ("jwt rule without issuer", lambda d: _step(d, "jwt")["policies"][0]["spec"]["jwtRules"][0].pop("issuer"),
     ["policies[0] (RequestAuthentication shop/jwt): field spec.jwtRules[0].issuer", "issuer or jwksUri"]),
    ("empty header location", RA_RULE({"fromHeaders": [{"name": ""}]}),
     ["field spec.jwtRules[0].fromHeaders[0].name", "must not be empty"]),
    ("jwks and jwksUri", RA_RULE({"jwksUri": "https://example.com/jwks"}),
     ["field spec.jwtRules[0]", "only one of jwks or jwksUri"]),
    ("jwksUri alone", RA_RULE({"jwks": None, "jwksUri": "https://example.com/jwks"}),
     ["field spec.jwtRules[0].jwksUri", "not supported yet"]),
    ("selector and targetRefs", _policy("jwt", 0, lambda p: p["spec"].update(
        targetRefs=[{"kind": "Service", "group": "", "name": "api"}])),
     ["field spec.selector", "only one of selector, targetRef and targetRefs"]),
    ("unknown RA field", RA_RULE({"forwardToken": True}),
     ["field spec.jwtRules[0].forwardToken", "unknown field 'forwardToken'"]),
    ("file RA bad", lambda d: _step(d, "jwt")["policies"].append(
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "x", "namespace": "shop"}, "spec": {"jwtRules": [{"issuer": "i", "jwks": "nope"}]}}),
     ["policies[3] (RequestAuthentication shop/x): field spec.jwtRules[0].jwks", "jwks parse error"]),
    # CUSTOM
    ("CUSTOM without provider", _policy("custom", 0, lambda p: p["spec"].pop("provider")),
     ["step 'custom': policies[0] (AuthorizationPolicy shop/ext-authz): field spec.provider.name",
      "must not be empty"]),
    ("provider without CUSTOM", _policy("custom", 0, lambda p: p["spec"].update(action="DENY")),
     ["field spec.provider", "must not be set with non CUSTOM action, found DENY"]),
    ("CUSTOM with principals", _policy("custom", 0, lambda p: p["spec"]["rules"][0].update(
        {"from": [{"source": {"principals": ["a/b"]}}]})),
     ["field spec.rules[0].from[0].source.principals", "not supported with CUSTOM action"]),
    ("CUSTOM with request.auth", _policy("custom", 0, lambda p: p["spec"]["rules"][0].update(
        when=[{"key": "request.auth.claims[groups]", "values": ["a"]}])),
     ["field spec.rules[0].when[0].key", "request.auth.claims[groups] is currently not supported with CUSTOM"]),
    ("empty request principal", _policy("jwt", 2, lambda p: p["spec"]["rules"][0]["from"][0]["source"].update(
        requestPrincipals=[""])), ["field spec.rules[0].from[0].source.requestPrincipals[0]", "empty value"]),
]


@pytest.mark.parametrize(("case", "mutate", "needles"), ERRORS, ids=[c[0] for c in ERRORS])
def test_each_error_names_file_place_and_field(tmp_path: Path, case: str, mutate: Any, needles: list[str]) -> None:
    lines = _problems(tmp_path, mutate)
    path = str(tmp_path / "scenario.yaml")
    hit = [line for line in lines if all(n in line for n in needles)]
    assert hit, f"{case}: no line has all of {needles}:\n" + "\n".join(lines)
    assert all(line.startswith(path) or line.startswith("scenario.yaml") or "scenario.yaml" in line for line in hit)


WARNINGS: list[tuple[str, Any, list[str]]] = [
    ("provider name not a DNS label", _set("spec.mesh.extensionProviders.1.name", "Ext_Grpc"),
     ["field spec.mesh.extensionProviders[1].name", "warning:", "validateProviderName"]),
    ("lone wildcard", _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.headersToDownstreamOnDeny", ["*"]),
     [f"{PROVIDER}.envoyExtAuthzHttp.headersToDownstreamOnDeny[0]", "warning:", "single wildcard"]),
    ("jwtRule issuer differs from the JWKS issuer", RA_RULE({"issuer": "someone-else"}),
     ["field spec.jwtRules[0].issuer", "warning:", "never meet these keys"]),
    ("request principal without /", _policy("jwt", 2, lambda p: p["spec"]["rules"][0]["from"][0]["source"].update(
        requestPrincipals=["testing@secure.istio.io"])), ["requestPrincipals[0]", "warning:", "has no '/'"]),
]


@pytest.mark.parametrize(("case", "mutate", "needles"), WARNINGS, ids=[c[0] for c in WARNINGS])
def test_warnings_leave_the_scenario_valid(tmp_path: Path, case: str, mutate: Any, needles: list[str]) -> None:
    doc = _doc()
    mutate(doc)
    scenario, problems = check(_write(tmp_path, doc), V130)
    assert scenario is not None, [str(p) for p in problems]
    assert [str(p) for p in problems if all(n in str(p) for n in needles)], [str(p) for p in problems]


def test_provider_name_check_is_keyed_on_the_version(tmp_path: Path) -> None:
    # validateProviderName exists from 1.30.0 (istio/istio#58082): no warning at 1.29.
    mutate = _set("spec.mesh.extensionProviders.1.name", "Ext_Grpc")
    assert any("validateProviderName" in line for line in _problems(tmp_path, mutate, "1.30"))
    assert not any("validateProviderName" in line for line in _problems(tmp_path, mutate, "1.29"))


def test_jwt_validation_is_keyed_on_the_version(tmp_path: Path) -> None:
    # issuer optional with a jwksUri from 1.27 (#56158); spaceDelimitedClaims from 1.28 (CRD).
    mutate = RA_RULE({"spaceDelimitedClaims": ["scope"]})
    assert not [line for line in _problems(tmp_path, mutate, "1.28") if "spaceDelimitedClaims" in line]
    assert [line for line in _problems(tmp_path, mutate, "1.27") if "exists from Istio 1.28" in line]


def test_the_command_line_reports_them_one_per_line(tmp_path: Path) -> None:
    doc = _doc()
    _expect(doc, 0)["request"]["jwt"]["issuer"] = "nobody"
    _step(doc, "custom")["policies"][0]["spec"].pop("provider")
    result = subprocess.run([sys.executable, "-m", "conformance.cli", "validate", str(_write(tmp_path, doc))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    # one per line, each starting with the file:line:col of its field (issue 15), then the step
    assert len(lines) == 2 and all(re.search(r"scenario\.yaml:\d+:\d+: step '", line) for line in lines), lines


# Arbitrary damage to the JWT / CUSTOM parts never escapes as anything but problems.
def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


_JWT_PATHS = [p for p in _paths(_doc())[1:] if p[:2] in (("spec", "mesh"), ("spec", "issuers"), ("spec", "workloads"))
              or (len(p) > 5 and p[4] == "expect") or (len(p) > 5 and p[4] == "policies")]
_JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_JWT_PATHS), _JUNK)
def test_no_damage_escapes_as_a_traceback(tmp_path: Path, path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(_doc())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _, problems = check(_write(tmp_path, doc), V130)
    assert all(str(p).count("\n") == 0 for p in problems)


# --------------------------------------------------------------------------------------------------
# the engine models JWT and CUSTOM; what it still does not model is refused clearly, before anything runs


def _dry_run_custom(tmp: Path) -> Path:
    """The scenario with its provider pointing at an ordinary workload: only the suite's ext_authz server's
    answers are modelled, so the engine refuses it (a dry-run CUSTOM policy, the other refusal one would think
    of, never gets this far: Istio's validation rejects it, "only supports action ALLOW/DENY")."""
    doc = _doc()
    _set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.service", "api.shop.svc.cluster.local")(doc)
    return _write(tmp, doc)


def test_prediction_models_jwt_and_custom_and_refuses_what_it_does_not() -> None:
    s = load(SCENARIO)
    for step in s.steps:  # every step of the JWT and CUSTOM scenario predicts in every mode
        for mode in s.modes:
            table = predict(s, step, mode, V130)
            assert all(row.predicted.verdict in ("allow", "deny") for row in table)
    dry = load(_dry_run_custom(Path(_tmpdir())))
    custom = dry.step("custom")
    assert custom is not None
    with pytest.raises(NotModelled) as info:
        state_for_step(dry, custom)
    lines = str(info.value).splitlines()
    assert isinstance(info.value, ScenarioError)
    assert any("step 'custom': policies[0] (AuthorizationPolicy shop/ext-authz): field spec.provider.name: provider "
               "'ext-authz-http' names shop/api, which is not a workload of kind ext-authz" in line
               and "not modelled" in line for line in lines), lines
    assert all(line.startswith(str(dry.path)) for line in lines)


def test_a_run_refuses_before_applying_anything() -> None:
    class Untouchable:
        mode = "sidecar"
        addresses: ClassVar[dict[str, str]] = {}

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the target was used ({name}) before the refusal")

    s = load(_dry_run_custom(Path(_tmpdir())))
    step = s.step("custom")
    assert step is not None
    with pytest.raises(NotModelled):
        runner.run_step(Untouchable(), s, step, V130)  # type: ignore[arg-type]


def test_scenarios_without_jwt_or_custom_still_predict() -> None:
    # issuers and extension providers alone change no decision: a step without RequestAuthentication, CUSTOM or
    # tokens predicts as before.
    doc = _doc()
    _step(doc, "jwt").update(policies=[], expect=[{"from": "shop/curl", "to": "shop/api", "verdict": "allow"}])
    doc["spec"]["steps"] = [_step(doc, "jwt")]
    s = load(_write(Path(_tmpdir()), doc))
    table = predict(s, s.steps[0], "sidecar", V130)
    assert [row.predicted.verdict for row in table] == ["allow"]


def test_repro_refuses_before_starting_a_mesh() -> None:
    # repro applies before it predicts: the refusal must come first, so no target ever sees what it cannot judge.
    path = _dry_run_custom(Path(_tmpdir()))
    result = subprocess.run([sys.executable, "-m", "conformance.cli", "repro", str(path), "--step", "custom",
                             "--probe", "0", "--mode", "waypoint", "--mesh", "kind"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not a workload of kind ext-authz" in result.stderr and "not modelled" in result.stderr
    assert "repro:" not in result.stdout


def test_cli_predict_refuses_with_the_locations() -> None:
    path = _dry_run_custom(Path(_tmpdir()))
    result = subprocess.run([sys.executable, "-m", "conformance.cli", "predict", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not modelled" in result.stderr and "field spec.provider.name" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "conformance.cli", "predict", str(SCENARIO)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr


# --------------------------------------------------------------------------------------------------
# lint: what Istio accepts but does not do as written


def _lint(tmp_path: Path, mutate: Any = None, modes: list[str] | None = None) -> list[str]:
    doc = _doc()
    if modes:
        doc["spec"]["modes"] = modes
    if mutate:
        mutate(doc)
    return [str(w) for w in warnings(load(_write(tmp_path, doc)), V130)]


def test_lint_warns_about_a_provider_not_in_the_mesh_config(tmp_path: Path) -> None:
    # Istio accepts a CUSTOM policy naming an undefined provider and denies what its rules match (getExtAuthz).
    found = _lint(tmp_path, _policy("custom", 0, lambda p: p["spec"].update(provider={"name": "nowhere"})))
    assert any("step 'custom': policies[0] (AuthorizationPolicy shop/ext-authz): field spec.provider.name: warning: "
               "provider 'nowhere' is not in mesh.extensionProviders" in w and "403 RBAC: access denied" in w
               for w in found), found
    assert not [w for w in _lint(tmp_path) if "spec.provider.name" in w]


@pytest.mark.parametrize(("mutate", "needle"), [
    (_set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.service", "nowhere.shop.svc.cluster.local"),
     "names no workload of the scenario"),
    (_set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.service", "api.shop.svc.cluster.local"),
     "not of kind ext-authz"),
    (_set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.port", 8001), "does not serve it"),
    (_set("spec.mesh.extensionProviders.0.envoyExtAuthzHttp.includeRequestHeadersInCheck", ["*"]),
     "istiod treats as invalid"),
])
def test_lint_warns_about_a_provider_istiod_cannot_use(tmp_path: Path, mutate: Any, needle: str) -> None:
    assert [w for w in _lint(tmp_path, mutate) if needle in w and "spec.provider.name" in w]


def test_lint_warns_that_ztunnel_ignores_custom_and_request_authentication(tmp_path: Path) -> None:
    found = _lint(tmp_path, _policy("custom", 0, lambda p: (p["spec"].pop("targetRefs"), p["spec"].update(
        selector={"matchLabels": {"app": "api"}}))), modes=["sidecar", "ambient"])
    assert any("AuthorizationPolicy shop/ext-authz): field spec.action: warning: in ambient mode ztunnel ignores "
               "CUSTOM" in w for w in found), found
    assert any("RequestAuthentication shop/jwt): field spec.selector: warning: in ambient mode ztunnel does not "
               "check JWTs" in w for w in found), found
    assert not [w for w in found if "RequestAuthentication shop/other" in w]  # targetRefs: a waypoint's
