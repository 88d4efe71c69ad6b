"""The propagation barrier: which proxy must hold which policy, and the wait itself on a fake clock."""

from __future__ import annotations

import json

from conformance.mesh.cluster.barrier import (
    Proxy,
    expectations,
    observable,
    policy_ids_in,
    wait,
    ztunnel_policies,
)
from conformance.model import Manifest


def ap(name: str, ns: str, spec: dict, annotations: dict | None = None) -> Manifest:
    meta = {"name": name, "namespace": ns, **({"annotations": annotations} if annotations else {})}
    return Manifest("AuthorizationPolicy", "security.istio.io/v1", name, ns,
                    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta,
                     "spec": spec}, "test")


SIDECAR = Proxy("sidecar", "accounts-1", "a", {"app": "accounts"})
OTHER = Proxy("sidecar", "other-1", "a", {"app": "other"})
ZTUNNEL = Proxy("ztunnel", "ztunnel-x", "istio-system")
WAYPOINT = Proxy("waypoint", "waypoint-1", "a", gateway="waypoint", serves_namespaces=frozenset({"a"}))


def test_policy_ids_in_config_dump():
    dump = json.dumps({"policies": {"ns[a]-policy[deny-all]-rule[0]": {}, "ns[b]-policy[x]-rule[3]": {}}})
    assert policy_ids_in(dump) == {"a/deny-all", "b/x"}
    assert ztunnel_policies([{"name": "p", "namespace": "a"}, "junk"]) == {"a/p"}
    assert ztunnel_policies({"not": "a list"}) == set()


def test_scoping_by_namespace_selector_root_and_target_refs():
    ns_wide = ap("all", "a", {})
    selected = ap("sel", "a", {"selector": {"matchLabels": {"app": "accounts"}}, "action": "DENY",
                               "rules": [{}]})
    root = ap("root", "istio-system", {"action": "DENY", "rules": [{}]})
    elsewhere = ap("else", "b", {})
    waypoint_ref = ap("wp", "a", {"targetRefs": [{"kind": "Service", "group": "", "name": "accounts"}]})
    gateway_ref = ap("gw", "a", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                 "name": "waypoint"}]})
    audit = ap("audit", "a", {"action": "AUDIT", "rules": [{}]})
    dry = ap("dry", "a", {"action": "DENY", "rules": [{}]}, {"istio.io/dry-run": "true"})
    policies = [ns_wide, selected, root, elsewhere, waypoint_ref, gateway_ref, audit, dry]
    exp = {e.proxy.name: e for e in expectations([SIDECAR, OTHER, ZTUNNEL, WAYPOINT], policies, [], "istio-system",
                                                  frozenset({"a"}))}
    assert exp["accounts-1"].present == {"a/all", "a/sel", "istio-system/root", "a/dry"}
    assert exp["other-1"].present == {"a/all", "istio-system/root", "a/dry"}
    assert exp["ztunnel-x"].present == {"a/all", "a/sel", "istio-system/root"}  # no dry-run, no L7 targets
    assert exp["waypoint-1"].present == {"a/wp", "a/gw"}


