"""The mesh config's extensionProviders on a cluster (conformance/mesh/cluster/meshconfig.py): the pure parts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from conformance.errors import TargetError
from conformance.mesh.cluster import meshconfig
from conformance.mesh.cluster.kube import ReplaceConflict
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.model import ExtensionProvider

NSMAP = NamespaceMap("az1-", frozenset({"ext-authz", "foo"}))
HTTP = ExtensionProvider("sample-http", "http", "ext-authz.ext-authz.svc.cluster.local", 8000,
                         include_request_headers_in_check=("x-ext-authz",), path_prefix="/check",
                         include_additional_headers_in_check=(("x-a", "1"),))
GRPC = ExtensionProvider("sample-grpc", "grpc", "ext-authz/ext-authz.ext-authz.svc.cluster.local", 9000,
                         timeout="0.5s", fail_open=True, status_on_error="503")
# what `istioctl install` writes (trimmed): the suite must keep every key of it
INSTALLED = """accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
extensionProviders:
- name: prometheus
  prometheus: {}
rootNamespace: istio-system
trustDomain: cluster.local
"""


def test_entries_use_the_mesh_configs_own_field_names_and_leave_unset_fields_out():
    """istio/api mesh/v1alpha1 config.proto EnvoyExternalAuthorizationHttpProvider / ...GrpcProvider, camelCase;
    an unset field stays unset so istiod applies its own default."""
    http, grpc = meshconfig.session_providers([HTTP, GRPC], NSMAP)
    assert http == {"name": "az1-sample-http", "envoyExtAuthzHttp": {
        "service": "ext-authz.az1-ext-authz.svc.cluster.local", "port": 8000,
        "includeRequestHeadersInCheck": ["x-ext-authz"], "includeAdditionalHeadersInCheck": {"x-a": "1"},
        "pathPrefix": "/check"}}
    assert grpc == {"name": "az1-sample-grpc", "envoyExtAuthzGrpc": {
        "service": "az1-ext-authz/ext-authz.az1-ext-authz.svc.cluster.local", "port": 9000, "timeout": "0.5s",
        "failOpen": True, "statusOnError": "503"}}


def test_a_service_outside_the_scenarios_namespaces_is_left_as_written():
    assert meshconfig.mapped_service("authz.other.svc.cluster.local", NSMAP) == "authz.other.svc.cluster.local"
    assert meshconfig.mapped_service("other/authz.other.svc.cluster.local", NSMAP) == \
        "other/authz.other.svc.cluster.local"


def test_adding_then_removing_restores_the_mesh_config_and_keeps_everything_else():
    entries = meshconfig.session_providers([HTTP, GRPC], NSMAP)
    added = meshconfig.with_providers(INSTALLED, entries)
    mesh = yaml.safe_load(added)
    assert [p["name"] for p in mesh["extensionProviders"]] == ["prometheus", "az1-sample-http", "az1-sample-grpc"]
    assert mesh["defaultConfig"] == {"discoveryAddress": "istiod.istio-system.svc:15012"}
    # adding again replaces, never duplicates
    again = yaml.safe_load(meshconfig.with_providers(added, entries))
    assert [p["name"] for p in again["extensionProviders"]] == ["prometheus", "az1-sample-http", "az1-sample-grpc"]
    removed = meshconfig.without_providers(added, ["az1-sample-http", "az1-sample-grpc"])
    assert removed is not None and yaml.safe_load(removed) == yaml.safe_load(INSTALLED)
    assert meshconfig.without_providers(INSTALLED, ["az1-sample-http"]) is None  # nothing of ours: no write


def test_the_last_provider_removed_takes_the_key_with_it():
    added = meshconfig.with_providers("trustDomain: cluster.local\n", meshconfig.session_providers([HTTP], NSMAP))
    assert yaml.safe_load(meshconfig.without_providers(added, ["az1-sample-http"]) or "") == \
        {"trustDomain": "cluster.local"}


def test_a_mesh_config_that_is_not_a_mapping_is_a_clear_error():
    with pytest.raises(TargetError, match="not a mapping"):
        meshconfig.with_providers("- a\n- b\n", [])
    with pytest.raises(TargetError, match="not YAML"):
        meshconfig.with_providers("a: [\n", [])


def test_istiods_debug_mesh_answer_lists_the_active_providers():
    """pilot/pkg/xds/debug.go meshHandler: the active MeshConfig as protojson."""
    answer = json.dumps({"trustDomain": "cluster.local", "extensionProviders": [
        {"name": "az1-sample-http", "envoyExtAuthzHttp": {"service": "x", "port": 8000}}, {"name": "prometheus"}]})
    assert meshconfig.active_provider_names(answer) == {"az1-sample-http", "prometheus"}
    assert meshconfig.active_provider_names("<html>not json</html>") == set()
    assert meshconfig.active_provider_names("{}") == set()


def test_names_follow_istiods_revision_rules():
    """bootstrap/mesh.go getMeshConfigMapName; the istiod chart's istio.io/rev label ("default" when unset)."""
    assert meshconfig.mesh_configmap_name(None) == meshconfig.mesh_configmap_name("default") == "istio"
    assert meshconfig.mesh_configmap_name("canary") == "istio-canary"
    assert meshconfig.istiod_selector(None) == "app=istiod,istio.io/rev=default"
    assert meshconfig.istiod_selector("canary") == "app=istiod,istio.io/rev=canary"


