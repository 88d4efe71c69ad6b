"""JWT and CUSTOM through `ClusterSession` over the real `kubernetes` client and the test API server
(apiserver.py): the session's extension providers go into istiod's mesh config ConfigMap by GET + PUT with
the resourceVersion read (a 409 Conflict read again and retried), the session waits until istiod's
`/debug/mesh`, read through the API server's pod proxy, lists them, and takes them out at close, leaving
everything else in the mesh config as it was; the RequestAuthentication is applied with the run's JWKS, the
CUSTOM policy names the session's provider, and a JWT probe's curl carries a token minted for it.

Behind the server, besides the pretend sidecars of test_session_apiserver.py: a pretend istiod
(`PretendIstiod`), which serves the mesh config it has loaded at `/debug/mesh` on port 15014 (as JSON,
pilot/pkg/xds/debug.go@1.30.3 `MeshHandler`) and loads a changed ConfigMap only after some reads (kubelet's
ConfigMap sync, squeezed), or never; and sidecars whose config dump holds what istiod would push for the
policies of their namespace: a CUSTOM policy's shadow RBAC rules `istio-ext-authz-ns[..]-policy[..]-rule[0]`
when its provider is in istiod's mesh config, else the rule's RBAC DENY stand-in
(`...-deny-due-to-bad-CUSTOM-action`, pilot/pkg/security/authz/builder/builder.go@1.30.3), and a
RequestAuthentication's issuer in the jwt_authn filter's providers (pilot/pkg/security/authn
policy_applier.go).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.errors import TargetError
from conformance.mesh.cluster.istioctl import Kubeconfig
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.manifests.render import enrollment_labels
from conformance.mesh.cluster.meshconfig import MeshConfigAccess
from conformance.mesh.cluster.session import BarrierWarning, ClusterContext, ClusterSession, Timeouts
from conformance.model import ALLOWED
from conformance.scenario import load
from tests.cluster.apiserver import ExecAnswer, FakeApiServer, ProxyAnswer, Request
from tests.cluster.envoy_dump import listeners_dump
from tests.cluster.test_session_apiserver import ROOT, ROOT_NAMESPACE, V130, World
from tests.cluster.test_session_apiserver import pytestmark as _needs_curl

pytest.importorskip("kubernetes")
pytestmark = _needs_curl
SCENARIO = ROOT / "tests" / "data" / "jwt" / "cluster-jwt-custom.yaml"
PREFIX = "azjc01-"
JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
# an istiod install's mesh config as Helm renders it (manifests/charts/istio-control/istio-discovery values), with
# someone else's provider, which a session must never touch
MESH = """\
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing: {}
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: cluster.local
extensionProviders:
- name: otel
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
"""


class PretendIstiod:
    """`/debug/mesh` of istiod pods through the pod proxy: the mesh config each has loaded from its ConfigMap.

    A changed ConfigMap is loaded after `delay` reads that still show the old one; `frozen`: never loaded (an
    istiod that does not pick it up); the first `unreachable` reads get no answer (503 from the API server)."""

    def __init__(self, api: FakeApiServer, pods: dict[str, str], namespace: str = ROOT_NAMESPACE, delay: int = 0,
                 frozen: bool = False, unreachable: int = 0):
        self.api, self.pods, self.namespace = api, pods, namespace  # pod -> its ConfigMap
        self.delay, self.frozen, self.unreachable = delay, frozen, unreachable
        self.reads = 0
        self.lock = threading.Lock()
        self.loaded: dict[str, tuple[str, dict[str, Any]]] = {pod: self._current(cm) for pod, cm in pods.items()}
        self.stale: dict[str, int] = dict.fromkeys(pods, 0)

    def _current(self, configmap: str) -> tuple[str, dict[str, Any]]:
        cm = self.api.objects[("ConfigMap", self.namespace, configmap)]
        return cm["metadata"]["resourceVersion"], yaml.safe_load(cm["data"]["mesh"]) or {}

    def __call__(self, namespace: str, pod: str, port: int, path: str, req: Request) -> ProxyAnswer | None:
        if namespace != self.namespace or pod not in self.pods or port != 15014:
            return None
        if path != "debug/mesh":
            return ProxyAnswer("404 page not found\n", 404, "text/plain")
        with self.lock:
            self.reads += 1
            if self.unreachable > 0:
                self.unreachable -= 1
                return None
            version, mesh = self._current(self.pods[pod])
            if version != self.loaded[pod][0] and not self.frozen:
                if self.stale[pod] >= self.delay:
                    self.loaded[pod], self.stale[pod] = (version, mesh), 0
                else:
                    self.stale[pod] += 1
            return ProxyAnswer(json.dumps(self.loaded[pod][1]))

    def providers(self) -> set[str]:
        """The provider names any istiod has loaded (what its sidecars get)."""
        with self.lock:
            return {p["name"] for _, mesh in self.loaded.values() for p in mesh.get("extensionProviders") or []}


class MeshWorld(World):
    """test_session_apiserver's world, whose sidecars' config dumps also show CUSTOM policies and JWT issuers as
    istiod pushes them (see the module docstring), and which keeps every exec'd command."""

    istiod: PretendIstiod | None = None

    def __init__(self, tmp: Path):
        super().__init__(tmp, "sidecar")
        self.commands: list[tuple[str, str, str, list[str]]] = []

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecAnswer:
        self.commands.append((namespace, pod, container, command))
        if container != "istio-proxy":
            return super().exec(namespace, pod, container, command)
        self.execs.append((namespace, pod, container))
        known = self.istiod.providers() if self.istiod is not None else set()
        ids, issuers = [], []
        for p in self.api.policies({namespace, ROOT_NAMESPACE}):
            meta, spec = p["metadata"], p.get("spec") or {}
            rule = f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[0]"
            if p["kind"] == "RequestAuthentication":
                issuers += [r["issuer"] for r in spec.get("jwtRules") or []]
            elif p["kind"] == "AuthorizationPolicy" and spec.get("action") == "CUSTOM":
                good = (spec.get("provider") or {}).get("name") in known
                ids.append(f"istio-ext-authz-{rule}" + ("" if good else "-deny-due-to-bad-CUSTOM-action"))
            elif p["kind"] == "AuthorizationPolicy":
                ids.append(rule)
        dump = json.loads(listeners_dump(ids))
        if issuers:
            jwt = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
                "@type": JWT_AUTHN, "providers": {f"origins-{i}": {"issuer": iss, "local_jwks": {"inline_string": "…"}}
                                                  for i, iss in enumerate(issuers)}}}
            dump["configs"][0]["active_state"]["listener"]["filter_chains"][0]["filters"].insert(0, jwt)
        return ExecAnswer(json.dumps(dump).encode(), b"", 0)

    def scripts(self, container: str = "curl") -> list[str]:
        return [c[-1] for _, _, name, c in self.commands if name == container]


