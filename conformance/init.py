"""`authz-conformance init`: a scenario written from rendered manifests, with today's verdicts as its expectations.

Why: a team that already renders its Deployments, Services and policies (kustomize, Helm) should get a regression
gate in one command (issue 13). The scenario takes its workloads from the rendered files (`workloadsFrom`) and its
policies from the same files where it can (so the gate follows the repository), probes each client against each
server port plus the requests the policies' rules name (methods, paths, hosts), and writes the verdict engine's
prediction for each probe and mode as an explicit verdict, under a header saying they are today's behaviour to
review, not intent. The derivation is manifests.py's (the same as `workloadsFrom`); predictions go through the loader
and `truthtable.predict`, exactly as `authz-conformance predict` makes them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conformance.engine.matchers import ztunnel_string  # Istio's exact / prefix / suffix / presence match
from conformance.errors import Location, Problem, ScenarioError, UsageError
from conformance.manifests import Derivation, Document, derive, parse, read
from conformance.model import DEFAULT_MODES, Mode, Workload
from conformance.scenario import API_VERSION, KIND, load, sniff
from conformance.versions import IstioVersion
from conformance.yamlio import FAST_DUMPER

_KEPT_METADATA = ("name", "namespace", "labels", "annotations")  # the ObjectMeta a scenario's policy may carry
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]*$")


@dataclass
class _Sources:
    """What `--from` names: the rendered files (for `workloadsFrom` and policy `file` references) or stdin's text."""

    files: list[Path] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    stdin: bool = False


def write_scenario(sources: Sequence[str], modes: Sequence[Mode] | None, version: IstioVersion,
                   out: Path | None, name: str | None = None, stdin_text: str | None = None, *,
                   written_by: str | None = None, notes: Sequence[str] = (),
                   mesh: Mapping[str, Any] | None = None) -> str:
    """The scenario's YAML text for `sources` (files, directories, or `-` with `stdin_text`); paths in it are
    relative to `out`'s directory (the current directory when it goes to stdout).

    `written_by` (the command, e.g. `authz-conformance snapshot --kube-context prod`), `notes` (header lines) and
    `mesh` (`spec.mesh`: a cluster's rootNamespace or trustDomain) let another front end (snapshot.py) share this
    one entry point and say where the manifests came from, instead of duplicating the derivation and the writer."""
    src = _read(sources, stdin_text)
    derived = derive(src.documents)
    errors = [Problem(Location(f.where, "", f.field), f.message) for f in derived.findings if f.severity == "error"]
    if errors:
        raise ScenarioError(errors)
    if not derived.workloads:
        raise UsageError(f"{', '.join(sources)}: no workload found (Deployment, StatefulSet, DaemonSet, ReplicaSet, "
                         "Job, CronJob or Pod)")
    base = (out.parent if out is not None else Path.cwd()).resolve()
    chosen_modes = tuple(dict.fromkeys(modes or DEFAULT_MODES))
    policies, left_out = _policies(derived, src, version)
    workloads = [d.workload for d in derived.workloads]
    expect = _matrix(workloads, [doc for doc, _ in policies])
    scenario_name = _dns_label(name or (out.stem if out is not None else _stem(sources)))

    def spec(paths_from: Path | None) -> dict[str, Any]:
        """The spec, paths absolute (`paths_from` None: for the draft the engine reads) or relative to a directory."""
        def rel(p: Path) -> str:
            return str(p.resolve()) if paths_from is None else os.path.relpath(p.resolve(), paths_from)
        body: dict[str, Any] = {"modes": list(chosen_modes)}
        if mesh:
            body["mesh"] = dict(mesh)
        if src.stdin:
            body["workloads"] = [_workload_entry(w) for w in workloads]
            if "mixed" in chosen_modes:
                body["dataplanes"] = {ns: p for ns, p in derived.dataplanes.items()
                                      if any(w.namespace == ns and w.in_mesh for w in workloads)}
        else:
            body["workloadsFrom"] = [{"file": rel(p)} for p in src.files]
        entries: list[Any] = []
        for doc, by_file in policies:
            if by_file is not None:
                if {"file": rel(by_file)} not in entries:
                    entries.append({"file": rel(by_file)})
            else:
                entries.append(doc)
        body["steps"] = [{"name": "today", "description": "The policies found in the rendered manifests.",
                          "policies": entries, "expect": expect}]
        return body

    verdicts = _predict(scenario_name, spec(None), chosen_modes, version)
    for entry, verdict in zip(expect, verdicts, strict=True):
        entry["verdict"] = verdict
    origin = written_by or f"authz-conformance init --from {' --from '.join(sources)}"
    doc = {"apiVersion": API_VERSION, "kind": KIND,
           "metadata": {"name": scenario_name,
                        "description": (f"Today's verdicts of the policies in {', '.join(sources)} (init)."
                                        if written_by is None else f"Today's verdicts ({written_by}).")},
           "spec": spec(base)}
    return _header(origin, version, chosen_modes, left_out, derived, notes) + _dump(doc)


