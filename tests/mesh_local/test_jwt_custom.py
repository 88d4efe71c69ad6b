"""JWT (RequestAuthentication, request principals, claims) and CUSTOM (ext_authz) on the local mesh's real Envoy.

Each test states the complete policy set it needs (apply() is declarative), so the tests of one mode share
one mesh. Every denial is checked with its proof: the JWT filter's message, the CUSTOM policy the shadow
RBAC matched, or istiod's RBAC deny naming the CUSTOM policy.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.mesh.local.mesh import LocalMeshSession, LocalTarget
from conformance.model import ALLOWED, DENIED_AUTHN, DENIED_CUSTOM, DENIED_L4, DENIED_L7
from conformance.probe import DENY_POLICY, EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR, JWT_REJECTED, NO_ALLOW_MATCHED
from tests.mesh_local.jwt_world import (
    CLIENT_A,
    ISSUER,
    TO_WAYPOINT,
    WAYPOINT,
    custom,
    in_header,
    in_param,
    policy,
    probe,
    request_authentication,
    scenario,
    token,
)
from tests.mesh_local.world import echo


def _session(mode: str) -> Iterator[LocalMeshSession]:
    target = LocalTarget()
    world = scenario((WAYPOINT,) if mode == "waypoint" else ())
    reason = target.unavailable(mode, world)  # type: ignore[arg-type]
    if reason:
        pytest.skip(reason)
    with target.start(world, mode) as session:  # type: ignore[arg-type]
        yield session


@pytest.fixture(scope="module")
def sidecar() -> Iterator[LocalMeshSession]:
    yield from _session("sidecar")


@pytest.fixture(scope="module")
def waypoint() -> Iterator[LocalMeshSession]:
    yield from _session("waypoint")


@pytest.fixture(scope="module")
def ambient() -> Iterator[LocalMeshSession]:
    yield from _session("ambient")


def _rejected(obs: object, message: str, status: int = 401) -> None:
    assert obs.outcome == DENIED_AUTHN, obs  # type: ignore[attr-defined]
    assert obs.evidence.status == status and obs.evidence.body.strip() == message  # type: ignore[attr-defined]
    proof = obs.proof  # type: ignore[attr-defined]
    assert proof is not None and proof.kind == JWT_REJECTED and proof.detail == message, proof
    assert proof.proxy in ("sidecar:default/backend", "waypoint:default/waypoint")
    assert "jwt_authn_access_denied{" + message.replace(" ", "_") + "}" in proof.line


# --- sidecar: RequestAuthentication -----------------------------------------------------------------

def test_request_authentication_rejects_bad_tokens_and_lets_a_missing_one_pass(sidecar: LocalMeshSession) -> None:
    sidecar.apply([request_authentication()])
    valid, none, expired, stranger, forged, raw = sidecar.probe([
        probe(jwt=token()), probe(), probe(jwt=token(expired=True)), probe(jwt=token(issuer="other")),
        probe(jwt=token(signature="invalid")), probe(jwt=token(raw="deadbeef")),
    ])
    assert valid.outcome == ALLOWED and none.outcome == ALLOWED, (valid, none)
    assert valid.proof is not None and not valid.proof.denied
    # forwardOriginalToken unset (forward: false): the filter strips the verified token from the request
    assert "authorization" not in echo(valid.evidence.body)["headers"]
    _rejected(expired, "Jwt is expired")
    _rejected(stranger, "Jwt issuer is not configured")
    _rejected(forged, "Jwt verification fails")
    assert raw.outcome == DENIED_AUTHN and raw.proof is not None and raw.proof.kind == JWT_REJECTED
    assert raw.proof.detail is not None and raw.proof.detail.startswith("Jwt is not in the form of")


def test_a_wrong_audience_is_403_from_the_jwt_filter(sidecar: LocalMeshSession) -> None:
    sidecar.apply([request_authentication(audiences=["foo"])])
    good, bad, listed, none = sidecar.probe([probe(jwt=token(aud="foo")), probe(jwt=token(aud="bar")),
                                             probe(jwt=token(aud=("x", "foo"))), probe(jwt=token())])
    assert good.outcome == ALLOWED and listed.outcome == ALLOWED, (good, listed)
    _rejected(bad, "Audiences in Jwt are not allowed", status=403)
    _rejected(none, "Audiences in Jwt are not allowed", status=403)


def test_token_locations_follow_from_headers_and_from_params(sidecar: LocalMeshSession) -> None:
    ra = request_authentication(fromHeaders=[{"name": "x-jwt-token", "prefix": "Value "}], fromParams=["token"])
    allow = policy("allow-alice", {"rules": [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice"]}}]}]})
    sidecar.apply([ra, allow])
    header, param, bearer, expired_param = sidecar.probe([
        probe(jwt=token(location=in_header("x-jwt-token", "Value "))),
        probe("/p?x=1", jwt=token(location=in_param("token"))),
        probe(jwt=token()),  # Authorization: Bearer is not read once fromHeaders is set
        probe(jwt=token(expired=True, location=in_param("token"))),
    ])
    assert header.outcome == ALLOWED and param.outcome == ALLOWED, (header, param)
    # forward: false strips the verified token from the query too in Envoy 1.40 (older Envoys left it there)
    assert echo(param.evidence.body)["query"] == "x=1"
    assert bearer.outcome == DENIED_L7 and bearer.proof is not None and bearer.proof.kind == NO_ALLOW_MATCHED
    _rejected(expired_param, "Jwt is expired")


def test_request_principals_and_claims_allow_and_deny(sidecar: LocalMeshSession) -> None:
    allow = policy("allow", {"rules": [
        {"from": [{"source": {"requestPrincipals": ["testing@secure.istio.io/alice"]}}]},
        {"when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]},
        {"when": [{"key": "request.auth.claims[nested][key]", "values": ["v*"]}]},
        {"when": [{"key": "request.auth.audiences", "values": ["aud-1"]},
                  {"key": "request.auth.presenter", "values": ["app"]}]},
    ]})
    deny = policy("deny", {"action": "DENY", "rules": [
        {"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/secure"]}}]}]})
    sidecar.apply([request_authentication(), allow, deny])
    alice, bob, group_list, group_string, nested, aud_azp, none, secure_alice, secure_none, no_sub = sidecar.probe([
        probe(jwt=token()), probe(jwt=token("bob")),
        probe(jwt=token("bob", claims_json='{"groups":["users","admins"]}')),
        probe(jwt=token("bob", claims_json='{"groups":"admins"}')),
        probe(jwt=token("bob", claims_json='{"nested":{"key":"value"}}')),
        probe(jwt=token("bob", aud=("aud-0", "aud-1"), azp="app")),
        probe(), probe("/secure", jwt=token()), probe("/secure"), probe("/secure", jwt=token(None)),
    ])
    for obs, rule in ((alice, 0), (group_list, 1), (group_string, 1), (nested, 2), (aud_azp, 3), (secure_alice, 0)):
        assert obs.outcome == ALLOWED, obs
        assert obs.proof is not None and (obs.proof.policy, obs.proof.rule) == ("default/allow", rule), obs.proof
    for obs in (bob, none):
        assert obs.outcome == DENIED_L7 and obs.proof is not None and obs.proof.kind == NO_ALLOW_MATCHED, obs
    for obs in (secure_none, no_sub):  # a valid token without `sub` is no request principal: `*` needs both
        assert obs.outcome == DENIED_L7 and obs.proof is not None, obs
        assert (obs.proof.kind, obs.proof.policy, obs.proof.rule) == (DENY_POLICY, "default/deny", 0), obs.proof


def test_the_jwt_filter_runs_before_rbac(sidecar: LocalMeshSession) -> None:
    """An invalid token is 401 even where an ALLOW opens the path to everyone (jwt_authn before RBAC)."""
    open_health = policy("open", {"rules": [{"to": [{"operation": {"paths": ["/healthz"]}}]}]})
    sidecar.apply([request_authentication(), open_health])
    [obs] = sidecar.probe([probe("/healthz", jwt=token(expired=True))])
    _rejected(obs, "Jwt is expired")


# --- sidecar: CUSTOM -------------------------------------------------------------------------------

def test_custom_http_provider_decides_only_the_requests_its_rules_match(sidecar: LocalMeshSession) -> None:
    sidecar.apply([custom("http")])
    before = len(sidecar.ext_authz_decisions())
    allowed, denied, untouched = sidecar.probe([probe("/headers", [("x-ext-authz", "allow")]),
                                                probe("/headers", [("x-ext-authz", "deny")]),
                                                probe("/ip", [("x-ext-authz", "deny")])])
    assert allowed.outcome == ALLOWED and untouched.outcome == ALLOWED, (allowed, untouched)
    # headersToUpstreamOnAllow: the server's verdict header reaches the app
    assert echo(allowed.evidence.body)["headers"]["x-ext-authz-check-result"] == "allowed"
    assert denied.outcome == DENIED_CUSTOM and denied.evidence.status == 403, denied
    assert denied.proof is not None
    assert (denied.proof.kind, denied.proof.policy) == (EXT_AUTHZ_DENIED, "default/ext-http")
    assert '"istio_ext_authz_shadow_effective_policy_id":"istio-ext-authz-http-ns[default]-policy[ext-http]-rule[0]"' \
        in denied.proof.line
    decisions = sidecar.ext_authz_decisions()[before:]
    assert sorted(d["decision"] for d in decisions) == ["allowed", "denied"]  # /ip was never checked
    assert {d["protocol"] for d in decisions} == {"http"} and {d["path"] for d in decisions} == {"/headers"}


def test_custom_grpc_provider_on_http_and_tcp(sidecar: LocalMeshSession) -> None:
    sidecar.apply([custom("grpc"), policy("ext-grpc-tcp", {"action": "CUSTOM", "provider": {"name": "grpc"},
                                                             "rules": [{"to": [{"operation": {"ports": ["9100"]}}]}]})])
    allowed, denied, frontend_tcp, client_a_tcp = sidecar.probe([
        probe("/headers", [("x-ext-authz", "allow")]), probe("/headers", [("x-ext-authz", "deny")]),
        probe(port=9100), probe(src=CLIENT_A, port=9100),
    ])
    assert allowed.outcome == ALLOWED, allowed
    assert denied.outcome == DENIED_CUSTOM and denied.proof is not None, denied
    assert (denied.proof.kind, denied.proof.policy) == (EXT_AUTHZ_DENIED, "default/ext-grpc")
    # TCP: network ext_authz; the sample allows a connection without headers iff the peer's SA is `a`
    assert client_a_tcp.outcome == ALLOWED, client_a_tcp
    assert frontend_tcp.outcome == DENIED_L4 and frontend_tcp.proof is not None, frontend_tcp
    assert (frontend_tcp.proof.kind, frontend_tcp.proof.policy) == (EXT_AUTHZ_DENIED, "default/ext-grpc-tcp")
    assert {d["protocol"] for d in sidecar.ext_authz_decisions()} >= {"grpc"}


def test_an_http_provider_is_skipped_on_tcp_chains(sidecar: LocalMeshSession) -> None:
    sidecar.apply([policy("ext-http-all", {"action": "CUSTOM", "provider": {"name": "http"}, "rules": [{}]})])
    [tcp] = sidecar.probe([probe(port=9100)])
    assert tcp.outcome == ALLOWED, tcp


def test_unreachable_provider_fails_closed_with_status_on_error_or_open(sidecar: LocalMeshSession) -> None:
    sidecar.apply([custom("closed")])
    closed, untouched = sidecar.probe([probe("/headers", [("x-ext-authz", "allow")]), probe("/ip")])
    assert closed.outcome == DENIED_CUSTOM and closed.evidence.status == 503 and closed.evidence.body == "", closed
    assert closed.proof is not None
    assert (closed.proof.kind, closed.proof.policy) == (EXT_AUTHZ_ERROR, "default/ext-closed")
    assert untouched.outcome == ALLOWED
    sidecar.apply([custom("open")])
    [opened] = sidecar.probe([probe("/headers")])
    assert opened.outcome == ALLOWED, opened


def test_bad_providers_become_istiods_rbac_deny_naming_the_custom_policy(sidecar: LocalMeshSession) -> None:
    sidecar.apply([custom("missing")])
    missing, other = sidecar.probe([probe("/headers", [("x-ext-authz", "allow")]), probe("/ip")])
    assert missing.outcome == DENIED_L7 and other.outcome == ALLOWED, (missing, other)
    assert missing.proof is not None
    assert (missing.proof.kind, missing.proof.policy, missing.proof.rule) == (DENY_POLICY, "default/ext-missing", 0)
    assert "-deny-due-to-bad-CUSTOM-action]" in missing.proof.line
    # two providers at one workload (PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS off): every CUSTOM rule denies
    sidecar.apply([custom("http", ["/a"], name="c1"), custom("grpc", ["/b"], name="c2")])
    a, b, c = sidecar.probe([probe("/a", [("x-ext-authz", "allow")]), probe("/b", [("x-ext-authz", "allow")]),
                             probe("/c")])
    assert [o.outcome for o in (a, b, c)] == [DENIED_L7, DENIED_L7, ALLOWED]
    assert a.proof is not None and b.proof is not None
    assert (a.proof.policy, b.proof.policy) == ("default/c1", "default/c2")


def test_dry_run_custom_policy_enforces_as_a_deny_at_1_30(sidecar: LocalMeshSession) -> None:
    """builder.go@1.30: a dry-run CUSTOM policy's rules go into the pair's `rules` (action DENY), which Envoy
    enforces: the request gets `RBAC: access denied` from the CUSTOM shadow filter, naming that policy."""
    sidecar.apply([custom("http", ["/dry"], name="dry", annotations={"istio.io/dry-run": "true"})])
    dry, other = sidecar.probe([probe("/dry", [("x-ext-authz", "allow")]), probe("/other")])
    assert dry.outcome == DENIED_L7 and other.outcome == ALLOWED, (dry, other)
    assert dry.proof is not None and (dry.proof.kind, dry.proof.policy) == (DENY_POLICY, "default/dry")


def test_custom_runs_before_the_jwt_filter(sidecar: LocalMeshSession) -> None:
    sidecar.apply([request_authentication(), custom("http")])
    checked, unchecked = sidecar.probe([probe("/headers", [("x-ext-authz", "deny")], jwt=token(expired=True)),
                                        probe("/ip", jwt=token(expired=True))])
    assert checked.outcome == DENIED_CUSTOM, checked
    _rejected(unchecked, "Jwt is expired")


# --- waypoint -------------------------------------------------------------------------------------

def test_waypoint_applies_target_refs_request_authentication_only(waypoint: LocalMeshSession) -> None:
    waypoint.apply([request_authentication()])  # selector: ignored by waypoints, and ztunnel has no JWT filter
    [ignored] = waypoint.probe([probe(jwt=token(expired=True))])
    assert ignored.outcome == ALLOWED, ignored
    allow = policy("allow", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}, TO_WAYPOINT)
    waypoint.apply([request_authentication(attach=TO_WAYPOINT), allow])
    valid, expired, none = waypoint.probe([probe(jwt=token()), probe(jwt=token(expired=True)), probe()])
    assert valid.outcome == ALLOWED and valid.proof is not None and valid.proof.proxy == "waypoint:default/waypoint"
    _rejected(expired, "Jwt is expired")
    assert none.outcome == DENIED_L7 and none.proof is not None and none.proof.kind == NO_ALLOW_MATCHED, none
    # the verified token's payload is the JWT filter's dynamic metadata at the waypoint, which RBAC matched on
    records = [r for r in waypoint.access_log("default/waypoint") if (r.get("jwt") or {}).get("payload")]
    assert records and records[-1]["jwt"]["payload"]["sub"] == "alice"


def test_waypoint_custom_provider(waypoint: LocalMeshSession) -> None:
    waypoint.apply([custom("http", attach=TO_WAYPOINT), custom("grpc", ["/g"], name="selector-ignored")])
    allowed, denied, untouched = waypoint.probe([probe("/headers", [("x-ext-authz", "allow")]),
                                                 probe("/headers", [("x-ext-authz", "deny")]), probe("/ip")])
    assert allowed.outcome == ALLOWED and untouched.outcome == ALLOWED, (allowed, untouched)
    assert denied.outcome == DENIED_CUSTOM and denied.proof is not None
    assert (denied.proof.kind, denied.proof.policy, denied.proof.proxy) == (
        EXT_AUTHZ_DENIED, "default/ext-http", "waypoint:default/waypoint")


def test_waypoint_custom_grpc_provider_on_a_tcp_port(waypoint: LocalMeshSession) -> None:
    """The waypoint's TCP chain gets the network ext_authz (gRPC providers only); the sample finds no source
    principal there (the waypoint's inner listener has no TLS peer), so it denies a TCP connection."""
    tcp = policy("ext-grpc-tcp", {"action": "CUSTOM", "provider": {"name": "grpc"},
                                  "rules": [{"to": [{"operation": {"ports": ["9100"]}}]}]}, TO_WAYPOINT)
    waypoint.apply([tcp])
    tcp_obs, http_obs = waypoint.probe([probe(port=9100), probe()])
    assert tcp_obs.outcome == DENIED_L4 and tcp_obs.proof is not None, tcp_obs
    assert (tcp_obs.proof.kind, tcp_obs.proof.policy, tcp_obs.proof.proxy) == (
        EXT_AUTHZ_DENIED, "default/ext-grpc-tcp", "waypoint:default/waypoint")
    assert http_obs.outcome == ALLOWED, http_obs


# --- ambient (ztunnel only) -----------------------------------------------------------------------

def test_ztunnel_ignores_request_authentication_and_custom(ambient: LocalMeshSession) -> None:
    ambient.apply([request_authentication(), custom("http", ["/*"])])
    [obs] = ambient.probe([probe("/headers", [("x-ext-authz", "deny")], jwt=token(expired=True))])
    assert obs.outcome == ALLOWED and obs.proof is not None and obs.proof.proxy == "ztunnel:default/backend", obs


def test_ztunnel_drops_allow_rules_and_strips_deny_rules_with_jwt_fields(ambient: LocalMeshSession) -> None:
    ambient.apply([policy("allow", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]})])
    [allow] = ambient.probe([probe(jwt=token())])
    assert allow.outcome == DENIED_L4 and allow.proof is not None and allow.proof.kind == NO_ALLOW_MATCHED, allow
    no_token = {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}
    ambient.apply([policy("deny", no_token)])
    [deny] = ambient.probe([probe()])
    assert deny.outcome == ALLOWED, deny


# --- refusals -------------------------------------------------------------------------------------

def test_a_request_authentication_without_inline_keys_is_refused() -> None:
    from dataclasses import replace

    from conformance.model import Step

    ra = request_authentication(jwks=None)
    ra.body["spec"]["jwtRules"][0].pop("jwks")  # type: ignore[index]
    ra.body["spec"]["jwtRules"][0]["jwksUri"] = "https://example.com/jwks.json"  # type: ignore[index]
    world = replace(scenario(), steps=(Step("s", (ra,), ()),))
    reason = LocalTarget().refusal(world, "sidecar")
    assert reason is not None and "jwksUri" in reason and "default/jwt" in reason
    assert LocalTarget().refusal(world, "ambient") is None  # ztunnel applies no RequestAuthentication
