"""`authz-conformance repro`: one probe of one step, run again on the same target, with all its evidence.

A failing test item says "this probe did not do what the scenario expects"; the person reading it
wants to see it happen, alone, with the raw evidence. This module builds the copy-paste command every
failure prints (`repro_command`) and runs it (`run_repro`): it starts the scenario's mesh in that
mode, puts that step's policies in force (steps are declarative, so no earlier step is needed), runs
the one probe once, prints the evidence, the enforcing proxy's log line and the deciding policy it
names next to the engine's prediction, and tears the mesh down. The exit status says whether the
observation conforms, so the command also works in a shell loop or a `git bisect run`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TextIO

from conformance.errors import ConformanceError, UsageError
from conformance.model import Expectation, Mode, Scenario, Step
from conformance.versions import IstioVersion


def shown_path(path: str | Path, cwd: str | Path | None = None) -> str:
    """`path` as a command run from `cwd` (default: here) needs it: relative when it lies under `cwd`, else absolute.

    Why not pytest's node id: it is relative to pytest's rootdir, which is not where the user started the run when
    an ini file above, or a path given from elsewhere, moved it (issue 15: the Allure "Run it again" command)."""
    p = Path(path)
    base = Path(cwd) if cwd is not None else Path.cwd()
    try:
        shown = os.path.relpath(p.resolve(), base.resolve()) if p.is_absolute() else str(p)
        if shown.startswith(".."):
            shown = str(p.resolve())
    except ValueError:  # another drive (Windows)
        shown = str(p)
    return shown


def repro_command(scenario_path: str | Path, step: str, probe: int, mode: Mode, version: IstioVersion | str,
                  target: str = "local", cwd: str | Path | None = None) -> str:
    """The shell command that reproduces one probe; the path is relative to `cwd` when it lies under it."""
    args = ["authz-conformance", "repro", shown_path(scenario_path, cwd), "--step", step, "--probe", str(probe),
            "--mode", mode, "--istio-version", str(version)]
    if target != "local":
        args += ["--mesh", target]
    return shlex.join(args)


def find_probe(scenario: Scenario, step_name: str, index: int) -> tuple[Step, Expectation]:
    """The step and expectation a command line names, or a one-line error listing what exists."""
    step = scenario.step(step_name)
    if step is None:
        names = ", ".join(s.name for s in scenario.steps)
        raise UsageError(f"{scenario.path}: no step '{step_name}' (steps: {names})")
    expectation = next((e for e in step.expectations if e.index == index), None)
    if expectation is None:
        raise UsageError(f"{scenario.path}: step '{step_name}': no probe expect[{index}] "
                         f"(it has {len(step.expectations)}: 0..{len(step.expectations) - 1})")
    return step, expectation


def run_repro(file: str, step_name: str, index: int, mode: Mode, version: IstioVersion, target_name: str,
              out: TextIO) -> int:
    """Run one probe on a fresh mesh and print what happened; 0 when it conforms, 1 when it does not."""
    from conformance.engine import state_for_step
    from conformance.mesh import make_target
    from conformance.report import evidence_text, explanation_text, probe_label
    from conformance.scenario import load
    from conformance.truthtable import predict
    from conformance.verdicts import judge

    scenario = load(file, version)
    step, expectation = find_probe(scenario, step_name, index)
    if mode not in scenario.modes:
        raise UsageError(f"{file}: the scenario runs in {', '.join(scenario.modes)} mode, not {mode} "
                         "(spec.modes)")
    state_for_step(scenario, step)  # what the engine cannot predict yet (NotModelled) is refused before any mesh
    target = make_target(target_name, version=version)  # the local mesh emulates this release
    reason = target.unavailable(mode)
    if reason:
        raise ConformanceError(f"the {target.name} target cannot run {mode} mode here: {reason}")
    position = step.expectations.index(expectation)
    print(f"repro: {scenario.name} · step {step.name} · probe expect[{index}] · {mode} · Istio {version} · "
          f"{target.name} target", file=out)
    with target.start(scenario, mode) as session:
        applied = session.apply(step.policies)
        table = predict(scenario, step, mode, version, session.addresses)
        row = table.rows[position]
        names = ", ".join(f"{m.kind} {m.ref}" for m in step.policies) or "none"
        print(f"probe: {probe_label(row)}", file=out)
        print(f"policies in force: {names} (barrier {applied.seconds * 1000:.1f} ms)", file=out)
        observation = session.probe([row.probe])[0]
        row.observed = [observation]
        judgement = judge(table.expected(row), row.predicted, observation, row.probe)
    print(file=out)
    print(evidence_text(table, row, observation, judgement), file=out)
    print("engine explanation", file=out)
    print(explanation_text(table, row), file=out)
    print(f"mesh torn down. Again: {repro_command(file, step.name, index, mode, version, target.name)}", file=out)
    return 0 if judgement.passed else 1