def _read(sources: Sequence[str], stdin_text: str | None) -> _Sources:
    """The documents of every source: a file as it is, a directory's `*.yaml`/`*.yml` files (scenario files
    skipped), `-` the text given on stdin (alone: its workloads and policies are then written inline)."""
    out = _Sources()
    if "-" in sources:
        if len(sources) > 1:
            raise UsageError("init: --from - (stdin) cannot be combined with files")
        docs, findings = parse(stdin_text or "", "<stdin>")
        _raise(findings)
        out.documents, out.stdin = docs, True
        return out
    for s in sources:
        path = Path(s)
        if path.is_dir():
            files = [p for p in sorted(path.rglob("*.y*ml")) if p.suffix in (".yaml", ".yml") and not sniff(p)]
            if not files:
                raise UsageError(f"init: {s}: no YAML file in this directory")
        elif path.exists():
            files = [path]
        else:
            raise UsageError(f"init: {s}: no such file or directory")
        for f in files:
            docs, findings = read(f, str(f))
            _raise(findings)
            if docs:
                out.files.append(f)
                out.documents.extend(docs)
    return out


def _raise(findings: Iterable[Any]) -> None:
    errors = [Problem(Location(f.where, "", f.field), f.message) for f in findings if f.severity == "error"]
    if errors:
        raise ScenarioError(errors)


def _policies(derived: Derivation, src: _Sources,
              version: IstioVersion) -> tuple[list[tuple[dict[str, Any], Path | None]], list[str]]:
    """The policies the step holds, each with the file to reference (None: written inline), and a line per policy
    left out. A file is referenced as it is when every security document in it is kept unchanged (so the gate
    follows the repository's file); otherwise its kept documents are written inline, metadata trimmed to what a
    scenario's policy may carry and `metadata.namespace` made explicit (kubectl's `default`)."""
    from conformance.validation import validate_manifest

    kept: list[tuple[Document, dict[str, Any]]] = []
    left_out: list[str] = []
    changed: set[str] = set()  # files with a policy left out or rewritten: inlined, not referenced
    for doc in derived.policies:
        body = _trimmed(doc)
        why = _left_out_reason(doc, body)
        if why is None:
            problems = [f for f in validate_manifest(body, version) if f.severity in ("error", "unsupported")]
            if problems:
                why = "; ".join(f"{f.field + ': ' if f.field else ''}{f.message}" for f in problems[:2])
        if why is not None:
            left_out.append(f"{doc.kind} {doc.namespace}/{doc.name} ({doc.origin}): {why}")
            changed.add(doc.source)
            continue
        if body != dict(doc.body):
            changed.add(doc.source)
        kept.append((doc, body))
    by_source = {str(p): p for p in src.files}
    return [(body, None if src.stdin or doc.source in changed else by_source.get(doc.source))
            for doc, body in kept], left_out


def _trimmed(doc: Document) -> dict[str, Any]:
    body = {k: v for k, v in doc.body.items() if k != "status"}
    meta = {k: v for k, v in doc.metadata.items() if k in _KEPT_METADATA}
    meta["namespace"] = doc.namespace
    body["metadata"] = meta
    return body


def _left_out_reason(doc: Document, body: Mapping[str, Any]) -> str | None:
    """Why a RequestAuthentication cannot be written: the suite serves no JWKS endpoint, so each jwtRule needs its
    keys inline (`jwks`); a `jwksUri` (or neither) cannot be expressed."""
    if doc.kind != "RequestAuthentication":
        return None
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    for i, rule in enumerate(spec.get("jwtRules") or []):
        if not isinstance(rule, Mapping) or not isinstance(rule.get("jwks"), str):
            return (f"spec.jwtRules[{i}] has no inline jwks (jwksUri: istiod would fetch the keys, and the suite "
                    "serves no JWKS endpoint; write jwks: \"${jwks:<issuer>}\" with spec.issuers to test it)")
    return None


