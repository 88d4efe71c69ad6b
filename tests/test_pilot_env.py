"""`mesh.pilotEnv` (issue 12, deliverable 5): istiod's authorization feature flags in the format, the engine and the
cluster targets' install. The local mesh's side is exercised by the scenarios in policies/ (pilot-env-*.yaml,
ext-authz-multiple-providers-flag.yaml), each run on real Envoy by `pytest policies/<file>`."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import pilotenv
from conformance.engine.decide import decide, explain
from conformance.engine.state import state_for_step
from conformance.mesh.cluster import istioctl
from conformance.mesh.cluster.istioctl import Kubeconfig
from conformance.mesh.cluster.kind import cluster_name, istiod_env, pilot_env_mismatch
from conformance.scenario import check, load
from conformance.versions import IstioVersion

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
V = IstioVersion.parse(None)

GO_TRUE = ["1", "t", "T", "TRUE", "true", "True"]
GO_FALSE = ["0", "f", "F", "FALSE", "false", "False"]


# --- values as istiod reads them ---------------------------------------------------------------------

@given(st.text(max_size=6))
def test_parse_bool_accepts_exactly_go_strconv_spellings(text: str) -> None:
    """strconv.ParseBool (Go src/strconv/atob.go): six spellings each way, nothing else (no `yes`, no ` true`)."""
    expected = True if text in GO_TRUE else False if text in GO_FALSE else None
    assert pilotenv.parse_bool(text) is expected


@pytest.mark.parametrize("flag", pilotenv.FLAGS, ids=lambda f: f.name)
@pytest.mark.parametrize("text", GO_TRUE + GO_FALSE)
def test_every_spelling_gives_the_flag_its_value_and_normalizes(flag: pilotenv.PilotFlag, text: str) -> None:
    on = text in GO_TRUE
    assert pilotenv.value({flag.name: text}, flag) is on
    assert pilotenv.normalized({flag.name: text}) == (((flag.name, "true"),) if on else ())


def test_defaults_are_istios_and_the_releases_that_have_each_flag() -> None:
    # pilot/pkg/features/{ambient,security}.go at every tag: all default false
    assert all(f.default is False for f in pilotenv.FLAGS)
    first = {f.name: f.first_release() for f in pilotenv.FLAGS}
    assert first == {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "1.22.0",
                     "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES": "1.25.0",
                     "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY": "1.29.0",
                     "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS": "1.30.0"}
    layered = pilotenv.LAYERED_WAYPOINT
    assert not layered.available(IstioVersion.parse("1.24.6")) and layered.available(IstioVersion.parse("1.25.0"))


# --- the scenario format -----------------------------------------------------------------------------------

def _scenario(tmp_path: Path, env: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"""apiVersion: authz-conformance/v1
kind: Scenario
metadata: {{name: s}}
spec:
  modes: [waypoint]
  mesh: {{pilotEnv: {env}}}
  workloads: [{{name: a, namespace: ns, ports: [8080]}}, {{name: b, namespace: ns}}]
  steps: [{{name: s, policies: [], expect: [{{from: ns/b, to: ns/a, verdict: allow}}]}}]
