"""The Istio release the local mesh emulates: `Release.of` at every boundary, and the compiler honouring it.

Why: `--istio-version 1.29.2` on the local mesh must compile what istiod 1.29.2 generated (the unquoted
regexes of #59992 and #59700, dry-run policies sent to ztunnel before 1.25.2, no GatewayClass binding
before 1.25), and refuse what it cannot emulate, naming the release and the behaviour. The flags are
read from the one table of behaviour changes (conformance.versions.CHANGES); they are checked here
against the boundaries the release notes give and, at every modelled release, against what the verdict
engine makes of the same release.
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.engine.policy import TargetRef, compile_authorization_policy
from conformance.engine.proxy import EnvoySemantics
from conformance.engine.scope import GATEWAY_GROUP, binds_waypoint
from conformance.errors import TargetUnavailable, UsageError
from conformance.mesh import make_target
from conformance.mesh.local import ztunnel
from conformance.mesh.local.authz import select_waypoint_policies, sidecar_http_filters, unemulated
from conformance.mesh.local.mesh import LocalTarget
from conformance.mesh.local.rbac import service_account_regex, string_matcher_with_prefix
from conformance.mesh.local.release import Release, unquoted_hazard
from conformance.model import MeshConfig, Scenario, Step, Waypoint, Workload
from conformance.versions import MODELLED_VERSIONS, IstioVersion
from tests.mesh.envoy_support import manifest

MESH = MeshConfig()
API = Workload("api", "shop", "api", {"app": "api"})
WAYPOINT = Waypoint("waypoint", "shop")
GW = "gateway.networking.k8s.io"


@pytest.mark.parametrize(("version", "expected"), [
    ("1.28.6", False), ("1.28.7", True), ("1.29.2", False), ("1.29.3", True), ("1.30.0", True),
    ("1.27.9", False), ("1.22.0", False), ("1.30.3", True), ("1.31.0", True),
])
def test_quotes_namespaces_from_1_28_7_1_29_3_1_30_0(version: str, expected: bool) -> None:
    """istio/istio#59992, releasenotes/notes/59992.yaml: backported to 1.28.7 and 1.29.3, in 1.30.0."""
    assert Release.of(version).quotes_namespaces is expected


@pytest.mark.parametrize(("version", "expected"), [
    ("1.25.0", False), ("1.27.8", False), ("1.27.9", True), ("1.28.5", False), ("1.28.6", True),
    ("1.29.1", False), ("1.29.2", True), ("1.30.0", True),
])
def test_quotes_service_accounts_from_1_27_9_1_28_6_1_29_2(version: str, expected: bool) -> None:
    """istio/istio#59700, releasenotes/notes/59700.yaml."""
    assert Release.of(version).quotes_service_accounts is expected


@pytest.mark.parametrize(("version", "expected"), [
    ("1.22.0", True), ("1.24.6", True), ("1.25.0", True), ("1.25.1", True), ("1.25.2", False),
    ("1.26.0", False), ("1.30.3", False), ("1.31.0", False),
])
def test_ztunnel_receives_dry_run_before_1_25_2(version: str, expected: bool) -> None:
    """istio/istio#55414, in 1.25.2 as #55709; 1.26.0 branched after it."""
    assert Release.of(version).ztunnel_receives_dry_run is expected


@pytest.mark.parametrize(("version", "binds", "attachment"), [
    ("1.22.0", False, "1.22"), ("1.23.6", False, "1.22"), ("1.24.0", False, "1.24"), ("1.24.6", False, "1.24"),
    ("1.25.0", True, "1.25"), ("1.30.3", True, "1.25"), ("1.31.0", True, "1.25"),
])
def test_waypoint_binding_by_release(version: str, binds: bool, attachment: str) -> None:
    """releasenotes/notes/54780.yaml (1.25.0); policyattachment.go / authorization.go at each tag."""
    release = Release.of(version)
    assert (release.gateway_class_binds_waypoints, release.waypoint_attachment) == (binds, attachment)


