"""Workloads from rendered manifests (`spec.workloadsFrom`, issue 13 deliverable 1): real-world shaped kustomize and
Helm output, override semantics, Istio's Service port protocol rules, Namespace data planes, and the errors and
notices that name file, document and field."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conformance.errors import Problem
from conformance.manifests import (
    UNSUPPORTED,
    WELL_KNOWN_TCP_PORTS,
    derive,
    istio_protocol,
    model_protocol,
    parse,
)
from conformance.model import Port, Scenario
from conformance.scenario import check

RENDERED = Path(__file__).parent / "data" / "manifests-rendered"


def _load(path: Path) -> tuple[Scenario | None, list[Problem]]:
    return check(path)


def _write(tmp_path: Path, manifests: str, spec: dict[str, Any] | None = None, name: str = "rendered.yaml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(manifests))
    doc = {"apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "t"},
           "spec": {"workloadsFrom": [{"file": name}], "steps": [{"name": "s", "policies": [], "expect": []}],
                    **(spec or {})}}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _errors(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.severity == "error"]


def _notices(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.severity == "notice"]


# -- real-world shaped output ------------------------------------------------------------------------------------

def test_kustomize_and_helm_output_give_the_workloads_kubernetes_and_istiod_see() -> None:
    scenario, problems = _load(RENDERED / "from-manifests.yaml")
    assert _errors(problems) == []
    assert scenario is not None
    w = {x.ref: x for x in scenario.workloads}
    assert list(w) == ["shop/frontend", "shop/loadgen", "shop/orders", "pay/payments", "default/payments-migrate",
                       "legacy/outsider"]
    # named targetPort `http` resolved through the container's ports; the Service port 80 is not the workload's
    assert w["shop/frontend"].ports == (Port(8080, "HTTP"),)
    assert w["shop/frontend"].service_account == "frontend"
    assert w["shop/frontend"].labels == {"app": "frontend", "app.kubernetes.io/part-of": "shop", "version": "v1"}
    # a headless Service of a StatefulSet: `http` and `tcp-db` (targetPort absent: the port itself)
    assert w["shop/orders"].ports == (Port(8080, "HTTP"), Port(5432, "TCP"))
    # appProtocol http wins over the name `web`; `metrics` names no protocol: sniffed, probed as HTTP
    assert w["pay/payments"].ports == (Port(8000, "HTTP"), Port(9090, "HTTP"))
    # Helm hook Job without metadata.namespace nor a service account: kubectl's and Kubernetes' defaults
    assert (w["default/payments-migrate"].service_account, w["default/payments-migrate"].ports) == ("default", ())
    # the explicit entry overrides the service account only; labels stay the manifest's
    assert w["shop/loadgen"].service_account == "loadgen"
    assert w["shop/loadgen"].labels == {"app": "loadgen", "app.kubernetes.io/part-of": "shop"}
    assert not w["legacy/outsider"].in_mesh
    # the step's policy files are the same rendered files: their policies only, other kinds noticed once per file
    assert [m.key for m in scenario.steps[0].policies] == [
        ("AuthorizationPolicy", "shop", "orders-allow-frontend"), ("AuthorizationPolicy", "pay", "payments"),
        ("PeerAuthentication", "pay", "default")]
    notices = _notices(problems)
    assert sum("kustomize-shop.yaml' also holds documents that are not Istio security policies" in n
               for n in notices) == 1
    assert any("1 ConfigMap, 1 Deployment, 1 Job, 1 Service, 1 ServiceAccount" in n for n in notices)


def test_lists_comments_and_empty_documents_are_read_as_kubectl_reads_them() -> None:
    docs, findings = parse(textwrap.dedent("""\
        # a comment before anything
        ---
        ---
        # only a comment
        ---
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}, spec: {selector: {app: a},
           ports: [{port: 80, name: http}]}}
        - {apiVersion: apps/v1, kind: Deployment, metadata: {name: a, namespace: n},
           spec: {template: {metadata: {labels: {app: a}}, spec: {containers: []}}}}
        ---
        apiVersion: v1
        kind: ServiceList
        items: []
        """), "r.yaml")
    assert findings == []
    assert [(d.kind, d.origin) for d in docs] == [("Service", "r.yaml document 3 items[0]"),
                                                   ("Deployment", "r.yaml document 3 items[1]")]
    derived = derive(docs)
    assert [(d.workload.ref, d.workload.ports) for d in derived.workloads] == [("n/a", (Port(80, "HTTP"),))]


def test_a_cronjob_daemonset_and_pod_are_workloads_named_after_themselves(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        apiVersion: batch/v1
        kind: CronJob
        metadata: {name: nightly, namespace: ops}
        spec:
          schedule: "0 3 * * *"
          jobTemplate:
            spec:
              template:
                metadata: {labels: {app: nightly}}
                spec: {serviceAccount: reporter, containers: [{name: c, image: x}], restartPolicy: Never}
        ---
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {name: agent, namespace: ops}
        spec:
          selector: {matchLabels: {app: agent}}
          template: {metadata: {labels: {app: agent}}, spec: {containers: [{name: c, image: x}]}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: debug, namespace: ops, labels: {run: debug}}
        spec: {containers: [{name: c, image: x}]}
        """)
    scenario, problems = _load(path)
    assert _errors(problems) == []
    assert scenario is not None
    assert [(w.ref, w.service_account, dict(w.labels)) for w in scenario.workloads] == [
        ("ops/nightly", "reporter", {"app": "nightly"}), ("ops/agent", "default", {"app": "agent"}),
        ("ops/debug", "default", {"run": "debug"})]