class FakeConfigMaps:
    """ConfigMaps with resourceVersions; `conflicts` writes are refused as another writer's change."""

    def __init__(self, text: str, conflicts: int = 0):
        self.cm: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "istio", "namespace": "istio-system", "resourceVersion": "1"},
                                   "data": {"mesh": text}}
        self.conflicts = conflicts
        self.writes = 0

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.cm)) if (namespace, name) == ("istio-system", "istio") else None

    def replace(self, doc: dict[str, Any]) -> None:
        if self.conflicts:
            self.conflicts -= 1
            # another writer got in first: the stored version moved on
            self.cm["metadata"]["resourceVersion"] = str(int(self.cm["metadata"]["resourceVersion"]) + 1)
            raise ReplaceConflict("changed")
        assert doc["metadata"]["resourceVersion"] == self.cm["metadata"]["resourceVersion"]
        self.writes += 1
        self.cm = {**doc, "metadata": {**doc["metadata"], "resourceVersion": str(int(
            doc["metadata"]["resourceVersion"]) + 1)}}


ACCESS = meshconfig.MeshConfigAccess("istio-system", ("istio",), meshconfig.istiod_selector(None))


def test_the_writer_retries_a_conflicting_write_on_a_fresh_read():
    store = FakeConfigMaps(INSTALLED, conflicts=2)
    writer = meshconfig.MeshConfigWriter(ACCESS, store.get, store.replace)
    assert writer.add(meshconfig.session_providers([HTTP], NSMAP)) == ["istio"]
    assert store.writes == 1 and "az1-sample-http" in store.cm["data"]["mesh"]
    assert writer.remove(["az1-sample-http"]) == ["istio"]
    assert yaml.safe_load(store.cm["data"]["mesh"]) == yaml.safe_load(INSTALLED)
    assert writer.remove(["az1-sample-http"]) == []  # already gone: nothing written
    assert store.writes == 2


def test_the_writer_gives_up_with_the_reason_when_the_configmap_keeps_changing_or_is_missing():
    store = FakeConfigMaps(INSTALLED, conflicts=meshconfig.CONFLICT_ATTEMPTS)
    writer = meshconfig.MeshConfigWriter(ACCESS, store.get, store.replace)
    with pytest.raises(TargetError, match="kept changing"):
        writer.add(meshconfig.session_providers([HTTP], NSMAP))
    missing = meshconfig.MeshConfigWriter(meshconfig.MeshConfigAccess("istio-system", ("istio-canary",), "x"),
                                          store.get, store.replace)
    with pytest.raises(TargetError, match="istio-system/istio-canary does not exist"):
        missing.add([])


