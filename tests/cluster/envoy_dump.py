"""An Envoy `config_dump?resource=dynamic_listeners` answer for fake proxies, shaped as Envoy writes it
(envoy api/envoy/admin/v3/config_dump_shared.proto ListenersConfigDump.DynamicListener), so the barrier is
tested on the states it must tell apart: active, warming, draining, rejected."""

from __future__ import annotations

import json
from collections.abc import Iterable

DYNAMIC_LISTENER = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"


def _rbac(policy_ids: Iterable[str]) -> dict[str, object]:
    return {"name": "envoy.filters.http.rbac", "typed_config": {"rules": {"policies": {p: {} for p in policy_ids}}}}


def listeners_dump(active: Iterable[str], warming: Iterable[str] = (), draining: Iterable[str] = (),
                   rejected: Iterable[str] = ()) -> str:
    """One inbound listener whose active state holds the RBAC of `active` policy ids, and the others."""
    entry: dict[str, object] = {"@type": DYNAMIC_LISTENER, "name": "virtualInbound",
                                "active_state": {"version_info": "1", "listener": {"filter_chains": [
                                    {"filters": [_rbac(active)]}]}}}
    if warming:
        entry["warming_state"] = {"listener": {"filter_chains": [{"filters": [_rbac(warming)]}]}}
    if draining:
        entry["draining_state"] = {"listener": {"filter_chains": [{"filters": [_rbac(draining)]}]}}
    if rejected:
        entry["error_state"] = {"failed_configuration": {"filter_chains": [{"filters": [_rbac(rejected)]}]},
                                "details": "rejected"}
    return json.dumps({"configs": [entry]})