# -- overrides ----------------------------------------------------------------------------------------------------

_TWO = """\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: api, namespace: shop}
    spec:
      template:
        metadata: {labels: {app: api, tier: back}}
        spec: {serviceAccountName: api-sa, containers: [{name: c, image: x}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec: {selector: {app: api}, ports: [{name: http, port: 8080}, {name: tcp-admin, port: 9000}]}
    """


def test_explicit_entries_override_only_the_fields_they_write_and_add_new_workloads(tmp_path: Path) -> None:
    path = _write(tmp_path, _TWO, {"workloads": [
        {"name": "api", "namespace": "shop", "ports": [8080]},
        {"name": "curl", "namespace": "shop"},
    ]})
    scenario, problems = _load(path)
    assert _errors(problems) == []
    assert scenario is not None
    api, curl = scenario.workloads
    assert (api.ref, api.ports, api.service_account, dict(api.labels)) == (
        "shop/api", (Port(8080, "HTTP"),), "api-sa", {"app": "api", "tier": "back"})
    # a new explicit workload keeps the explicit defaults (service account and app label from its name)
    assert (curl.ref, curl.service_account, dict(curl.labels)) == ("shop/curl", "curl", {"app": "curl"})


def test_override_of_labels_service_account_and_mesh(tmp_path: Path) -> None:
    path = _write(tmp_path, _TWO, {"workloads": [
        {"name": "api", "namespace": "shop", "labels": {"app": "other"}, "serviceAccount": "x"}]})
    scenario, _ = _load(path)
    assert scenario is not None
    api = scenario.workloads[0]
    assert (dict(api.labels), api.service_account, len(api.ports)) == ({"app": "other"}, "x", 2)


def test_an_explicit_duplicate_of_an_override_is_still_a_duplicate(tmp_path: Path) -> None:
    path = _write(tmp_path, _TWO, {"workloads": [{"name": "api", "namespace": "shop"},
                                                 {"name": "api", "namespace": "shop"}]})
    _, problems = _load(path)
    assert any("duplicate workload 'shop/api'" in e and "spec.workloads[1].name" in e for e in _errors(problems))


def test_workloads_or_workloads_from_is_required(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "authz-conformance/v1", "kind": "Scenario", "metadata": {"name": "t"},
                                    "spec": {"steps": [{"name": "s", "policies": [], "expect": []}]}}))
    _, problems = _load(path)
    assert any("workloads is required" in e for e in _errors(problems))


# -- errors and notices name file, document and field -------------------------------------------------------------

