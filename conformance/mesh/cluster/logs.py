"""Proof on clusters: the sidecar's, waypoint's or ztunnel's own record of one probe, read from pod logs.

A reset or a 503 can come from a broken certificate, a dead proxy or a wrong address as well as from a
policy, so a denial counts only with the enforcing proxy's record of that very probe (DESIGN.md §2,
issue 9). What the proxies write, and how a record is tied to its probe:

- Envoy (sidecar, waypoint): the JSON access log configured in clusters/istio/*.yaml (meshConfig
  `accessLogFormat`). `details` (%RESPONSE_CODE_DETAILS%, HTTP RBAC) or `term`
  (%CONNECTION_TERMINATION_DETAILS%, network RBAC) read `rbac_access_denied_matched_policy[<id>]`, with
  istiod's id `ns[<ns>]-policy[<name>]-rule[<i>]` (pilot/pkg/security/authz/builder/builder.go) or
  `[none]` when ALLOW policies exist and none matched. A STRICT sidecar refusing plaintext writes the
  listener record istiod adds for `NR` (pilot/pkg/networking/core/accesslog.go `listenerAccessLogFilter`)
  with `details` = `filter_chain_not_found` (envoyproxy/envoy source/common/listener_manager/
  active_stream_listener_base.cc `newConnection`: NoRouteFound + FilterChainNotFound, then the
  listener's access logs).
  HTTP records carry the suite's probe header (`probe` = %REQ(x-authz-conformance-probe)%): exact.
  Connection records are found by the source address and port the proxy saw (`src`); when the client
  has a sidecar, that is the client sidecar's upstream socket, read from the client's own outbound
  record (`src` = curl's local address, `upstream_local` = %UPSTREAM_LOCAL_ADDRESS%).
- ztunnel: its access event (istio/ztunnel@1.30.3 src/proxy/metrics.rs `access_log!`, target `access`,
  message "connection complete", level error with `error=` on failure) with `src.addr` and `dst.addr`
  as socket addresses (ip:port), `dst.hbone_addr` for HBONE, `direction`. A policy denial's error is
  `connection closed due to policy rejection: explicitly denied by: <ns>/<name>` or `...: allow
  policies exist, but none allowed` (src/proxy.rs `Error::AuthorizationPolicyRejection`,
  `AuthorizationRejectionError`); STRICT is the DENY istiod names `istio_converted_static_strict`.
  A plaintext client (out of the mesh) reaches the destination ztunnel directly (inbound_passthrough.rs:
  `src.addr` is curl's own address and port): exact. An in-mesh client reaches it over HBONE
  (inbound.rs: `src` is the peer of the pooled HBONE connection, shared by every stream the source
  ztunnel multiplexes on it, proxy/pool.rs), so its records are keyed by the source pod's address and
  the destination: k probes sharing that key need exactly k rejection records, each written after its
  own probe's exec started (probes of one key may come from several execs: `Wanted.pooled`). Only lines
  with `direction="inbound"` are the destination's records (`ZtunnelRecord.direction`).

- An ingress gateway (issue 12): its own Envoy, whose record of a probe (the probe header, which it forwards
  with the request) says whether its own filters denied it. A 403/401 it only passed on (`details`
  `via_upstream`, no denial of its own) was decided by the proxy behind it, whose record of the same probe
  id is then the proof (`Wanted.onward`: the route's sidecar, or the service's waypoint). A destination
  ztunnel refusing the gateway's (or the waypoint's) HBONE connection sees the gateway pod's (waypoint's)
  address on a pooled connection: counted per round as for any pooled source.

Rules for every probe (issue 9): only lines whose kubelet timestamp (`timestamps=True`) is at or after
the probe's exec started; each line proves at most one probe, across rounds and steps (one
`RecordMatcher` per session); zero records or several is "unproven", with a note saying which.
Policy names are the cluster's (prefixed namespaces); `to_scenario` maps them back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from conformance.probe import (
    NO_ALLOW_MATCHED,
    PROXY_ALLOWED,
    Proof,
    envoy_denial_proof,
    proof_of_rbac,
)

ZTUNNEL_REJECTION = "connection closed due to policy rejection: "
ZTUNNEL_EXPLICIT = "explicitly denied by: "
ZTUNNEL_NONE_ALLOWED = "allow policies exist, but none allowed"
# What the source ztunnel records when the destination refused the HBONE CONNECT by policy: inbound.rs answers
# an `assert_rbac` failure with 401, and h2/client.rs turns a non-200 answer into `Error::HttpStatus`
# ("http status: {0}", src/proxy.rs).
HBONE_REFUSED = "http status: 401 Unauthorized"
_KV = re.compile(r'(?P<key>[A-Za-z_][\w.]*)=(?P<value>"(?:[^"\\]|\\.)*"|\S*)')
# The kubelet's timestamp (RFC 3339 with up to nanoseconds) and one space, in front of every line read
# with timestamps=True (kubelet pkg/kubelet/kuberuntime/logs: RFC3339Nano).
_K8S_TS = re.compile(r"^(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:\d\d) ")


def strip_k8s_timestamp(line: str) -> str:
    """The line without the kubelet's timestamp (unchanged when it has none)."""
    m = _K8S_TS.match(line)
    return line[m.end():] if m else line