def test_taking_the_providers_out_restores_the_original_text_comments_included():
    """Review finding: a GitOps or Helm owner of the ConfigMap must see no drift once the session is over."""
    original = "# managed by the platform team\naccessLogFile: /dev/stdout   # keep\n"
    store = FakeConfigMaps(original)
    writer = meshconfig.MeshConfigWriter(ACCESS, store.get, store.replace)
    writer.add(meshconfig.session_providers([HTTP], NSMAP))
    assert store.cm["data"]["mesh"] != original
    writer.remove(["az1-sample-http"])
    assert store.cm["data"]["mesh"] == original
    # someone else changed the mesh config meanwhile: their change is kept, only our entry goes
    writer.add(meshconfig.session_providers([HTTP], NSMAP))
    changed = yaml.safe_load(store.cm["data"]["mesh"])
    changed["trustDomain"] = "changed.local"
    store.cm["data"]["mesh"] = yaml.safe_dump(changed)
    writer.remove(["az1-sample-http"])
    assert yaml.safe_load(store.cm["data"]["mesh"]) == {"accessLogFile": "/dev/stdout", "trustDomain": "changed.local"}


def test_a_gateways_num_trusted_proxies_is_the_annotations_gateway_topology_else_the_mesh_default():
    """Istio merges `proxy.istio.io/config` over meshConfig.defaultConfig by replacing every field the annotation has,
    a message field whole (golang/protobuf@v1.5.4 jsonpb decode.go l.336-345, pilot-agent config.go getMeshConfig):
    so an annotated 0 wins over a mesh default of 2, and an annotation without gatewayTopology leaves the default."""
    default_trusted_proxies, effective_trusted_proxies = meshconfig.default_trusted_proxies, \
        meshconfig.effective_trusted_proxies
    two = "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 2\n    proxyProtocol: {}\n"
    assert default_trusted_proxies("") == 0 and default_trusted_proxies(two) == 2
    assert effective_trusted_proxies("", None) == 0
    assert effective_trusted_proxies(two, None) == 2
    assert effective_trusted_proxies(two, '{"gatewayTopology":{"numTrustedProxies":0}}') == 0
    assert effective_trusted_proxies(two, '{"gatewayTopology":{}}') == 0  # proto3: unset is 0, the message replaced
    assert effective_trusted_proxies(two, '{"holdApplicationUntilProxyStarts": true}') == 2
    assert effective_trusted_proxies(two, '{"gatewayTopology": null}') == 2  # jsonpb skips a null field
    assert effective_trusted_proxies("", "gatewayTopology:\n  numTrustedProxies: 3\n") == 3  # YAML, as Istio reads it
    assert effective_trusted_proxies("accessLogFile: /dev/stdout\n", "") == 0


@pytest.mark.parametrize(("mesh", "annotation", "says"), [
    ("defaultConfig: [", None, "not YAML"),
    ("- a\n- b\n", None, "not a mapping"),
    ("defaultConfig: 3\n", None, "defaultConfig is not a mapping"),
    ("defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: two\n", None, "not a non-negative integer"),
    ("", '{"gatewayTopology": 1}', "gatewayTopology is not a mapping"),
    ("", '{"gatewayTopology": {"numTrustedProxies": -1}}', "not a non-negative integer"),
    ("", "{gatewayTopology: [", "annotation is not YAML or JSON"),
    ("", "[1]", "annotation is not a mapping"),
])
def test_a_malformed_mesh_config_or_annotation_is_a_clear_target_error(mesh, annotation, says):
    with pytest.raises(TargetError, match=says):
        meshconfig.effective_trusted_proxies(mesh, annotation)
