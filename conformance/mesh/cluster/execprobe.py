"""Probing from inside a pod: one POSIX `sh` script runs many curl probes per exec, one line each.

Why a script: an exec round trip through the API server costs far more than a curl, so every probe of
a step from one source pod goes into one exec (DESIGN.md §7, issue 6). The curl image has busybox `sh`,
`od`, `dd`, `tr` and `cat`, but no bash and no jq, so the script uses nothing else, and prints ONE line
per probe that carries everything: curl's own exit code, its `-w` fields, and the body and stderr
hex-encoded (bodies hold newlines, and a body could even contain our markers):

    @@authz <nonce> <index> rc=<curl exit> http_code=200 local_ip=... time_total=0.004 body=<hex> err=<hex>
    ...
    @@authz <nonce> done <count>

The nonce is fresh per exec, so a stale line (or an echo of the script) is never taken for a result.
Every probe has explicit connect and total timeouts; probes run in the background a few at a time.

`parse_output` turns the exec's stdout back into `Evidence`: a missing line, a missing `done` line, a
malformed field or bad hex means the exec was cut off or garbled, which is an infrastructure error
(`ExecOutputError`, a TargetError), never an outcome: a lost probe must not look like a denial.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from conformance.errors import TargetError
from conformance.mesh.cluster.logs import join_addr
from conformance.probe import BODY_LIMIT, PROBE_HEADER, Evidence

# curl's -w fields; `local_ip`/`local_port` are the connection's source as the destination's proxy sees it
# when no proxy sits in between (an out-of-mesh client, ztunnel's plaintext path): the key to an L4 record.
WRITE_OUT = ("http_code=%{http_code} local_ip=%{local_ip} local_port=%{local_port} remote_ip=%{remote_ip} "
             "remote_port=%{remote_port} time_connect=%{time_connect} time_total=%{time_total}")
_LINE = re.compile(r"^@@authz (?P<nonce>[0-9a-f]+) (?P<index>\d+) (?P<fields>.*)$")
_DONE = re.compile(r"^@@authz (?P<nonce>[0-9a-f]+) done (?P<count>\d+)$")
_HEX = re.compile(r"^[0-9a-f]*$")
REQUIRED_FIELDS = ("rc", "http_code", "time_total", "body", "err")


class ExecOutputError(TargetError):
    """The exec's output is truncated or garbled: an infrastructure failure, not a probe outcome."""


@dataclass(frozen=True)
class CurlCall:
    """One probe as curl will send it from the source pod.

    `probe_id` goes out as the suite's own header (probe.PROBE_HEADER, which no scenario may set), so the
    access log of an HTTP-aware proxy names the probe; a scenario's own headers (x-request-id included)
    follow it unchanged and never key a record.
    """

    probe_id: str
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    # curl's source port (probe.SourcePorts): the key of the probe at ztunnel must not repeat in a
    # session, and the pod's kernel reuses a port freed by a reset within a round
    local_port: int | None = None

    def __post_init__(self) -> None:
        # validation refuses the header in scenarios; a second value would make the probe's records ambiguous
        if any(name.lower() == PROBE_HEADER for name, _ in self.headers):
            raise ValueError(f"{PROBE_HEADER} is the suite's own probe id: a probe may not set it")

    def argv(self, connect_timeout: float, max_time: float, with_port: bool = True) -> list[str]:
        argv = ["curl", "-sS", "--connect-timeout", _num(connect_timeout), "--max-time", _num(max_time),
                "-X", self.method, "-H", f"{PROBE_HEADER}: {self.probe_id}"]
        for name, value in self.headers:
            argv += ["-H", f"{name}: {value}"]
        if self.local_port and with_port:
            argv += ["--local-port", str(self.local_port)]
        return [*argv, self.url]

    def describe(self, connect_timeout: float, max_time: float) -> str:
        return shlex.join(self.argv(connect_timeout, max_time))


def _num(value: float) -> str:
    return f"{value:g}"


def new_nonce() -> str:
    return secrets.token_hex(8)


