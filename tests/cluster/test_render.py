"""Rendering: every object the cluster targets apply, for every shipped scenario and mode, validated
against the Kubernetes OpenAPI schemas of the tested release (kubernetes-validate, strict), and the Istio
networking objects of ingress gateways (Gateway, VirtualService) against Istio 1.30.3's own CRD schemas
(tests/cluster/data/istio-1.30.3-networking.json, read as the API server reads a structural schema)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from conformance.mesh.cluster import matrix as matrix_mod
from conformance.mesh.cluster.manifests.render import (
    APP_SCRIPT,
    WORKLOAD_LABEL,
    RenderSettings,
    data_plane,
    deployed_waypoints,
    enrollment_labels,
    render_workloads,
)
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import MODES
from conformance.scenario import load
from conformance.versions import IstioVersion

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [*sorted((ROOT / "policies").glob("*.yaml")), ROOT / "tests" / "data" / "good.yaml"]
MATRIX = matrix_mod.load()
K8S = "1.35.0"  # the node image's release (clusters/versions.yaml kind.kubernetes)
NETWORKING = "networking.istio.io/v1"
NETWORKING_CRDS = Path(__file__).parent / "data" / "istio-1.30.3-networking.json"
GATEWAY_SCENARIOS = sorted((ROOT / "policies").glob("ingress-*.yaml"))


@pytest.fixture(scope="module")
def kv():
    """kubernetes-validate, with its schema files parsed once (it re-reads ~5 MB of JSON per call)."""
    module = pytest.importorskip("kubernetes_validate")
    original = module.utils.schema_contents
    module.utils.schema_contents = functools.lru_cache(maxsize=None)(original)
    yield module
    module.utils.schema_contents = original


def render(path: Path, mode: str):
    scenario = load(path, IstioVersion.parse("1.30"))
    nsmap = NamespaceMap.for_scenario(scenario, "azt3st00-")
    settings = RenderSettings(mode, MATRIX.images["curl"], MATRIX.images["app"], "azt3st00")
    return scenario, nsmap, render_workloads(scenario, nsmap, settings)


def test_the_schemas_are_those_of_the_node_image():
    assert K8S.startswith(MATRIX.kubernetes + ".")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid_kubernetes(path, mode, kv):
    _, _, docs = render(path, mode)
    assert docs
    for doc in docs:
        if doc["kind"] == "Gateway" or doc["apiVersion"] == NETWORKING:
            continue  # CRDs: the waypoint's in test_waypoint_gateway, Istio's in test_istio_networking_objects...
        kv.validate(doc, K8S, strict=True)


def test_invalid_objects_are_caught_by_the_validator(kv):
    _, _, docs = render(ROOT / "tests/data/good.yaml", "sidecar")
    service = next(d for d in docs if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kv.ValidationError):
        kv.validate(service, K8S, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S, strict=True)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_services_name_their_protocol_and_select_only_their_workload(path):
    scenario, nsmap, docs = render(path, "sidecar")
    services = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Service"}
    for w in scenario.workloads:
        key = (nsmap.cluster_namespace(w.namespace), w.name)
        if not w.ports:
            assert key not in services
            continue
        svc = services[key]
        assert svc["spec"]["selector"] == {WORKLOAD_LABEL: w.name}
        for port, sp in zip(w.ports, svc["spec"]["ports"], strict=True):
            proto = "http" if port.protocol == "HTTP" else "tcp"
            if (w.ref, port.number) in scenario.grpc_check_ports():
                proto = "grpc"  # a gRPC provider's port: Istio gives it an HTTP/2 cluster only when named so
            assert sp["name"] == f"{proto}-{port.number}" and sp["appProtocol"] == proto
            assert sp["port"] == port.number == sp["targetPort"]


def test_two_workloads_sharing_app_never_share_a_selector():
    _, _, docs = render(ROOT / "policies" / "workload-selector-scope.yaml", "sidecar")
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in docs
                 if d["kind"] == "Deployment"]
    assert len(selectors) == len(set(selectors))


@pytest.mark.parametrize("mode", MODES)
def test_namespace_labels_enroll_in_mesh_namespaces_only(mode):
    scenario, nsmap, docs = render(ROOT / "tests/data/good.yaml", mode)
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Namespace"}
    for ns in {w.namespace for w in scenario.workloads}:
        in_mesh = any(w.in_mesh for w in scenario.workloads if w.namespace == ns)
        got = labels[nsmap.cluster_namespace(ns)]
        for k, v in enrollment_labels(data_plane(scenario, mode, ns)).items():
            assert (got.get(k) == v) == in_mesh, (ns, got)
        assert got["authz-conformance/run"] == "azt3st00"
    if mode == "waypoint":
        served = {wp.namespace: wp.name for wp in scenario.waypoints}
        for ns, name in served.items():
            assert labels[nsmap.cluster_namespace(ns)]["istio.io/use-waypoint"] == name
    else:
        assert all("istio.io/use-waypoint" not in v for v in labels.values())


def test_mixed_labels_each_namespace_for_its_data_plane_on_one_install():
    """Mode mixed (issue 12): `spec.dataplanes` decides each namespace's labels, a waypoint exists only for a
    `waypoint` namespace, and only sidecar namespaces' pods wait for their proxy (holdApplicationUntilProxyStarts)."""
    scenario, nsmap, docs = render(ROOT / "policies" / "mixed-migration.yaml", "mixed")
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Namespace"}
    legacy, shop, pay = (labels[nsmap.cluster_namespace(n)] for n in ("legacy", "shop", "pay"))
    assert legacy["istio-injection"] == "enabled" and "istio.io/dataplane-mode" not in legacy
    assert shop["istio.io/dataplane-mode"] == "ambient" and "istio-injection" not in shop
    assert "istio.io/use-waypoint" not in shop
    assert pay["istio.io/dataplane-mode"] == "ambient" and pay["istio.io/use-waypoint"] == "waypoint"
    gateways = [d for d in docs if d["kind"] == "Gateway"]
    assert [(g["metadata"]["namespace"], g["metadata"]["name"]) for g in gateways] == [
        (nsmap.cluster_namespace("pay"), "waypoint")]
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        ns = nsmap.scenario_namespace(d["metadata"]["namespace"])
        held = "proxy.istio.io/config" in d["spec"]["template"]["metadata"]["annotations"]
        workload = scenario.workload(f"{ns}/{d['metadata']['name']}")
        assert workload is not None
        assert held == (data_plane(scenario, "mixed", ns) == "sidecar" and workload.in_mesh), d["metadata"]
    assert [wp.namespace for wp in deployed_waypoints(scenario, "mixed")] == ["pay"]
    assert deployed_waypoints(scenario, "ambient") == [] and deployed_waypoints(scenario, "sidecar") == []


