"""Real curl, one process per probe, the way a user would test a policy from inside the source pod.

The URL keeps the scenario's view (`http://<name>.<namespace>[:port]<path>`, so the Host header is what
an in-cluster client would send, port 80 included) and `--connect-to` points the connection where the
local mesh really listens: the source's own proxy for in-mesh sources (its outbound listener for that
destination port), the destination directly for out-of-mesh sources, which also bind their workload
address with `--interface` so that `ipBlocks` see it.

Choices from research/envoy-local-mesh.md: `--path-as-is` (the proxies, not curl, must normalise
paths), explicit connect and total timeouts, `-w` for status and the local address, no `-o` (curl
fails with 23 writing to a pipe it does not own), `-q` and `--noproxy '*'` plus a clean environment so
no user curlrc or proxy variable changes the request.

Every probe is found again in the proxies' logs by keys the suite makes, never by one a scenario can
set: the suite's own header (`probe.PROBE_HEADER`, a fresh id per probe) at HTTP-aware proxies, and
curl's own address at L4 proxies. curl binds the source workload's address (`--interface`, an address
of this run's own loopback block) and the kernel gives it a port no other socket on that address holds;
so curl's address (the key at L4 proxies) must not repeat while a record of it may still be read. The
kernel's own choice does repeat: a port freed by a reset is handed to the next curl of the same batch
(found by the differential test). So every curl binds a port from `SourcePorts`, which lends a port only
after it has rested longer than TCP's TIME_WAIT: within a minute no two probes of a run share an address.
`CurlResult.started`/`ended` (wall clock, the clock Envoy's `%START_TIME%` uses) bound each record too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Container
from dataclasses import dataclass, replace

from conformance.probe import (
    CURL_WRITE_OUT,
    PROBE_HEADER,
    RESERVED_HEADERS,
    Evidence,
    SourcePorts,
    evidence_from_curl,
    split_write_out,
)

CURL_MISSING = "curl is not installed: install curl (Debian: apt-get install curl)"


def curl_binary() -> str | None:
    return shutil.which("curl")


@dataclass(frozen=True)
class CurlRequest:
    """One curl invocation: where it really connects, what it sends, and its id for log lookup."""

    url_host: str  # `<name>.<namespace>`
    port: int  # the scenario's port (the URL's)
    path: str
    method: str
    headers: tuple[tuple[str, str], ...]
    connect_ip: str
    connect_port: int
    interface: str | None = None  # bind this source address (every probe binds its source workload's)
    probe_id: str = ""  # sent as probe.PROBE_HEADER: the key to this probe's records at HTTP proxies
    local_port: int | None = None  # bind this source port (SourcePorts), else the kernel chooses

    def argv(self, curl: str, connect_timeout: float, max_time: float) -> list[str]:
        url = f"http://{self.url_host}{'' if self.port == 80 else f':{self.port}'}"
        path = self.path if self.path.startswith("/") else "/" + self.path
        argv = [
            curl, "-q", "-sS", "--path-as-is", "--noproxy", "*",
            "--connect-timeout", f"{connect_timeout:g}", "--max-time", f"{max_time:g}",
            "--connect-to", f"{self.url_host}:{self.port}:{self.connect_ip}:{self.connect_port}",
            "-w", CURL_WRITE_OUT,
        ]
        if self.method.upper() == "HEAD":
            argv.append("--head")
        else:
            argv += ["-X", self.method]
        for name, value in self.headers:
            if name.lower() not in RESERVED_HEADERS:  # validation refuses them in scenarios; never let one through
                argv += ["-H", f"{name}: {value}"]
        if self.probe_id:
            argv += ["-H", f"{PROBE_HEADER}: {self.probe_id}"]
        if self.interface:
            argv += ["--interface", self.interface]
        if self.local_port:
            argv += ["--local-port", str(self.local_port)]
        argv.append(url + path)
        return argv


@dataclass(frozen=True)
class CurlResult:
    evidence: Evidence
    local_address: str | None  # "ip:port" curl connected from, the key into the first proxy's log
    started: float = 0.0  # time.time() just before curl was started
    ended: float = 0.0  # time.time() once it had exited

    @property
    def connected(self) -> bool:
        return self.local_address is not None


SOURCE_PORTS = SourcePorts()
CURL_BIND_FAILED = 45  # CURLE_INTERFACE_FAILED: the source port is held (an earlier process's TIME_WAIT)


def run_curl_from_port(request: CurlRequest, curl: str, connect_timeout: float, max_time: float,
                       reserved: Container[int] = (), ports: SourcePorts = SOURCE_PORTS) -> CurlResult:
    """run_curl with a source port from `ports` (the kernel's choice when none is free or it is held)."""
    address = request.interface or ""
    port = ports.take(address, reserved) if address else None
    try:
        result = run_curl(replace(request, local_port=port), curl, connect_timeout, max_time)
        if port is not None and result.evidence.exit_code == CURL_BIND_FAILED:
            result = run_curl(replace(request, local_port=None), curl, connect_timeout, max_time)
        return result
    finally:
        ports.give_back(address, port)


def new_probe_id() -> str:
    return uuid.uuid4().hex


_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")


def run_curl(request: CurlRequest, curl: str, connect_timeout: float, max_time: float) -> CurlResult:
    """Run curl once; never raises for what curl reports (that is evidence), only for a missing binary."""
    argv = request.argv(curl, connect_timeout, max_time)
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env["HOME"] = "/nonexistent"  # no ~/.curlrc, even without -q
    start = time.monotonic()
    started = time.time()
    try:
        proc = subprocess.run(
            argv, capture_output=True, env=env, timeout=max_time + 5, check=False, stdin=subprocess.DEVNULL,
        )
        code, out, err = proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        code = 28
        out = (exc.stdout or b"").decode(errors="replace")
        err = f"curl did not finish within {max_time + 5:g}s; killed"
    seconds = time.monotonic() - start
    ended = time.time()
    command = _display(argv)
    evidence = evidence_from_curl(code, out, err, seconds, command)
    _, fields = split_write_out(out)
    ip, port = fields.get("local_ip", ""), fields.get("local_port", "0")
    local = f"{ip}:{port}" if ip and port not in ("", "0") else None
    return CurlResult(evidence, local, started, ended)


def _display(argv: list[str]) -> str:
    """The command as a user would retype it: `curl ...` without the machine-only `-w` format."""
    shown: list[str] = ["curl"]
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "-w":
            skip = True
            continue
        shown.append(arg)
    return shlex.join(shown)