def mesh_world(tmp_path: Path, **istiod: Any) -> tuple[MeshWorld, ClusterContext]:
    world = MeshWorld(tmp_path)
    api = world.api.start()
    pod = api.install_istiod(mesh=MESH)
    world.istiod = PretendIstiod(api, {pod["metadata"]["name"]: "istio"}, **istiod)
    api.proxy_handler = world.istiod
    kubeconfig = api.kubeconfig(tmp_path)
    ctx = ClusterContext(kube=Kube(str(kubeconfig), "fake", request_timeout=10),
                         kubeconfig=Kubeconfig(str(kubeconfig), "fake"), istioctl=None, version=V130,
                         curl_image="c@sha256:1", app_image="a@sha256:2", prefix=PREFIX,
                         enrollment=enrollment_labels("sidecar"), run_command=world.istioctl,
                         timeouts=Timeouts(barrier=5.0, canary=5.0, probe=5.0, connect=2.0, proof_grace=2.0,
                                           mesh_config=10.0),
                         mesh_config=MeshConfigAccess(ROOT_NAMESPACE, ("istio",), "app=istiod,istio.io/rev=default"))
    return world, ctx


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[MeshWorld, ClusterContext]]:
    made = mesh_world(tmp_path)
    yield made
    made[1].kube.close()
    made[0].api.stop()
    made[0].close()