def test_release_of_a_minor_is_its_newest_patch_and_unmodelled_releases_are_refused() -> None:
    assert Release.of("1.29").version == (1, 29, 6)
    assert Release.of(None) == Release.newest() == Release.of("1.30.5")
    assert Release.of("1.31").version == (1, 31, 0)
    assert str(Release.of("v1.25.1")) == "Istio 1.25.1"
    for bad in ("1.31.1", "1.32", "1.30.9", "1.21.0", "nonsense"):
        with pytest.raises(UsageError):
            Release.of(bad)


def test_1_31_0_emulates_1_30_but_for_the_envoy_path_fix() -> None:
    """1.31.0 keeps 1.30.3's istiod behaviour for every flag (docs/istio-versions.md); of 1.30.4's Envoy
    fixes it lacks CVE-2026-73551 (its Envoy bee0843e is of 2026-08-20, Envoy 1.39.1 of 2026-08-26)."""
    from dataclasses import asdict

    old, new, patched = Release.of("1.30.3"), Release.of("1.31.0"), Release.of("1.30.4")
    assert {**asdict(old), "version": None} == {**asdict(new), "version": None}
    assert not old.strips_dot_segment_parameters and patched.strips_dot_segment_parameters
    assert Release.of("1.30.5").strips_dot_segment_parameters and not Release.of("1.29.6").strips_dot_segment_parameters
    guard = {"envoy.reloadable_features.strip_dotdot_segments_with_parameters": False}
    assert new.runtime_layer() == old.runtime_layer() == guard and patched.runtime_layer() == {}


@pytest.mark.parametrize("version", MODELLED_VERSIONS, ids=lambda v: "{}.{}.{}".format(*v))
def test_flags_agree_with_the_engine_at_every_modelled_release(version: tuple[int, int, int]) -> None:
    """The local mesh's Release and the engine's EnvoySemantics / scope.binds_waypoint read the same
    versions.CHANGES entries: each side must wire them to the same behaviour."""
    v = IstioVersion(*version)
    release, envoy = Release.of(v), EnvoySemantics("cluster.local", v)
    assert release.quotes_namespaces == envoy.quotes_namespaces
    assert release.quotes_service_accounts == envoy.quotes_service_accounts
    policy = manifest("p", "istio-system", {"targetRefs": [{"group": GW, "kind": "GatewayClass",
                                                            "name": "istio-waypoint"}]})
    engine_binds = binds_waypoint(TargetRef(GATEWAY_GROUP, "GatewayClass", "istio-waypoint", ""),
                                  compile_authorization_policy(policy), WAYPOINT, API, MESH, v)
    assert bool(select_waypoint_policies([policy], WAYPOINT, API, MESH, release)) == engine_binds


# --- the compiler at a release ------------------------------------------------------------------------


def _principal_regexes(policies: list[Any], release: Release) -> list[str]:
    """Every regex of the ALLOW filter's principals, as a flat list."""
    import json
    import re

    (allow,) = sidecar_http_filters(policies, MESH, {}, release)
    return re.findall(r'"regex": "((?:[^"\\]|\\.)*)"', json.dumps(allow))


def test_namespaces_and_suffix_principals_unquoted_before_59992() -> None:
    """generator.go srcNamespaceGenerator and string.go StringMatcherWithPrefix at 1.29.2 vs 1.29.3."""
    policy = manifest("p", "shop", {"rules": [{"from": [{"source": {
        "namespaces": ["sh.p*"], "principals": ["*cluster.local/ns/shop/sa/web"]}}]}]})
    old = _principal_regexes([policy], Release.of("1.29.2"))
    new = _principal_regexes([policy], Release.of("1.29.3"))
    assert ".*/ns/sh.p.*/.*" in old and "spiffe://.*cluster.local/ns/shop/sa/web" in old
    assert ".*/ns/sh\\\\.p.*/.*" in new and "spiffe://.*cluster\\\\.local/ns/shop/sa/web" in new
    assert string_matcher_with_prefix("*a.b", "spiffe://", quote=False) == {"safe_regex": {"regex": "spiffe://.*a.b"}}


