"""Scenario files: loading, defaults and validation, with errors that say file, step, probe and field.

A scenario is checked in three passes, each reporting every problem it finds, one line each:
1. YAML and the JSON Schema (schema.py): shape, types, unknown fields;
2. references: workloads, ports, steps, policy files, address and JWKS placeholders, issuers, extension
   providers, duplicates, reserved headers, the tokens probes carry;
3. every policy document, and every ext_authz extension provider of the mesh config, the way Istio's
   validation checks it (validation.py), at the Istio version in use, plus this suite's "not supported yet"
   list.
All three run on every file, whatever the others found (a part the schema rejects is skipped by the later
passes, every other part is still checked), so one run lists every problem (issue 9). Nothing runs unless
all three pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conformance import yamlio
from conformance.errors import Location, Problem, ScenarioError, closest, yaml_type
from conformance.manifests import Derivation, Document, Finding, derive, read
from conformance.model import (
    ADDRESS_PLACEHOLDER,
    DATAPLANES,
    DEFAULT_MODES,
    DEFAULT_TOKEN_LOCATION,
    MODES,
    RESERVED_CLAIMS,
    WORKLOAD_KINDS,
    DataPlane,
    Expectation,
    ExtAuthzKind,
    ExtensionProvider,
    GatewayRoute,
    Issuer,
    JwtSpec,
    Manifest,
    MeshConfig,
    Mode,
    Port,
    Probe,
    Request,
    Scenario,
    Signature,
    Step,
    TokenLocation,
    Waypoint,
    Workload,
    WorkloadKind,
    default_addresses,
)
from conformance.probe import RESERVED_HEADERS
from conformance.schema import SCHEMA
from conformance.versions import IstioVersion

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
_TO_RE = re.compile(r"^(?P<ref>[a-z0-9-]+/[a-z0-9-]+)(?::(?P<port>\d+))?$")
_FROM_RE = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+$")
_ANY_JWKS_PLACEHOLDER = re.compile(r"\$\{jwks:([^}]*)\}")
# MeshConfig fields of the ext_authz providers this suite does not model (valid Istio).
_UNMODELLED_PROVIDER_FIELDS = {
    "includeRequestBodyInCheck": "the request body is not sent to the provider in this suite",
    "clearRouteCache": "istiod 1.30 ignores it for HTTP providers and routing is not modelled",
    "includeHeadersInCheck": "deprecated by Istio: use includeRequestHeadersInCheck",
}
API_GROUP = "authz-conformance"
API_VERSION = f"{API_GROUP}/v1"
KIND = "Scenario"
# A `kind` this close to "Scenario" is a misspelt scenario (Scenerio, Senario, scenario), not some other
# document: such a file must be collected and fail, never be skipped in silence (issue 9).
_KIND_DISTANCE = 2
_MAX_SNIFF_BYTES = 1 << 20
_MAX_EXPANDED_NODES = 200_000  # far above any real scenario; a guard against alias bombs
_TOP_KIND = re.compile(r"^kind:[ \t]*[\"']?([A-Za-z0-9_-]+)", re.MULTILINE)


def is_scenario_document(doc: object) -> bool:
    """A valid scenario header: apiVersion authz-conformance/v1 and kind Scenario."""
    return isinstance(doc, Mapping) and doc.get("apiVersion") == API_VERSION and doc.get("kind") == KIND


def looks_like_scenario(doc: object) -> bool:
    """Whether a document is meant as a scenario, valid or not: how the plugin and `validate` recognise one.

    Any `apiVersion: authz-conformance/<anything>`, or a `kind` within edit distance 2 of `Scenario` together
    with `spec.steps`. Recognising only the exact header made a typo (`kind: Scenerio`, `apiVersion:
    authz-conformance/v2`) drop the file from the run without a word, and pytest exit 0 (issue 9). A
    Kubernetes manifest (kind AuthorizationPolicy, Service, ...) is none of these.
    """
    if not isinstance(doc, Mapping):
        return False
    api_version, kind, spec = doc.get("apiVersion"), doc.get("kind"), doc.get("spec")
    if isinstance(api_version, str) and api_version.strip().startswith(f"{API_GROUP}/"):
        return True
    return (isinstance(kind, str) and _close_to_kind(kind)
            and isinstance(spec, Mapping) and "steps" in spec)


def _close_to_kind(kind: str) -> bool:
    """Whether `kind` is `Scenario` up to case and two typos (the misspelt-scenario test)."""
    return _edit_distance(kind.strip().lower(), KIND.lower()) <= _KIND_DISTANCE


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), for the misspelt-kind test."""
    if abs(len(a) - len(b)) > _KIND_DISTANCE:
        return _KIND_DISTANCE + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def sniff(path: Path) -> bool:
    """True when `path` is a YAML file meant as a scenario (see looks_like_scenario); cheap, never raises.

    A text test first (the group name, or a top-level `kind:` close to Scenario), so ordinary YAML is not
    parsed; then the first document decides. A file that fails to parse but passes the text test counts as
    a scenario, so that its malformed YAML is reported instead of the file being skipped.
    """
    try:
        with path.open(encoding="utf-8") as fh:
            text = fh.read(_MAX_SNIFF_BYTES)
    except (OSError, UnicodeDecodeError):
        return False
    if f"{API_GROUP}/" not in text and not any(_close_to_kind(k) for k in _TOP_KIND.findall(text)):
        return False
    try:
        first = yamlio.load_first(text)
    except yaml.YAMLError:
        return True
    except Exception:  # a YAML oddity the loader will report; sniffing itself must never raise
        return True
    return looks_like_scenario(first)


@dataclass(frozen=True)
class ScenarioPaths:
    """What a list of files and directories holds: the scenario files (recognised by content, as pytest collects
    them), the files given that are not scenarios (skipped with a notice), and the directories holding none."""

    files: list[str]
    not_scenarios: list[str]
    empty_dirs: list[str]
    missing: list[str]


def scenario_paths(paths: Iterable[str | Path]) -> ScenarioPaths:
    """Directories searched recursively for `*.yaml`/`*.yml` scenario files; files kept when they are scenarios.
    A non-scenario file (a Deployment, a raw policy) is reported, never an error: a pre-commit hook or a gate
    is handed every changed YAML file, and a typo'd scenario is still a scenario here (`sniff`)."""
    files: list[str] = []
    skipped: list[str] = []
    empty: list[str] = []
    missing: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = [str(c) for c in sorted(path.rglob("*.y*ml")) if c.suffix in (".yaml", ".yml") and sniff(c)]
            files += found
            if not found:
                empty.append(str(p))
        elif not path.exists():
            missing.append(str(p))
        elif sniff(path):
            files.append(str(p))
        else:
            skipped.append(str(p))
    return ScenarioPaths(list(dict.fromkeys(files)), skipped, empty, missing)


def load(path: str | Path, version: IstioVersion | None = None, doc: Mapping[str, Any] | None = None) -> Scenario:
    """Load and validate one scenario file; raise ScenarioError listing every problem found.

    `doc`: the file's document when the caller holds it already (`init` writes its draft from it): it is checked
    and built as the file's would be, without parsing the file back (90,000 probes of a 300-workload mesh took
    longer to parse than to predict). `path` still names it in errors and anchors its relative file references.
    """
    scenario, problems = check(path, version, doc)
    errors = [p for p in problems if p.severity == "error"]
    if errors or scenario is None:
        raise ScenarioError(errors)
    return scenario