def k8s_timestamp(line: str) -> float | None:
    """The kubelet's timestamp of a line, as seconds since the epoch (None when it has none)."""
    m = _K8S_TS.match(line)
    if not m:
        return None
    tz = "+00:00" if m["tz"] == "Z" else m["tz"]
    base = datetime.fromisoformat(m["date"] + tz).astimezone(UTC)
    frac = m["frac"] or ""
    return base.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


@dataclass(frozen=True)
class LogLine:
    """One line of one proxy's log. `raw` (kubelet nanosecond timestamp + text) is its identity."""

    source: str  # the log it came from: "<namespace>/<pod>"
    time: float
    text: str
    raw: str


def split_log(source: str, text: str) -> list[LogLine]:
    """A log read with timestamps=True, line by line; a line without a timestamp cannot be placed in
    time, so it can never prove a probe and is dropped."""
    out = []
    for raw in text.splitlines():
        when = k8s_timestamp(raw)
        if when is not None:
            out.append(LogLine(source, when, strip_k8s_timestamp(raw).rstrip("\r"), raw))
    return out


# -- Envoy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvoyRecord:
    fields: dict[str, Any]
    line: str

    def get(self, key: str) -> str:
        value = self.fields.get(key)
        return "" if value is None or value == "-" else str(value)


def parse_envoy_line(line: str) -> EnvoyRecord | None:
    """One JSON access-log line (anything else a proxy prints is not a record: None)."""
    text = strip_k8s_timestamp(line.strip())
    if not text.startswith("{"):
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    return EnvoyRecord(fields, text) if isinstance(fields, dict) else None


def envoy_proof(record: EnvoyRecord, *, proxy: str, layer: str, serves: str | None,
                to_scenario: Callable[[str], str]) -> Proof:
    """What an Envoy record says: the JWT filter's or ext_authz's denial, a DENY, no ALLOW matched, a STRICT
    rejection (probe.envoy_denial_proof, the local mesh's reading too), or allowed."""
    denial = envoy_denial_proof(record.fields, proxy=proxy, layer=layer, serves=serves, line=record.line,
                                to_scenario=to_scenario)
    return denial if denial is not None else Proof(proxy, PROXY_ALLOWED, None, None, record.line, layer, serves)


# -- ztunnel ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZtunnelRecord:
    level: str
    message: str
    fields: dict[str, str]
    line: str

    @property
    def error(self) -> str:
        return self.fields.get("error", "")

    @property
    def rejection(self) -> str | None:
        """The policy rejection reason (`explicitly denied by: ns/name`, ...), or None."""
        error = self.error
        return error[len(ZTUNNEL_REJECTION):].strip() if error.startswith(ZTUNNEL_REJECTION) else None

    @property
    def source(self) -> str:
        return self.fields.get("src.addr", "")

    @property
    def destination(self) -> str:
        """The destination workload address:port (the HBONE target when there is one)."""
        return self.fields.get("dst.hbone_addr") or self.fields.get("dst.addr", "")

    @property
    def complete(self) -> bool:
        """The record written when the connection ended (not "connection opened")."""
        return self.message == "connection complete"

    @property
    def direction(self) -> str:
        """`inbound` (the destination's ztunnel) or `outbound` (the source's); "" when the line has none.

        ztunnel sets it on every access event it writes (istio/ztunnel@1.30.3 and @1.29.6
        src/proxy/metrics.rs: `ConnectionResult::record_internal`'s "connection complete", the "connection
        opened" event and `log_early_deny` all write `direction = if reporter == Reporter::source {"outbound"}
        else {"inbound"}`; inbound.rs and inbound_passthrough.rs report as `Reporter::destination`), so a line
        without it is no record of a connection ztunnel accepted, and never counts as an inbound decision.
        """
        return self.fields.get("direction", "")


def parse_ztunnel_line(line: str) -> ZtunnelRecord | None:
    """ztunnel's plain format: `<time>\\t<level>\\t<target>\\t<message>\\t<k=v ...>` (src/telemetry.rs)."""
    text = strip_k8s_timestamp(line.rstrip("\n"))
    parts = text.split("\t")
    if len(parts) < 5 or parts[2] != "access":
        if text.startswith("{"):
            return _ztunnel_json(text)
        return None
    fields = {}
    for m in _KV.finditer("\t".join(parts[4:])):
        value = m["value"]
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        fields[m["key"]] = value
    return ZtunnelRecord(parts[1].strip(), parts[3].strip(), fields, text)


def _ztunnel_json(text: str) -> ZtunnelRecord | None:
    """ztunnel with LOG_FORMAT=json writes the same fields as one JSON object per line."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("scope", data.get("target")) != "access":
        return None
    fields = {k: str(v) for k, v in data.items()}
    return ZtunnelRecord(str(data.get("level", "")), str(data.get("message", "")), fields, text)


def ztunnel_proof(record: ZtunnelRecord, *, proxy: str, layer: str, serves: str | None,
                  to_scenario: Callable[[str], str]) -> Proof | None:
    """What a ztunnel record says; None when the connection failed for a reason that is no policy's."""
    reason = record.rejection
    if reason is None:
        if record.error:
            return None
        return Proof(proxy, PROXY_ALLOWED, None, None, record.line, layer, serves)
    if reason.startswith(ZTUNNEL_EXPLICIT):
        # istiod's own DENYs for PeerAuthentication (static strict, converted_peer_authentication_*) are STRICT
        # rejections, any other name a DENY policy: probe.proof_of_rbac decides, as for the local mesh
        return proof_of_rbac(reason[len(ZTUNNEL_EXPLICIT):].strip(), proxy=proxy, layer=layer, serves=serves,
                             line=record.line, to_scenario=to_scenario)
    if reason == ZTUNNEL_NONE_ALLOWED:
        return Proof(proxy, NO_ALLOW_MATCHED, None, None, record.line, layer, serves)
    return None  # "workload not found", "workload mismatch": the proxy's state, not a policy


def completed(line: str, direction: Literal["inbound", "outbound"]) -> ZtunnelRecord | None:
    """The line as ztunnel's record of a finished connection in that direction, else None."""
    rec = parse_ztunnel_line(line)
    return rec if rec is not None and rec.complete and rec.direction == direction else None


