"""Bad input gets one clear line naming file, place and field, exit code 1, never a traceback.

Each case breaks a valid scenario (tests/data/good.yaml) in one way and runs the real command line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.errors import ScenarioError
from conformance.scenario import load

DATA = Path(__file__).parent / "data"


def _scenario(tmp_path: Path, mutate: Any = None, text: str | None = None) -> Path:
    shutil.copytree(DATA / "manifests", tmp_path / "manifests", dirs_exist_ok=True)
    path = tmp_path / "scenario.yaml"
    if text is None:
        doc = yaml.safe_load((DATA / "good.yaml").read_text())
        if mutate:
            mutate(doc)
        text = yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    return path


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conformance.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def _step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["spec"]["steps"] if s["name"] == name)


CASES: list[tuple[str, Any, list[str]]] = [
    ("unknown top field", lambda d: d["spec"].update(extra=1), ["unknown field 'extra'", "field spec.extra"]),
    ("unknown workload field", lambda d: d["spec"]["workloads"][0].update(port=1),
     ["workload 'accounts/accounts'", "unknown field 'port'"]),
    ("unknown workload in from", lambda d: _step(d, "baseline")["expect"][0].update({"from": "finance/curll"}),
     ["step 'baseline': probe expect[0]", "field from", "unknown workload 'finance/curll'", "did you mean"]),
    ("port not served", lambda d: _step(d, "baseline")["expect"][0].update(to="accounts/accounts:8081"),
     ["field to", "does not serve port 8081"]),
    ("port required", lambda d: _step(d, "baseline")["expect"][0].update(to="accounts/accounts"),
     ["serves several ports"]),
    ("bad verdict", lambda d: _step(d, "baseline")["expect"][0].update(verdict="permit"),
     ["field verdict", "'permit'"]),
    ("duplicate step", lambda d: d["spec"]["steps"].append(dict(_step(d, "baseline"))), ["duplicate step name"]),
    ("DENY without rules (validation.go)", lambda d: _step(d, "deny-all")["policies"][0]["spec"].update(action="DENY"),
     ["step 'deny-all': policies[0] (AuthorizationPolicy accounts/deny-all)", "field spec", "DENY"]),
    ("bad CIDR (validation.go)", lambda d: _step(d, "deny-all")["policies"][0]["spec"].update(
        rules=[{"from": [{"source": {"ipBlocks": ["10.0.0.300/8"]}}]}]), ["ipBlocks[0]"]),
    ("not supported yet", lambda d: _step(d, "deny-all")["policies"][0]["spec"].update(
        rules=[{"when": [{"key": "experimental.envoy.filters.a[b]", "values": ["v"]}]}]),
     ["experimental.envoy.filters", "not supported yet"]),
    ("missing policy file", lambda d: _step(d, "allow-finance")["policies"].append({"file": "nope.yaml"}),
     ["policies[1].file", "not found"]),
    ("unknown address placeholder", lambda d: _step(d, "deny-all")["policies"][0]["spec"].update(
        rules=[{"from": [{"source": {"ipBlocks": ["${ip:finance/nobody}"]}}]}]), ["${ip:finance/nobody}"]),
]


@pytest.mark.parametrize(("case", "mutate", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_scenario_gives_one_clear_line(tmp_path: Path, case: str, mutate: Any, needles: list[str]) -> None:
    result = _validate(_scenario(tmp_path, mutate))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(str(tmp_path / "scenario.yaml")) or "scenario.yaml" in line
                         for line in lines)
    hit = [line for line in lines if all(n in line for n in needles)]
    assert hit, f"{case}: no line has all of {needles}:\n{result.stderr}"


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    result = _validate(_scenario(tmp_path, text="apiVersion: authz-conformance/v1\nkind: [Scenario\n"))
    assert result.returncode == 1
    assert "malformed YAML" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_valid_scenario_validates(tmp_path: Path) -> None:
    result = _validate(_scenario(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "valid (3 steps, 5 probes" in result.stdout


def test_loaded_scenario_has_defaults_and_file_policies() -> None:
    s = load(DATA / "good.yaml")
    assert s.modes == ("sidecar", "ambient")
    accounts = s.workload("accounts/accounts")
    assert accounts is not None and accounts.service_account == "accounts" and accounts.labels == {"app": "accounts"}
    step = s.step("allow-finance")
    assert step is not None and [m.name for m in step.policies] == ["deny-all", "allow-finance"]
    e = step.expectations[2]
    assert e.probe.port.protocol == "TCP" and e.verdict("sidecar") is None  # omitted verdict = auto
    assert [w.ref for w in s.waypoints] == ["accounts/waypoint"]


# Arbitrary damage to a valid scenario never escapes as anything but a ScenarioError.
def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


GOOD = yaml.safe_load((DATA / "good.yaml").read_text())
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_paths(GOOD)[1:]), junk)
def test_no_input_escapes_as_a_traceback(tmp_path: Path, path: tuple[Any, ...], value: Any) -> None:
    doc = yaml.safe_load((DATA / "good.yaml").read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = _scenario(tmp_path, text=yaml.safe_dump(doc))
    try:
        load(target)
    except ScenarioError as exc:
        assert exc.problems and all(str(p).count("\n") == 0 for p in exc.problems)


# -- every problem in one pass (issue 9) ---------------------------------------------------------


def test_one_validate_run_reports_schema_reference_and_policy_errors_together(tmp_path: Path) -> None:
    def damage(d: dict[str, Any]) -> None:
        baseline = _step(d, "baseline")["expect"]
        baseline[0]["verdict"] = "denied"  # schema: enum
        baseline.append({"from": "finance/curll", "to": "accounts/accounts:8080"})  # reference: unknown workload
        baseline.append({"from": "finance/curl", "to": "accounts/accounts:8081"})  # reference: port not served
        _step(d, "deny-all")["policies"][0]["spec"] = {"action": "DENY"}  # Istio validation: DENY without rules

    result = _validate(_scenario(tmp_path, damage))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    expected = [
        ("step 'baseline': probe expect[0]: field verdict:", "'denied'", "allow, deny, auto"),
        ("step 'baseline': probe expect[1]: field from:", "unknown workload 'finance/curll'"),
        ("step 'baseline': probe expect[2]: field to:", "does not serve port 8081", "it serves 8080, 9000"),
        ("step 'deny-all': policies[0] (AuthorizationPolicy accounts/deny-all): field spec.rules:", "DENY"),
    ]
    for needles in expected:
        assert any(all(n in line for n in needles) for line in lines), f"{needles}:\n{result.stderr}"
    assert all("scenario.yaml" in line for line in lines) and "Traceback" not in result.stderr


def test_a_broken_part_does_not_hide_the_rest(tmp_path: Path) -> None:
    # A schema error that makes one workload unusable: probes to the other workloads are still checked, and
    # probes to the broken one are not reported a second time.
    def damage(d: dict[str, Any]) -> None:
        d["spec"]["workloads"][0]["ports"] = "8080"  # accounts: unusable ports
        d["spec"]["workloads"][1]["labels"] = ["not", "a", "mapping"]
        _step(d, "baseline")["expect"].append({"from": "rogue/rogue", "to": "finance/curl:80"})
        d["metadata"]["name"] = "Bad_Name"

    result = _validate(_scenario(tmp_path, damage))
    err = result.stderr
    assert "workload 'accounts/accounts': field ports: must be a list, not a string" in err
    assert "workload 'finance/curl': field labels: must be a mapping, not a list" in err
    assert "field metadata.name" in err
    assert "step 'baseline': probe expect[1]: field to: workload 'finance/curl' serves no port" in err
    assert "does not serve port" not in err and "serves no port (it is a client only)" in err
    assert err.count("accounts/accounts") == 1, err


def test_per_mode_verdict_with_a_bad_key_names_the_key_and_the_modes(tmp_path: Path) -> None:
    result = _validate(_scenario(tmp_path, lambda d: _step(d, "baseline")["expect"][0].update(
        verdict={"ambiant": "allow", "sidecar": "permit"})))
    err = result.stderr
    assert ("probe expect[0]: field verdict.ambiant: unknown mode 'ambiant' in a per-mode verdict (did you mean "
            "'ambient'? valid modes: sidecar, ambient, waypoint, mixed)") in err
    assert "field verdict.sidecar: 'permit' is not a valid value (valid values: allow, deny, auto)" in err
    assert "{'ambiant'" not in err  # the mapping is not dumped


def test_unknown_fields_are_each_reported(tmp_path: Path) -> None:
    result = _validate(_scenario(tmp_path, lambda d: d["spec"].update(extra=1, modez=["sidecar"])))
    assert "field spec.extra: unknown field 'extra'" in result.stderr
    assert "field spec.modez: unknown field 'modez' (did you mean 'modes'?" in result.stderr


@pytest.mark.parametrize("name", ["x-authz-conformance-probe", "X-Authz-Conformance-Probe"])
def test_the_probe_header_is_reserved(tmp_path: Path, name: str) -> None:
    # The suite identifies each probe by its own header (conformance.probe.PROBE_HEADER).
    from conformance.probe import PROBE_HEADER

    assert name.lower() == PROBE_HEADER
    result = _validate(_scenario(tmp_path, lambda d: _step(d, "allow-finance")["expect"][0]["request"].update(
        headers={"x-team": "a", name: "mine"})))
    assert result.returncode == 1
    line = f"step 'allow-finance': probe expect[0]: field request.headers.{name}: header '{name}' is reserved"
    assert line in result.stderr, result.stderr


def test_self_referencing_and_exploding_aliases_are_one_line(tmp_path: Path) -> None:
    # `&m` containing `*m` is infinitely deep, nested aliases expand exponentially: every later pass would
    # recurse forever or never finish, so the loader refuses both up front.
    text = (DATA / "good.yaml").read_text().replace("metadata:\n", "metadata: &m\n  self: *m\n", 1)
    result = _validate(_scenario(tmp_path, text=text))
    assert result.returncode == 1 and "infinitely deep" in result.stderr and "Traceback" not in result.stderr
    bomb = ["apiVersion: authz-conformance/v1", "kind: Scenario", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    result = _validate(_scenario(tmp_path, text="\n".join(bomb) + "\n"))
    assert result.returncode == 1 and "expand this document by more than" in result.stderr


def test_a_long_document_without_aliases_is_no_alias_bomb() -> None:
    # `init` on a big mesh writes one probe per source, destination and port: 90,000 probes for 300 workloads,
    # over 200,000 nodes, none of them an alias; only what aliases add counts against the guard
    from conformance.scenario import _MAX_EXPANDED_NODES, _alias_problem

    expect = [{"from": f"ns/w{i % 300}", "to": f"ns/w{i // 300}:8080", "verdict": "allow"} for i in range(90_000)]
    assert 4 * len(expect) > _MAX_EXPANDED_NODES
    assert _alias_problem({"spec": {"steps": [{"expect": expect}]}}) is None
    shared = {"from": "ns/a", "to": "ns/b:8080", "verdict": "allow"}  # one node written, then only aliased
    assert _alias_problem({"expect": [shared] * 10_000}) is None  # the aliases add 30,000 nodes
    assert "by more than" in str(_alias_problem({"expect": [shared] * 90_000}))  # they add 270,000
    assert "by more than" in str(_alias_problem({"expect": [[shared] * 1_000] * 1_000}))