def build_script(calls: Sequence[CurlCall], nonce: str, connect_timeout: float = 2.0, max_time: float = 5.0,
                 parallel: int = 8, body_limit: int = BODY_LIMIT) -> str:
    """The POSIX sh script for one exec: run `calls`, print one line per call, then the `done` line."""
    if not re.fullmatch(r"[0-9a-f]+", nonce):
        raise ValueError("nonce must be lowercase hex")
    lines = [
        "set -u",
        f"d=/tmp/authz-{nonce}",
        'mkdir -p "$d" || exit 97',
        # One probe: curl writes the body and the -w fields to files; its exit code goes to a file too,
        # so every probe keeps its own, whatever the others do.
        # Its source port ($2, may be empty): a port still held in the pod (exit 45, CURLE_INTERFACE_FAILED)
        # makes it run again with the kernel's choice, never an error of the probe.
        "p() {",
        '  i=$1; lp=$2; shift 2',
        '  rc=45',
        '  if [ -n "$lp" ]; then',
        f'    curl "$@" --local-port "$lp" -o "$d/$i.body" -w {shlex.quote(WRITE_OUT)} >"$d/$i.w" 2>"$d/$i.err"',
        '    rc=$?',
        '  fi',
        '  if [ "$rc" -eq 45 ]; then',
        f'    curl "$@" -o "$d/$i.body" -w {shlex.quote(WRITE_OUT)} >"$d/$i.w" 2>"$d/$i.err"',
        '    rc=$?',
        '  fi',
        '  echo "$rc" >"$d/$i.rc"',
        "}",
        # Hex of the first bytes of a file, on one line (POSIX dd + od + tr; busybox has all three).
        f'hx() {{ dd if="$1" bs={body_limit} count=1 2>/dev/null | od -An -v -tx1 | tr -d " \\n"; }}',
    ]
    for i, call in enumerate(calls):
        args = call.argv(connect_timeout, max_time, with_port=False)[1:]  # `p` adds output options and the port
        lines.append(f"p {i} {shlex.quote(str(call.local_port or ''))} {shlex.join(args)} &")
        if (i + 1) % parallel == 0:
            lines.append("wait")
    lines.append("wait")
    lines.append(f"for i in {' '.join(str(i) for i in range(len(calls)))}; do" if calls else "for i in; do")
    lines += [
        '  rc=$(cat "$d/$i.rc" 2>/dev/null || echo x)',
        '  w=$(cat "$d/$i.w" 2>/dev/null)',
        f'  printf "@@authz {nonce} %s rc=%s %s body=%s err=%s\\n" "$i" "$rc" "$w" "$(hx "$d/$i.body")" '
        '"$(hx "$d/$i.err")"',
        "done",
        'rm -rf "$d"',
        f'printf "@@authz {nonce} done %s\\n" {len(calls)}',
    ]
    return "\n".join(lines) + "\n"


def exec_timeout(count: int, connect_timeout: float, max_time: float, parallel: int = 8, margin: float = 10.0) -> float:
    """How long one exec of `count` probes may take before it is an infrastructure error."""
    waves = max(1, -(-count // parallel))
    return waves * max(max_time, connect_timeout) + margin


@dataclass(frozen=True)
class ProbeResult:
    index: int
    exit_code: int
    fields: dict[str, str]
    body: str
    stderr: str

    @property
    def status(self) -> int:
        try:
            return int(self.fields.get("http_code", "0"))
        except ValueError:
            return 0

    @property
    def local_address(self) -> str | None:
        """`ip:port` curl connected from (`[ip]:port` for IPv6); None when curl never connected."""
        ip, port = self.fields.get("local_ip", ""), self.fields.get("local_port", "")
        if not ip or not port.isdigit() or port == "0":
            return None
        return join_addr(ip, port)

    @property
    def seconds(self) -> float:
        try:
            return float(self.fields.get("time_total", "0"))
        except ValueError:
            return 0.0

    def evidence(self, command: str) -> Evidence:
        return Evidence(exit_code=self.exit_code, status=self.status, body=self.body[:BODY_LIMIT],
                        stderr=self.stderr.strip(), seconds=self.seconds, command=command)


def _unhex(text: str, what: str) -> str:
    if not _HEX.match(text) or len(text) % 2:
        raise ExecOutputError(f"exec output garbled: {what} is not hex")
    return bytes.fromhex(text).decode("utf-8", errors="replace")


def parse_output(stdout: str, nonce: str, count: int) -> list[ProbeResult]:
    """One ProbeResult per probe, in order; ExecOutputError when anything is missing or malformed."""
    results: dict[int, ProbeResult] = {}
    done = False
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        m = _DONE.match(line)
        if m and m["nonce"] == nonce:
            if int(m["count"]) != count:
                raise ExecOutputError(f"exec output garbled: done line says {m['count']} probes, {count} were sent")
            done = True
            continue
        m = _LINE.match(line)
        if not m or m["nonce"] != nonce:
            continue
        index = int(m["index"])
        if index >= count or index in results:
            raise ExecOutputError(f"exec output garbled: unexpected or repeated probe line {index}")
        fields: dict[str, str] = {}
        for item in m["fields"].split(" "):
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        missing = [k for k in REQUIRED_FIELDS if k not in fields]
        if missing:
            raise ExecOutputError(f"exec output garbled: probe {index} lacks {', '.join(missing)}")
        if not fields["rc"].isdigit():
            raise ExecOutputError(f"exec output garbled: probe {index} has no curl exit code (rc={fields['rc']})")
        results[index] = ProbeResult(index, int(fields["rc"]), fields, _unhex(fields["body"], f"probe {index} body"),
                                     _unhex(fields["err"], f"probe {index} stderr"))
    if not done:
        raise ExecOutputError(f"exec output truncated: no completion line ({len(results)} of {count} probe lines)")
    lost = [i for i in range(count) if i not in results]
    if lost:
        raise ExecOutputError(f"exec output truncated: no line for probe(s) {', '.join(map(str, lost))}")
    return [results[i] for i in range(count)]