@pytest.mark.parametrize(("manifests", "expected"), [
    ("""\
     apiVersion: v1
     kind: ConfigMap
     metadata: {name: c}
     ---
     apiVersion: apps/v1
     kind: Deployment
     metadata: {name: api, namespace: shop}
     spec: {template: {metadata: {labels: {app: api, tier: 3}}, spec: {containers: []}}}
     """, ["workloadsFrom rendered.yaml document 2 (Deployment shop/api)",
           "field spec.template.metadata.labels.tier", "label values must be strings"]),
    ("""\
     apiVersion: apps/v1
     kind: Deployment
     metadata: {name: api.v2, namespace: shop}
     spec: {template: {metadata: {labels: {app: api}}, spec: {containers: []}}}
     """, ["document 1 (Deployment shop/api.v2)", "field metadata.name", "is not a DNS label"]),
    ("""\
     apiVersion: apps/v1
     kind: Deployment
     metadata: {name: api, namespace: shop}
     spec: {template: {metadata: {labels: {app: api}}, spec: {containers: []}}}
     ---
     apiVersion: apps/v1
     kind: StatefulSet
     metadata: {name: api, namespace: shop}
     spec: {template: {metadata: {labels: {app: db}}, spec: {containers: []}}}
     """, ["document 2 (StatefulSet shop/api)", "a second workload named 'shop/api'", "rendered.yaml document 1"]),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: x\n", ["workloadsFrom[0] rendered.yaml", "malformed YAML"]),
    ("""\
     apiVersion: apps/v1
     kind: Deployment
     metadata: {name: api, namespace: shop}
     spec: {}
     """, ["document 1 (Deployment shop/api)", "field spec.template", "needs a pod template"]),
])
def test_errors_name_the_document_and_the_field(tmp_path: Path, manifests: str, expected: list[str]) -> None:
    scenario, problems = _load(_write(tmp_path, manifests, {"workloads": [{"name": "x", "namespace": "y"}]}))
    assert scenario is None
    errors = _errors(problems)
    assert any(all(part in e for part in expected) for e in errors), errors
    assert all(e.startswith(str(tmp_path / "scenario.yaml")) or e.startswith("scenario.yaml") or "scenario.yaml" in e
               for e in errors)


def test_a_missing_file_is_an_error_naming_the_entry(tmp_path: Path) -> None:
    path = _write(tmp_path, "", {"workloadsFrom": [{"file": "nope.yaml"}]})
    _, problems = _load(path)
    assert any("workloadsFrom[0] nope.yaml" in e and "file not found" in e for e in _errors(problems))


def test_ports_left_out_are_notices(tmp_path: Path) -> None:
    scenario, problems = _load(_write(tmp_path, """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: shop}
        spec: {template: {metadata: {labels: {app: api}}, spec: {containers: [{name: c, ports: [{containerPort: 53,
               name: dns, protocol: UDP}]}]}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api, namespace: shop}
        spec:
          selector: {app: api}
          ports:
          - {name: dns, port: 53, protocol: UDP}
          - {name: web, port: 80, targetPort: www}
          - {name: http, port: 8080}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api-raw, namespace: shop}
        spec: {selector: {app: api}, ports: [{name: tcp, port: 8080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: external, namespace: shop}
        spec: {ports: [{port: 443}]}
        """))
    assert scenario is not None
    assert scenario.workloads[0].ports == (Port(8080, "HTTP"),)
    notices = _notices(problems)
    for part in ("field spec.ports[0]: notice: port 53 is UDP",
                 "field spec.ports[1].targetPort: notice: targetPort 'www' names no container port of 'shop/api'",
                 "document 3 (Service shop/api-raw): field spec.ports[0]: notice: target port 8080 of 'shop/api' is "
                 "TCP here but HTTP",
                 "document 4 (Service shop/external): field spec.selector: notice: selects no pod"):
        assert any(part in n for n in notices), (part, notices)


