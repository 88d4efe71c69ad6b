"""Scenario files: loading, defaults and validation, with errors that say file, step, probe and field.

A scenario is checked in three passes, each reporting every problem it finds, one line each:
1. YAML and the JSON Schema (schema.py): shape, types, unknown fields;
2. references: workloads, ports, steps, policy files, address placeholders, duplicates;
3. every policy document the way Istio's validation checks it (validation.py), at the Istio version
   in use, plus this suite's "not supported yet" list.
Nothing runs unless all three pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conformance.errors import Location, Problem, ScenarioError
from conformance.model import (
    ADDRESS_PLACEHOLDER,
    DEFAULT_MODES,
    MODES,
    Expectation,
    Manifest,
    MeshConfig,
    Mode,
    Port,
    Probe,
    Request,
    Scenario,
    Step,
    Waypoint,
    Workload,
    default_addresses,
)
from conformance.schema import SCHEMA
from conformance.versions import IstioVersion

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
_TO_RE = re.compile(r"^(?P<ref>[a-z0-9-]+/[a-z0-9-]+)(?::(?P<port>\d+))?$")


def is_scenario_document(doc: object) -> bool:
    """How the pytest plugin recognises a scenario file: by content, not by name."""
    return (
        isinstance(doc, Mapping)
        and doc.get("apiVersion") == "authz-conformance/v1"
        and doc.get("kind") == "Scenario"
    )


def sniff(path: Path) -> bool:
    """True when `path` is a YAML file whose first document is a scenario (cheap, never raises)."""
    try:
        with path.open(encoding="utf-8") as fh:
            head = fh.read(4096)
        if "authz-conformance/v1" not in head:
            return False
        with path.open(encoding="utf-8") as fh:
            first = next(yaml.safe_load_all(fh), None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "kind: Scenario" in locals().get("head", "")
    return is_scenario_document(first)


def load(path: str | Path, version: IstioVersion | None = None) -> Scenario:
    """Load and validate one scenario file; raise ScenarioError listing every problem found."""
    scenario, problems = check(path, version)
    errors = [p for p in problems if p.severity == "error"]
    if errors or scenario is None:
        raise ScenarioError(errors)
    return scenario


def check(path: str | Path, version: IstioVersion | None = None) -> tuple[Scenario | None, list[Problem]]:
    """Load a scenario and return it with every problem (errors and warnings) found on the way."""
    return _Loader(Path(path), version or IstioVersion.parse(None)).run()


class _Loader:
    def __init__(self, path: Path, version: IstioVersion):
        self.path = path
        self.file = _display(path)
        self.version = version
        self.problems: list[Problem] = []

    def error(self, message: str, where: str = "", field: str = "", severity: str = "error") -> None:
        self.problems.append(Problem(Location(self.file, where, field), message, severity))

    # -- pass 1: YAML and schema -------------------------------------------------------------
    def run(self) -> tuple[Scenario | None, list[Problem]]:
        doc = self._read()
        if doc is None:
            return None, self.problems
        for err in _schema_errors(doc):
            where, field = _locate(doc, list(err.absolute_path))
            message, extra = _schema_message(err)
            if extra:
                field = f"{field}.{extra}" if field else extra
            self.error(message, where, field)
        if self.problems:
            return None, self.problems
        scenario = self._build(doc)
        return (scenario if not any(p.severity == "error" for p in self.problems) else None), self.problems

    def _read(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.error("file not found")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.error(f"cannot read file: {exc}")
            return None
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            self.error(f"malformed YAML: {_yaml_reason(exc)}")
            return None
        if not docs:
            self.error("the file is empty: expected one Scenario document")
            return None
        if len(docs) > 1:
            self.error(f"expected one Scenario document, found {len(docs)} (one scenario per file)")
            return None
        if not is_scenario_document(docs[0]):
            self.error("not a scenario: expected apiVersion: authz-conformance/v1 and kind: Scenario")
            return None
        return docs[0]

    # -- pass 2 and 3: references and policies ---------------------------------------------
    def _build(self, doc: Mapping[str, Any]) -> Scenario | None:
        meta, spec = doc["metadata"], doc["spec"]
        modes = tuple(spec.get("modes", DEFAULT_MODES))
        mesh_doc = spec.get("mesh", {})
        mesh = MeshConfig(
            root_namespace=mesh_doc.get("rootNamespace", MeshConfig.root_namespace),
            trust_domain=mesh_doc.get("trustDomain", MeshConfig.trust_domain),
        )
        workloads = self._workloads(spec["workloads"])
        by_ref = {w.ref: w for w in workloads}
        waypoints, explicit = self._waypoints(spec.get("waypoints"), workloads, by_ref)
        steps: list[Step] = []
        seen_steps: set[str] = set()
        partial = Scenario(meta["name"], meta.get("description", ""), str(self.path), modes, mesh,
                           tuple(workloads), tuple(waypoints), (), explicit)
        addresses = default_addresses(partial)
        for i, step_doc in enumerate(spec["steps"]):
            name = step_doc["name"]
            where = f"step '{name}'"
            if name in seen_steps:
                self.error(f"duplicate step name '{name}'", where, f"spec.steps[{i}].name")
            seen_steps.add(name)
            policies = self._policies(step_doc["policies"], where, mesh, by_ref, addresses)
            expectations = self._expectations(step_doc["expect"], where, by_ref, modes)
            steps.append(Step(name, tuple(policies), tuple(expectations)))
        return Scenario(meta["name"], meta.get("description", ""), str(self.path), modes, mesh,
                        tuple(workloads), tuple(waypoints), tuple(steps), explicit)

    def _workloads(self, docs: Sequence[Mapping[str, Any]]) -> list[Workload]:
        out: list[Workload] = []
        seen: set[str] = set()
        for i, w in enumerate(docs):
            ports: list[Port] = []
            where = f"workload '{w['namespace']}/{w['name']}'"
            for j, p in enumerate(w.get("ports", [])):
                port = Port(p, "HTTP") if isinstance(p, int) else Port(p["port"], p.get("protocol", "HTTP"))
                if any(q.number == port.number for q in ports):
                    self.error(f"port {port.number} is listed twice", where, f"spec.workloads[{i}].ports[{j}]")
                ports.append(port)
            in_mesh = w.get("mesh", True)
            if not in_mesh and ports:
                self.error(
                    "an out-of-mesh workload (mesh: false) is a client only; server ports on it are not "
                    "supported yet", where, f"spec.workloads[{i}].ports")
            workload = Workload(
                name=w["name"], namespace=w["namespace"],
                service_account=w.get("serviceAccount", w["name"]),
                labels=dict(w.get("labels", {"app": w["name"]})),
                ports=tuple(ports), in_mesh=in_mesh,
            )
            if workload.ref in seen:
                self.error(f"duplicate workload '{workload.ref}'", where, f"spec.workloads[{i}].name")
            seen.add(workload.ref)
            out.append(workload)
        mesh_ns = {w.namespace for w in out if w.in_mesh}
        for i, w in enumerate(out):
            if not w.in_mesh and w.namespace in mesh_ns:
                self.error(
                    f"out-of-mesh workload '{w.ref}' shares namespace '{w.namespace}' with mesh workloads; "
                    "mesh membership is per namespace (injection / dataplane-mode labels): use its own namespace",
                    f"workload '{w.ref}'", f"spec.workloads[{i}].namespace")
        return out

    def _waypoints(
        self, docs: Sequence[Mapping[str, Any]] | None, workloads: Sequence[Workload], by_ref: Mapping[str, Workload]
    ) -> tuple[list[Waypoint], bool]:
        if docs is None:
            server_ns = dict.fromkeys(w.namespace for w in workloads if w.in_mesh and w.ports)
            return [Waypoint("waypoint", ns) for ns in server_ns if f"{ns}/waypoint" not in by_ref], False
        out: list[Waypoint] = []
        for i, d in enumerate(docs):
            wp = Waypoint(d["name"], d["namespace"])
            where = f"waypoint '{wp.ref}'"
            if wp.ref in by_ref:
                self.error(f"waypoint '{wp.ref}' has the name of a workload", where, f"spec.waypoints[{i}].name")
            if any(o.namespace == wp.namespace for o in out):
                self.error(f"namespace '{wp.namespace}' already has a waypoint (one serves the whole namespace)",
                           where, f"spec.waypoints[{i}].namespace")
            out.append(wp)
        return out, True

    def _policies(
        self, items: Sequence[Mapping[str, Any]], step: str, mesh: MeshConfig,
        by_ref: Mapping[str, Workload], addresses: Mapping[str, str],
    ) -> list[Manifest]:
        from conformance.validation import validate_manifest

        out: list[Manifest] = []
        seen: dict[tuple[str, str, str], str] = {}
        for k, item in enumerate(items):
            for doc, origin in self._expand(item, step, k):
                meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
                kind, name, ns = str(doc.get("kind", "")), str(meta.get("name", "")), str(meta.get("namespace", ""))
                where = f"{step}: {origin} ({kind} {ns}/{name})"
                bad_refs = sorted({m.group(1) for m in ADDRESS_PLACEHOLDER.finditer(_strings(doc))} - set(addresses))
                for ref in bad_refs:
                    self.error(f"address placeholder ${{ip:{ref}}} names no workload or waypoint", where)
                manifest = Manifest(kind, str(doc.get("apiVersion", "")), name, ns, doc, origin)
                for finding in validate_manifest(manifest.rendered(addresses).body, self.version):
                    severity = "warning" if finding.severity == "warning" else "error"
                    message = finding.message
                    if finding.severity == "unsupported" and "not supported yet" not in message:
                        message = f"{message} (not supported yet)"
                    self.error(message, where, finding.field, severity)
                if manifest.key in seen:
                    self.error(f"{kind} {ns}/{name} is listed twice in this step (also {seen[manifest.key]})",
                               where, "metadata.name")
                seen[manifest.key] = origin
                out.append(manifest)
        return out

    def _expand(self, item: Mapping[str, Any], step: str, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        if "file" not in item:
            yield dict(item), f"policies[{k}]"
            return
        rel = item["file"]
        target = (self.path.parent / rel).resolve()
        try:
            docs = [d for d in yaml.safe_load_all(target.read_text(encoding="utf-8")) if d is not None]
        except FileNotFoundError:
            self.error(f"policy file '{rel}' not found (relative to the scenario: {target})",
                       step, f"policies[{k}].file")
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.error(f"cannot read policy file '{rel}': {exc}", step, f"policies[{k}].file")
            return
        except yaml.YAMLError as exc:
            self.error(f"malformed YAML in policy file '{rel}': {_yaml_reason(exc)}", step, f"policies[{k}].file")
            return
        if not docs:
            self.error(f"policy file '{rel}' holds no document", step, f"policies[{k}].file")
        for n, doc in enumerate(docs):
            origin = f"policies[{k}] {rel} document {n + 1}"
            if not isinstance(doc, Mapping):
                self.error("a policy document must be a mapping (apiVersion, kind, metadata, spec)",
                           f"{step}: {origin}")
                continue
            yield dict(doc), origin

    def _expectations(
        self, items: Sequence[Mapping[str, Any]], step: str, by_ref: Mapping[str, Workload], modes: Sequence[Mode]
    ) -> list[Expectation]:
        out: list[Expectation] = []
        for j, e in enumerate(items):
            where = f"{step}: probe expect[{j}]"
            source = by_ref.get(e["from"])
            if source is None:
                self.error(f"unknown workload '{e['from']}'{_suggest(e['from'], by_ref)}", where, "from")
            m = _TO_RE.match(e["to"])
            assert m is not None  # the schema's pattern guarantees it
            dest = by_ref.get(m.group("ref"))
            port: Port | None = None
            if dest is None:
                self.error(f"unknown workload '{m.group('ref')}'{_suggest(m.group('ref'), by_ref)}", where, "to")
            elif not dest.ports:
                self.error(f"workload '{dest.ref}' serves no port (it is a client only)", where, "to")
            elif m.group("port") is None:
                if len(dest.ports) == 1:
                    port = dest.ports[0]
                else:
                    served = ", ".join(str(p.number) for p in dest.ports)
                    self.error(f"workload '{dest.ref}' serves several ports ({served}): say which", where, "to")
            else:
                port = dest.port(int(m.group("port")))
                if port is None:
                    served = ", ".join(str(p.number) for p in dest.ports)
                    self.error(f"workload '{dest.ref}' does not serve port {m.group('port')} (it serves {served})",
                               where, "to")
            req = e.get("request", {})
            request = Request(
                method=req.get("method", "GET"), path=req.get("path", "/"),
                headers=tuple((k, v) for k, v in req.get("headers", {}).items()),
            )
            if port is not None and port.protocol == "TCP" and "request" in e:
                self.error(
                    f"port {port.number} of '{m.group('ref')}' is raw TCP: a probe to it cannot carry an HTTP "
                    "request (it still sends bytes; drop 'request')", where, "request")
            verdicts = _verdicts(e.get("verdict", "auto"), modes)
            if source is None or dest is None or port is None:
                continue
            out.append(Expectation(j, Probe(source, dest, port, request), verdicts))
        return out


def _verdicts(value: Any, modes: Sequence[Mode]) -> dict[Mode, Any]:
    if isinstance(value, str):
        return {m: (None if value == "auto" else value) for m in MODES}
    return {m: (None if value.get(m, "auto") == "auto" else value[m]) for m in MODES}


def _schema_errors(doc: Any) -> list[jsonschema.ValidationError]:
    errors: list[jsonschema.ValidationError] = []
    for err in sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(_deepest(err))
    return errors


def _deepest(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf failures, the sub-error that went deepest is the one a user needs to see."""
    if err.validator in ("oneOf", "anyOf") and err.context:
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None and len(best.absolute_path) > len(err.absolute_path):
            return _deepest(best)
        if best is not None and best.validator == "additionalProperties":
            return best
    return err


