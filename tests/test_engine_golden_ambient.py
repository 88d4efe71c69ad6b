"""The engine's ztunnel translation against what istiod 1.30.3 really sends ztunnel.

Golden data: tests/data/istio-golden/ambient (istio/istio@1.30.3
pilot/pkg/serviceregistry/ambient/testdata, run there by TestRBACConvert; vendored unmodified, see the
NOTICE there). Each `X-in.yaml` policy is translated by the engine and serialized in the workload API's
YAML shape; it must equal istiod's `X.yaml` exactly (ALLOW rules with L7 attributes dropped, L7 parts of
DENY rules left as empty matches).
"""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.engine.policy import compile_authorization_policy
from conformance.engine.ztunnel import Match, translate
from conformance.model import Manifest

GOLDEN = Path(__file__).resolve().parent / "data" / "istio-golden" / "ambient"
CASES = ["allow-full", "allow-groups", "deny-groups"]


def _strings(values: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in values:
        if v == "*":
            out.append({"presence": {}})
        elif v.startswith("*"):
            out.append({"suffix": v[1:]})
        elif v.endswith("*"):
            out.append({"prefix": v[:-1]})
        else:
            out.append({"exact": v})
    return out


def _addresses(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        net = ipaddress.ip_network(v, strict=False)
        out.append({"address": base64.b64encode(net.network_address.packed if "/" in v
                                                else ipaddress.ip_address(v).packed).decode(),
                    "length": net.prefixlen})
    return out


def _match(m: Match) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, values in (("namespaces", m.namespaces), ("notNamespaces", m.not_namespaces),
                         ("principals", m.principals), ("notPrincipals", m.not_principals)):
        if values:
            doc[name] = _strings(values)
    for name, sas in (("serviceAccounts", m.service_accounts), ("notServiceAccounts", m.not_service_accounts)):
        if sas:
            doc[name] = [{"namespace": ns, "serviceAccount": sa} for ns, sa in sas]
    for name, ips in (("sourceIps", m.source_ips), ("notSourceIps", m.not_source_ips),
                      ("destinationIps", m.destination_ips), ("notDestinationIps", m.not_destination_ips)):
        if ips:
            doc[name] = _addresses(ips)
    for name, ports in (("destinationPorts", m.destination_ports), ("notDestinationPorts", m.not_destination_ports)):
        if ports:
            doc[name] = ports
    return doc


def _serialize(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc.get("metadata", {})
    manifest = Manifest(doc["kind"], doc["apiVersion"], meta["name"], meta.get("namespace", ""), doc, "golden")
    policy = compile_authorization_policy(manifest)
    t = translate(policy)
    out: dict[str, Any] = {}
    if policy.action == "DENY":
        out["action"] = "DENY"
    groups = [{"rules": [{"matches": [_match(m) for m in clause]} for clause in clauses]} for clauses, _ in t.rules]
    if groups:
        out["groups"] = groups
    out["name"] = policy.name
    if policy.namespace:
        out["namespace"] = policy.namespace
    out["scope"] = "WORKLOAD_SELECTOR" if policy.selector is not None else (
        "GLOBAL" if policy.namespace == "istio-system" else "NAMESPACE")
    return out


@pytest.mark.parametrize("case", CASES)
def test_engine_translation_equals_istiod(case: str) -> None:
    policy = yaml.safe_load((GOLDEN / f"{case}-in.yaml").read_text())
    expected = yaml.safe_load((GOLDEN / f"{case}.yaml").read_text())
    assert _serialize(policy) == expected