def test_sidecar_enrollment_by_revision():
    assert enrollment_labels("sidecar", "1-30-3") == {"istio.io/rev": "1-30-3"}
    assert enrollment_labels("ambient", "1-30-3") == {"istio.io/dataplane-mode": "ambient"}


def test_out_of_mesh_pod_in_an_enrolled_namespace_opts_out():
    """The loader keeps out-of-mesh workloads in namespaces of their own; the renderer still opts a pod
    out explicitly should one share an enrolled namespace (a scenario object built by hand)."""
    from conformance.model import MeshConfig, Port, Scenario, Workload

    scenario = Scenario("s", "", "s.yaml", ("sidecar", "ambient"), MeshConfig(), (
        Workload("server", "shared", "server", {"app": "server"}, (Port(8080),)),
        Workload("outsider", "shared", "outsider", {"app": "outsider"}, (), in_mesh=False),
    ), (), ())
    nsmap = NamespaceMap.for_scenario(scenario, "azt3st00-")
    for mode, key, value in (("sidecar", "sidecar.istio.io/inject", "false"),
                             ("ambient", "istio.io/dataplane-mode", "none")):
        docs = render_workloads(scenario, nsmap, RenderSettings(mode, "c@sha256:1", "a@sha256:2", "azt3st00"))
        pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "outsider")
        assert pod["spec"]["template"]["metadata"]["labels"][key] == value
        server = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "server")
        assert key not in server["spec"]["template"]["metadata"]["labels"]