def _schema_message(err: jsonschema.ValidationError) -> tuple[str, str]:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            return f"unknown field '{extra[0]}' (allowed here: {allowed})", str(extra[0])
    if err.validator == "required":
        return err.message.replace("is a required property", "is required"), ""
    if err.validator == "pattern":
        return f"{err.instance!r} is not valid here (expected to match {err.validator_value})", ""
    if err.validator in ("enum", "const"):
        choices = err.validator_value if err.validator == "enum" else [err.validator_value]
        return f"{err.instance!r} is not one of {', '.join(map(str, choices))}", ""
    if err.validator in ("oneOf", "anyOf"):
        return f"{_short(err.instance)} is not a valid value here", ""
    return err.message, ""


def _locate(doc: Mapping[str, Any], path: list[Any]) -> tuple[str, str]:
    """Turn a JSON path into (where, field): `step 'x': probe expect[2]` and `verdict`."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), Mapping) else {}
    if len(path) >= 3 and path[0] == "spec" and path[1] == "steps" and isinstance(path[2], int):
        steps = spec.get("steps", [])
        step = steps[path[2]] if path[2] < len(steps) else {}
        name = step.get("name") if isinstance(step, Mapping) else None
        where = f"step '{name}'" if isinstance(name, str) else f"steps[{path[2]}]"
        rest = path[3:]
        if len(rest) >= 2 and rest[0] == "expect" and isinstance(rest[1], int):
            return f"{where}: probe expect[{rest[1]}]", _dotted(rest[2:])
        if len(rest) >= 2 and rest[0] == "policies" and isinstance(rest[1], int):
            return f"{where}: policies[{rest[1]}]", _dotted(rest[2:])
        return where, _dotted(rest)
    if len(path) >= 3 and path[0] == "spec" and path[1] == "workloads" and isinstance(path[2], int):
        items = spec.get("workloads", [])
        w = items[path[2]] if path[2] < len(items) else {}
        if isinstance(w, Mapping) and isinstance(w.get("name"), str):
            return f"workload '{w.get('namespace', '?')}/{w['name']}'", _dotted(path[3:])
    return "", _dotted(path)


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strings(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(_strings(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_strings(v) for v in value)
    return ""


def _suggest(ref: str, by_ref: Mapping[str, Workload]) -> str:
    import difflib

    close = difflib.get_close_matches(ref, list(by_ref), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
