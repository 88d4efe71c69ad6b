"""A JWT + CUSTOM scenario as a user writes it, loaded by the scenario loader and run on the local mesh's Envoy.

It pins the seam between the loader's model (issuers, extension providers, `kind: ext-authz`, `request.jwt`,
`${jwks:...}`) and the local target, without the verdict engine: each probe's verdict is the scenario's, and
every denial must come with the enforcing proxy's record of the kind that gives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.mesh.local.mesh import LocalTarget
from conformance.model import ALLOWED, DENIED_AUTHN, DENIED_CUSTOM, DENIED_L7
from conformance.probe import EXT_AUTHZ_DENIED, JWT_REJECTED, NO_ALLOW_MATCHED
from conformance.scenario import check

SCENARIO = """\
apiVersion: authz-conformance/v1
kind: Scenario
metadata: {name: jwt-custom-loaded}
spec:
  modes: [sidecar]
  mesh:
    extensionProviders:
      - name: ext-authz-http
        envoyExtAuthzHttp:
          service: ext-authz.ext-authz.svc.cluster.local
          port: 8000
          includeRequestHeadersInCheck: [x-ext-authz]
      - name: ext-authz-grpc
        envoyExtAuthzGrpc: {service: ext-authz.ext-authz.svc.cluster.local, port: 9000, timeout: 0.5s}
  issuers:
    - {name: example, issuer: testing@secure.istio.io}
  workloads:
    - {name: ext-authz, namespace: ext-authz, kind: ext-authz, ports: [8000, 9000]}
    - {name: curl, namespace: shop}
    - {name: api, namespace: shop, ports: [8080]}
  steps:
    - name: jwt-and-custom
      policies:
        - apiVersion: security.istio.io/v1
          kind: RequestAuthentication
          metadata: {name: jwt, namespace: shop}
          spec:
            selector: {matchLabels: {app: api}}
            jwtRules:
              - issuer: testing@secure.istio.io
                jwks: "${jwks:example}"
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: ext-authz, namespace: shop}
          spec:
            selector: {matchLabels: {app: api}}
            action: CUSTOM
            provider: {name: ext-authz-grpc}
            rules: [{to: [{operation: {paths: [/admin/*]}}]}]
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: require-group, namespace: shop}
          spec:
            selector: {matchLabels: {app: api}}
            rules:
              - from: [{source: {requestPrincipals: ["testing@secure.istio.io/*"]}}]
                when: [{key: "request.auth.claims[groups]", values: [admin]}]
      expect:
        - from: shop/curl
          to: shop/api:8080
          request: {jwt: {issuer: example, sub: alice, claims: {groups: [admin]}}}
          verdict: allow
        - {from: shop/curl, to: shop/api:8080, request: {jwt: {issuer: example, sub: bob}}, verdict: deny}
        - {from: shop/curl, to: shop/api:8080, request: {jwt: {issuer: example, expired: true}}, verdict: deny}
        - {from: shop/curl, to: shop/api:8080, request: {jwt: {raw: deadbeef}}, verdict: deny}
        - from: shop/curl
          to: shop/api:8080
          request:
            path: /admin/x
            headers: {x-ext-authz: deny}
            jwt: {issuer: example, sub: alice, claims: {groups: [admin]}, in: {param: token}}
          verdict: deny
        - from: shop/curl
          to: shop/api:8080
          request:
            path: /admin/x
            headers: {x-ext-authz: allow}
            jwt: {issuer: example, sub: alice, claims: {groups: [admin]}}
          verdict: allow
"""
# What each expectation's denial is, in order (None: allowed).
DENIALS = [None, (DENIED_L7, NO_ALLOW_MATCHED), (DENIED_AUTHN, JWT_REJECTED), (DENIED_AUTHN, JWT_REJECTED),
           (DENIED_CUSTOM, EXT_AUTHZ_DENIED), None]


def test_loaded_scenario_runs_on_the_local_mesh(tmp_path: Path) -> None:
    path = tmp_path / "jwt-custom.yaml"
    path.write_text(SCENARIO)
    scenario, problems = check(path)
    assert scenario is not None, problems
    target = LocalTarget()
    reason = target.unavailable("sidecar", scenario)
    if reason:
        pytest.skip(reason)
    [step] = scenario.steps
    with target.start(scenario, "sidecar") as mesh:
        mesh.apply(step.policies)
        observations = mesh.probe([e.probe for e in step.expectations])
    for expectation, obs, denial in zip(step.expectations, observations, DENIALS, strict=True):
        assert (expectation.verdict("sidecar") == "allow") == (denial is None)
        if denial is None:
            assert obs.outcome == ALLOWED, (expectation.probe.describe(), obs)
        else:
            assert (obs.outcome, obs.proof and obs.proof.kind) == denial, (expectation.probe.describe(), obs)
            assert obs.proof is not None and obs.proof.proxy == "sidecar:shop/api"
    assert observations[4].proof is not None and observations[4].proof.policy == "shop/ext-authz"