def test_service_accounts_unquoted_before_59700() -> None:
    """generator.go serviceAccountRegex at 1.29.1 (`fmt.Sprintf(..., ns, sa)`) vs 1.29.2 (QuoteMeta)."""
    assert service_account_regex("shop", "web.v1", quote=False) == "spiffe://.+/ns/shop/(.+/|)sa/web.v1(/.+)?"
    assert service_account_regex("shop", "web.v1") == "spiffe://.+/ns/shop/(.+/|)sa/web\\.v1(/.+)?"
    policy = manifest("p", "shop", {"rules": [{"from": [{"source": {"serviceAccounts": ["web.v1"]}}]}]})
    assert _principal_regexes([policy], Release.of("1.29.1")) == ["spiffe://.+/ns/shop/(.+/|)sa/web.v1(/.+)?"]


def test_dry_run_sent_to_ztunnel_as_an_ordinary_policy_before_1_25_2() -> None:
    """policies.go at 1.25.1 never reads the annotation; from 1.25.2 PolicyCollections drops the policy."""
    policy = manifest("d", "shop", {"action": "DENY", "rules": [{}]}, annotations={"istio.io/dry-run": "true"})
    (sent,) = ztunnel.translate([policy], "istio-system", Release.of("1.25.1"))
    assert sent.action == "DENY" and not sent.dry_run and "dryRun" not in sent.to_dict()
    assert ztunnel.translate([policy], "istio-system", Release.of("1.25.2")) == []
    assert ztunnel.translate([policy], "istio-system") == []  # the newest release


def test_waypoint_attachment_before_1_25() -> None:
    """1.22-1.23: Gateway / Service refs attach by name from the root namespace too; 1.24: only the
    service's namespace is searched; 1.25+: the policy must be in the waypoint's / service's namespace."""
    root_gateway = manifest("g", "istio-system", {"targetRefs": [{"group": GW, "kind": "Gateway",
                                                                  "name": "waypoint"}]})
    root_service = manifest("s", "istio-system", {"targetRefs": [{"group": "", "kind": "Service", "name": "api"}]})
    local_gateway = manifest("l", "shop", {"targetRefs": [{"group": GW, "kind": "Gateway", "name": "waypoint"}]})
    policies = [root_gateway, root_service, local_gateway]

    def selected(version: str) -> list[str]:
        return [p.name for p in select_waypoint_policies(policies, WAYPOINT, API, MESH, Release.of(version))]

    assert selected("1.23.6") == ["g", "s", "l"]
    assert selected("1.24.6") == ["l"]
    assert selected("1.25.0") == ["l"]


# --- what cannot be emulated is refused ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "hazard"), [("sh.p", False), ("web-v1", False), ("a(b", True), ("a+", True),
                                              ("x[0]", True), ("a|b", True), ("a*", True)])
def test_unquoted_hazard(text: str, hazard: bool) -> None:
    assert unquoted_hazard(text) is hazard


def test_unemulated_names_the_release_and_the_behaviour() -> None:
    ns = manifest("p", "shop", {"rules": [{"from": [{"source": {"namespaces": ["a(b*"]}}]}]})
    reason = unemulated([ns], "sidecar", Release.of("1.29.2"))
    assert reason is not None and "Istio 1.29.2" in reason and "#59992" in reason and "'a(b*'" in reason
    assert unemulated([ns], "sidecar", Release.of("1.29.3")) is None
    assert unemulated([ns], "ambient", Release.of("1.29.2")) is None  # ztunnel never uses regexes
    assert unemulated([ns], "waypoint", Release.of("1.29.2")) is None  # a selector policy goes to ztunnel
    sa = manifest("q", "shop", {"targetRefs": [{"group": GW, "kind": "Gateway", "name": "waypoint"}],
                                "rules": [{"when": [{"key": "source.serviceAccount", "values": ["a+b"]}]}]})
    reason = unemulated([sa], "waypoint", Release.of("1.29.1"))
    assert reason is not None and "#59700" in reason and "Istio 1.29.1" in reason
    principal = manifest("r", "shop", {"rules": [{"from": [{"source": {"notPrincipals": ["*x(y"]}}]}]})
    assert unemulated([principal], "sidecar", Release.of("1.28.6")) is not None
    assert unemulated([principal], "sidecar", Release.of("1.28.7")) is None
    dots = manifest("s", "shop", {"rules": [{"from": [{"source": {"namespaces": ["sh.p"]}}]}]})
    assert unemulated([dots], "sidecar", Release.of("1.22.0")) is None  # `.` is emulated exactly