""")
    return path


def test_unknown_flags_are_refused_naming_the_field_and_the_supported_ones(tmp_path: Path) -> None:
    _, problems = check(_scenario(tmp_path, "{PILOT_ENABLE_AMBIENT: 'true'}"))
    (p,) = problems
    assert p.location.field == "spec.mesh.pilotEnv.PILOT_ENABLE_AMBIENT" and p.location.file.endswith("s.yaml")
    assert all(f.name in p.message for f in pilotenv.FLAGS)


def test_values_istiod_cannot_parse_and_non_strings_are_refused(tmp_path: Path) -> None:
    _, problems = check(_scenario(tmp_path, "{PILOT_AUTO_ALLOW_WAYPOINT_POLICY: 'yes'}"))
    assert "strconv.ParseBool" in problems[0].message and "keep the default false" in problems[0].message
    _, problems = check(_scenario(tmp_path, "{PILOT_AUTO_ALLOW_WAYPOINT_POLICY: true}"))
    assert problems and problems[0].location.field == "spec.mesh.pilotEnv.PILOT_AUTO_ALLOW_WAYPOINT_POLICY"


@pytest.mark.parametrize(("name", "older"), [("ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES", "1.24"),
                                             ("AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY", "1.28"),
                                             ("PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS", "1.29")])
def test_a_flag_is_refused_at_a_release_without_it(tmp_path: Path, name: str, older: str) -> None:
    path = _scenario(tmp_path, f"{{{name}: 'true'}}")
    _, problems = check(path, IstioVersion.parse(older))
    assert len(problems) == 1 and "does not exist in Istio" in problems[0].message
    assert check(path, IstioVersion.parse("1.30"))[1] == []


# --- the engine ---------------------------------------------------------------------------------------------

def _decision(file: str, step: str, index: int, mode: str, version: IstioVersion = V, trace: bool = False):
    scenario = load(POLICIES / file, version)
    s = scenario.step(step)
    assert s is not None
    e = s.expectations[index]
    return (explain if trace else decide)(state_for_step(scenario, s), e.probe, mode, version)  # type: ignore[arg-type]


def test_auto_allow_adds_istiods_synthetic_policy_for_waypoint_users_only() -> None:
    d = _decision("pilot-env-auto-allow-waypoint.yaml", "no-user-policy", 0, "waypoint", trace=True)
    assert (d.verdict, d.layer, d.policy) == ("allow", "ztunnel", "apps/istio_allow_waypoint_apps_waypoint")
    assert any("PILOT_AUTO_ALLOW_WAYPOINT_POLICY is on" in line for line in d.trace)
    bypass = _decision("pilot-env-auto-allow-waypoint.yaml", "no-user-policy", 2, "waypoint")
    assert (bypass.verdict, bypass.outcome, bypass.reason) == ("deny", "denied-l4", "allow-unmatched")
    # ambient mode deploys no waypoint: nothing synthetic
    assert _decision("pilot-env-auto-allow-waypoint.yaml", "no-user-policy", 2, "ambient").reason == "no-policy"
    off = _decision("pilot-env-auto-allow-waypoint-off.yaml", "selector-allow-for-client", 0, "waypoint")
    assert (off.verdict, off.outcome) == ("deny", "denied-upstream")


def test_layered_termination_decides_with_the_clients_identity_before_l7() -> None:
    d = _decision("pilot-env-layered-waypoint.yaml", "namespace-allow", 1, "waypoint", trace=True)
    assert (d.verdict, d.outcome, d.layer, d.waypoint) == ("deny", "denied-l4", "waypoint", "apps/waypoint")
    assert any("HBONE termination" in line for line in d.trace)
    ports = _decision("pilot-env-layered-waypoint.yaml", "ports-see-hbone", 0, "waypoint")
    assert (ports.verdict, ports.reason) == ("deny", "allow-unmatched")  # destination port is 15008 there
    off = _decision("pilot-env-layered-waypoint-off.yaml", "namespace-allow", 1, "waypoint")
    assert (off.verdict, off.layer) == ("allow", "ztunnel")


def test_dry_run_flag_sends_the_policy_but_never_enforces_it() -> None:
    d = _decision("pilot-env-ambient-dry-run.yaml", "dry-run-deny-all", 0, "ambient", trace=True)
    assert d.verdict == "allow" and any("marked dryRun" in line for line in d.trace)
    # the #55414 change still holds below the flag's release: 1.25.1 enforces dry-run at ztunnel (dry-run.yaml)
    old = _decision("dry-run.yaml", "dry-run-deny", 0, "ambient", IstioVersion.parse("1.25.1"))
    new = _decision("dry-run.yaml", "dry-run-deny", 0, "ambient", IstioVersion.parse("1.25.2"))
    assert (old.verdict, new.verdict) == ("deny", "allow")


def test_multiple_custom_providers_each_check_their_own_rules_when_the_flag_is_on() -> None:
    on = _decision("ext-authz-multiple-providers-flag.yaml", "overlapping", 1, "sidecar", trace=True)
    assert on.verdict == "allow" and any("one shadow RBAC + ext_authz pair per provider" in line for line in on.trace)
    denied = _decision("ext-authz-multiple-providers-flag.yaml", "overlapping", 2, "sidecar")
    assert (denied.verdict, denied.outcome) == ("deny", "denied-custom")
    off = _decision("ext-authz-multiple-providers.yaml", "overlapping", 1, "sidecar")
    assert (off.verdict, off.outcome) == ("deny", "denied-l7")
    missing = _decision("ext-authz-multiple-providers-flag.yaml", "invalid-provider", 1, "sidecar")
    assert (missing.verdict, missing.outcome) == ("deny", "denied-l7")


# --- cluster targets: the install and the mismatch check ------------------------------------------------------

def test_kind_installs_the_flags_as_istiod_env_and_names_clusters_per_setting() -> None:
    env = pilotenv.normalized({"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "1"})
    argv = istioctl.install_argv("istioctl", Kubeconfig(None, None), "ambient", Path("o.yaml"), pilot_env=env)
    assert argv[-2:] == ["--set", "values.pilot.env.PILOT_AUTO_ALLOW_WAYPOINT_POLICY=true"]
    assert cluster_name(None, "ambient", "1.30.5") == "authz-ambient-1-30-5"
    named = cluster_name(None, "ambient", "1.30.5", env)
    assert named.startswith("authz-ambient-1-30-5-env") and named != cluster_name(
        None, "ambient", "1.30.5", pilotenv.normalized({"ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES": "true"}))


def test_an_istiod_with_other_flags_is_a_skip_naming_each_flag() -> None:
    deployment = {"spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": "x/pilot:1.30.5",
                  "env": [{"name": "PILOT_AUTO_ALLOW_WAYPOINT_POLICY", "value": "false"},
                          {"name": "POD_NAME", "valueFrom": {}}]}]}}}}
    installed = istiod_env(deployment)
    assert installed == {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "false"}
    scenario = load(POLICIES / "pilot-env-auto-allow-waypoint.yaml")
    why = pilot_env_mismatch(scenario, installed, "istiod runs with Istio's defaults")
    assert why is not None and "PILOT_AUTO_ALLOW_WAYPOINT_POLICY is false there, the scenario needs true" in why
    assert pilot_env_mismatch(scenario, {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "T"}, "x") is None
    assert pilot_env_mismatch(load(POLICIES / "dry-run.yaml"), {}, "x") is None