def check(path: str | Path, version: IstioVersion | None = None, doc: Mapping[str, Any] | None = None,
          ) -> tuple[Scenario | None, list[Problem]]:
    """Load a scenario and return it with every problem (errors and warnings) found on the way.

    Every part is checked even when another part is broken: the JSON Schema, the references and each
    policy document, so that one `validate` run lists everything (issue 9). The scenario is returned only
    when there is no error.
    """
    return _Loader(Path(path), version or IstioVersion.parse(None), doc).run()


class _Loader:
    """One pass over one file that collects every problem: schema, references, policies.

    The JSON Schema runs first, but its errors do not stop the rest: the references and the policy
    documents are checked on whatever parts are usable (a part the schema rejects is skipped, and a
    reference to a workload whose entry is damaged is not reported a second time as unknown).
    """

    def __init__(self, path: Path, version: IstioVersion, doc: Mapping[str, Any] | None = None):
        self.path = path
        self.doc = doc  # the parsed document, when the caller has it (`load`)
        self.file = _display(path)
        self.version = version
        self.problems: list[Problem] = []
        self.schema_bad: set[tuple[Any, ...]] = set()  # instance paths of schema errors
        self.unsure_ports: set[str] = set()  # workloads whose port list the schema rejected in part
        self.skipped_files: set[str] = set()  # policy files whose non-policy documents were noticed (once each)
        self.spec_keys: set[str] = set()

    def error(self, message: str, where: str = "", field: str = "", severity: str = "error") -> None:
        self.problems.append(Problem(Location(self.file, where, field), message, severity))

    def damaged(self, *path: Any) -> bool:
        """Whether the schema reported a problem at `path` or below it."""
        return any(bad[:len(path)] == path for bad in self.schema_bad)

    # -- pass 1: YAML and schema -------------------------------------------------------------
    def run(self) -> tuple[Scenario | None, list[Problem]]:
        doc = self._read()
        if doc is None:
            return None, self.problems
        for err in _schema_errors(doc):
            path = list(err.absolute_path)
            if _inline_policy(doc, path):
                continue  # an inline policy document: validation.py checks it, field by field
            self.schema_bad.add(tuple(path))
            where, field = _locate(doc, path)
            for message, extra in _schema_messages(err):
                full = f"{field}.{extra}" if field and extra else (extra or field)
                if Problem(Location(self.file, where, full), message) not in self.problems:
                    self.error(message, where, full)
        scenario = self._build(doc)
        if any(p.severity == "error" for p in self.problems):
            return None, self.problems
        return scenario, self.problems

    def _read(self) -> Any:
        if self.doc is not None:  # built in memory, not parsed: no YAML aliases, one document
            if not looks_like_scenario(self.doc):
                self.error(f"not a scenario: expected apiVersion: {API_VERSION} and kind: {KIND}")
                return None
            return self.doc
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.error("file not found")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.error(f"cannot read file: {exc}")
            return None
        try:
            docs = [d for d in yamlio.load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            self.error(f"malformed YAML: {_yaml_reason(exc)}")
            return None
        except Exception as exc:  # e.g. a key PyYAML cannot hash: still one line, never a traceback
            self.error(f"malformed YAML: {type(exc).__name__}: {exc}")
            return None
        if not docs:
            self.error("the file is empty: expected one Scenario document")
            return None
        problem = _alias_problem(docs[0])
        if problem:
            self.error(problem)
            return None
        if not looks_like_scenario(docs[0]):
            self.error(f"not a scenario: expected apiVersion: {API_VERSION} and kind: {KIND}")
            return None
        if len(docs) > 1:
            self.error(f"expected one Scenario document, found {len(docs)} (one scenario per file)")
        return docs[0]

    # -- pass 2 and 3: references and policies ---------------------------------------------
    def _build(self, doc: Mapping[str, Any]) -> Scenario | None:
        meta, spec = _map(doc.get("metadata")), _map(doc.get("spec"))
        self.spec_keys = {str(k) for k in spec}
        raw_modes = [m for m in _list(spec.get("modes")) if m in MODES]
        modes: tuple[Mode, ...] = tuple(dict.fromkeys(raw_modes)) or DEFAULT_MODES
        mesh_doc = _map(spec.get("mesh"))
        mesh = MeshConfig(
            root_namespace=_str(mesh_doc.get("rootNamespace")) or MeshConfig.root_namespace,
            trust_domain=_str(mesh_doc.get("trustDomain")) or MeshConfig.trust_domain,
            extension_providers=tuple(self._providers(_list(mesh_doc.get("extensionProviders")))),
            pilot_env=self._pilot_env(mesh_doc.get("pilotEnv")),
            num_trusted_proxies=_count(mesh_doc.get("numTrustedProxies")),
        )
        issuers = {i.name: i for i in self._issuers(_list(spec.get("issuers")))}
        name, description = _str(meta.get("name")) or "", _str(meta.get("description")) or ""
        derived = self._workloads_from(spec.get("workloadsFrom"))
        workloads = self._workloads(_list(spec.get("workloads")), derived)
        by_ref = {w.ref: w for w in workloads}
        self._gateways(_list(spec.get("workloads")), workloads, by_ref)
        self._provider_ports(mesh, workloads)
        waypoints, explicit = self._waypoints(spec.get("waypoints"), workloads, by_ref,
                                              derived.waypoints if derived else {})
        dataplanes = self._dataplanes(spec.get("dataplanes"), modes, workloads, waypoints, explicit)
        if derived is not None:
            dataplanes = self._derived_dataplanes(derived, dataplanes, modes, workloads, waypoints)
        partial = Scenario(name, description, str(self.path), modes, mesh, tuple(workloads), tuple(waypoints), (),
                           explicit, tuple(issuers.values()))
        addresses = default_addresses(partial)
        steps: list[Step] = []
        seen_steps: set[str] = set()
        for i, step_doc in enumerate(_list(spec.get("steps"))):
            if not isinstance(step_doc, Mapping):
                continue  # the schema reported it
            step_name = _str(step_doc.get("name"))
            where = f"step '{step_name}'" if step_name is not None else f"steps[{i}]"
            if step_name is not None and step_name in seen_steps:
                self.error(f"duplicate step name '{step_name}'", where, f"spec.steps[{i}].name")
            seen_steps.add(step_name or "")
            policies = self._policies(_list(step_doc.get("policies")), where, mesh, by_ref, addresses, issuers)
            expectations = self._expectations(_list(step_doc.get("expect")), where, i, by_ref, modes, issuers)
            steps.append(Step(step_name or "", tuple(policies), tuple(expectations)))
        return Scenario(name, description, str(self.path), modes, mesh, tuple(workloads), tuple(waypoints),
                        tuple(steps), explicit, tuple(issuers.values()), dataplanes)

    def _dataplanes(self, value: object, modes: Sequence[Mode], workloads: Sequence[Workload],
                    waypoints: Sequence[Waypoint], explicit: bool) -> dict[str, DataPlane]:
        """`spec.dataplanes` (DESIGN.md §10): only with mode mixed, each namespace holding an in-mesh workload.

        A namespace with no workload is an error, not a warning: a misspelt namespace would otherwise leave the
        real one on sidecars and every verdict of the run would be about another mesh than the one meant.
        """
        if value is None:
            return {}
        out: dict[str, DataPlane] = {}
        if "mixed" not in modes:
            self.error("dataplanes only applies to mode mixed: add mixed to spec.modes, or remove spec.dataplanes "
                       "(every other mode puts every namespace on one data plane)", "", "spec.dataplanes")
        meshed = {w.namespace for w in workloads if w.in_mesh and not w.is_gateway}
        outside = {w.namespace for w in workloads if not w.in_mesh}
        gateways = {w.namespace for w in workloads if w.is_gateway}
        wp_namespaces = {w.namespace for w in waypoints}
        for namespace, plane in _map(value).items():
            if (not isinstance(namespace, str) or plane not in DATAPLANES
                    or self.damaged("spec", "dataplanes", namespace)):
                continue  # the schema reported it
            where = f"namespace '{namespace}'"
            field = f"spec.dataplanes.{namespace}"
            if namespace in gateways:
                self.error(f"namespace '{namespace}' holds an ingress gateway, which is its own Envoy in every mode: "
                           "it takes no data plane (keep gateways out of ambient namespaces, "
                           "docs/ingress-gateways.md §2)", where, field)
                continue
            if namespace in outside:
                self.error(f"namespace '{namespace}' holds out-of-mesh workloads only: it has no data plane "
                           "(mesh: false means no sidecar and no ambient capture)", where, field)
                continue
            if namespace not in meshed:
                known = ", ".join(sorted(meshed)) or "none"
                self.error(f"namespace '{namespace}' has no workload (namespaces with in-mesh workloads: {known})",
                           where, field)
                continue
            if plane == "waypoint" and namespace not in wp_namespaces:
                self.error(f"namespace '{namespace}' has the waypoint data plane but "
                           + ("spec.waypoints names no waypoint there" if explicit else
                              f"no default waypoint (it serves no port, or a workload is named "
                              f"'{namespace}/waypoint')"), where, field)
            out[namespace] = plane
        return out

    def _derived_dataplanes(self, derived: Derivation, dataplanes: Mapping[str, DataPlane], modes: Sequence[Mode],
                            workloads: Sequence[Workload], waypoints: Sequence[Waypoint]) -> dict[str, DataPlane]:
        """The data planes the manifests' Namespace labels give, under those `spec.dataplanes` writes (mode mixed
        only: every other mode puts every namespace on its own data plane, so there a notice says they differ)."""
        meshed = {w.namespace for w in workloads if w.in_mesh}
        found = {ns: plane for ns, plane in derived.dataplanes.items() if ns in meshed}
        if "mixed" not in modes:
            if len(set(found.values())) > 1:
                planes = ", ".join(f"{ns}: {plane}" for ns, plane in sorted(found.items()))
                self.error(f"the manifests' namespaces are on different data planes ({planes}); each mode runs every "
                           "namespace on its own, add mode mixed to spec.modes to run them as labelled",
                           "workloadsFrom", "", "notice")
            return dict(dataplanes)
        with_waypoint = {wp.namespace for wp in waypoints}
        out = dict(dataplanes)
        for ns, plane in found.items():
            if ns in out:
                continue  # spec.dataplanes says otherwise
            if plane == "waypoint" and ns not in with_waypoint:
                self.error(f"namespace '{ns}' is labelled to use a waypoint, but the scenario has none there (it "
                           "serves no port, or spec.waypoints names none): it runs ambient", "workloadsFrom", "",
                           "notice")
                plane = "ambient"
            out[ns] = plane
        return out

    def _pilot_env(self, doc: Any) -> tuple[tuple[str, str], ...]:
        """`mesh.pilotEnv`: istiod feature flags (pilotenv.py). Every problem is an error: a flag the suite does
        not model, a value istiod cannot parse (it would silently keep the default) or a flag this release's
        istiod does not have would all make the run's istiod differ from the one the scenario was written for."""
        from conformance.pilotenv import problem

        if not isinstance(doc, Mapping):
            return ()  # absent, or the schema reported it
        out: list[tuple[str, str]] = []
        for name, value in doc.items():
            why = problem(str(name), value, self.version)
            if why is None:
                out.append((str(name), str(value)))
            elif not self.damaged("spec", "mesh", "pilotEnv", name):  # else the schema said it
                self.error(why, "", f"spec.mesh.pilotEnv.{name}")
        return tuple(sorted(out))

    def _providers(self, docs: Sequence[Any]) -> list[ExtensionProvider]:
        """`mesh.extensionProviders`: each entry checked as Istio checks a mesh config (validation.py)."""
        from conformance.validation import EXT_AUTHZ_KINDS, validate_extension_provider

        out: list[ExtensionProvider] = []
        seen: set[str] = set()
        for i, doc in enumerate(docs):
            if not isinstance(doc, Mapping):
                continue  # the schema reported it
            name = _str(doc.get("name"))
            where = f"extension provider '{name}'" if name else f"mesh.extensionProviders[{i}]"
            base = f"spec.mesh.extensionProviders[{i}]"
            for finding in validate_extension_provider(doc, self.version):
                severity = "warning" if finding.severity == "warning" else "error"
                message = finding.message
                if finding.severity == "unsupported" and "not supported" not in message:
                    message = f"{message} (not supported yet)"
                self.error(message, where, f"{base}.{finding.field}" if finding.field else base, severity)
            if name is not None and name in seen:  # validateExtensionProvider
                self.error(f"duplicate extension provider name {name}", where, f"{base}.name")
            if name:
                seen.add(name)
            kinds = [k for k in EXT_AUTHZ_KINDS if isinstance(doc.get(k), Mapping)]
            if len([k for k in EXT_AUTHZ_KINDS if k in doc]) != 1:  # a proto oneof: exactly one provider kind
                self.error("an extension provider needs exactly one of envoyExtAuthzHttp or envoyExtAuthzGrpc (the "
                           "ext_authz kinds; this suite models no other provider kind)", where, base)
            for field_name in kinds:
                for extra, why in _UNMODELLED_PROVIDER_FIELDS.items():
                    if _map(doc.get(field_name)).get(extra) is not None:
                        self.error(f"{extra} is not supported yet ({why})", where, f"{base}.{field_name}.{extra}")
            if not name or len(kinds) != 1 or self.damaged("spec", "mesh", "extensionProviders", i):
                continue  # the schema or Istio's validation reported it
            config = _map(doc.get(kinds[0]))
            kind: ExtAuthzKind = "http" if EXT_AUTHZ_KINDS[kinds[0]] == "http" else "grpc"
            port = config.get("port")
            headers = _map(config.get("includeAdditionalHeadersInCheck"))
            out.append(ExtensionProvider(
                name=name, kind=kind, service=_str(config.get("service")) or "",
                port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
                timeout=_str(config.get("timeout")),
                fail_open=config.get("failOpen") is True,
                status_on_error=_str(config.get("statusOnError")) or None,
                include_request_headers_in_check=_strs(config.get("includeRequestHeadersInCheck")),
                headers_to_upstream_on_allow=_strs(config.get("headersToUpstreamOnAllow")),
                headers_to_downstream_on_deny=_strs(config.get("headersToDownstreamOnDeny")),
                headers_to_downstream_on_allow=_strs(config.get("headersToDownstreamOnAllow")),
                include_additional_headers_in_check=tuple(
                    (k, v) for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)),
                path_prefix=_str(config.get("pathPrefix")) or None,
            ))
        return out

    def _provider_ports(self, mesh: MeshConfig, workloads: Sequence[Workload]) -> None:
        """Each port of a `kind: ext-authz` workload speaks one protocol: an HTTP and a gRPC provider cannot both
        name it; and the suite's provider serves checks on HTTP ports only."""
        scenario = Scenario("", "", "", (), mesh, tuple(workloads), (), ())
        kinds: dict[tuple[str, int], tuple[str, str]] = {}
        for i, provider in enumerate(mesh.extension_providers):
            w = scenario.provider_workload(provider)
            if w is None or w.kind != "ext-authz":
                continue  # lint says what istiod does with it
            where = f"extension provider '{provider.name}'"
            field = (f"spec.mesh.extensionProviders[{i}]."
                     f"{'envoyExtAuthzHttp' if provider.kind == 'http' else 'envoyExtAuthzGrpc'}.port")
            other = kinds.get((w.ref, provider.port))
            if other is not None and other[0] != provider.kind:
                self.error(f"port {provider.port} of '{w.ref}' is named by {other[0]} provider '{other[1]}' and by "
                           f"{provider.kind} provider '{provider.name}': the suite's ext-authz server speaks one "
                           "protocol per port; give them different ports", where, field)
            kinds.setdefault((w.ref, provider.port), (provider.kind, provider.name))
            port = w.port(provider.port)
            if port is not None and port.protocol == "TCP":
                self.error(f"port {provider.port} of '{w.ref}' is declared TCP: an ext_authz provider is called over "
                           "HTTP (HTTP/2 for gRPC); declare it an HTTP port (not supported yet)", where, field)

    def _issuers(self, docs: Sequence[Any]) -> list[Issuer]:
        """`spec.issuers`: the JWT issuers the suite plays, unique by name."""
        out: list[Issuer] = []
        for i, doc in enumerate(docs):
            name, issuer = _str(_map(doc).get("name")), _str(_map(doc).get("issuer"))
            if name is None or issuer is None or self.damaged("spec", "issuers", i):
                continue  # the schema reported it
            if any(o.name == name for o in out):
                self.error(f"duplicate issuer name '{name}'", f"issuer '{name}'", f"spec.issuers[{i}].name")
                continue
            out.append(Issuer(name, issuer))
        return out

    def _workloads_from(self, items: object) -> Derivation | None:
        """`spec.workloadsFrom`: rendered manifests (manifests.py) read relative to the scenario; each finding is a
        problem naming the entry, the file's document and the field, a notice for what is left out or assumed."""
        if items is None:
            return None
        docs = []
        for k, item in enumerate(_list(items)):
            rel = _map(item).get("file")
            if not isinstance(rel, str) or not rel:
                continue  # the schema reported it
            found, findings = read((self.path.parent / rel).resolve(), rel)
            self._findings(f"workloadsFrom[{k}]", findings)
            if not found and not findings:
                self.error(f"'{rel}' holds no document", f"workloadsFrom[{k}]", f"spec.workloadsFrom[{k}].file")
            docs.extend(found)
        derived: Derivation = derive(docs)
        self._findings("workloadsFrom", derived.findings)
        if derived.ignored:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(derived.ignored.items()))
            self.error(f"not used for workloads: {kinds} (only pod owners, Services, Namespaces and waypoint "
                       "Gateways are read; policies come from the steps)", "workloadsFrom", "", "notice")
        return derived

    def _findings(self, where: str, findings: Iterable[Finding]) -> None:
        for f in findings:
            self.error(f.message, f"{where} {f.where}", f.field, f.severity)

    def _workloads(self, docs: Sequence[Any], derived: Derivation | None = None) -> list[Workload]:
        """The scenario's workloads: those derived from `workloadsFrom` (in document order), each overridden field
        by field by an explicit entry of the same namespace/name, then the explicit ones that are new."""
        base = {d.workload.ref: d for d in derived.workloads} if derived is not None else {}
        merged: dict[str, Workload] = {ref: d.workload for ref, d in base.items()}
        indexes: dict[str, int] = {}
        seen: set[str] = set()
        for i, w in enumerate(docs):
            name, namespace = _str(_map(w).get("name")), _str(_map(w).get("namespace"))
            if name is None or namespace is None:
                continue  # the schema reported it; references to it are reported as unknown
            ref = f"{namespace}/{name}"
            old = merged.get(ref) if ref not in seen else None
            ports: list[Port] = []
            where = f"workload '{namespace}/{name}'"
            for j, p in enumerate(_list(w.get("ports"))):
                port = _port(p)
                if port is None:
                    continue
                if any(q.number == port.number for q in ports):
                    self.error(f"port {port.number} is listed twice", where, f"spec.workloads[{i}].ports[{j}]")
                ports.append(port)
            if old is not None and "ports" not in w:
                ports = list(old.ports)
            in_mesh = w.get("mesh", True) is not False if old is None or "mesh" in w else old.in_mesh
            if not in_mesh and ports and "ports" in w:
                self.error(
                    "an out-of-mesh workload (mesh: false) is a client only; server ports on it are not "
                    "supported yet", where, f"spec.workloads[{i}].ports")
            raw_kind = w.get("kind", "app" if old is None else old.kind)
            kind: WorkloadKind = raw_kind if raw_kind in WORKLOAD_KINDS else "app"
            if raw_kind in WORKLOAD_KINDS and kind == "ext-authz" and not ports \
                    and not self.damaged("spec", "workloads", i, "ports"):
                self.error("a workload of kind ext-authz is the suite's external authorizer: give it the port(s) "
                           "its providers name (Istio's sample serves HTTP on 8000, gRPC on 9000)",
                           where, f"spec.workloads[{i}].ports")
            labels = w.get("labels")
            good_labels = isinstance(labels, Mapping) and not self.damaged("spec", "workloads", i, "labels")
            workload = Workload(
                name=name, namespace=namespace,
                service_account=_str(w.get("serviceAccount")) or (old.service_account if old else name),
                labels=dict(labels) if good_labels and isinstance(labels, Mapping)
                else old.labels if old is not None else {"app": name},
                ports=tuple(ports), in_mesh=in_mesh, kind=kind, routes=self._routes(w, i, where),
            )
            if self.damaged("spec", "workloads", i, "ports"):
                self.unsure_ports.add(workload.ref)
            if workload.ref in seen:
                self.error(f"duplicate workload '{workload.ref}'", where, f"spec.workloads[{i}].name")
            else:
                merged[workload.ref] = workload
                indexes[workload.ref] = i
            seen.add(workload.ref)
        out = list(merged.values())
        written_ports = {ref for ref, i in indexes.items() if "ports" in _map(docs[i])}
        for n, w in enumerate(out):
            if not w.in_mesh and w.ports and w.ref not in written_ports:
                self.error(f"'{w.ref}' is outside the mesh (its namespace opts out) and serves ports "
                           f"{', '.join(str(p.number) for p in w.ports)}: out-of-mesh servers are not supported yet, "
                           "so it is a client only here", f"workload '{w.ref}'", "", "notice")
                out[n] = replace(w, ports=())
        mesh_ns = {w.namespace for w in out if w.in_mesh}
        for w in out:
            if not w.in_mesh and w.namespace in mesh_ns:
                if w.ref in indexes:
                    where, field = f"workload '{w.ref}'", f"spec.workloads[{indexes[w.ref]}].namespace"
                else:
                    where, field = f"workloadsFrom {base[w.ref].origin}", "metadata.namespace"
                self.error(
                    f"out-of-mesh workload '{w.ref}' shares namespace '{w.namespace}' with mesh workloads; "
                    "mesh membership is per namespace (injection / dataplane-mode labels): use its own namespace",
                    where, field)
        return out

    def _gateway_probe(self, source: Workload, gateway: Workload, port: Port | None, headers: Mapping[Any, Any],
                       where: str) -> Workload | None:
        """`source`, if it may probe `gateway` with these headers, else None (the error said why): clients of a
        gateway are outside the mesh, and the Host (port ignored, gateway.go l.572) must have a route: without one
        the gateway answers 404 route_not_found, which is neither an allow nor a denial."""
        if source.in_mesh:
            self.error(f"a probe to the ingress gateway '{gateway.ref}' from in-mesh workload '{source.ref}' is not "
                       "supported yet (the gateway's listener is plaintext HTTP; its clients are outside the mesh: "
                       "mesh: false)", where, "from")
            return None
        if port is None:
            return source
        host = Request(headers=tuple((k, v) for k, v in headers.items() if isinstance(k, str)
                                     and isinstance(v, str))).header("host")
        authority = host if host is not None else f"{gateway.name}.{gateway.namespace}"
        if gateway.route_for(authority) is None:
            hosts = ", ".join(r.host for r in gateway.routes) or "none"
            self.error(f"the ingress gateway '{gateway.ref}' has no route for Host '{authority}' (its routes: "
                       f"{hosts}): it would answer 404 route_not_found; set request.headers.host", where,
                       "request.headers.host")
            return None
        return source

    def _routes(self, doc: Mapping[str, Any], i: int, where: str) -> tuple[GatewayRoute, ...]:
        """`routes` of an ingress gateway: `[{host, to: ns/name:port}]`, hosts unique (one vhost each, lower case
        as istiod writes vhost domains, gateway.go@1.30 l.488-511). Their targets are checked once every workload
        is known (`_gateways`)."""
        raw = doc.get("routes")
        if raw is None:
            return ()
        if doc.get("kind") != "ingress-gateway":
            self.error("routes belong to a workload of kind ingress-gateway", where, f"spec.workloads[{i}].routes")
            return ()
        out: list[GatewayRoute] = []
        for j, r in enumerate(_list(raw)):
            host, to = _str(_map(r).get("host")), _str(_map(r).get("to"))
            m = _TO_RE.match(to) if to is not None else None
            if host is None or m is None or m.group("port") is None \
                    or self.damaged("spec", "workloads", i, "routes", j):
                continue  # the schema reported it
            if any(o.host == host.lower() for o in out):
                self.error(f"host '{host}' is routed twice", where, f"spec.workloads[{i}].routes[{j}].host")
                continue
            out.append(GatewayRoute(host.lower(), m.group("ref"), int(m.group("port"))))
        return tuple(out)

    def _gateways(self, docs: Sequence[Any], workloads: Sequence[Workload], by_ref: Mapping[str, Workload]) -> None:
        """Ingress gateways as the suite models them: in the mesh (an identity), HTTP ports, at least one route, each
        to an in-mesh app's HTTP port, and a namespace of their own (no app shares it: ambient capture of a
        gateway's namespace is what docs/ingress-gateways.md §2 rules out)."""
        apps_ns = {w.namespace for w in workloads if not w.is_gateway}
        for i, doc in enumerate(docs):
            w = by_ref.get(f"{_map(doc).get('namespace')}/{_map(doc).get('name')}")
            if w is None or not w.is_gateway or self.damaged("spec", "workloads", i):
                continue
            where, base = f"workload '{w.ref}'", f"spec.workloads[{i}]"
            if not w.in_mesh:
                self.error("an ingress gateway is an Istio proxy with its own identity: mesh: false does not apply",
                           where, f"{base}.mesh")
            if not w.ports:
                self.error("an ingress gateway needs the port(s) it listens on (ports: [80])", where, f"{base}.ports")
            for j, port in enumerate(w.ports):
                if port.protocol != "HTTP":
                    self.error(f"port {port.number}: an ingress gateway's TCP servers are not supported yet (only HTTP "
                               "servers get the HTTP RBAC this suite models, gateway.go l.260-300)", where,
                               f"{base}.ports[{j}]")
            if not w.routes and "routes" not in _map(doc):
                self.error("an ingress gateway needs routes: [{host: ..., to: ns/name:port}]", where, f"{base}.routes")
            if w.namespace in apps_ns:
                self.error(f"namespace '{w.namespace}' holds other workloads: give the ingress gateway a namespace of "
                           "its own (istio-ingress, istio-system)", where, f"{base}.namespace")
            for j, r in enumerate(w.routes):
                field = f"{base}.routes[{j}].to"
                target = by_ref.get(r.to)
                target_port = target.port(r.port) if target is not None else None
                if target is None:
                    self.error(f"unknown workload '{r.to}'{_suggest(r.to, by_ref)}", where, field)
                elif target.is_gateway or target.kind == "ext-authz" or not target.in_mesh:
                    self.error(f"a route goes to an in-mesh app workload, not '{r.to}'", where, field)
                elif target_port is None:
                    served = ", ".join(str(p.number) for p in target.ports) or "none"
                    self.error(f"workload '{r.to}' does not serve port {r.port} (it serves {served})", where, field)
                elif target_port.protocol != "HTTP":
                    self.error(f"port {r.port} of '{r.to}' is TCP: a Host route needs an HTTP port", where, field)

    def _waypoints(
        self, docs: object, workloads: Sequence[Workload], by_ref: Mapping[str, Workload],
        named: Mapping[str, str] | None = None,
    ) -> tuple[list[Waypoint], bool]:
        """`spec.waypoints`, or the default: one per namespace serving ports, named `waypoint` unless the manifests
        of `workloadsFrom` name that namespace's waypoint (`named`: istio.io/use-waypoint, a waypoint Gateway)."""
        if docs is None:
            server_ns = dict.fromkeys(w.namespace for w in workloads if w.in_mesh and w.ports and not w.is_gateway)
            out = [Waypoint((named or {}).get(ns, "waypoint"), ns) for ns in server_ns]
            return [wp for wp in out if wp.ref not in by_ref], False
        out: list[Waypoint] = []
        for i, d in enumerate(_list(docs)):
            name, namespace = _str(_map(d).get("name")), _str(_map(d).get("namespace"))
            if name is None or namespace is None:
                continue  # the schema reported it
            wp = Waypoint(name, namespace)
            where = f"waypoint '{wp.ref}'"
            if wp.ref in by_ref:
                self.error(f"waypoint '{wp.ref}' has the name of a workload", where, f"spec.waypoints[{i}].name")
            if any(o.namespace == wp.namespace for o in out):
                self.error(f"namespace '{wp.namespace}' already has a waypoint (one serves the whole namespace)",
                           where, f"spec.waypoints[{i}].namespace")
            out.append(wp)
        return out, True

    def _policies(
        self, items: Sequence[Any], step: str, mesh: MeshConfig,
        by_ref: Mapping[str, Workload], addresses: Mapping[str, str], issuers: Mapping[str, Issuer],
    ) -> list[Manifest]:
        from conformance.validation import validate_manifest

        out: list[Manifest] = []
        seen: dict[tuple[str, str, str], str] = {}
        for k, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue  # the schema reported it
            for doc, origin in self._expand(item, step, k):
                meta = _map(doc.get("metadata"))
                kind, name, ns = str(doc.get("kind", "")), str(meta.get("name", "")), str(meta.get("namespace", ""))
                where = f"{step}: {origin} ({kind} {ns}/{name})"
                bad_refs = sorted({m.group(1) for m in ADDRESS_PLACEHOLDER.finditer(_strings(doc))} - set(addresses))
                for ref in bad_refs:
                    self.error(f"address placeholder ${{ip:{ref}}} names no workload or waypoint", where)
                self._jwks_placeholders(doc, kind, where, issuers)
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

    def _jwks_placeholders(self, doc: Mapping[str, Any], kind: str, where: str, issuers: Mapping[str, Issuer]) -> None:
        """`${jwks:<issuer name>}`: a name from spec.issuers, as the whole value of a RequestAuthentication
        jwtRule's `jwks` (a target puts that issuer's JWKS there); and a warning when the jwtRule's `issuer` is
        not that issuer's `iss`, so its tokens are never checked against the keys it names."""
        for field, text in _string_fields(doc):
            for m in _ANY_JWKS_PLACEHOLDER.finditer(text):
                name = m.group(1)
                if name not in issuers:
                    close = closest(name, issuers)
                    hint = f" (did you mean '{close}'?)" if close else (
                        "" if issuers else "; declare it in spec.issuers")
                    self.error(f"JWKS placeholder ${{jwks:{name}}} names no issuer of spec.issuers{hint}", where, field)
                placed = (kind == "RequestAuthentication" and re.fullmatch(r"spec\.jwtRules\[\d+\]\.jwks", field)
                          and text == m.group(0))
                if not placed:
                    self.error(f"a ${{jwks:{name}}} placeholder must be the whole value of a RequestAuthentication "
                               "jwtRule's jwks (spec.jwtRules[].jwks)", where, field)
                    continue
                rule = _list(_map(doc.get("spec")).get("jwtRules"))[int(field.split("[")[1].split("]")[0])]
                rule_issuer, issuer = _map(rule).get("issuer"), issuers.get(name)
                if issuer is not None and isinstance(rule_issuer, str) and rule_issuer != issuer.issuer:
                    self.error(f"this jwtRule's issuer is {rule_issuer!r} but issuer '{name}' signs tokens with iss "
                               f"{issuer.issuer!r}: its tokens never meet these keys (Envoy picks the rule by iss)",
                               where, field.rsplit(".", 1)[0] + ".issuer", "warning")

    def _expand(self, item: Mapping[str, Any], step: str, k: int) -> Iterable[tuple[dict[str, Any], str]]:
        if "file" not in item:
            yield dict(item), f"policies[{k}]"
            return
        rel = item["file"]
        if not isinstance(rel, str) or not rel:
            return  # the schema reported it
        target = (self.path.parent / rel).resolve()
        try:
            docs = [d for d in yamlio.load_all(target.read_text(encoding="utf-8")) if d is not None]
        except FileNotFoundError:
            self.error(f"policy file '{rel}' not found (relative to the scenario: {target})",
                       step, f"policies[{k}].file")
            return
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.error(f"cannot read policy file '{rel}': {exc}", step, f"policies[{k}].file")
            return
        except yaml.YAMLError as exc:
            self.error(f"malformed YAML in policy file '{rel}': {_yaml_reason(exc)}", step, f"policies[{k}].file")
            return
        if not docs:
            self.error(f"policy file '{rel}' holds no document", step, f"policies[{k}].file")
        skipped: dict[str, int] = {}
        for n, doc in enumerate(docs):
            origin = f"policies[{k}] {rel} document {n + 1}"
            problem = _alias_problem(doc)
            if problem:
                self.error(problem, f"{step}: {origin}")
                continue
            if not isinstance(doc, Mapping):
                self.error("a policy document must be a mapping (apiVersion, kind, metadata, spec)",
                           f"{step}: {origin}")
                continue
            items = _list(doc.get("items")) if str(doc.get("kind", "")).endswith("List") else None
            for j, entry in enumerate(items if items is not None else [doc]):
                where = origin if items is None else f"{origin} items[{j}]"
                if not isinstance(entry, Mapping):
                    self.error("a policy document must be a mapping (apiVersion, kind, metadata, spec)",
                               f"{step}: {where}")
                    continue
                if isinstance(entry.get("kind"), str) and not Document(entry, rel, n + 1).is_policy:
                    # Rendered output holds Deployments, Services ... beside the policies (issue 13): those are
                    # workloadsFrom's to read, not errors here
                    skipped[entry["kind"]] = skipped.get(entry["kind"], 0) + 1
                    continue
                yield dict(entry), where
        if skipped and rel not in self.skipped_files:
            self.skipped_files.add(rel)
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
            used = " (workloadsFrom reads workloads from such documents)" if "workloadsFrom" in self.spec_keys else ""
            self.error(f"policy file '{rel}' also holds documents that are not Istio security policies ({kinds}): "
                       f"they are skipped in the steps' policies{used}", step, f"policies[{k}].file", "notice")

    def _expectations(
        self, items: Sequence[Any], step: str, i: int, by_ref: Mapping[str, Workload], modes: Sequence[Mode],
        issuers: Mapping[str, Issuer],
    ) -> list[Expectation]:
        out: list[Expectation] = []
        for j, e in enumerate(items):
            if not isinstance(e, Mapping):
                continue  # the schema reported it
            where = f"{step}: probe expect[{j}]"
            source: Workload | None = None
            raw_from = e.get("from")
            if isinstance(raw_from, str) and _FROM_RE.match(raw_from):
                source = by_ref.get(raw_from)
                if source is None:
                    self.error(f"unknown workload '{raw_from}'{_suggest(raw_from, by_ref)}", where, "from")
            dest, port = self._destination(e.get("to"), where, by_ref)
            raw_request = e.get("request")
            req = _map(raw_request)
            headers = _map(req.get("headers"))
            for key in headers:
                if isinstance(key, str) and key.lower() in RESERVED_HEADERS:
                    # The suite finds each probe's records by these headers (probe.py): a scenario setting one
                    # would make the suite's own record of a probe ambiguous, so they are reserved.
                    self.error(f"header '{key}' is reserved: the suite sets {', '.join(RESERVED_HEADERS)} to "
                               "identify probes", where, f"request.headers.{key}")
            jwt = self._jwt(req.get("jwt"), where, issuers, headers,
                            bad=self.damaged("spec", "steps", i, "expect", j, "request", "jwt"))
            request = Request(
                method=_str(req.get("method")) or "GET", path=_str(req.get("path")) or "/",
                headers=tuple((k, v) for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)),
                jwt=jwt,
            )
            if source is not None and source.is_gateway:
                self.error(f"workload '{source.ref}' is an ingress gateway: it forwards requests, it is no probe "
                           "source (probe it as the destination, with a Host header)", where, "from")
                source = None
            if dest is not None and dest.is_gateway and source is not None:
                source = self._gateway_probe(source, dest, port, headers, where)
            for field, w in (("from", source), ("to", dest)):
                if w is not None and w.kind == "ext-authz":
                    self.error(f"workload '{w.ref}' is of kind ext-authz, the suite's external authorizer: it is no "
                               "probe source or destination (its answers are authorization decisions)", where, field)
            if port is not None and dest is not None and port.protocol == "TCP" and raw_request is not None:
                self.error(
                    f"port {port.number} of '{dest.ref}' is raw TCP: a probe to it cannot carry an HTTP "
                    "request (it still sends bytes; drop 'request')", where, "request")
            verdicts = _verdicts(e.get("verdict", "auto"))
            if source is None or dest is None or port is None or self.damaged("spec", "steps", i, "expect", j):
                continue
            out.append(Expectation(j, Probe(source, dest, port, request), verdicts))
        return out

    def _jwt(self, value: object, where: str, issuers: Mapping[str, Issuer], headers: Mapping[Any, Any],
             bad: bool) -> JwtSpec | None:
        """`request.jwt`: the token a probe carries (JwtSpec), or None when absent or unusable."""
        if not isinstance(value, Mapping):
            return None  # absent, or the schema reported it
        doc = value
        raw = doc.get("raw")
        minted = [k for k in ("issuer", "sub", "aud", "azp", "claims", "expired", "signature") if k in doc]
        if raw is not None and minted:
            self.error(f"raw is a literal token and excludes {', '.join(minted)}: write either raw or the claims",
                       where, "request.jwt.raw")
            return None
        issuer_name = _str(doc.get("issuer"))
        if raw is None and issuer_name is None and "issuer" not in doc:
            self.error("a token needs an issuer (a name from spec.issuers), or raw for a literal token",
                       where, "request.jwt.issuer")
            return None
        if issuer_name is not None and issuer_name not in issuers:
            close = closest(issuer_name, issuers)
            hint = f" (did you mean '{close}'?)" if close else ("" if issuers else "; declare it in spec.issuers")
            self.error(f"unknown issuer '{issuer_name}'{hint}", where, "request.jwt.issuer")
            bad = True
        claims = doc.get("claims", {})
        for key in _map(claims):
            if key in RESERVED_CLAIMS:
                field = {"iss": "issuer", "exp": "expired"}.get(key, key)
                self.error(f"claim {key!r} is set by request.jwt.{field}, not by claims", where,
                           f"request.jwt.claims.{key}")
                bad = True
        problem = _json_problem(claims) if isinstance(claims, Mapping) else None
        if problem:
            self.error(f"claims must be JSON: {problem}", where, "request.jwt.claims")
            bad = True
        location = self._token_location(doc.get("in"), where, headers)
        if bad or location is None:
            return None
        aud = doc.get("aud")
        signature: Signature = "invalid" if doc.get("signature") == "invalid" else "valid"
        return JwtSpec(
            issuer=issuer_name, sub=_str(doc.get("sub")),
            aud=aud if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list)
            else None,
            azp=_str(doc.get("azp")), claims_json=JwtSpec.canonical_claims(_map(claims)),
            expired=doc.get("expired") is True, signature=signature, location=location, raw=_str(raw),
        )

    def _token_location(self, value: object, where: str, headers: Mapping[Any, Any]) -> TokenLocation | None:
        """`request.jwt.in`: absent or `header` (Authorization: Bearer), {header: NAME, prefix: P} or {param: NAME}."""
        if value is None or value == "header":
            location = DEFAULT_TOKEN_LOCATION
        elif isinstance(value, Mapping) and isinstance(value.get("header"), str):
            location = TokenLocation(header=value["header"], prefix=_str(value.get("prefix")) or "")
        elif isinstance(value, Mapping) and isinstance(value.get("param"), str):
            location = TokenLocation(header=None, prefix="", param=value["param"])
        else:
            return None  # the schema reported it
        if location.header is not None:
            name = location.header.lower()
            if name in RESERVED_HEADERS:
                self.error(f"header '{location.header}' is reserved: the suite sets {', '.join(RESERVED_HEADERS)} to "
                           "identify probes", where, "request.jwt.in.header")
                return None
            if any(isinstance(k, str) and k.lower() == name for k in headers):
                self.error(f"request.headers sets {location.header} and the token is carried in it too: drop one "
                           "(or carry the token elsewhere with request.jwt.in)", where, "request.jwt.in")
                return None
        return location

    def _destination(
        self, to: object, where: str, by_ref: Mapping[str, Workload]
    ) -> tuple[Workload | None, Port | None]:
        """The workload and port `to` names, reporting an unknown workload or a port it does not serve."""
        m = _TO_RE.match(to) if isinstance(to, str) else None
        if m is None:
            return None, None  # the schema reported it
        ref, number = m.group("ref"), m.group("port")
        dest = by_ref.get(ref)
        if dest is None:
            self.error(f"unknown workload '{ref}'{_suggest(ref, by_ref)}", where, "to")
            return None, None
        unsure = dest.ref in self.unsure_ports  # its port list is damaged: the schema error says so
        if not dest.ports:
            if not unsure:
                self.error(f"workload '{dest.ref}' serves no port (it is a client only)", where, "to")
            return dest, None
        if number is None:
            if len(dest.ports) == 1:
                return dest, dest.ports[0]
            served = ", ".join(str(p.number) for p in dest.ports)
            self.error(f"workload '{dest.ref}' serves several ports ({served}): say which", where, "to")
            return dest, None
        port = dest.port(int(number))
        if port is None and not unsure:
            served = ", ".join(str(p.number) for p in dest.ports)
            self.error(f"workload '{dest.ref}' does not serve port {number} (it serves {served})", where, "to")
        return dest, port


