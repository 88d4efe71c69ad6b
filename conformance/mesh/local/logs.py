"""Reading the proxies' access logs back into proofs: the enforcing proxy's own record of a decision.

A reset or a 503 can come from a broken certificate or a dead proxy as well as from a policy, so a
denial counts only with the record of the proxy that enforced it (DESIGN.md §2). Envoy writes it in
`%RESPONSE_CODE_DETAILS%` (HTTP RBAC, the JWT filter's `jwt_authn_access_denied{...}`, ext_authz's
`ext_authz_denied` / `ext_authz_error`) or `%CONNECTION_TERMINATION_DETAILS%` (network RBAC) as
`rbac_access_denied_matched_policy[<policy id>]`, where istiod's policy id is
`ns[<ns>]-policy[<name>]-rule[<index>]` (pilot/pkg/security/authz/builder: `policyName`) and `[none]`
means an ALLOW policy exists but none matched. A STRICT rejection of plaintext is
`flags=NR details=filter_chain_not_found` on the listener (no chain for `raw_buffer`).

Records are JSON lines (config.LOG_FORMAT); `AccessLog` reads only what was appended since the last
read, so a session can follow a log across many probe batches without re-parsing it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.probe import (
    EXT_AUTHZ_POLICY_KEY,
    PROXY_ALLOWED,
    Proof,
    envoy_denial_proof,
    ext_authz_result,
    jwt_denial,
    parse_policy_id,
    rbac_denial,
)


@dataclass(frozen=True)
class LogRecord:
    """One access-log line: the parsed fields and the raw text (kept verbatim for reports)."""

    fields: Mapping[str, Any]
    line: str

    def get(self, key: str) -> str:
        value = self.fields.get(key)
        return "" if value is None else str(value)

    @property
    def decision(self) -> str | None:
        """The RBAC denial text of this record (`rbac_access_denied_matched_policy[...]`), if any."""
        for key in ("details", "term"):
            value = self.get(key)
            if rbac_denial(value) is not None:
                return value
        return None

    @property
    def jwt_rejection(self) -> str | None:
        """The JWT filter's message when it rejected the token (`jwt_authn_access_denied{...}`), else None."""
        return jwt_denial(self.get("details"))

    @property
    def ext_authz(self) -> str | None:
        """EXT_AUTHZ_DENIED or EXT_AUTHZ_ERROR when the ext_authz filter stopped the request, else None."""
        return ext_authz_result(self.get("details")) or ext_authz_result(self.get("term"))

    @property
    def custom_policy(self) -> str:
        """The CUSTOM rule the shadow RBAC matched (what enabled the ext_authz filter), or ""."""
        for key in ("http_rbac", "network_rbac"):
            meta = self.fields.get(key)
            if isinstance(meta, Mapping) and meta.get(EXT_AUTHZ_POLICY_KEY):
                return str(meta[EXT_AUTHZ_POLICY_KEY])
        return ""

    @property
    def strict_rejection(self) -> bool:
        return "NR" in self.get("flags").split(",") and self.get("details") == "filter_chain_not_found"

    @property
    def is_request(self) -> bool:
        """An HTTP stream record of the app's request itself (not an HBONE CONNECT carrying it)."""
        return self.get("type") == "DownstreamEnd" and self.get("method") not in ("", "CONNECT")

    @property
    def denies(self) -> bool:
        return (self.decision is not None or self.strict_rejection or self.jwt_rejection is not None
                or self.ext_authz is not None)

    @property
    def event(self) -> tuple[str, str, str, str]:
        """What this record is a record of (a connection, or a request on it): two loggers of one proxy
        (a listener's and its filter's) write two records of one event."""
        return (self.get("start"), self.get("direct"), self.get("local"), self.get("method"))

    @property
    def start(self) -> float | None:
        """When the proxy saw this connection or request start (`%START_TIME(%s.%6f)%`, epoch seconds)."""
        try:
            return float(self.get("start"))
        except ValueError:
            return None

    @property
    def end(self) -> float | None:
        """When it ended: start plus `%DURATION%` (whole milliseconds)."""
        start = self.start
        try:
            return None if start is None else start + float(self.get("duration")) / 1000
        except ValueError:
            return None


# Fields a probe's records are looked up by (mesh.py _records_of): the suite's probe id, curl's own
# address as the enforcing proxy sees it, and a source sidecar's upstream address (its other connections on
# that port). Indexed as records arrive, so that finding the records of a batch of hundreds of probes costs a
# dictionary lookup each, not a scan.
INDEXED_FIELDS = ("probe", "direct", "client", "client_state", "upstream_local")


class AccessLog:
    """An Envoy access-log file followed incrementally; complete lines only (a flush may end mid-line)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[LogRecord] = []
        self.index: dict[tuple[str, str], list[int]] = {}  # (field, value) -> record positions, in order
        self._offset = 0
        self._partial = b""

    def lookup(self, field: str, value: str | None, since: int = 0) -> list[int]:
        """Positions (≥ `since`) of the records whose `field` is `value`, oldest first."""
        if not value:
            return []
        return [i for i in self.index.get((field, value), ()) if i >= since]

    def refresh(self) -> int:
        """Read what was appended; returns the number of new records."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        before = len(self.records)
        for raw in lines:
            text = raw.decode(errors="replace").strip()
            if not text:
                continue
            try:
                fields = json.loads(text)
            except ValueError:
                fields = {"unparsed": text}
            record = LogRecord(fields, text)
            position = len(self.records)
            self.records.append(record)
            for name in INDEXED_FIELDS:
                value = record.get(name)
                if value:
                    self.index.setdefault((name, value), []).append(position)
        return len(self.records) - before



def proof_from(record: LogRecord, layer: str, serves: str) -> Proof:
    """The proof a record of the `layer` proxy of `serves` gives: a denial of a kind, or an allow.

    A JWT rejection is the JWT filter's `jwt_authn_access_denied{<message>}` (the message in `detail`); an
    ext_authz denial or error (`ext_authz_denied` / `ext_authz_error`) names the CUSTOM policy whose rule the
    shadow RBAC matched (dynamic metadata `istio_ext_authz_shadow_effective_policy_id`, logged in
    `http_rbac`). A STRICT rejection of plaintext at a sidecar is the listener finding no filter chain
    (`flags=NR details=filter_chain_not_found`, research/envoy-local-mesh.md); at ztunnel it is istiod's
    static strict DENY (probe.proof_of_rbac). For an allowed request the deciding ALLOW policy is the
    RBAC filters' dynamic metadata (`..._effective_policy_id` with engine result `allowed`).
    """
    proxy = f"{layer}:{serves}"
    denial = envoy_denial_proof(record.fields, proxy=proxy, layer=layer, serves=serves, line=record.line)
    if denial is not None:
        return denial
    policy, rule = _allowing_policy(record)
    return Proof(proxy, PROXY_ALLOWED, policy, rule, record.line, layer, serves)


def names_allowing_policy(record: LogRecord) -> bool:
    """Whether an allowed record names the ALLOW policy that matched (an allow with no policy, or with DENY
    policies only, names none)."""
    return _allowing_policy(record)[0] is not None


def _allowing_policy(record: LogRecord) -> tuple[str | None, int | None]:
    for key in ("http_rbac", "network_rbac"):
        meta = record.fields.get(key)
        if not isinstance(meta, Mapping):
            continue
        for name, value in meta.items():
            if not name.endswith("effective_policy_id") or "shadow" in name:
                continue
            result = meta.get(name[: -len("effective_policy_id")] + "engine_result")
            if result in (None, "allowed"):
                return parse_policy_id(str(value))
    return None, None


def deciding_record(records: Iterable[LogRecord]) -> tuple[LogRecord | None, str | None]:
    """Of the records one probe left at one proxy, the one that decided, or why there is none.

    A probe leaves one connection record at a proxy, plus one HTTP stream record where the proxy speaks
    HTTP (the request itself, or the HBONE CONNECT carrying it). The deciding one is the denial if there
    is one, else the request's stream record, else the CONNECT stream, else the connection record. Two
    denials, or two records of the same request, cannot both be this probe's: that is no proof at all
    (the second element says so), never a guess between them.
    """
    records = list(records)
    # A connection's listener log and its tcp_proxy's log (type NotSet / TcpConnectionEnd) are two
    # records of one event: same start, same peer, same local address. They count once.
    denials = list({r.event: r for r in records if r.denies}.values())
    if len(denials) > 1:
        return None, f"{len(denials)} denial records claim this probe"
    if denials:
        return denials[0], None
    for test in (lambda r: r.is_request, lambda r: r.get("type") == "DownstreamEnd"):
        found = [r for r in records if test(r)]
        if len(found) > 1:
            return None, f"{len(found)} stream records claim this probe"
        if found:
            return found[0], None
    if len(records) > 1:
        return None, f"{len(records)} connection records claim this probe"
    return (records[0] if records else None), None