def test_allow_rules_on_a_tcp_only_sidecar_are_not_waited_for():
    tcp = Proxy("sidecar", "db-1", "a", {"app": "db"}, http=False)
    allow_rules = ap("allow-get", "a", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    deny_all = ap("deny", "a", {"action": "DENY", "rules": [{}]})
    (e,) = expectations([tcp], [allow_rules, deny_all], [], "istio-system")
    assert e.present == {"a/deny"}


def test_removed_policies_must_be_gone():
    old = ap("old", "a", {})
    (e,) = expectations([SIDECAR], [], [old], "istio-system")
    assert e.present == frozenset() and e.absent == {"a/old"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_returns_once_every_proxy_holds_the_step():
    clock = Clock()
    (e,) = expectations([SIDECAR], [ap("new", "a", {})], [ap("old", "a", {})], "istio-system")
    views = iter([{"a/old"}, None, {"a/old", "a/new"}, {"a/new"}])
    result = wait([e], lambda proxy: next(views), timeout=30, clock=clock, sleep=clock.sleep, interval=0.25)
    assert result.reached and result.polls == 4
    assert clock.sleeps == [0.25, 0.5, 1.0]
    assert result.seconds == 1.75


def test_wait_times_out_and_says_what_is_missing():
    clock = Clock()
    (e,) = expectations([SIDECAR], [ap("new", "a", {})], [ap("old", "a", {})], "istio-system")
    result = wait([e], lambda proxy: {"a/old"}, timeout=5, clock=clock, sleep=clock.sleep)
    assert not result.reached and result.seconds >= 5
    assert result.pending == ["sidecar:a/accounts-1: missing a/new", "sidecar:a/accounts-1: still has a/old"]
    unreadable = wait([e], lambda proxy: None, timeout=1, clock=clock, sleep=clock.sleep)
    assert unreadable.pending == ["sidecar:a/accounts-1: configuration not readable"]


def test_nothing_to_wait_for():
    assert wait([], lambda proxy: set(), clock=Clock()).reached


def test_only_the_active_listener_state_counts() -> None:
    """A rejected or warming listener is not in force and a draining one no longer decides (review of the
    barrier against Envoy's ListenersConfigDump.DynamicListener): only `active_state` is read."""
    from conformance.mesh.cluster.barrier import active_policy_ids
    from tests.cluster.envoy_dump import listeners_dump

    dump = listeners_dump(["ns[a]-policy[on]-rule[0]"], warming=["ns[a]-policy[warm]-rule[0]"],
                          draining=["ns[a]-policy[old]-rule[0]"], rejected=["ns[a]-policy[bad]-rule[0]"])
    assert active_policy_ids(dump) == {"a/on"}
    assert active_policy_ids("not json") is None
    assert active_policy_ids('{"something": "else"}') is None


def test_allow_deny_and_custom_policies_are_observable_audit_and_peer_authentication_are_not():
    """The barrier waits for ALLOW (the default), DENY and CUSTOM policies (the module docstring says how each
    shows in a proxy); AUDIT and PeerAuthentication are applied unobserved, which session.py reports."""
    assert observable(ap("allow", "a", {})) and observable(ap("deny", "a", {"action": "DENY"}))
    assert observable(ap("c", "a", {"action": "CUSTOM", "provider": {"name": "p"}}))
    assert not observable(ap("audit", "a", {"action": "AUDIT"}))
    peer = Manifest("PeerAuthentication", "security.istio.io/v1", "strict", "a",
                    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                     "metadata": {"name": "strict", "namespace": "a"}, "spec": {"mtls": {"mode": "STRICT"}}}, "test")
    assert not observable(peer)


def test_side_by_side_a_step_waits_until_another_scenarios_mesh_wide_policy_is_gone():
    """Review finding: a mesh-wide scenario's close waited for its own proxies only, so its root policy could
    linger in another scenario's proxies into that scenario's next step. With a root baseline every proxy
    is checked, even when the step itself changes nothing; the cluster's own root policies (the baseline),
    the step's own, and istiod's synthetic ones (names with "_") are not foreign."""
    clock = Clock()
    mine = ap("mine", "istio-system", {"selector": {"matchLabels": {"app": "accounts"}}, "action": "DENY",
                                        "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]})
    (e,) = expectations([SIDECAR], [mine], [], "istio-system", root_baseline=frozenset({"istio-system/owner"}))
    assert expectations([SIDECAR], [], [], "istio-system") == []  # one at a time: nothing to wait for
    views = iter([{"istio-system/mine", "istio-system/mesh-deny", "istio-system/owner"},
                  {"istio-system/mine", "istio-system/owner", "istio-system/istio_converted_static_strict"}])
    result = wait([e], lambda proxy: next(views), timeout=30, clock=clock, sleep=clock.sleep, interval=0.25)
    assert result.reached and result.polls == 2
    stuck = wait([e], lambda proxy: {"istio-system/mine", "istio-system/mesh-deny"}, timeout=1, clock=clock,
                 sleep=clock.sleep)
    assert stuck.pending == ["sidecar:a/accounts-1: still has another scenario's mesh-wide istio-system/mesh-deny"]


def test_the_steps_own_root_policies_are_never_foreign_even_where_not_predicted():
    """Review finding: an AUDIT root policy is named in a sidecar's RBAC though the barrier does not wait for it;
    it is the step's own, not another scenario's."""
    audit = ap("audit", "istio-system", {"action": "AUDIT", "rules": [{}]})
    (e,) = expectations([SIDECAR], [audit], [], "istio-system", root_baseline=frozenset())
    assert e.present == frozenset() and e.foreign({"istio-system/audit"}) == []
    assert e.foreign({"istio-system/audit", "istio-system/other"}) == ["istio-system/other"]


def ra(name: str, ns: str, spec: dict) -> Manifest:
    return Manifest("RequestAuthentication", "security.istio.io/v1", name, ns,
                    {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                     "metadata": {"name": name, "namespace": ns}, "spec": spec}, "test")


def test_custom_policies_show_as_their_shadow_rules_or_istiods_bad_provider_deny():
    """builder.go policyName with IsCustomBuilder (`istio-ext-authz-<provider>-ns[..]..`) and badCustomActionSuffix:
    a CUSTOM policy is in force with its provider only in the first form; the plain ids stay plain."""
    dump = json.dumps({"policies": {
        "istio-ext-authz-az1-sample-ns[a]-policy[ext]-rule[0]": {},
        "istio-ext-authz-az1-gone-ns[a]-policy[bad]-rule[0]-deny-due-to-bad-CUSTOM-action": {},
        "ns[a]-policy[deny-all]-rule[0]": {}}})
    assert policy_ids_in(dump) == {"custom:a/ext", "custom-bad:a/bad", "a/deny-all"}


def test_jwt_issuers_are_read_from_the_jwt_filter_of_the_active_listeners():
    """pilot/pkg/security/authn policy_applier.go: one provider per jwtRule, each with its issuer."""
    from conformance.mesh.cluster.barrier import active_policy_ids

    filt = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"origins-0": {"issuer": "testing@secure.istio.io"}, "origins-1": {"issuer": "other"}}}}
    dump = json.dumps({"configs": [{"active_state": {"listener": {"filter_chains": [{"filters": [filt]}]}}},
                                   {"warming_state": {"listener": {"issuer": "not-active"}}}]})
    assert active_policy_ids(dump) == {"jwt:testing@secure.istio.io", "jwt:other"}


