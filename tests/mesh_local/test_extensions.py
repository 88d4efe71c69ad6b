"""The Envoy extensions every local-mesh Envoy disables (conformance/mesh/local/extensions.py): the vendored list is the
installed Envoy's, the mesh never names a disabled one, and a config that does is refused by Envoy, never run."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conformance.errors import TargetUnavailable
from conformance.mesh.local import extensions
from conformance.mesh.local.envoy import ENVOY_FLAGS, envoy_binary

LOCAL = Path(extensions.__file__).parent


def _binary() -> Path:
    try:
        return envoy_binary()
    except TargetUnavailable as exc:
        pytest.skip(str(exc))


def _admin_bootstrap(tmp_path: Path) -> Path:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}}))
    return path


def test_the_vendored_list_is_what_the_installed_envoy_registers(tmp_path: Path) -> None:
    binary = _binary()
    address = tmp_path / "admin-address"
    proc = subprocess.Popen([str(binary), "-c", str(_admin_bootstrap(tmp_path)), "--admin-address-path", str(address),
                             "--concurrency", "1", "--disable-hot-restart", "-l", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (address.exists() and address.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "Envoy did not start"
            time.sleep(0.01)
        with urllib.request.urlopen(f"http://{address.read_text().strip()}/server_info", timeout=10) as resp:
            info = json.load(resp)
    finally:
        proc.kill()
        proc.wait()
    live = sorted((e["category"], e["name"]) for e in info["node"]["extensions"])
    assert live == sorted(extensions.registered())
    assert info["node"]["user_agent_build_version"]["version"]["minor_number"] == 40


def test_no_extension_the_mesh_names_is_disabled() -> None:
    # every `envoy.<family>.<name>` string and every config type in the local mesh's sources: what its configs name
    named, types = set(), set()
    for source in LOCAL.glob("*.py"):
        if source.name != "extensions.py":
            text = source.read_text()
            named |= set(re.findall(r'"(envoy\.[a-z_]+\.[\w.]+)"', text))
            types |= set(re.findall(r'(envoy\.extensions\.[\w.]+?\.v3\.\w+)', text))
    assert "envoy.filters.http.jwt_authn" in named and "envoy.transport_sockets.internal_upstream" in named
    off = {d.split("/", 1)[1] for d in extensions.disabled(extensions.registered())}
    assert not named & off, named & off
    # a typed_config's type picks its factory too: envoy.extensions.<path>.v3.<Message> is extension envoy.<path>
    assert len(types) > 10
    for t in types:
        assert "envoy." + t.split(".v3.")[0].removeprefix("envoy.extensions.") not in off, t
    # and Envoy's machinery that every config uses by default stays: the router's terminal upstream filter,
    # STATIC clusters and their round robin, the default certificate validator
    for kept in ("envoy.filters.http.upstream_codec", "envoy.cluster.static",
                 "envoy.load_balancing_policies.round_robin", "envoy.tls.cert_validator.default",
                 "envoy.filters.http.router", "envoy.router"):
        assert kept not in off


@pytest.mark.parametrize(("family", "typed"), [
    ("envoy.filters.http.lua", {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                "default_source_code": {"inline_string": "function envoy_on_request(h) end"}}),
    ("envoy.filters.http.fault", {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}),
])
def test_a_config_naming_a_disabled_extension_is_refused_not_run(tmp_path: Path, family: str,
                                                                 typed: dict[str, Any]) -> None:
    """The claim extensions.py rests on: Envoy refuses such a config (loud), it never runs it differently."""
    binary = _binary()
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "t", "route_config": {"name": "t", "virtual_hosts": []},
           "http_filters": [{"name": family, "typed_config": typed},
                            {"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                                                       "Router"}}]}
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    assert f"envoy.filters.http/{family}" in extensions.disable_flag()[1].split(",")

    def validate(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), "--mode", "validate", "-c", str(path), *ENVOY_FLAGS, *flags],
                              capture_output=True, text=True, timeout=120, check=False)

    assert validate().returncode == 0  # the same config with every extension registered
    refused = validate(*extensions.disable_flag())
    assert refused.returncode != 0
    assert "Didn't find a registered implementation" in refused.stdout + refused.stderr