# -- the probe matrix ----------------------------------------------------------------------------------------------

def _matrix(workloads: Sequence[Workload], policies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every client to every other workload's server port (GET /, or bytes on a TCP port), then, for each
    AuthorizationPolicy rule naming methods, paths or hosts, those requests to each workload it selects, from a
    client its `from` matches (when one does) and from one it does not: so each rule is exercised both ways."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()

    def add(src: Workload, dst: Workload, port: int, request: dict[str, Any] | None, note: str | None) -> None:
        key = (src.ref, dst.ref, port, repr(request))
        if key in seen or src.ref == dst.ref:
            return
        seen.add(key)
        entry: dict[str, Any] = {"from": src.ref, "to": f"{dst.ref}:{port}"}
        if request:
            entry["request"] = request
        if note:
            entry["note"] = note
        out.append(entry)

    servers = [w for w in workloads if w.in_mesh and w.ports]
    for dst in servers:
        for port in dst.ports:
            for src in workloads:
                add(src, dst, port.number, None, None)
    for policy in policies:
        if policy.get("kind") != "AuthorizationPolicy":
            continue
        meta, spec = _map(policy.get("metadata")), _map(policy.get("spec"))
        ref = f"{meta.get('namespace')}/{meta.get('name')}"
        targets = _selected(spec, str(meta.get("namespace")), servers)
        for i, rule in enumerate(_list(spec.get("rules"))):
            sources = _sources(_map(rule), workloads)
            for op in [_map(_map(t).get("operation")) for t in _list(_map(rule).get("to"))]:
                requests = _requests(op)
                if not requests:
                    continue
                ports = {int(p) for p in _list(op.get("ports")) if str(p).isdigit()}
                for dst in targets:
                    for port in dst.ports:
                        if port.protocol != "HTTP" or (ports and port.number not in ports):
                            continue
                        for src in sources(dst):
                            for request in requests:
                                add(src, dst, port.number, request, f"exercises {ref} rules[{i}]")
    return out


def _selected(spec: Mapping[str, Any], namespace: str, servers: Sequence[Workload]) -> list[Workload]:
    """The servers a policy applies to, roughly as istiod selects them: matchLabels in its namespace (every
    namespace for the root namespace istio-system), targetRefs by the Service name (the workload's here), else
    every workload of its namespace."""
    in_scope = [w for w in servers if namespace == "istio-system" or w.namespace == namespace]
    labels = _map(_map(spec.get("selector")).get("matchLabels"))
    refs = [_map(r) for r in _list(spec.get("targetRefs"))] + ([_map(spec["targetRef"])] if "targetRef" in spec
                                                                else [])
    if labels:
        return [w for w in in_scope if all(w.labels.get(k) == v for k, v in labels.items())]
    if refs:
        names = {str(r.get("name")) for r in refs if r.get("kind") == "Service"}
        return [w for w in in_scope if w.name in names]
    return in_scope


def _sources(rule: Mapping[str, Any], workloads: Sequence[Workload]) -> Any:
    """A function giving, for a destination, a client the rule's `from` matches (principals, namespaces) and one it
    does not; with no `from`, one client."""
    froms = [_map(_map(f).get("source")) for f in _list(rule.get("from"))]

    def matches(w: Workload) -> bool:
        for s in froms:
            principals = [str(p) for p in _list(s.get("principals"))]
            namespaces = [str(n) for n in _list(s.get("namespaces"))]
            if not principals and not namespaces:
                continue
            ok_p = not principals or any(ztunnel_string(p)(w.identity("cluster.local")) for p in principals)
            ok_n = not namespaces or any(ztunnel_string(n)(w.namespace) for n in namespaces)
            if ok_p and ok_n and w.in_mesh:
                return True
        return False

    def pick(dst: Workload) -> list[Workload]:
        clients = [w for w in workloads if w.ref != dst.ref]
        if not froms:
            return clients[:1]
        yes = [w for w in clients if matches(w)][:1]
        no = [w for w in clients if not matches(w)][:1]
        return yes + no

    return pick


def _requests(op: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One request per method, path and host the operation names (the longest list sets the count, the shorter ones
    repeat their last value): wildcards made concrete (`/api/*` -> `/api/x`, `*.png` -> `/x.png`, `{*}` -> `x`)."""
    methods = [m for m in (str(v) for v in _list(op.get("methods"))) if _METHOD.match(m)]
    paths = [p for p in (_concrete_path(str(v)) for v in _list(op.get("paths"))) if p]
    hosts = [h for h in (_concrete_host(str(v)) for v in _list(op.get("hosts"))) if h]
    n = max(len(methods), len(paths), len(hosts))
    out = []
    for i in range(n):
        request: dict[str, Any] = {}
        if methods:
            request["method"] = methods[min(i, len(methods) - 1)]
        if paths:
            request["path"] = paths[min(i, len(paths) - 1)]
        if hosts:
            request["headers"] = {"host": hosts[min(i, len(hosts) - 1)]}
        out.append(request)
    return out


def _concrete_path(path: str) -> str | None:
    if path == "*":
        return "/"
    path = path.replace("{**}", "x/y").replace("{*}", "x")
    if path.endswith("*"):
        path = path[:-1] + "x"
    if path.startswith("*"):
        path = "/x" + path[1:]  # `*.png` -> /x.png, `*/admin` -> /x/admin
    return path if path.startswith("/") and not re.search(r"\s", path) else None


def _concrete_host(host: str) -> str | None:
    if host == "*":
        return None
    return host.replace("*", "x")


# -- predictions, and the file ------------------------------------------------------------------------------------

def _predict(name: str, spec: Mapping[str, Any], modes: Sequence[Mode], version: IstioVersion) -> list[Any]:
    """The engine's verdict per probe and mode, read through the loader (so the draft is validated as the written
    scenario will be) and `truthtable.predict`: one verdict when every mode agrees, else one per mode."""
    from conformance.truthtable import predict

    draft = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": dict(spec)}
    # Checked and built as the file will be, from the document itself: what `yaml.dump` writes and the loader would
    # read back is this same document (plain str, int, list and dict; the draft's file paths are absolute), so it is
    # never written out and parsed back. The name only labels a problem the loader finds.
    scenario = load(Path(f"{name} (init draft).yaml"), version, doc=draft)
    step = scenario.steps[0]
    per_mode = {mode: [row.predicted.verdict for row in predict(scenario, step, mode, version)] for mode in modes}
    out: list[Any] = []
    for i in range(len(step.expectations)):
        verdicts = {mode: per_mode[mode][i] for mode in modes}
        out.append(next(iter(verdicts.values())) if len(set(verdicts.values())) == 1 else verdicts)
    return out


def _workload_entry(w: Workload) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": w.name, "namespace": w.namespace, "serviceAccount": w.service_account,
                             "labels": dict(w.labels)}
    if w.ports:
        entry["ports"] = [p.number if p.protocol == "HTTP" else {"port": p.number, "protocol": p.protocol}
                          for p in w.ports]
    if not w.in_mesh:
        entry["mesh"] = False
    return entry


def _header(origin: str, version: IstioVersion, modes: Sequence[Mode], left_out: Sequence[str],
            derived: Derivation, notes: Sequence[str] = ()) -> str:
    lines = [
        f"Written by `{origin}`",
        f"with Istio {version}'s semantics, modes {', '.join(modes)}.",
        "REVIEW EVERY VERDICT BEFORE RELYING ON THIS FILE. Each one is the verdict engine's prediction of what the",
        "policies do today, not what they are meant to do: a verdict that is wrong for your intent is a finding",
        "about your policies. Fix those, keep the rest, and run `pytest` on this file as a regression gate.",
    ]
    if left_out:
        lines.append("Left out of the step (the verdicts are without them):")
        lines += [f"  - {why}" for why in left_out]
    lines += list(notes)
    notices = [f"{f.where}: {f.field + ': ' if f.field else ''}{f.message}" for f in derived.findings
               if f.severity == "notice"]
    if notices:
        lines.append("Notices while reading the manifests:")
        lines += [f"  - {n}" for n in notices]
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(FAST_DUMPER):  # type: ignore[misc,valid-type]
    """Plain YAML for a reader: no `&id001` anchors where probes share a request."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120,
                     allow_unicode=True)


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "from-manifests"


def _stem(sources: Sequence[str]) -> str:
    first = sources[0] if sources else ""
    return "from-stdin" if first == "-" else Path(first.rstrip("/")).stem or "from-manifests"


def _map(value: object) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []
