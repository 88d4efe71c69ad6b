"""Real curl, the way a user would test a policy from inside the source pod: one transfer per probe.

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

Batches (`run_curl_batch`): starting curl costs ~6-8 ms of CPU (33 shared libraries, OpenSSL's set-up),
most of a probe's cost on two cores, so a round of probes runs as one curl process with `--parallel`, one
transfer per probe separated by `--next` (every option that shapes a request is per transfer in curl:
its URL, method, headers, `--connect-to`, `--interface`, `--local-port`, timeouts, `-o`, `-w`). What each
probe keeps is unchanged: its own request, its own `-w` fields plus `%{exitcode}` and `%{errormsg}` (curl
7.75+, the exit code and message it would have ended with alone), its body in its own file, and its own
source port. That port also keeps curl from reusing one transfer's connection for another: curl reuses a
connection bound to a local port only for a transfer asking for that same port (url.c
ConnectionExists, "If we are bound to a specific local end (IP+port), we must not reuse a random other
one"), and no two transfers of a batch get the same port; a transfer without a lent port runs alone.
Each probe's `started`/`ended` is its batch's, a looser bound than alone: the keys stay unique per probe.
`CurlResult.command` is still the one probe's command, as a user would retype it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from conformance.mesh.local.lifetime import retry_failed_spawn
from conformance.probe import (
    CURL_WRITE_OUT,
    PROBE_HEADER,
    RESERVED_HEADERS,
    WRITE_OUT_MARKER,
    Evidence,
    SourcePorts,
    evidence_from_curl,
    evidence_from_fields,
    split_write_out,
    write_out_fields,
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
        """This probe's curl command on its own (what a user would run, and what a batch's transfer does)."""
        return [curl, "-q", "-sS", *self.transfer(connect_timeout, max_time, CURL_WRITE_OUT)]

    def transfer(self, connect_timeout: float, max_time: float, write_out: str, output: str | None = None,
                 ) -> list[str]:
        """Every option of this probe's transfer and its URL: all per transfer in curl, so after `--next` a
        batch's transfer is exactly this probe's request (curl's global options stay in `argv`)."""
        url = f"http://{self.url_host}{'' if self.port == 80 else f':{self.port}'}"
        path = self.path if self.path.startswith("/") else "/" + self.path
        args = [
            "--path-as-is", "--noproxy", "*",
            "--connect-timeout", f"{connect_timeout:g}", "--max-time", f"{max_time:g}",
            "--connect-to", f"{self.url_host}:{self.port}:{self.connect_ip}:{self.connect_port}",
            "-w", write_out,
        ]
        if output is not None:
            args += ["-o", output]
        if self.method.upper() == "HEAD":
            args.append("--head")
        else:
            args += ["-X", self.method]
        for name, value in self.headers:
            if name.lower() not in RESERVED_HEADERS:  # validation refuses them in scenarios; never let one through
                args += ["-H", f"{name}: {value}"]
        if self.probe_id:
            args += ["-H", f"{PROBE_HEADER}: {self.probe_id}"]
        if self.interface:
            args += ["--interface", self.interface]
        if self.local_port:
            args += ["--local-port", str(self.local_port)]
        args.append(url + path)
        return args


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
    return run_curl_batch([request], curl, connect_timeout, max_time, reserved, ports)[0]


BATCH_SIZE = 64  # transfers per curl process: a round of a scenario is one process, a benchmark's rounds a few
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")


def run_curl_batch(requests: Sequence[CurlRequest], curl: str, connect_timeout: float, max_time: float,
                   reserved: Container[int] = (), ports: SourcePorts = SOURCE_PORTS, workers: int = 4,
                   workdir: Path | None = None) -> list[CurlResult]:
    """Run every request, each with its own source port from `ports`, as few curl processes as batching
    allows (module docstring); results in the order of `requests`. A request whose source address has no
    free port, or a curl too old for per-transfer exit codes, runs alone; a transfer that could not bind its
    port (an earlier process's connection still holds it) is run again alone with the kernel's choice."""
    lent = [(r.interface or "", ports.take(r.interface, reserved) if r.interface else None) for r in requests]
    try:
        planned = [replace(r, local_port=port) for r, (_, port) in zip(requests, lent, strict=True)]
        batched = [i for i, r in enumerate(planned) if r.local_port is not None] if batches_supported(curl) else []
        alone = sorted(set(range(len(planned))) - set(batched))
        chunks = [batched[k:k + BATCH_SIZE] for k in range(0, len(batched), BATCH_SIZE)]
        results: list[CurlResult | None] = [None] * len(planned)

        def run_chunk(chunk: list[int]) -> None:
            if len(chunk) == 1:
                results[chunk[0]] = run_curl(planned[chunk[0]], curl, connect_timeout, max_time)
                return
            out = _run_batch([planned[i] for i in chunk], curl, connect_timeout, max_time, workdir)
            for i, result in zip(chunk, out, strict=True):
                results[i] = result

        jobs = chunks + [[i] for i in alone]
        if len(jobs) == 1:
            run_chunk(jobs[0])
        elif jobs:
            threads = max(1, min(workers, len(jobs)))
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="authz-curl") as pool:
                list(pool.map(run_chunk, jobs))
        done: list[CurlResult] = []
        for request, result in zip(planned, results, strict=True):
            assert result is not None
            if request.local_port is not None and result.evidence.exit_code == CURL_BIND_FAILED:
                result = run_curl(replace(request, local_port=None), curl, connect_timeout, max_time)
            done.append(result)
        return done
    finally:
        for address, port in lent:
            ports.give_back(address, port)