def mesh_of(api: FakeApiServer, name: str = "istio") -> dict[str, Any]:
    return yaml.safe_load(api.objects[("ConfigMap", ROOT_NAMESPACE, name)]["data"]["mesh"])


def providers_of(api: FakeApiServer, name: str = "istio") -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in mesh_of(api, name).get("extensionProviders") or []}


def left_behind(api: FakeApiServer) -> list[tuple[str, str, str]]:
    return [k for k in api.objects if k[1].startswith(PREFIX) or k[2].startswith(PREFIX)]


def b64url_json(part: str) -> dict[str, Any]:
    import base64

    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_a_jwt_and_custom_session_writes_the_mesh_config_jwks_provider_and_token_and_takes_the_providers_back(world):
    world, ctx = world
    api = world.api
    scenario = load(SCENARIO, V130)
    read_version = api.objects[("ConfigMap", ROOT_NAMESPACE, "istio")]["metadata"]["resourceVersion"]
    session = ClusterSession(scenario, "sidecar", ctx).start()

    # start: the providers under the session's names, their services in its namespaces, the rest of the mesh as it was
    providers = providers_of(api)
    assert providers == {
        "otel": yaml.safe_load(MESH)["extensionProviders"][0],
        f"{PREFIX}ext-authz-http": {"name": f"{PREFIX}ext-authz-http", "envoyExtAuthzHttp": {
            "service": f"ext-authz.{PREFIX}ext-authz.svc.cluster.local", "port": 8000,
            "includeRequestHeadersInCheck": ["x-ext-authz"]}},
        f"{PREFIX}ext-authz-qualified": {"name": f"{PREFIX}ext-authz-qualified", "envoyExtAuthzHttp": {
            "service": f"{PREFIX}ext-authz/ext-authz.{PREFIX}ext-authz.svc.cluster.local", "port": 8000,
            "timeout": "0.5s"}}}
    rest = {k: v for k, v in mesh_of(api).items() if k != "extensionProviders"}
    assert rest == {k: v for k, v in yaml.safe_load(MESH).items() if k != "extensionProviders"}
    (put,) = api.made("PUT", f"/api/v1/namespaces/{ROOT_NAMESPACE}/configmaps/istio")
    assert put.json()["metadata"]["resourceVersion"] == read_version  # the write is conditional on what was read
    assert api.made("GET", f"/namespaces/{ROOT_NAMESPACE}/configmaps/istio")
    assert put.headers["content-type"].startswith("application/json")
    # istiod was asked, through the pod proxy, on its debug port
    proxied = api.made("GET", "/proxy/debug/mesh")
    assert proxied and proxied[0].path.startswith(f"/api/v1/namespaces/{ROOT_NAMESPACE}/pods/istiod-")
    assert ":15014/proxy/debug/mesh" in proxied[0].path and world.istiod is not None and world.istiod.reads >= 1
    # the ext-authz workload ran extauthz_server.py; the canary checked it with the header the sample allows
    deployment = api.objects[("Deployment", f"{PREFIX}ext-authz", "ext-authz")]
    assert any("extauthz_server.py" in " ".join(c.get("command", [])) for c in
               deployment["spec"]["template"]["spec"]["containers"])
    assert any(f"ext-authz.{PREFIX}ext-authz:8000" in s and "x-ext-authz: allow" in s for s in world.scripts())

    # apply: the RequestAuthentication with the run's JWKS, the CUSTOM policy with the session's provider name
    with warnings.catch_warnings():
        warnings.simplefilter("error", BarrierWarning)
        session.apply(scenario.steps[0].policies)
    assert session.barriers[-1].reached  # the sidecar showed the issuer and the CUSTOM shadow rules
    ra = api.objects[("RequestAuthentication", f"{PREFIX}shop", "jwt")]
    assert "${jwks:" not in json.dumps(ra)
    (rule,) = ra["spec"]["jwtRules"]
    keys = json.loads(rule["jwks"])["keys"]
    assert rule["issuer"] == "testing@secure.istio.io" and len(keys) == 1
    assert keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256" and "d" not in keys[0]  # public only
    custom = api.objects[("AuthorizationPolicy", f"{PREFIX}shop", "ext-authz")]
    assert custom["spec"]["action"] == "CUSTOM" and custom["spec"]["provider"] == {"name": f"{PREFIX}ext-authz-http"}

    # probe: the exec'd script carries a token of the scenario's issuer, signed by the key of that JWKS
    (obs,) = session.probe([scenario.steps[0].expectations[0].probe])
    assert obs.outcome == ALLOWED, obs.notes
    script = world.scripts()[-1]
    assert f"http://api.{PREFIX}shop:8080/headers" in script
    (token,) = re.findall(r"Authorization: Bearer ([\w-]+\.[\w-]+\.[\w-]+)", script)
    header, payload, _signature = token.split(".")
    assert b64url_json(header)["kid"] == keys[0]["kid"]
    assert (payload_claims := b64url_json(payload))["iss"] == "testing@secure.istio.io"
    assert payload_claims["sub"] == "alice" and payload_claims["groups"] == ["admin"]
    import jwt as pyjwt

    verified = pyjwt.decode(token, pyjwt.PyJWK(keys[0]).key, algorithms=["RS256"])
    assert verified == payload_claims

    # close: the providers out again, someone else's and everything else kept
    session.close()
    assert mesh_of(api) == yaml.safe_load(MESH)
    assert len(api.made("PUT", "/configmaps/istio")) == 2
    assert not left_behind(api)