def _count(value: object) -> int:
    """A non-negative integer as the schema allows it (numTrustedProxies); 0 when absent or unusable."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _port(value: object) -> Port | None:
    """A port entry as the schema allows it (8080, or {port: 9000, protocol: TCP}); None when unusable."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return Port(value, "HTTP")
    if isinstance(value, Mapping):
        number, protocol = value.get("port"), value.get("protocol", "HTTP")
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
            return Port(number, protocol if protocol in ("HTTP", "TCP") else "HTTP")
    return None


def _verdicts(value: Any) -> dict[Mode, Any]:
    """Per-mode verdicts; a value the schema rejects counts as auto (its error is already reported)."""
    if isinstance(value, str):
        return {m: (value if value in ("allow", "deny") else None) for m in MODES}
    per_mode = _map(value)
    return {m: (per_mode.get(m) if per_mode.get(m) in ("allow", "deny") else None) for m in MODES}


def _alias_problem(value: object) -> str | None:
    """Why a loaded YAML value cannot be checked, if it cannot: aliases make it infinite or huge.

    `&x [*x]` makes a value that contains itself, and nested aliases (the "billion laughs") one whose
    expansion is exponentially large: every later pass walks the expanded tree, so it would recurse forever
    or never finish. Only what aliases add counts: the expanded size beyond the nodes written in the file, so a
    long document without aliases (`init` writes one probe per source, destination and port of a big mesh) is
    never taken for a bomb. Linear in the number of distinct nodes (sizes are memoised per node).
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    written = 1  # nodes as written: the root, and each child of a node walked for the first time
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (Mapping, list)):
            continue
        children = list(node.values()) if isinstance(node, Mapping) else node
        if done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(c), 1) for c in children)
            if size[id(node)] - written > _MAX_EXPANDED_NODES:
                return (f"YAML aliases expand this document by more than {_MAX_EXPANDED_NODES:,} nodes; "
                        "write it out or use fewer nested aliases")
            continue
        if id(node) in on_path:
            return ("a YAML alias refers to a node that contains it (*alias inside its &anchor): the document "
                    "is infinitely deep")
        if id(node) in size:
            continue
        on_path.add(id(node))
        written += len(children)
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return None


def _strs(value: object) -> tuple[str, ...]:
    """The string items of a list (the schema has reported any other item)."""
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _json_problem(value: object, path: str = "") -> str | None:
    """Why a YAML value cannot be a JWT claim (JSON): a non-string key, a date, NaN; None when it can."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"key {k!r}{' in ' + path if path else ''} is not a string (quote it)"
            problem = _json_problem(v, f"{path}.{k}" if path else k)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        return next((p for n, v in enumerate(value) if (p := _json_problem(v, f"{path}[{n}]"))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'value'} is {value}, which JSON cannot hold"
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    return f"{path or 'value'} is {yaml_type(value, article=True)} (quote it to make it a string)"


def _string_fields(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """Every string nested in a policy document with its field path (`spec.jwtRules[0].jwks`)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _string_fields(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for n, v in enumerate(value):
            yield from _string_fields(v, f"{path}[{n}]")


def _map(value: object) -> Mapping[Any, Any]:
    """The value if it is a mapping, else an empty one: the loader reads damaged parts without raising."""
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    """The value if it is a list, else an empty one (the schema has reported anything else)."""
    return list(value) if isinstance(value, list) else []


def _str(value: object) -> str | None:
    """The value if it is a string, else None (the schema has reported anything else)."""
    return value if isinstance(value, str) else None


def _inline_policy(doc: Mapping[str, Any], path: Sequence[Any]) -> bool:
    """Whether a schema error lies inside an inline policy document (a mapping without `file`).

    Those are checked by validation.py against Istio's own CRD schema and validation, which names the field
    precisely; the scenario schema's view of them (a oneOf over "file" and "document") would only add a
    vaguer second line for the same problem.
    """
    if len(path) < 5 or path[:2] != ["spec", "steps"] or path[3] != "policies":
        return False
    try:
        item = doc["spec"]["steps"][path[2]]["policies"][path[4]]
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(item, Mapping) and "file" not in item


def _schema_errors(doc: Any) -> list[jsonschema.ValidationError]:
    errors: list[jsonschema.ValidationError] = []
    for err in _VALIDATOR.iter_errors(doc):
        errors.extend(_leaves(err))
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])


def _leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors a user needs for a oneOf/anyOf failure: those of the branch that fits the value's type.

    `verdict: denied` fails both branches of verdict's oneOf (a string of the enum, or a per-mode mapping);
    the string branch is the one meant, so its enum error (listing allow, deny, auto) is reported, not
    "not a valid value here". When several branches fit the type, the one with the fewest errors is taken.
    When none fits, the oneOf error itself stays (reported as "must be X or Y").
    """
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        return [err]
    branches: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    fitting = [errs for errs in branches.values()
               if not any(e.validator == "type" and not e.relative_path for e in errs)]
    if not fitting:
        return [err]
    best = min(fitting, key=len)
    return [leaf for sub in best for leaf in _leaves(sub)]


def _schema_messages(err: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(message, extra field) pairs for one schema error; an unknown-field error gives one per key."""
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        allowed = sorted(err.schema.get("properties", {}))
        extras = sorted((str(k) for k in err.instance if k not in err.schema.get("properties", {})), key=str)
        per_mode = bool(err.absolute_path) and err.absolute_path[-1] == "verdict"
        out = []
        for extra in extras:
            close = closest(extra, allowed)
            hint = f"did you mean '{close}'? " if close else ""
            if per_mode:  # verdict: {ambiant: allow}: name the key and the modes, not the whole mapping
                out.append((f"unknown mode '{extra}' in a per-mode verdict ({hint}valid modes: "
                            f"{', '.join(MODES)})", extra))
            else:
                out.append((f"unknown field '{extra}' ({hint}allowed here: {', '.join(allowed)})", extra))
        return out or [(err.message, "")]
    if err.validator == "required" and isinstance(err.instance, Mapping):
        # jsonschema raises one error per missing property, each carrying the whole list: report each
        # missing one at its own field (duplicates are dropped by the loader).
        return [(f"{name} is required", str(name)) for name in err.validator_value if name not in err.instance]
    if err.validator == "pattern":
        return [(f"{_short(err.instance)} is not valid here (expected to match {err.validator_value})", "")]
    if err.validator in ("enum", "const"):
        choices = err.validator_value if err.validator == "enum" else [err.validator_value]
        valid = ", ".join(map(str, choices))
        close = closest(str(err.instance), map(str, choices))
        hint = f"; did you mean '{close}'?" if close and close != str(err.instance) else ""
        one = f"must be {valid}" if len(choices) == 1 else f"valid values: {valid}"
        return [(f"{_short(err.instance)} is not a valid value ({one}){hint}", "")]
    if err.validator == "type":
        return [(f"must be {_nouns(err.validator_value)}, not {yaml_type(err.instance, article=True)}", "")]
    if err.validator in ("oneOf", "anyOf"):
        types = [b.get("type") for b in err.validator_value if isinstance(b, Mapping) and "type" in b]
        if types:
            return [(f"must be {' or '.join(_nouns(t) for t in dict.fromkeys(map(str, types)))}, "
                     f"not {yaml_type(err.instance, article=True)}", "")]
        return [(f"{_short(err.instance)} is not a valid value here", "")]
    return [(err.message, "")]


_NOUNS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
          "boolean": "true or false", "number": "a number", "null": "null"}


def _nouns(value: object) -> str:
    """JSON Schema type names in the words a YAML author uses ("a mapping", "a list")."""
    if isinstance(value, list):
        return " or ".join(_NOUNS.get(str(v), str(v)) for v in value)
    return _NOUNS.get(str(value), str(value))


def _locate(doc: Mapping[str, Any], path: list[Any]) -> tuple[str, str]:
    """Turn a JSON path into (where, field): `step 'x': probe expect[2]` and `verdict`."""
    spec = _map(doc.get("spec"))
    if len(path) >= 3 and path[0] == "spec" and path[1] == "steps" and isinstance(path[2], int):
        steps = _list(spec.get("steps"))
        step = steps[path[2]] if path[2] < len(steps) else {}
        name = step.get("name") if isinstance(step, Mapping) else None
        where = f"step '{name}'" if isinstance(name, str) else f"steps[{path[2]}]"
        rest = path[3:]
        if len(rest) >= 2 and rest[0] == "expect" and isinstance(rest[1], int):
            return f"{where}: probe expect[{rest[1]}]", _dotted(rest[2:])
        if len(rest) >= 2 and rest[0] == "policies" and isinstance(rest[1], int):
            return f"{where}: policies[{rest[1]}]", _dotted(rest[2:])
        return where, _dotted(rest)
    for part, label in (("workloads", "workload"), ("waypoints", "waypoint")):
        if len(path) >= 3 and path[0] == "spec" and path[1] == part and isinstance(path[2], int):
            items = _list(spec.get(part))
            w = items[path[2]] if path[2] < len(items) else {}
            if isinstance(w, Mapping) and isinstance(w.get("name"), str):
                return f"{label} '{w.get('namespace', '?')}/{w['name']}'", _dotted(path[3:])
    for parts, label in ((("issuers",), "issuer"), (("mesh", "extensionProviders"), "extension provider")):
        n = len(parts) + 1
        if len(path) >= n + 1 and tuple(path[1:n]) == parts and path[0] == "spec" and isinstance(path[n], int):
            node: Any = spec
            for part in parts:
                node = _map(node).get(part)
            items = _list(node)
            item = items[path[n]] if path[n] < len(items) else {}
            if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
                return f"{label} '{item['name']}'", _dotted(path)
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
    close = closest(ref, by_ref)
    return f" (did you mean '{close}'?)" if close else ""


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