def test_a_misspelt_security_kind_in_a_policy_file_stays_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Service
        metadata: {name: s, namespace: shop}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorisationPolicy
        metadata: {name: p, namespace: shop}
        spec: {}
        """))
    path = _write(tmp_path, _TWO, {"steps": [{"name": "a", "policies": [{"file": "p.yaml"}], "expect": []},
                                             {"name": "b", "policies": [{"file": "p.yaml"}], "expect": []}]})
    _, problems = _load(path)
    assert any("p.yaml document 2" in e and "AuthorisationPolicy" in e for e in _errors(problems))
    skipped = [n for n in _notices(problems) if "p.yaml' also holds documents" in n]
    assert len(skipped) == 1 and "(1 Service)" in skipped[0]


# -- Namespaces --------------------------------------------------------------------------------------------------

_NAMESPACES = yaml.safe_dump_all(
    [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}} for ns, labels in (
        ("legacy", {"istio-injection": "enabled", "istio.io/dataplane-mode": "ambient"}),
        ("shop", {"istio.io/dataplane-mode": "ambient"}),
        ("pay", {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "pay-wp"}),
        ("outside", {"istio-injection": "disabled"}))]
    + [doc for ns in ("legacy", "shop", "pay", "outside") for doc in (
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": ns},
         "spec": {"template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": []}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": ns},
         "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 8080}]}})])


def test_namespace_labels_give_data_planes_in_mode_mixed_and_waypoint_names(tmp_path: Path) -> None:
    scenario, problems = _load(_write(tmp_path, _NAMESPACES, {"modes": ["mixed"], "dataplanes": {"shop": "sidecar"}}))
    assert _errors(problems) == []
    assert scenario is not None
    # injection wins over ambient; spec.dataplanes wins over the labels; use-waypoint names the waypoint
    assert dict(scenario.dataplanes) == {"shop": "sidecar", "legacy": "sidecar", "pay": "waypoint"}
    assert {w.ref for w in scenario.waypoints} == {"legacy/waypoint", "shop/waypoint", "pay/pay-wp"}
    outside = scenario.workload("outside/app")
    assert outside is not None and not outside.in_mesh and outside.ports == ()
    assert any("'outside/app' is outside the mesh" in n for n in _notices(problems))


def test_outside_mode_mixed_a_notice_says_the_namespaces_differ(tmp_path: Path) -> None:
    scenario, problems = _load(_write(tmp_path, _NAMESPACES))
    assert scenario is not None and dict(scenario.dataplanes) == {}
    assert any("legacy: sidecar, pay: waypoint, shop: ambient" in n and "add mode mixed" in n
               for n in _notices(problems))


# -- Service port protocols, as istiod reads them -------------------------------------------------------------------

_PREFIXES = {"http": "HTTP", "http2": "HTTP2", "grpc": "GRPC", "tcp": "TCP", "tls": "TLS", "https": "HTTPS",
             "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL", "http_proxy": "HTTP_PROXY", "udp": "UDP"}
_suffix = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=12)
_ports = st.integers(min_value=1, max_value=65535)


def _cased(s: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(
        lambda flags: "".join(c.upper() if f else c for c, f in zip(s, flags, strict=True)))


@given(st.sampled_from(sorted(_PREFIXES)).flatmap(lambda p: st.tuples(st.just(p), _cased(p))), _suffix, _ports)
def test_a_port_name_prefix_names_the_protocol_in_any_case(prefix: tuple[str, str], suffix: str, port: int) -> None:
    """`http-web`, `GRPC-x`, `tcp`: the part before the first '-', case-insensitively (ConvertProtocol, Parse)."""
    key, written = prefix
    name = written if not suffix else f"{written}-{suffix}"
    if key == "grpc" and name.lower().startswith("grpc-web"):
        assert istio_protocol(port, name) == "GRPC-Web"
    else:
        assert istio_protocol(port, name) == _PREFIXES[key]


@given(_cased("grpc-web"), _suffix, _ports)
def test_grpc_web_is_read_before_the_dash_split(written: str, suffix: str, port: int) -> None:
    assert istio_protocol(port, written + suffix) == "GRPC-Web"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10), _suffix, _ports)
def test_an_unknown_prefix_is_sniffed_except_on_well_known_ports(prefix: str, suffix: str, port: int) -> None:
    if prefix.lower() in _PREFIXES or prefix.lower().startswith("grpc"):
        return
    name = f"{prefix}-{suffix}" if suffix else prefix
    expected = "TCP" if port in WELL_KNOWN_TCP_PORTS else UNSUPPORTED
    assert istio_protocol(port, name) == expected
    assert model_protocol(istio_protocol(port, name)) == ("TCP" if expected == "TCP" else "HTTP")


@given(st.sampled_from(sorted(_PREFIXES)), st.sampled_from(sorted(_PREFIXES)), _ports)
def test_app_protocol_wins_over_the_name(app: str, name: str, port: int) -> None:
    assert istio_protocol(port, f"{name}-x", "TCP", app) == _PREFIXES[app]
    assert istio_protocol(port, f"{name}-x", "UDP", app) == "UDP"  # protocol: UDP before anything


@pytest.mark.parametrize(("app", "expected"), [("kubernetes.io/h2c", "HTTP2"), ("kubernetes.io/ws", "HTTP"),
                                               ("kubernetes.io/wss", "HTTPS"), ("weird", UNSUPPORTED),
                                               ("", UNSUPPORTED)])
def test_kubernetes_app_protocols_and_an_unknown_one_hide_the_name(app: str, expected: str) -> None:
    # an unknown appProtocol is parsed instead of the name, which is then not read (http-web stays unused)
    assert istio_protocol(8080, "http-web", "TCP", app) == expected


@given(st.sampled_from(sorted(_PREFIXES)), _ports)
def test_a_service_port_name_becomes_the_workload_port_protocol(prefix: str, port: int) -> None:
    docs, _ = parse(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "namespace": "n"},
         "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": []}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"},
         "spec": {"selector": {"app": "a"}, "ports": [{"name": f"{prefix}-p", "port": 1, "targetPort": port}]}},
    ]), "r.yaml")
    derived = derive(docs)
    expected = model_protocol(_PREFIXES[prefix])
    assert derived.workloads[0].workload.ports == ((Port(port, expected),) if expected else ())