def test_a_conflicting_write_to_the_mesh_config_is_read_again_and_retried_keeping_the_other_writers_change(world):
    """Another client (an operator, another run) writes the ConfigMap between the session's GET and its PUT, at
    start and at close: the API server's 409 makes the session read again; the other writer's change stays."""
    world, ctx = world
    api = world.api

    def someone_else(field: str) -> Any:
        def edit(cm: dict[str, Any]) -> None:
            mesh = yaml.safe_load(cm["data"]["mesh"])
            mesh[field] = True
            cm["data"]["mesh"] = yaml.safe_dump(mesh)
        return edit

    api.race_next_put("ConfigMap", ROOT_NAMESPACE, "istio", someone_else("enableTracing"))
    session = ClusterSession(load(SCENARIO, V130), "sidecar", ctx).start()
    first, second = api.made("PUT", "/configmaps/istio")
    assert first.json()["metadata"]["resourceVersion"] != second.json()["metadata"]["resourceVersion"]
    mesh = mesh_of(api)
    assert mesh["enableTracing"] is True and {f"{PREFIX}ext-authz-http", "otel"} <= set(providers_of(api))

    api.race_next_put("ConfigMap", ROOT_NAMESPACE, "istio", someone_else("enableAutoMtls"))
    session.close()
    assert len(api.made("PUT", "/configmaps/istio")) == 4
    assert mesh_of(api) == {**yaml.safe_load(MESH), "enableTracing": True, "enableAutoMtls": True}
    assert not left_behind(api)


def test_a_409_from_the_api_server_on_the_first_put_is_retried(world):
    world, ctx = world
    api = world.api
    api.fail_next("PUT", "/configmaps/istio", 409, "Conflict",
                  'Operation cannot be fulfilled on configmaps "istio": the object has been modified; please apply '
                  "your changes to the latest version and try again")
    session = ClusterSession(load(SCENARIO, V130), "sidecar", ctx).start()
    assert len(api.made("PUT", "/configmaps/istio")) == 2
    assert f"{PREFIX}ext-authz-http" in providers_of(api)
    session.close()
    assert mesh_of(api) == yaml.safe_load(MESH)


def test_start_waits_until_istiod_serves_the_providers_at_debug_mesh(tmp_path):
    """istiod unreachable at first (503 from the pod proxy), then still on the old mesh config for two reads:
    start() goes on only once /debug/mesh lists the session's providers, before the canary."""
    world, ctx = mesh_world(tmp_path, unreachable=1, delay=2)
    api = world.api
    try:
        session = ClusterSession(load(SCENARIO, V130), "sidecar", ctx).start()
        assert world.istiod is not None and world.istiod.reads == 4  # 503, stale, stale, loaded
        assert world.istiod.providers() >= {f"{PREFIX}ext-authz-http", f"{PREFIX}ext-authz-qualified"}
        assert any(n.startswith("mesh config: istiod serves the providers after") for n in session.notes)
        # no probe ran before istiod had them: the first curl exec came after the last /debug/mesh read
        order = [r.path for r in api.requests if r.path.endswith("/proxy/debug/mesh") or r.path.endswith("/exec")]
        first_exec = next(i for i, p in enumerate(order) if p.endswith("/exec"))
        assert all(p.endswith("/exec") for p in order[first_exec:])
        session.close()
        assert mesh_of(api) == yaml.safe_load(MESH)
    finally:
        ctx.kube.close()
        api.stop()
        world.close()