def test_custom_and_request_authentication_expectations_per_proxy():
    """Which proxy must show a CUSTOM policy or a RequestAuthentication, and in which form."""
    http_provider = ap("ext", "a", {"action": "CUSTOM", "provider": {"name": "p-http"}, "rules": [{}]})
    grpc_provider = ap("extg", "a", {"action": "CUSTOM", "provider": {"name": "p-grpc"}, "rules": [{}]})
    unknown = ap("bad", "a", {"action": "CUSTOM", "provider": {"name": "nowhere"}, "rules": [{}]})
    at_waypoint = ap("wp", "a", {"action": "CUSTOM", "provider": {"name": "p-http"}, "rules": [{}],
                                 "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                 "name": "waypoint"}]})
    jwt = ra("jwt", "a", {"jwtRules": [{"issuer": "iss-1"}]})
    providers = {"p-http": "http", "p-grpc": "grpc"}
    tcp_only = Proxy("sidecar", "db-1", "a", {"app": "db"}, http=False)
    exp = {e.proxy.label: e for e in expectations(
        [SIDECAR, tcp_only, ZTUNNEL, WAYPOINT], [http_provider, grpc_provider, unknown, at_waypoint, jwt], [],
        "istio-system", frozenset({"a"}), providers=providers)}
    assert exp[SIDECAR.label].present == {"custom:a/ext", "custom:a/extg", "custom-bad:a/bad", "jwt:iss-1"}
    # a TCP chain: no JWT filter, no HTTP provider's ext_authz; a gRPC provider's network filter and the deny are there
    assert exp[tcp_only.label].present == {"custom:a/extg", "custom-bad:a/bad"}
    assert ZTUNNEL.label not in exp  # ztunnel gets no CUSTOM and does no JWT (ambient authorization.go)
    assert exp[WAYPOINT.label].present == {"custom:a/wp"}
    # removing a CUSTOM policy waits until neither of its forms is left
    gone = expectations([SIDECAR], [], [http_provider, jwt], "istio-system", providers=providers)
    assert gone[0].absent == {"custom:a/ext", "custom-bad:a/ext", "jwt:iss-1"}


def test_a_custom_policy_in_the_bad_form_is_not_yet_in_force():
    """Before istiod loaded the provider it built the RBAC DENY; the barrier keeps waiting for the real form."""
    custom = ap("ext", "a", {"action": "CUSTOM", "provider": {"name": "p"}, "rules": [{}]})
    expected = expectations([SIDECAR], [custom], [], "istio-system", providers={"p": "http"})
    states = iter([{"custom-bad:a/ext"}, {"custom:a/ext"}])
    clock = iter(range(100))
    result = wait(expected, lambda proxy: next(states), clock=lambda: float(next(clock)), sleep=lambda s: None)
    assert result.reached and result.polls == 2


def test_an_ingress_gateway_holds_the_policies_istiod_attaches_to_it():
    """policyattachment.go ShouldAttachPolicy: a classic gateway pod as any workload (selector, namespace, root; a
    targetRefs policy never); with gateway.networking.k8s.io/gateway-name, also targetRefs to that Gateway in its
    namespace, and policies without targetRefs still by selector (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY)."""
    classic = Proxy("gateway", "ingress-1", "edge", {"istio": "ingressgateway"})
    named = Proxy("gateway", "named-1", "edge", {"istio": "ingressgateway",
                                                 "gateway.networking.k8s.io/gateway-name": "public"})
    selected = ap("sel", "edge", {"selector": {"matchLabels": {"istio": "ingressgateway"}}})
    root = ap("root", "istio-system", {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
                                       "rules": [{}]})
    other = ap("other", "edge", {"selector": {"matchLabels": {"istio": "egressgateway"}}})
    to_public = ap("ref", "edge", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                   "name": "public"}]})
    to_elsewhere = ap("ref2", "shop", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                       "name": "public"}]})
    exp = {e.proxy.name: e for e in expectations([classic, named], [selected, root, other, to_public, to_elsewhere],
                                                  [], "istio-system")}
    assert exp["ingress-1"].present == {"edge/sel", "istio-system/root"}
    assert exp["named-1"].present == {"edge/sel", "istio-system/root", "edge/ref"}
