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


def test_only_allow_and_deny_policies_are_observable():
    """The barrier waits for ALLOW (the default) and DENY policies only (the module docstring says why); anything
    else is applied unobserved, which session.py reports."""
    assert observable(ap("allow", "a", {})) and observable(ap("deny", "a", {"action": "DENY"}))
    assert not observable(ap("audit", "a", {"action": "AUDIT"})) and not observable(ap("c", "a", {"action": "CUSTOM"}))
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