def test_start_fails_naming_istiod_when_it_never_loads_the_providers_and_leaves_nothing(tmp_path):
    world, ctx = mesh_world(tmp_path, frozen=True)
    ctx = replace(ctx, timeouts=replace(ctx.timeouts, mesh_config=1.5))
    api = world.api
    try:
        with pytest.raises(TargetError, match=r"istiod loading the extension providers: not ready after .*istiod-"
                                              rf".* lacks {PREFIX}ext-authz-http, {PREFIX}ext-authz-qualified"):
            ClusterSession(load(SCENARIO, V130), "sidecar", ctx).start()
        assert world.istiod is not None and world.istiod.reads >= 2
        assert mesh_of(api) == yaml.safe_load(MESH)  # the providers taken out again
        assert not left_behind(api)  # and the namespaces deleted
        assert not [c for c in world.commands if c[2] == "curl"]  # no canary against a mesh without its providers
    finally:
        ctx.kube.close()
        api.stop()
        world.close()


def test_a_session_without_mesh_config_access_refuses_providers_and_leaves_nothing(world):
    """kind always gives access; the existing-cluster target refuses such a scenario earlier (test_existing_
    apiserver.py); a context without access must still never write the mesh config."""
    world, ctx = world
    api = world.api
    with pytest.raises(TargetError, match="may not add to the cluster's mesh config"):
        ClusterSession(load(SCENARIO, V130), "sidecar", replace(ctx, mesh_config=None)).start()
    assert not api.made("PUT") and mesh_of(api) == yaml.safe_load(MESH)
    assert not left_behind(api)


def test_kube_replace_and_proxy_get_against_the_api_servers_answers(world):
    """The two calls meshconfig.py relies on, on their own: a PUT of what was read succeeds once and conflicts
    the second time (its resourceVersion is stale then); the pod proxy relays istiod's answer, and its errors
    (no such pod, nothing listening) are TargetErrors naming the pod."""
    from conformance.mesh.cluster.kube import ReplaceConflict

    world, ctx = world
    kube, api = ctx.kube, world.api
    read = kube.get("v1", "ConfigMap", "istio", ROOT_NAMESPACE)
    assert read is not None
    written = kube.replace({**read, "data": {**read["data"], "mesh": "trustDomain: cluster.local\n"}})
    assert written["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    assert written["metadata"]["uid"] == read["metadata"]["uid"]
    with pytest.raises(ReplaceConflict, match="the object has been modified"):
        kube.replace(read)
    assert mesh_of(api) == {"trustDomain": "cluster.local"}
    with pytest.raises(TargetError) as failed:
        kube.replace({**read, "metadata": {**read["metadata"], "name": "istio-nope", "resourceVersion": None}})
    assert not isinstance(failed.value, ReplaceConflict) and "not found" in str(failed.value)

    (pod,) = [p.name for p in kube.pods(ROOT_NAMESPACE, "app=istiod,istio.io/rev=default")]
    assert json.loads(kube.proxy_get(ROOT_NAMESPACE, pod, 15014, "debug/mesh"))["trustDomain"] == "cluster.local"
    (sent,) = api.made("GET", "/proxy/debug/mesh")
    assert sent.raw_path == f"/api/v1/namespaces/{ROOT_NAMESPACE}/pods/{pod}%3A15014/proxy/debug%2Fmesh"
    with pytest.raises(TargetError, match=rf"{pod}:8080 failed: .*error trying to reach service"):
        kube.proxy_get(ROOT_NAMESPACE, pod, 8080, "debug/mesh")
    with pytest.raises(TargetError, match="not found"):
        kube.proxy_get(ROOT_NAMESPACE, "istiod-gone", 15014, "debug/mesh")