def test_local_target_refuses_a_scenario_it_cannot_emulate() -> None:
    """The refusal is a reason (a skip), raised by start() before anything runs, never a run of 1.30."""
    policy = manifest("p", "shop", {"rules": [{"from": [{"source": {"namespaces": ["a(b"]}}]}]})
    scenario = Scenario("s", "", "s.yaml", ("sidecar",), MESH, (API,), (), (Step("only", (policy,), ()),))
    old, new = LocalTarget(version="1.29.2"), LocalTarget(version="1.30.3")
    reason = old.refusal(scenario, "sidecar")
    assert reason is not None and reason.startswith("local target: Istio 1.29.2")
    assert new.refusal(scenario, "sidecar") is None and old.refusal(scenario, "ambient") is None
    if old.unavailable("sidecar") is None:
        assert old.unavailable("sidecar", scenario) == reason
    with pytest.raises(TargetUnavailable):
        old.start(scenario, "sidecar")


class _Config:
    """pytest.Config's getoption, for make_target."""

    def __init__(self, **options: Any):
        self.options = options

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


def test_the_version_reaches_the_local_target() -> None:
    """From the plugin's --istio-version (through make_target's config) and from repro (version=)."""
    from_plugin = make_target("local", _Config(istio_version="1.29.2"))
    assert isinstance(from_plugin, LocalTarget) and from_plugin.release == Release.of("1.29.2")
    from_repro = make_target("local", version=IstioVersion.parse("1.25.1"))
    assert isinstance(from_repro, LocalTarget) and from_repro.release == Release.of("1.25.1")
    assert isinstance(make_target("local"), LocalTarget) and make_target("local").release == Release.newest()
    assert LocalTarget(version="1.31").release == Release.of("1.31.0")
    with pytest.raises(UsageError):
        LocalTarget(version="1.31.1")


@pytest.mark.parametrize(("version", "service_accounts", "trust_domains"), [
    ("1.24.6", False, False), ("1.25.0", True, False), ("1.30.1", True, False), ("1.30.2", True, True),
])
def test_attributes_istiod_knows_by_release(version: str, service_accounts: bool, trust_domains: bool) -> None:
    """model.go New at each tag: serviceAccounts from 1.25.0, trustDomains from 1.30.2 (#59358 / #60528).
    An unknown `when` key skips the rule (an ALLOW left without rules allows nothing); an unknown source
    field is not there at all."""
    release = Release.of(version)
    assert (release.service_accounts, release.rbac_trust_domains) == (service_accounts, trust_domains)
    by_key = manifest("k", "shop", {"rules": [{"when": [{"key": "source.trustDomain", "values": ["td"]}]},
                                              {"when": [{"key": "source.serviceAccount", "values": ["web"]}]}]})
    (allow,) = sidecar_http_filters([by_key], MESH, {}, release)
    rules = sorted(allow["typed_config"]["rules"].get("policies", {}))
    assert rules == [f"ns[shop]-policy[k]-rule[{i}]" for i, known in ((0, trust_domains), (1, service_accounts))
                     if known]
    by_field = manifest("f", "shop", {"rules": [{"from": [{"source": {"serviceAccounts": ["web"]}}]}]})
    (sent,) = ztunnel.translate([by_field], "istio-system", release)
    assert bool(sent.groups[0].rules[0].matches[0].service_accounts) is service_accounts