def test_pods_run_the_local_mesh_app_from_pinned_images():
    _, _, docs = render(ROOT / "tests/data/good.yaml", "ambient")
    cms = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cms and all(cm["data"]["app.py"] == APP_SCRIPT.read_text() for cm in cms)
    spec = cms[0]["data"]["accounts.json"]
    assert '"ref": "azt3st00-accounts/accounts"' in spec and '"port": 9000' in spec
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        containers = d["spec"]["template"]["spec"]["containers"]
        assert containers[0]["name"] == "curl"
        for c in containers:
            assert "@sha256:" in c["image"]


def test_waypoint_gateway():
    scenario, nsmap, docs = render(ROOT / "policies" / "waypoint-getting-started.yaml", "waypoint")
    gateways = [d for d in docs if d["kind"] == "Gateway"]
    assert len(gateways) == len(scenario.waypoints)
    for gw, wp in zip(gateways, scenario.waypoints, strict=True):
        assert gw["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert gw["spec"]["gatewayClassName"] == "istio-waypoint"
        assert gw["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        assert gw["metadata"] == {"name": wp.name, "namespace": nsmap.cluster_namespace(wp.namespace),
                                  "labels": {"istio.io/waypoint-for": "service",
                                             "app.kubernetes.io/managed-by": "authz-conformance",
                                             "authz-conformance/run": "azt3st00"}}
    assert not [d for d in render(ROOT / "policies" / "waypoint-getting-started.yaml", "ambient")[2]
                if d["kind"] == "Gateway"]


def _ext_authz_parts(path: Path) -> tuple[dict, dict, dict]:
    scenario, nsmap, docs = render(path, "sidecar")
    (w,) = [w for w in scenario.workloads if w.kind == "ext-authz"]
    ns = nsmap.cluster_namespace(w.namespace)
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == w.name)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["namespace"] == ns)
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == w.name)
    return dep, cm, svc


def test_an_http_ext_authz_workload_runs_the_local_meshs_own_server_from_the_stdlib():
    """Issue 11: the provider is extauthz_server.py itself (Istio's samples/extauthz behaviour), in the pinned
    app image, answering on every port with the HTTP check protocol, its decisions in the pod's log."""
    import json

    from conformance.mesh.cluster.manifests.render import EXT_AUTHZ_SCRIPT

    dep, cm, svc = _ext_authz_parts(ROOT / "policies" / "ext-authz-task.yaml")
    app = dep["spec"]["template"]["spec"]["containers"][1]
    assert app["command"] == ["python3", "-P", "-u", "/app/extauthz_server.py"]
    assert app["args"] == ["/app/ext-authz.json"]
    assert cm["data"]["extauthz_server.py"] == EXT_AUTHZ_SCRIPT.read_text()
    assert "ext-authz-grpc-requirements.txt" not in cm["data"]  # no gRPC port: nothing to install
    spec = json.loads(cm["data"]["ext-authz.json"])
    assert spec["log"] == "/dev/stdout" and {i["protocol"] for i in spec["items"]} == {"http"}
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http-8000"]


def test_a_grpc_provider_port_is_named_grpc_and_its_packages_are_installed_hash_pinned():
    """A gRPC provider needs an HTTP/2 cluster, which Istio gives a port named or appProtocol'd `grpc` (the
    sample's Service names port 9000 `grpc`); the server then needs grpcio and Envoy's protos, installed at
    start with --require-hashes from clusters/workloads/ext-authz-grpc-requirements.txt."""
    import json

    path = ROOT / "policies" / "ext-authz-custom-server.yaml"
    scenario, _, _ = render(path, "sidecar")
    grpc = scenario.grpc_check_ports()
    assert grpc
    dep, cm, svc = _ext_authz_parts(path)
    app = dep["spec"]["template"]["spec"]["containers"][1]
    assert app["command"][:2] == ["sh", "-c"] and "--require-hashes" in app["command"][2]
    assert "--no-deps" in app["command"][2] and "exec python3 -P -u /app/extauthz_server.py" in app["command"][2]
    assert "ext-authz-grpc-requirements.txt" in cm["data"]
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    for _ref, number in grpc:
        assert ports[number]["name"] == f"grpc-{number}" and ports[number]["appProtocol"] == "grpc"
    items = {i["port"]: i["protocol"] for i in json.loads(cm["data"]["ext-authz.json"])["items"]}
    assert {n for n, proto in items.items() if proto == "grpc"} == {n for _, n in grpc}