def host_of(addr: str) -> str:
    """`10.0.0.1:80` -> `10.0.0.1`, `[fd00::1]:80` -> `fd00::1`."""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def join_addr(host: str, port: str | int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- matching records to probes --------------------------------------------------------------------
ProxyLog = Literal["envoy", "ztunnel"]


@dataclass(frozen=True)
class Onward:
    """The Envoy behind an ingress gateway (a route's sidecar, or the service's waypoint) whose record of the same
    probe id proves a denial the gateway only passed on."""

    log: str  # "<namespace>/<pod>" or "waypoint:<ns>/<name>"
    proxy: str
    layer: str
    serves: str
    local_host: str | None = None  # a sidecar: its inbound record's local address is on its pod


@dataclass(frozen=True)
class Wanted:
    """The record one probe must have left in one proxy's log, and how to recognise it.

    Exactly one way of keying applies: `probe_id` (an Envoy HTTP record carrying the probe header), `src`
    (the exact source address:port the proxy saw; with `via`, first resolved through the client
    sidecar's own record), or `pooled` (ztunnel behind a pooled HBONE connection: any of these source
    hosts, counted, see the module docstring).
    """

    key: int  # the probe's position in its round
    log: str  # "<namespace>/<pod>" of the enforcing proxy's log
    format: ProxyLog
    after: float  # wall clock when the probe's exec started; earlier lines never count
    proxy: str
    layer: str
    serves: str | None
    probe_id: str | None = None
    src: str | None = None
    via: str | None = None  # "<namespace>/<pod>" of the client sidecar whose record maps src -> upstream_local
    pooled: frozenset[str] = frozenset()
    dst: str | None = None  # the destination pod's address:port (ztunnel: the record's; Envoy: the upstream of `via`)
    local_host: str | None = None  # Envoy: the record's local address must be on this host (inbound only)
    # pooled: the source node's ztunnel log, whose outbound record of curl's connection (src.addr = `src`)
    # must say the destination refused the HBONE CONNECT (HBONE_REFUSED)
    link: str | None = None
    # probe_id at an ingress gateway: the proxy behind it, whose record proves what the gateway passed on
    onward: Onward | None = None

    @property
    def logs(self) -> tuple[str, ...]:
        """Every log this probe's proof is read from."""
        onward = self.onward.log if self.onward is not None else None
        return tuple(log for log in (self.log, self.via, self.link, onward) if log is not None)

    @property
    def group(self) -> tuple[str, frozenset[str], str | None]:
        return (self.log, self.pooled, self.dst)


@dataclass(frozen=True)
class Match:
    """A probe's record (`proof`), or why there is none (`note`)."""

    proof: Proof | None
    note: str | None = None


@dataclass
class RecordMatcher:
    """Ties probes to their records, for a whole session: a line proves at most one probe, ever."""

    to_scenario: Callable[[str], str]
    used: set[str] = field(default_factory=set)

    def match(self, wanted: Sequence[Wanted], logs: Mapping[str, Sequence[LogLine]],
              final: bool) -> dict[int, Match]:
        """Matches for the probes whose records are all there; with `final`, a Match for every probe.

        Not final: a probe with no record yet is left out (its record may still be on its way); several
        records for it, or a shared key, is already final.
        """
        out: dict[int, Match] = {}
        exact = [w for w in wanted if not w.pooled]
        keys: dict[tuple[str, str | None, str | None, str | None], list[Wanted]] = {}
        for w in exact:
            keys.setdefault((w.log, w.probe_id, w.src, w.dst), []).append(w)
        for shared in keys.values():
            if len(shared) > 1:
                for w in shared:
                    out[w.key] = Match(None, f"{len(shared)} probes of this round share the key "
                                             f"{w.probe_id or w.src} at {w.proxy}: none can be told apart")
        for w in exact:
            if w.key in out:
                continue
            found = self._exact(w, logs, final)
            if found is not None or final:
                out[w.key] = found or Match(None, f"no record of this probe at {w.proxy}" +
                                            (f" (source {w.src})" if w.src else ""))
        groups: dict[tuple[str, frozenset[str], str | None], list[Wanted]] = {}
        for w in wanted:
            if w.pooled:
                groups.setdefault(w.group, []).append(w)
        for members in groups.values():
            out.update(self._pooled(members, logs, final))
        return out

    def _candidates(self, w: Wanted, logs: Mapping[str, Sequence[LogLine]], log: str | None = None
                    ) -> Iterable[LogLine]:
        return (ln for ln in logs.get(log or w.log, ()) if ln.time >= w.after and ln.raw not in self.used)

    def _resolve_src(self, w: Wanted, logs: Mapping[str, Sequence[LogLine]]) -> tuple[str | None, str | None]:
        """The source address the enforcing sidecar saw: curl's, or the client sidecar's upstream socket."""
        if w.via is None:
            return w.src, None
        links = []
        for ln in self._candidates(w, logs, w.via):
            rec = parse_envoy_line(ln.text)
            if rec is None or not rec.get("upstream_local"):
                continue
            # curl's connection as the client sidecar accepted it (TCP or HTTP), forwarded to this destination
            # (curl may use one local port towards several destinations at once: the 4-tuple is what is unique)
            if rec.get("src") == w.src and (w.dst is None or rec.get("upstream") == w.dst):
                links.append(rec.get("upstream_local"))
        if len(set(links)) > 1:
            return None, f"{len(links)} records of the client sidecar claim this probe's connection"
        return (links[0] if links else None), None

    def _exact(self, w: Wanted, logs: Mapping[str, Sequence[LogLine]], final: bool = False) -> Match | None:
        src, problem = (w.src, None) if w.probe_id else self._resolve_src(w, logs)
        if problem:
            return Match(None, problem)
        if src is None and w.probe_id is None:
            return None
        hits: list[tuple[LogLine, Proof | str]] = []
        for ln in self._candidates(w, logs):
            said = self._record(w, ln, src)
            if said is not None:
                hits.append((ln, said))
        if not hits:
            return None
        if len(hits) == 1 and w.onward is not None and isinstance(hits[0][1], Proof) and not hits[0][1].denied:
            # the gateway passed the answer on: the proxy behind it decided (the module docstring)
            behind = self._behind(w, w.onward, logs, final, hits[0][1])
            if behind is not None:
                self.used.add(hits[0][0].raw)
            return behind
        for ln, _ in hits:
            self.used.add(ln.raw)
        if len(hits) > 1:
            return Match(None, f"{len(hits)} records at {w.proxy} claim this probe: which one decided is unknown")
        said = hits[0][1]
        if isinstance(said, str):
            return Match(None, f"the record of this probe at {w.proxy} says {said!r}, which is no policy decision")
        return Match(said)

    def _behind(self, w: Wanted, onward: Onward, logs: Mapping[str, Sequence[LogLine]], final: bool,
                at_gateway: Proof) -> Match | None:
        """The record of the proxy behind a gateway of the probe the gateway passed on: its Proof (None while it may
        still be on its way; with `final`, a note saying it never came)."""
        hits: list[tuple[LogLine, Proof]] = []
        for ln in self._candidates(w, logs, onward.log):
            rec = parse_envoy_line(ln.text)
            if rec is None or rec.get("probe") != w.probe_id:
                continue
            if onward.local_host is not None and host_of(rec.get("local")) != onward.local_host:
                continue
            hits.append((ln, envoy_proof(rec, proxy=onward.proxy, layer=onward.layer, serves=onward.serves,
                                         to_scenario=self.to_scenario)))
        if not hits:
            if not final:
                return None
            return Match(None, f"{w.proxy} did not deny this probe itself (its record: {at_gateway.line[:200]}) and "
                               f"{onward.proxy} has no record of it")
        for ln, _ in hits:
            self.used.add(ln.raw)
        if len(hits) > 1:
            return Match(None, f"{len(hits)} records at {onward.proxy} claim this probe: which one decided is unknown")
        return Match(hits[0][1])

    def _record(self, w: Wanted, ln: LogLine, src: str | None) -> Proof | str | None:
        """This probe's record as a Proof; its error when it failed for a reason that is no policy's; None
        when the line is not this probe's record."""
        if w.format == "envoy":
            rec = parse_envoy_line(ln.text)
            if rec is None:
                return None
            if w.local_host is not None and host_of(rec.get("local")) != w.local_host:
                return None  # another direction of the same pod (its own outbound calls)
            if w.probe_id is not None:
                if rec.get("probe") != w.probe_id:
                    return None
            elif rec.get("probe") or rec.get("src") != src:
                return None
            return envoy_proof(rec, proxy=w.proxy, layer=w.layer, serves=w.serves, to_scenario=self.to_scenario)
        zrec = completed(ln.text, "inbound")
        if zrec is None:
            return None
        if zrec.source != src or (w.dst is not None and zrec.destination != w.dst):
            return None
        proof = ztunnel_proof(zrec, proxy=w.proxy, layer=w.layer, serves=w.serves, to_scenario=self.to_scenario)
        return proof if proof is not None else (zrec.error or zrec.line)

    def _outbound(self, w: Wanted, logs: Mapping[str, Sequence[LogLine]]) -> tuple[list[LogLine], str | None]:
        """The source ztunnel's record(s) of this probe's own connection, and what is wrong with them
        (None: exactly one, saying the destination refused it; no lines: not there yet)."""
        hits: list[tuple[LogLine, ZtunnelRecord]] = []
        for ln in self._candidates(w, logs, w.link):
            rec = completed(ln.text, "outbound")
            if rec is None:
                continue
            if rec.source == w.src and rec.destination == w.dst:
                hits.append((ln, rec))
        found = [ln for ln, _ in hits]
        if len(hits) > 1:
            return found, f"{len(hits)} records of this probe's connection ({w.src}) at the source ztunnel"
        if hits and hits[0][1].error != HBONE_REFUSED:
            said = hits[0][1].error or "it completed"
            return found, (f"the source ztunnel's record of this probe's connection ({w.src}) says {said!r}, "
                           "not that the destination refused it by policy")
        return found, None

    def _pooled(self, members: Sequence[Wanted], logs: Mapping[str, Sequence[LogLine]], final: bool
                ) -> dict[int, Match]:
        out: dict[int, Match] = {}
        linked: list[LogLine] = []
        refused = []
        for w in members:
            if w.link is None:
                refused.append(w)
                continue
            found, wrong = self._outbound(w, logs)
            if not found and not final:
                return {}  # this probe's connection record may still be on its way
            linked += found
            if wrong or not found:
                out[w.key] = Match(None, wrong or f"no record of this probe's connection ({w.src}) at the source "
                                                  "ztunnel")
            else:
                refused.append(w)
        result = self._counted(refused, logs, final) if refused else {}
        if refused and not result:
            return {}
        self.used.update(ln.raw for ln in linked)
        return {**out, **result}

    def _counted(self, members: Sequence[Wanted], logs: Mapping[str, Sequence[LogLine]], final: bool
                 ) -> dict[int, Match]:
        """Rejections of the destination's ztunnel from the pooled sources, one per probe of the round, each
        written at or after its own probe's exec started (probes of one key may come from several execs)."""
        first = members[0]
        order = sorted(members, key=lambda w: w.after)
        hits: list[tuple[LogLine, Proof]] = []
        for ln in logs.get(first.log, ()):
            if ln.time < order[0].after or ln.raw in self.used:
                continue
            rec = completed(ln.text, "inbound")
            if rec is None or rec.rejection is None:
                continue
            if host_of(rec.source) not in first.pooled or rec.destination != first.dst:
                continue
            proof = ztunnel_proof(rec, proxy=first.proxy, layer=first.layer, serves=first.serves,
                                  to_scenario=self.to_scenario)
            if proof is not None:
                hits.append((ln, proof))
        hits.sort(key=lambda h: h[0].time)
        # As many records as probes, both in time order: the k-th record can be the k-th probe's only if it was
        # written after that probe's exec started (and if this pairing fails, every pairing does).
        early = sum(1 for w, (ln, _) in zip(order, hits, strict=True) if ln.time < w.after) \
            if len(hits) == len(members) else 0
        sources = ", ".join(sorted(first.pooled))
        if (len(hits) < len(members) or early) and not final:
            return {}  # a later probe's record may still be on its way
        for ln, _ in hits:
            self.used.add(ln.raw)
        if len(hits) != len(members) or early:
            note = (f"{len(hits)} policy rejection(s) at {first.proxy} from {sources} to {first.dst} for "
                    f"{len(members)} denied probe(s) of this round sharing that connection key")
            if early:
                note += f", {early} of them written before the exec of the probe it would prove started"
            return {w.key: Match(None, note) for w in members}
        said = {(p.kind, p.policy) for _, p in hits}
        if len(said) > 1:
            what = "; ".join(sorted(f"{k} {p}" if p else k for k, p in said))
            note = (f"{len(hits)} rejections at {first.proxy} from {sources} to {first.dst} disagree ({what}): "
                    "which probe got which is unknown")
            return {w.key: Match(None, note) for w in members}
        return {w.key: Match(proof) for w, (_, proof) in zip(order, hits, strict=True)}
