"""`authz-conformance`: validate, predict, explain, lint, compare, schema and versions without a mesh; repro
with one.

Every user error is one line naming file, place and field, with exit code 1; nothing here prints a
traceback for bad input (a bug still does, on purpose: it must be seen and fixed). `repro` also exits 1
when the probe it ran does not conform, so a failure's copy-paste command says so in its status too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import TextIO, cast

from conformance.errors import ConformanceError, ScenarioError, UsageError
from conformance.model import DATAPLANES, MODES, DataPlane, Mode, Scenario, Waypoint
from conformance.scenario import ScenarioPaths, check, load, scenario_paths
from conformance.versions import DEFAULT_VERSION, IstioVersion


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="authz-conformance",
        description="Predict, explain and check what Istio AuthorizationPolicies do (scenario files).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
        """A subcommand whose --help ends with worked examples (issue 13: every command has one)."""
        return sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                              epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def common(sp: argparse.ArgumentParser, many: bool = True) -> None:
        sp.add_argument("files", nargs="+" if many else 1, metavar="PATH" if many else "FILE",
                        help="scenario files, or directories searched for them (recognised by content; other "
                             "files are skipped with a notice)" if many else "a scenario file")
        sp.add_argument("--istio-version", default=DEFAULT_VERSION,
                        help=f"Istio version whose semantics to use (default {DEFAULT_VERSION}; 1.29 or 1.29.2)")

    def written(sp: argparse.ArgumentParser, name_default: str) -> None:
        """The options of a command that writes a scenario with predicted verdicts (init, snapshot)."""
        sp.add_argument("--mode", choices=MODES, action="append", help="a mode to predict and run (repeatable; "
                                                                       "default sidecar and ambient)")
        sp.add_argument("--name", default=None, help=f"metadata.name (default: {name_default})")
        sp.add_argument("--istio-version", default=DEFAULT_VERSION,
                        help=f"Istio version whose semantics predict the verdicts (default {DEFAULT_VERSION})")

    sp = command("validate", "check scenario files (exit 1 if any is invalid)",
                 "authz-conformance validate policies/            # every scenario under a directory",
                 "authz-conformance validate s.yaml --istio-version 1.29   # as Istio 1.29 would validate it")
    common(sp)
    sp = command("predict", "print the predicted truth table per step and mode",
                 "authz-conformance predict policies/hosts.yaml --mode ambient",
                 "authz-conformance predict s.yaml --json | jq 'select(.verdict == \"deny\")'")
    common(sp)
    sp.add_argument("--mode", choices=MODES, action="append", help="only this mode (repeatable)")
    sp.add_argument("--json", action="store_true", help="one JSON object per probe and mode")
    sp = command("explain", "explain the decision for one probe",
                 "authz-conformance explain policies/hosts.yaml --step allow-hosts --probe 0 --mode sidecar")
    common(sp, many=False)
    sp.add_argument("--step", required=True, help="step name")
    sp.add_argument("--probe", required=True, type=int, help="probe index in the step's expect list (from 0)")
    sp.add_argument("--mode", choices=MODES, action="append", help="only this mode (default: the scenario's)")
    sp = command("lint", "expectations contradicting the engine (errors) and policy warnings, each with a rule code "
                         "and file:line:col",
                 "authz-conformance lint policies/",
                 "authz-conformance lint s.yaml --istio-version 1.31",
                 "authz-conformance lint --rules   # the rule catalog (docs/lint-rules.md)",
                 "authz-conformance lint policies/ --ignore AC205 --format github   # annotations on a PR's diff",
                 "authz-conformance lint policies/ --format sarif > lint.sarif   # for code scanning")
    sp.add_argument("files", nargs="*", metavar="PATH",
                    help="scenario files, raw policy files, or directories searched for scenarios")
    sp.add_argument("--istio-version", default=DEFAULT_VERSION,
                    help=f"Istio version whose semantics to use (default {DEFAULT_VERSION}; 1.29 or 1.29.2)")
    sp.add_argument("--rules", action="store_true", help="list the rule catalog and exit (with --markdown: "
                                                         "docs/lint-rules.md)")
    sp.add_argument("--markdown", action="store_true", help="with --rules: the catalog as Markdown")
    sp.add_argument("--select", action="append", metavar="CODES",
                    help="only these rules (codes, prefixes such as AC2, rule names or ALL; comma-separated or "
                         "repeated): replaces the config's selection")
    sp.add_argument("--ignore", action="append", metavar="CODES", help="leave these rules out (adds to the config's)")
    sp.add_argument("--fail-on", choices=("error", "warning", "never"), default=None,
                    help="exit 1 on errors (default), also on warnings, or never (config: fail-on)")
    sp.add_argument("--format", choices=("text", "github", "sarif"), default="text",
                    help="text (default): file:line:col: CODE ...; github: workflow annotations; sarif: SARIF 2.1.0")
    sp = command("compare", "probes whose predicted verdict or denial form differs between versions (--from/--to) or "
                            "when namespaces move to another data plane (--dataplanes); exit 1 when any does",
                 "authz-conformance compare policies/ --from 1.30 --to 1.31        # an upgrade gate",
                 "authz-conformance compare migration.yaml --dataplanes shop=ambient --json")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--from", dest="old", help="older Istio version, e.g. 1.29")
    sp.add_argument("--to", dest="new", help="newer Istio version, e.g. 1.30")
    sp.add_argument("--dataplanes", action="append", metavar="NS=PLANE",
                    help="move namespace NS to data plane PLANE (sidecar, ambient, waypoint), from the scenario's "
                         "spec.dataplanes (unlisted: sidecar), and print what changes in mode mixed; repeatable, "
                         "or comma-separated (exit 1 when anything changes)")
    sp.add_argument("--istio-version", default=DEFAULT_VERSION,
                    help=f"with --dataplanes: the Istio version whose semantics to use (default {DEFAULT_VERSION})")
    sp.add_argument("--json", action="store_true", help="one JSON object per changed probe (and, with --from/--to, "
                                                         "per scenario a release rejects)")
    sp = command("schema", "print the JSON Schema of scenario files",
                 "authz-conformance schema > scenario.schema.json   # for an editor's YAML language server",
                 "authz-conformance schema --markdown > docs/scenario-reference.md   # the field reference")
    sp.add_argument("--markdown", action="store_true",
                    help="the field-by-field reference in Markdown, from the schema's descriptions")
    command("versions", "the Istio releases the engine models and the behaviour changes it keys on",
            "authz-conformance versions")
    sp = command("repro", "run one probe of one step on a real target and print its evidence (exit 1 when it does "
                          "not conform)",
                 "authz-conformance repro policies/hosts.yaml --step allow-hosts --probe 0 --mode sidecar")
    common(sp, many=False)
    sp.add_argument("--step", required=True, help="step name")
    sp.add_argument("--probe", required=True, type=int, help="probe index in the step's expect list (from 0)")
    sp.add_argument("--mode", required=True, choices=MODES, help="the mode to run it in")
    sp.add_argument("--mesh", choices=("local", "kind", "cluster"), default="local",
                    help="the target to run it on (default local: real Envoy processes on loopback)")
    sp = command("init", "write a scenario from rendered manifests: their workloads, one step with their policies, "
                         "and a probe matrix whose verdicts are the engine's predictions (today's behaviour: review "
                         "them)",
                 "kustomize build overlays/prod > rendered.yaml && authz-conformance init --from rendered.yaml "
                 "-o gate.yaml && pytest gate.yaml",
                 "helm template pay ./charts/pay | authz-conformance init --from - --mode sidecar -o pay.yaml",
                 "authz-conformance init --from tests/data/manifests-rendered/ --mode sidecar --mode waypoint")
    sp.add_argument("--from", dest="sources", action="append", required=True, metavar="FILE|DIR|-",
                    help="rendered manifests: a file, a directory (its *.yaml/*.yml, scenario files skipped) or - for "
                         "stdin (workloads and policies then written inline); repeatable")
    sp.add_argument("-o", "--output", default=None, metavar="OUT",
                    help="the scenario file to write (default: stdout; paths in it are relative to OUT's directory, "
                         "else to the current one)")
    written(sp, "from OUT or the first --from")
    sp = command("snapshot", "write a scenario from a live cluster, as init does from rendered manifests: its "
                             "workloads, Services, namespaces' data planes and security.istio.io policies, read with "
                             "GET and LIST only (nothing is written to the cluster)",
                 "authz-conformance snapshot --kube-context prod --namespace shop --namespace pay -o gate/prod.yaml "
                 "&& pytest gate/prod.yaml",
                 "authz-conformance snapshot --kube-context kind-dev -o today.yaml --mode sidecar   # every "
                 "non-system namespace",
                 "authz-conformance snapshot --kube-context prod --kubeconfig ~/.kube/prod > prod.yaml   # inline")
    sp.add_argument("--kube-context", required=True, metavar="C",
                    help="the kubeconfig context to read (required: never whichever context happens to be current)")
    sp.add_argument("--kubeconfig", default=None, metavar="F", help="kubeconfig file (default: $KUBECONFIG, else "
                                                                    "~/.kube/config)")
    sp.add_argument("--namespace", action="append", metavar="N",
                    help="a namespace to read (repeatable; default: every one but kube-system, kube-public, "
                         "kube-node-lease, local-path-storage and Istio's own); the mesh root namespace's policies "
                         "are read too")
    sp.add_argument("-o", "--output", default=None, metavar="OUT",
                    help="the scenario file to write; the objects read go beside it in <OUT stem>.manifests.yaml, "
                         "which it refers to (default: the scenario to stdout, objects inline)")
    written(sp, "from OUT, else snapshot-<context>")
    sp = command("plan", "the cluster run plan: cluster, Istio, batches, CI shards and time estimates",
                 "authz-conformance plan policies --mesh kind --istio-version 1.31",
                 "authz-conformance plan policies --format github-e2e   # the e2e workflow's job matrix")
    sp.add_argument("files", nargs="+", metavar="PATH", help="scenario files or directories (e.g. policies)")
    sp.add_argument("--mesh", choices=("kind", "cluster"), default="kind", help="the cluster target (default kind)")
    sp.add_argument("--mesh-mode", choices=MODES, action="append", help="only this mode (repeatable)")
    sp.add_argument("--istio-version", default=None,
                    help="Istio release (default: clusters/versions.yaml's default, e.g. 1.30.5)")
    sp.add_argument("--kube-context", default=None, help="--mesh cluster: the context named in the plan")
    sp.add_argument("--cluster-name", default=None,
                    help="--mesh kind: the base name the run passes as --cluster-name (CI: e2e, upgrade)")
    sp.add_argument("--cluster-concurrency", type=int, default=None, metavar="N",
                    help="scenarios side by side on one cluster, as the run's own option (default 4)")
    sp.add_argument("--format", choices=("text", "github-e2e", "github-upgrade"), default="text",
                    help="text (default), or the e2e / upgrade workflow job matrix as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "schema":
            from conformance.schema import SCHEMA

            if args.markdown:
                from conformance.schema_doc import markdown

                out.write(markdown())
                return 0
            json.dump(SCHEMA, out, indent=2)
            out.write("\n")
            return 0
        if args.command == "plan":
            return _plan(args, out)
        if args.command == "versions":
            return _versions(out)
        if args.command == "compare":
            if args.dataplanes:
                if args.old or args.new:
                    raise UsageError("compare: give either --from/--to (versions) or --dataplanes (a migration), "
                                     "not both")
                return _compare_dataplanes(args.files, IstioVersion.parse(args.istio_version),
                                           _parse_moves(args.dataplanes), args.json, out)
            if not (args.old and args.new):
                raise UsageError("compare: give --from and --to (two Istio versions), or --dataplanes NS=PLANE")
            return _compare(args.files, IstioVersion.parse(args.old), IstioVersion.parse(args.new), args.json, out)
        version = IstioVersion.parse(args.istio_version)
        if args.command == "validate":
            return _validate(args.files, version, out)
        if args.command == "lint":
            return _lint(args.files, version, out, args)
        if args.command == "init":
            return _init(args, version, out)
        if args.command == "snapshot":
            return _snapshot(args, version, out)
        if args.command == "predict":
            return _predict(args.files, version, args.mode, args.json, out)
        if args.command == "explain":
            return _explain(args.files[0], version, args.step, args.probe, args.mode, out)
        if args.command == "repro":
            from conformance.repro import run_repro

            return run_repro(args.files[0], args.step, args.probe, args.mode, version, args.mesh, out)
    except ScenarioError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ConformanceError as exc:
        print("error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()), file=sys.stderr)
        return 1
    return 2


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    """`plan`: what a cluster run would do and how long it should take (conformance/mesh/cluster/plan.py)."""
    from conformance.mesh.cluster import plan

    if args.format == "github-e2e":
        json.dump(plan.github_e2e(args.files), out)
    elif args.format == "github-upgrade":
        json.dump(plan.github_upgrade(args.files), out)
    else:
        version = args.istio_version
        if version is not None:
            IstioVersion.parse(version)
        workers = args.cluster_concurrency or plan.DEFAULT_CONCURRENCY
        built = plan.build(args.files, args.mesh, args.mesh_mode, version, kube_context=args.kube_context,
                           cluster_base=args.cluster_name, workers=max(1, workers))
        out.write(plan.render(built))
    out.write("\n")
    return 0


def _versions(out: TextIO) -> int:
    """`versions`: the modelled releases, and per release each behaviour change one line with its Istio
    source (versions.table(); docs/istio-versions.md holds the same table, tests/test_versions.py checks)."""
    from conformance import versions

    default = IstioVersion.parse(None)
    print(f"Modelled Istio releases (default {DEFAULT_VERSION} = {default}; a minor alone means its newest "
          "modelled patch):", file=out)
    rows = versions.table()
    for text in versions.modelled_ranges():
        print(text, file=out)
        minor = tuple(int(n) for n in text.split("-")[0].split(".")[:2])
        for row in rows:
            if row.release[:2] == minor:
                print(f"  {row.text}: {row.summary} [{row.source}]", file=out)
    for release, why in sorted(versions.NOT_MODELLED.items()):
        print("Not modelled: {}.{}.{}: {}".format(*release, why), file=out)
    return 0


def _expand(paths: Sequence[str], out: TextIO, found: ScenarioPaths | None = None,
            handled: Collection[str] = ()) -> tuple[list[str], int]:
    """The scenario files under `paths` (scenario.scenario_paths, or `found` when the caller already walked them),
    with a notice per file that is not one (but those the caller `handled`, lint's raw policy files); status 1
    when a path does not exist or a directory holds no scenario (a gate that checks nothing must not pass)."""
    found = found or scenario_paths(paths)
    status = 0
    for f in found.not_scenarios:
        if f not in handled:
            print(f"{f}: not a scenario file (no authz-conformance/v1 Scenario): skipped", file=out)
    for d in found.empty_dirs:
        print(f"{d}: no scenario file in this directory", file=sys.stderr)
        status = 1
    for f in found.missing:
        print(f"{f}: no such file or directory", file=sys.stderr)
        status = 1
    return found.files, status


def _validate(paths: Sequence[str], version: IstioVersion, out: TextIO) -> int:
    from conformance.positions import placed

    files, status = _expand(paths, out)
    for f in files:
        scenario, problems = check(f, version)
        for p in problems:  # file:line:col of the field first, as lint prints it (positions.py)
            print(placed(p), file=sys.stderr if p.severity == "error" else out)
        if scenario is None:
            status = 1
        else:
            print(f"{f}: valid ({len(scenario.steps)} steps, "
                  f"{sum(len(s.expectations) for s in scenario.steps)} probes, modes {', '.join(scenario.modes)})",
                  file=out)
    return status


def _load_all(files: Sequence[str], version: IstioVersion) -> list[Scenario]:
    problems = []
    scenarios = []
    for f in files:
        try:
            scenarios.append(load(f, version))
        except ScenarioError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ScenarioError(problems)
    return scenarios


def _lint(paths: Sequence[str], version: IstioVersion, out: TextIO, args: argparse.Namespace | None = None) -> int:
    """`lint` (issue 15): every finding once, with its rule code, at file:line:col, filtered by --select/--ignore,
    the nearest config above each file and the policies' own suppressions; exit 1 on what fails (errors, or
    warnings too with fail-on warning). Machine formats keep stdout to annotations or the SARIF log."""
    from conformance import lint_rules
    from conformance.lint import Finding, findings, is_policy_file, loader_findings, policy_file_findings
    from conformance.lint_config import config_for, is_suppressed
    from conformance.lint_report import sarif_text, text_line

    fmt = getattr(args, "format", "text")
    if getattr(args, "rules", False):
        out.write(lint_rules.markdown() if args.markdown else lint_rules.text())
        return 0
    if not paths:
        raise UsageError("lint: give scenario or policy files (or directories), or --rules")
    notes = out if fmt == "text" else sys.stderr
    found = scenario_paths(paths)
    raw = [f for f in found.not_scenarios if is_policy_file(f)]
    files, status = _expand(paths, notes, found, handled=raw)  # one walk of the paths, not two
    reported: list[Finding] = []
    counts: dict[str, int] = {}

    def report(source: str, items: list[Finding]) -> None:
        nonlocal status
        config = config_for(source).with_cli(getattr(args, "select", None), getattr(args, "ignore", None),
                                             getattr(args, "fail_on", None))
        kept = [f for f in items if config.enabled(f.code) and not is_suppressed(f.code, f.problem.location)]
        for f in kept:
            if config.fails(f.severity):
                status = 1
            if fmt == "text":
                print(text_line(f), file=out)
                for line in f.explanation:
                    print(f"    {line}", file=out)
        counts[source] = sum(f.severity == "warning" for f in kept)
        reported.extend(kept)

    for f in raw:  # a raw policy file: Istio's validation and the warnings that need no scenario (issue 13)
        report(f, policy_file_findings(f, version))
        if fmt == "text":
            print(f"{f}: policy file, {counts[f]} warning(s)", file=out)
    for f in files:
        scenario, problems = check(f, version)
        items = loader_findings(problems)
        if scenario is not None:
            items += findings(scenario, version)
        report(f, items)
    if fmt == "github":
        from conformance.lint_report import github_line

        for f in reported:
            print(github_line(f), file=out)
    elif fmt == "sarif":
        out.write(sarif_text(reported, str(version)))
    elif status == 0:
        print(f"lint: {len(files)} scenario file(s), no expectation contradicts Istio {version}", file=out)
    return status


def _modes(scenario: Scenario, only: Sequence[str] | None) -> list[Mode]:
    """The scenario's modes, narrowed to `--mode`; a requested mode the scenario does not list is an error.

    Silently printing nothing for `--mode waypoint` on a scenario without waypoint mode read as "no probe
    differs" (issue 9): the scenario never runs in that mode, so there is nothing to predict or explain.
    """
    missing = [m for m in dict.fromkeys(only or ()) if m not in scenario.modes]
    if missing:
        raise UsageError(f"{scenario.path}: the scenario does not run in {', '.join(missing)} mode: it lists "
                         f"{', '.join(scenario.modes)} (spec.modes)")
    return [m for m in scenario.modes if not only or m in only]


def _init(args: argparse.Namespace, version: IstioVersion, out: TextIO) -> int:
    """`init`: the scenario of rendered manifests (conformance/init.py), to OUT or stdout."""
    from pathlib import Path

    from conformance.init import write_scenario

    target = Path(args.output) if args.output else None
    text = write_scenario(args.sources, args.mode, version, target, args.name,
                          sys.stdin.read() if "-" in args.sources else None)
    if target is None:
        out.write(text)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"{target}: written; review its verdicts (today's behaviour, not intent), then: pytest {target}",
              file=sys.stderr)
    return 0


def _snapshot(args: argparse.Namespace, version: IstioVersion, out: TextIO) -> int:
    """`snapshot`: init's scenario from a live cluster, read-only (conformance/snapshot.py), to OUT or stdout; the
    namespaces skipped are said on stderr (and in the scenario's header)."""
    from pathlib import Path

    from conformance.snapshot import manifests_path, snapshot

    target = Path(args.output) if args.output else None
    text, snap = snapshot(args.kube_context, args.kubeconfig, args.namespace, target, args.mode, version, args.name)
    if snap.skipped:
        print(f"snapshot: namespaces skipped: {', '.join(snap.skipped)}", file=sys.stderr)
    if target is None:
        out.write(text)
    else:
        target.write_text(text, encoding="utf-8")
        print(f"{target}: written with {manifests_path(target)} ({snap.workloads} workloads from "
              f"{', '.join(snap.namespaces)}); review its verdicts (today's behaviour, not intent), then: "
              f"pytest {target}", file=sys.stderr)
    return 0


def _predict(files: Sequence[str], version: IstioVersion, only: Sequence[str] | None, as_json: bool,
             out: TextIO) -> int:
    from conformance.report import render_prediction
    from conformance.truthtable import predict

    scenarios = _load_all(files, version)
    for scenario in scenarios:
        _modes(scenario, only)  # every requested mode must be one the scenario lists, before any output
    for scenario in scenarios:
        for step in scenario.steps:
            for mode in _modes(scenario, only):
                table = predict(scenario, step, mode, version)
                if as_json:
                    for row in table:
                        p, d = row.probe, row.predicted
                        print(json.dumps({
                            "scenario": scenario.name, "step": step.name, "mode": mode,
                            "from": p.source.ref, "to": p.destination.ref, "port": p.port.number,
                            "method": p.request.method, "path": p.request.path,
                            "headers": dict(p.request.headers),
                            "verdict": d.verdict, "expected": row.expectation.verdict(mode),
                            "outcome": d.outcome, "layer": d.layer, "policy": d.policy, "rule": d.rule,
                            "reason": d.reason,
                        }), file=out)
                else:
                    render_prediction(table, out)
    return 0


def _explain(file: str, version: IstioVersion, step_name: str, index: int, only: Sequence[str] | None,
             out: TextIO) -> int:
    from conformance.engine import explain, state_for_step
    from conformance.repro import find_probe

    scenario = load(file, version)
    step, expectation = find_probe(scenario, step_name, index)
    modes = _modes(scenario, only)
    state = state_for_step(scenario, step)
    for mode in modes:
        d = explain(state, expectation.probe, mode, version)
        expected = expectation.verdict(mode)
        detail = f": `{d.detail}`" if d.detail else ""  # the JWT filter's reply (Decision.detail)
        print(f"[{mode}] {d.verdict.upper()} ({d.outcome}{detail})"
              + (f" — the scenario expects {expected}" if expected and expected != d.verdict else ""), file=out)
        for line in d.trace:
            print(f"  {line}", file=out)
        print(file=out)
    return 0


def _compare(paths: Sequence[str], old: IstioVersion, new: IstioVersion, as_json: bool, out: TextIO) -> int:
    """`compare --from --to`: every probe whose predicted verdict or denial form differs between two releases, with
    the engine's explanation at the newer one, and every scenario one of them would reject (a policy that cannot
    be applied there: serviceAccounts before 1.25, trustDomains before 1.30.2...). Exit 1 when anything changes
    or is rejected, so an upgrade check can gate a pipeline; `--json`: one object per finding."""
    from conformance.engine import explain, state_for_step
    from conformance.truthtable import predict

    files, status = _expand(paths, out)
    changes = 0

    def emit(record: dict[str, object], text: str) -> None:
        print(json.dumps(record, sort_keys=True) if as_json else text, file=out)

    for f in files:
        scenario, problems_new = check(f, new)
        _, problems_old = check(f, old)
        rejected = [(v, p) for v, problems in ((new, problems_new), (old, problems_old))
                    for p in problems if p.severity == "error"]
        for version, p in rejected:
            changes += 1
            other = old if version == new else new
            other_rejects = any(q.severity == "error" for q in (problems_old if version == new else problems_new))
            emit({"file": f, "kind": "rejected", "version": str(version), "problem": str(p)},
                 f"{p} (Istio {version} rejects it" + ("" if other_rejects else f"; {other} accepts it") + ")")
        if rejected or scenario is None:
            continue
        for step in scenario.steps:
            for mode in scenario.modes:
                before, after = predict(scenario, step, mode, old), predict(scenario, step, mode, new)
                for a, b in zip(before, after, strict=True):
                    if (a.predicted.verdict, a.predicted.outcome) == (b.predicted.verdict, b.predicted.outcome):
                        continue
                    changes += 1
                    trace = explain(state_for_step(scenario, step), b.probe, mode, new).trace[1:]
                    probe = b.probe
                    emit({"file": f, "kind": "changed", "scenario": scenario.name, "step": step.name, "mode": mode,
                          "probe": b.expectation.index, "from": probe.source.ref, "to": probe.destination.ref,
                          "port": probe.port.number, "method": probe.request.method, "path": probe.request.path,
                          "before": {"version": str(old), "verdict": a.predicted.verdict,
                                     "outcome": a.predicted.outcome},
                          "after": {"version": str(new), "verdict": b.predicted.verdict,
                                    "outcome": b.predicted.outcome},
                          "why": list(trace)},
                         f"{scenario.path}: step '{step.name}' [{mode}] {probe.describe()}: "
                         f"{old} {a.predicted.verdict} ({a.predicted.outcome}) → "
                         f"{new} {b.predicted.verdict} ({b.predicted.outcome})"
                         + "".join(f"\n    {line}" for line in trace))
    if not as_json:
        print(f"compare: {changes} probe(s) change between Istio {old} and {new}", file=out)
    return 1 if changes or status else 0


def _parse_moves(values: Sequence[str]) -> dict[str, DataPlane]:
    """`--dataplanes shop=ambient --dataplanes a=sidecar,b=waypoint` as {namespace: plane}."""
    moves: dict[str, DataPlane] = {}
    for value in values:
        for item in value.split(","):
            ns, sep, plane = item.strip().partition("=")
            if not sep or not ns or plane not in DATAPLANES:
                raise UsageError(f"--dataplanes {item!r}: expected NAMESPACE=PLANE with PLANE one of "
                                 f"{', '.join(DATAPLANES)}")
            moves[ns] = cast(DataPlane, plane)
    return moves


def _moved(scenario: Scenario, moves: Mapping[str, DataPlane]) -> Scenario:
    """`scenario` with `moves` applied to its data planes; a namespace moved to waypoint gets the default
    waypoint (`<ns>/waypoint`) when the scenario names none there. Refuses a namespace with no in-mesh workload,
    as spec.dataplanes does."""
    meshed = {w.namespace for w in scenario.workloads if w.in_mesh}
    waypoints = list(scenario.waypoints)
    for ns, plane in moves.items():
        if ns not in meshed:
            raise UsageError(f"{scenario.path}: --dataplanes {ns}={plane}: namespace '{ns}' has no in-mesh workload "
                             f"(namespaces: {', '.join(sorted(meshed)) or 'none'})")
        if plane == "waypoint" and not any(w.namespace == ns for w in waypoints):
            if scenario.workload(f"{ns}/waypoint") is not None:
                raise UsageError(f"{scenario.path}: --dataplanes {ns}=waypoint: no waypoint named in '{ns}', and the "
                                 "default name 'waypoint' is a workload's")
            waypoints.append(Waypoint("waypoint", ns))
    return replace(scenario, dataplanes={**scenario.dataplanes, **moves}, waypoints=tuple(waypoints))


def _compare_dataplanes(files: Sequence[str], version: IstioVersion, moves: Mapping[str, DataPlane], as_json: bool,
                        out: TextIO) -> int:
    """`compare --dataplanes`: every probe whose verdict, denial form, enforcer or deciding policy changes when the
    namespaces move, old and new side by side and why in one line (engine/migrate.py); exit 1 when any does."""
    from conformance.engine import state_for_step
    from conformance.engine.migrate import change, moved_namespaces

    changes = 0
    for scenario in _load_all(files, version):
        after = _moved(scenario, moves)
        moved = moved_namespaces(scenario.dataplanes, after.dataplanes)
        if not as_json:
            what = ", ".join(f"{ns} {o} → {n}" for ns, (o, n) in moved.items()) or "nothing moves"
            print(f"{scenario.path}: {what} (Istio {version}, mode mixed)", file=out)
        for step in scenario.steps:
            s_before, s_after = state_for_step(scenario, step), state_for_step(after, step)
            for e in step.expectations:
                c = change(s_before, s_after, e.probe, version)
                if c is None:
                    continue
                changes += 1
                a, b = c.before.decision, c.after.decision
                if as_json:
                    p = e.probe
                    print(json.dumps({
                        "scenario": scenario.name, "file": scenario.path, "step": step.name, "probe": e.index,
                        "from": p.source.ref, "to": p.destination.ref, "port": p.port.number,
                        "method": p.request.method, "path": p.request.path, "headers": dict(p.request.headers),
                        "moved": {ns: {"from": o, "to": n} for ns, (o, n) in moved.items()},
                        "before": c.before.as_json(), "after": c.after.as_json(), "why": c.why,
                    }), file=out)
                    continue
                print(f"  step '{step.name}' expect[{e.index}] {e.probe.describe()}:", file=out)
                for label, side, d in (("before", c.before, a), ("after ", c.after, b)):
                    by = f" by {d.policy}" if d.policy else f" ({d.reason})"
                    print(f"    {label} {d.verdict} ({d.outcome}) at {side.enforcer or 'no proxy'}{by}", file=out)
                print(f"    why: {c.why}", file=out)
    if not as_json:
        print(f"compare: {changes} probe(s) change when {', '.join(f'{k}={v}' for k, v in moves.items())}", file=out)
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