def test_the_grpc_requirements_are_hash_pinned_within_the_projects_own_bounds():
    """The cluster's gRPC check service needs what the local mesh's needs (pyproject.toml's grpcio and xds-protos
    bounds, and what xds-protos requires), every line pinned to one version with its wheel's hash (pip
    --require-hashes --no-deps refuses anything else)."""
    import tomllib

    from packaging.requirements import Requirement

    from conformance.mesh.cluster.manifests.render import EXT_AUTHZ_REQUIREMENTS

    pins = {}
    for line in EXT_AUTHZ_REQUIREMENTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement, _, digest = line.partition(" --hash=sha256:")
        name, _, pinned = requirement.partition("==")
        assert len(digest) == 64 and int(digest, 16) >= 0, line
        pins[name] = pinned
    assert set(pins) == {"grpcio", "protobuf", "xds-protos", "typing-extensions"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in map(Requirement, project):
        if spec.name in pins:
            assert spec.specifier.contains(pins[spec.name]), f"{spec.name}=={pins[spec.name]} is outside {spec}"


# -- ingress gateways (issue 12) --------------------------------------------------------------------------------
@functools.cache
def _networking_validator(kind: str):
    """Istio 1.30.3's CRD schema of `kind` (networking.istio.io/v1, vendored verbatim with its source), as plain JSON
    Schema the way the API server reads it (conformance.crd.json_schema: unknown fields rejected)."""
    import json

    import jsonschema

    from conformance import crd
    from conformance.validation import _OBJECT_META

    schema = json.loads(NETWORKING_CRDS.read_text())["schemas"][kind]["v1"]
    return jsonschema.Draft202012Validator(crd.json_schema(schema, _OBJECT_META))


def test_the_networking_schemas_are_istio_1_30_3s():
    import json

    source = json.loads(NETWORKING_CRDS.read_text())["source"]
    assert source["tag"] == "1.30.3" and source["commit"] == "56df41f63e513f834c9a3af33d8aed82d1d961f2"
    assert source["path"] == "manifests/charts/base/files/crd-all.gen.yaml" and "Apache-2.0" in source["license"]


def test_the_gateway_scenarios_are_rendered():
    assert [p.stem for p in GATEWAY_SCENARIOS] == ["ingress-backends", "ingress-gateway", "ingress-remote-ip",
                                                   "ingress-to-waypoint"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", GATEWAY_SCENARIOS, ids=lambda p: p.stem)
def test_istio_networking_objects_are_valid_for_istios_crds(path, mode):
    scenario, _, docs = render(path, mode)
    if mode not in scenario.modes:
        pytest.skip(f"{path.stem} does not run in {mode}")
    istio = [d for d in docs if d["apiVersion"] == NETWORKING]
    gateways = [w for w in scenario.workloads if w.is_gateway]
    assert len([d for d in istio if d["kind"] == "Gateway"]) == len(gateways)
    assert len([d for d in istio if d["kind"] == "VirtualService"]) == sum(len(w.routes) for w in gateways)
    for doc in istio:
        errors = [e.message for e in _networking_validator(doc["kind"]).iter_errors(doc)]
        assert not errors, (doc["kind"], doc["metadata"]["name"], errors)


def test_the_networking_schema_catches_what_istio_rejects():
    _, _, docs = render(ROOT / "policies" / "ingress-gateway.yaml", "sidecar")
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    gw = next(d for d in docs if d["apiVersion"] == NETWORKING and d["kind"] == "Gateway")
    bad_vs = {**vs, "spec": {**vs["spec"], "http": [{"route": [{"destination": {"hostname": "b"}}]}]}}
    bad_gw = {**gw, "spec": {**gw["spec"], "servers": [{"port": {"number": "eighty"}, "hosts": ["x"]}]}}
    assert list(_networking_validator("VirtualService").iter_errors(bad_vs))
    assert list(_networking_validator("Gateway").iter_errors(bad_gw))


def _gateway_parts(path: Path, mode: str, settings: RenderSettings | None = None):
    scenario = load(path, IstioVersion.parse("1.30"))
    nsmap = NamespaceMap.for_scenario(scenario, "azt3st00-")
    docs = render_workloads(scenario, nsmap, settings or RenderSettings(mode, MATRIX.images["curl"],
                                                                        MATRIX.images["app"], "azt3st00"))
    (w,) = [w for w in scenario.workloads if w.is_gateway]
    ns = nsmap.cluster_namespace(w.namespace)

    def one(kind: str, name: str, namespace: str = ns) -> dict:
        (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
                  and d["metadata"].get("namespace") == namespace]
        return doc

    return scenario, nsmap, docs, w, one


@pytest.mark.parametrize("mode", MODES)
def test_an_ingress_gateway_is_a_gateway_injected_deployment_in_every_mode(mode):
    """Istio's "Installing Gateways" (and the gateway chart): istio-proxy with image auto, the gateway injection
    template, the injection label; the workload's labels and identity; an unlabelled namespace (no data plane: the
    gateway is its own Envoy, never ztunnel-captured); no curl and no app (it is no probe source)."""
    _, nsmap, docs, w, one = _gateway_parts(ROOT / "policies" / "ingress-gateway.yaml", mode)
    dep = one("Deployment", w.name)
    pod = dep["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["istio-proxy"]
    assert pod["spec"]["containers"][0]["image"] == "auto"
    assert pod["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"
    labels = pod["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "true" and "istio.io/rev" not in labels
    assert {k: labels[k] for k in w.labels} == dict(w.labels)
    assert labels[WORKLOAD_LABEL] == w.name and labels["authz-conformance/run"] == "azt3st00"
    assert dep["spec"]["selector"]["matchLabels"] == {WORKLOAD_LABEL: w.name}
    assert pod["spec"]["serviceAccountName"] == w.service_account == "istio-ingressgateway-service-account"
    assert one("ServiceAccount", w.service_account)
    sysctls = pod["spec"]["securityContext"]["sysctls"]
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in sysctls
    namespace = next(d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == nsmap.cluster_namespace(
        w.namespace))
    assert not {"istio-injection", "istio.io/rev", "istio.io/dataplane-mode", "istio.io/use-waypoint"} & set(
        namespace["metadata"]["labels"])
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["namespace"] == namespace[
        "metadata"]["name"]]


def test_a_gateway_on_a_revisioned_control_plane_is_injected_by_its_revision():
    path = ROOT / "policies" / "ingress-gateway.yaml"
    for settings in (RenderSettings("sidecar", "c", "a", "azt3st00", enrollment_labels("sidecar", "1-30-5")),
                     RenderSettings("mixed", "c", "a", "azt3st00", revision="1-30-5")):
        _, _, _, w, one = _gateway_parts(path, settings.mode, settings)
        labels = one("Deployment", w.name)["spec"]["template"]["metadata"]["labels"]
        assert labels["istio.io/rev"] == "1-30-5" and "sidecar.istio.io/inject" not in labels


def test_num_trusted_proxies_is_the_gateway_pods_proxy_config():
    """mesh.numTrustedProxies → `proxy.istio.io/config: {"gatewayTopology": {"numTrustedProxies": N}}` on the gateway
    pod (Istio's "Configuring Gateway Network Topology"), 0 included: the annotation's gatewayTopology replaces the
    mesh default's (meshconfig.effective_trusted_proxies): a cluster default of 2 cannot leak into a scenario of 0."""
    import json

    for name, n in (("ingress-gateway", 1), ("ingress-remote-ip", 2)):
        _, _, _, w, one = _gateway_parts(ROOT / "policies" / f"{name}.yaml", "ambient")
        annotations = one("Deployment", w.name)["spec"]["template"]["metadata"]["annotations"]
        assert json.loads(annotations["proxy.istio.io/config"]) == {"gatewayTopology": {"numTrustedProxies": n}}
    _, _, _, w, one = _gateway_parts(ROOT / "policies" / "ingress-backends.yaml", "sidecar")
    annotations = one("Deployment", w.name)["spec"]["template"]["metadata"]["annotations"]
    assert json.loads(annotations["proxy.istio.io/config"]) == {"gatewayTopology": {"numTrustedProxies": 0}}


def test_the_gateway_service_gateway_and_one_virtual_service_per_route():
    _, nsmap, docs, w, one = _gateway_parts(ROOT / "policies" / "ingress-backends.yaml", "mixed")
    ns = nsmap.cluster_namespace(w.namespace)
    svc = one("Service", w.name)
    assert svc["spec"]["selector"] == {WORKLOAD_LABEL: w.name}
    assert svc["spec"]["ports"] == [{"name": "http-80", "port": 80, "targetPort": 80, "protocol": "TCP",
                                     "appProtocol": "http"}]
    gw = one("Gateway", w.name)
    assert gw["apiVersion"] == NETWORKING
    assert gw["spec"]["selector"] == {WORKLOAD_LABEL: w.name, "authz-conformance/run": "azt3st00"}
    pod_labels = one("Deployment", w.name)["spec"]["template"]["metadata"]["labels"]
    assert gw["spec"]["selector"].items() <= pod_labels.items()
    assert gw["spec"]["servers"] == [{"port": {"number": 80, "name": "http-80", "protocol": "HTTP"},
                                      "hosts": ["allowed.example.com", "deny.example.com", "*.nothost.com"]}]
    routes = [d for d in docs if d["kind"] == "VirtualService"]
    assert [(v["spec"]["hosts"], v["metadata"]["namespace"], v["spec"]["http"][0]["route"][0]["destination"])
            for v in routes] == [
        (["allowed.example.com"], nsmap.cluster_namespace("apps"), {"host": "b", "port": {"number": 8080}}),
        (["deny.example.com"], nsmap.cluster_namespace("apps"), {"host": "b", "port": {"number": 9090}}),
        (["*.nothost.com"], nsmap.cluster_namespace("apps"), {"host": "b", "port": {"number": 8080}})]
    for v in routes:
        assert v["spec"]["gateways"] == [f"{ns}/{w.name}"]
        assert v["spec"]["http"][0]["retries"] == {"attempts": 0}
    assert len({v["metadata"]["name"] for v in routes}) == len(routes)


def test_route_hosts_are_mapped_like_the_probes_host_headers():
    """A route host that names a scenario namespace is renamed as NamespaceMap.host_value renames the probe's Host
    header and the policies' hosts, so all three still agree on the cluster."""
    import dataclasses

    from conformance.model import GatewayRoute

    scenario = load(ROOT / "policies" / "ingress-backends.yaml", IstioVersion.parse("1.30"))
    gw = next(w for w in scenario.workloads if w.is_gateway)
    routed = dataclasses.replace(gw, routes=(GatewayRoute("b.apps", "apps/b", 8080),))
    scenario = dataclasses.replace(scenario, workloads=tuple(routed if w is gw else w for w in scenario.workloads))
    nsmap = NamespaceMap.for_scenario(scenario, "azt3st00-")
    docs = render_workloads(scenario, nsmap, RenderSettings("sidecar", "c", "a", "azt3st00"))
    (vs,) = [d for d in docs if d["kind"] == "VirtualService"]
    assert vs["spec"]["hosts"] == ["b.azt3st00-apps"] == [nsmap.host_value("b.apps")]


def test_ingress_use_waypoint_lands_on_the_service():
    """istiod reads istio.io/ingress-use-waypoint on the Service (services.go); the engine reads it from the workload's
    labels, which stand for the Service's."""
    _, nsmap, _, _, one = _gateway_parts(ROOT / "policies" / "ingress-to-waypoint.yaml", "waypoint")
    apps = nsmap.cluster_namespace("apps")
    assert one("Service", "opted", apps)["metadata"]["labels"]["istio.io/ingress-use-waypoint"] == "true"
    assert "istio.io/ingress-use-waypoint" not in one("Service", "plain", apps)["metadata"]["labels"]