@cache
def batches_supported(curl: str) -> bool:
    """curl 7.75.0 added the write-out variables a batch needs (`%{exitcode}`, `%{errormsg}`)."""
    try:
        out = subprocess.run([curl, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.match(r"curl (\d+)\.(\d+)", out)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (7, 75)


# A batch transfer's write-out: CURL_WRITE_OUT's fields after its index, then its exit code and message (last:
# the message has spaces, so it runs to the end of the line).
_BATCH_WRITE_OUT = (WRITE_OUT_MARKER + "index=@ " + CURL_WRITE_OUT[len(WRITE_OUT_MARKER):].rstrip("\n")
                    + " exitcode=%{exitcode} errormsg=%{errormsg}\n")


def _run_batch(requests: Sequence[CurlRequest], curl: str, connect_timeout: float, max_time: float,
               workdir: Path | None) -> list[CurlResult]:
    """One curl process, one transfer per request (`--parallel`, `--next`): each transfer's write-out starts
    with its index and ends with its own exit code and error message; each body goes to its own file."""
    with tempfile.TemporaryDirectory(prefix="curl-", dir=workdir) as tmp:
        argv = [curl, "-q", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", str(len(requests))]
        for i, request in enumerate(requests):
            if i:
                argv.append("--next")
            write_out = _BATCH_WRITE_OUT.replace("index=@", f"index={i}")
            argv += request.transfer(connect_timeout, max_time, write_out, output=str(Path(tmp) / str(i)))
        started = time.time()
        code, out, err = _spawn(argv, max_time + 5)
        ended = time.time()
        fields_of: dict[int, dict[str, str]] = {}
        for line in out.split(WRITE_OUT_MARKER)[1:]:
            head, _, message = line.rstrip("\n").partition(" errormsg=")
            fields = write_out_fields(head)
            fields["errormsg"] = message
            if fields.get("index", "").isdigit():
                fields_of[int(fields["index"])] = fields
        results = []
        for i, request in enumerate(requests):
            command = _display(request.argv(curl, connect_timeout, max_time))
            fields = fields_of.get(i)
            if fields is None:  # the process died before this transfer ended: its error is the process's
                evidence = evidence_from_curl(code or 1, "", err or f"curl exited {code} before this transfer ended",
                                              ended - started, command)
                results.append(CurlResult(evidence, None, started, ended))
                continue
            try:
                exit_code = int(fields.get("exitcode", ""))
            except ValueError:
                exit_code = code or 1
            body_path = Path(tmp) / str(i)
            body = body_path.read_bytes().decode(errors="replace") if body_path.exists() else ""
            message = fields.get("errormsg", "")
            stderr = f"curl: ({exit_code}) {message}" if exit_code and message else ""
            try:
                seconds = float(fields.get("time_total", "0"))
            except ValueError:
                seconds = ended - started
            evidence = evidence_from_fields(exit_code, body, fields, stderr, seconds, command)
            results.append(CurlResult(evidence, _local(fields), started, ended))
        return results


def _local(fields: dict[str, str]) -> str | None:
    ip, port = fields.get("local_ip", ""), fields.get("local_port", "0")
    return f"{ip}:{port}" if ip and port not in ("", "0") else None


def _spawn(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run curl with a clean environment; a process that overruns is killed and reported as exit 28."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env["HOME"] = "/nonexistent"  # no ~/.curlrc, even without -q
    try:
        proc = retry_failed_spawn(lambda: subprocess.run(argv, capture_output=True, env=env, timeout=timeout,
                                                         check=False, stdin=subprocess.DEVNULL))
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        return 28, (exc.stdout or b"").decode(errors="replace"), f"curl did not finish within {timeout:g}s; killed"


def new_probe_id() -> str:
    return uuid.uuid4().hex


def run_curl(request: CurlRequest, curl: str, connect_timeout: float, max_time: float) -> CurlResult:
    """Run curl once; never raises for what curl reports (that is evidence), only for a missing binary."""
    argv = request.argv(curl, connect_timeout, max_time)
    start = time.monotonic()
    started = time.time()
    code, out, err = _spawn(argv, max_time + 5)
    seconds = time.monotonic() - start
    ended = time.time()
    evidence = evidence_from_curl(code, out, err, seconds, _display(argv))
    return CurlResult(evidence, _local(split_write_out(out)[1]), started, ended)


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
