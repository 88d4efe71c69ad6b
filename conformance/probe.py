"""The probe's evidence and the outcome classifier, shared by every target.

A target runs curl (locally, or by exec in a pod) and hands back curl's exit code, the `-w` fields and
the first bytes of the body; `classify` turns that into an outcome (DESIGN.md §2). Proof that a denial
was a policy denial comes separately, from the enforcing proxy's own log (`Proof`), because a reset or
a 503 can also come from a broken certificate, a dead proxy or a wrong address: the `|| echo BLOCKED`
mistake this suite exists to avoid.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from conformance.model import (
    ALLOWED,
    DENIED_AUTHN,
    DENIED_CUSTOM,
    DENIED_L4,
    DENIED_L7,
    DENIED_UPSTREAM,
    ERROR,
    TIMEOUT,
)

# curl exit codes (https://curl.se/libcurl/c/libcurl-errors.html)
CURL_OK = 0
CURL_COULDNT_RESOLVE_HOST = 6
CURL_COULDNT_CONNECT = 7
CURL_OPERATION_TIMEDOUT = 28
CURL_GOT_NOTHING = 52  # "Empty reply from server": the peer closed without a response
CURL_RECV_ERROR = 56  # "Recv failure: Connection reset by peer"

RBAC_DENIED_BODY = "RBAC: access denied"  # Envoy rbac_filter.cc sendLocalReply(Forbidden, ...)
# Envoy's JWT filter (jwt_authn filter.cc onComplete) answers with its verification status as text/plain: 401 with
# "Jwt is expired", "Jwt verification fails", "Jwt issuer is not configured", "Jwks doesn't have key ..." (every
# jwt_verify_lib status but the audience one starts with "Jwt" or "Jwks"), and 403 for a wrong audience.
JWT_AUDIENCE_DENIED_BODY = "Audiences in Jwt are not allowed"
# Istio's samples/extauthz server (cmd/extauthz/main.go denyBody), which `kind: ext-authz` workloads behave as.
EXT_AUTHZ_DENIED_BODY = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"

# What an Envoy access log says when its RBAC filter denied (%RESPONSE_CODE_DETAILS% for HTTP,
# %CONNECTION_TERMINATION_DETAILS% for network RBAC), and how istiod names a rule in Envoy's config
# (builder.go): read the same way by the local mesh and the cluster targets.
RBAC_DENIED = re.compile(r"rbac_access_denied_matched_policy\[(.*)\]")
# A CUSTOM policy's rule as istiod names it in the shadow RBAC before its ext_authz filter (builder.go policyName
# with IsCustomBuilder): `istio-ext-authz-<provider>-ns[..]-policy[..]-rule[i]` from 1.30, `istio-ext-authz-ns[..]..`
# before; `-deny-due-to-bad-CUSTOM-action` appended when the provider is unusable and istiod made it an RBAC DENY.
_POLICY_ID = re.compile(r"^(?:istio-ext-authz-(?:(?P<provider>.*?)-)?)?ns\[(?P<ns>[^\]]*)\]-policy\[(?P<name>[^\]]*)\]"
                        r"-rule\[(?P<rule>\d+)\](?:-deny-due-to-bad-CUSTOM-action)?$")
# Envoy's JWT filter (jwt_authn filter.cc onComplete, generateRcDetails): `jwt_authn_access_denied{<the verification
# status message, spaces and other whitespace as _>}`.
JWT_DENIED = re.compile(r"^jwt_authn_access_denied\{(.*)\}$")
# Envoy's ext_authz filter (filters/common/ext_authz/ext_authz.h ResponseCodeDetails): the server said no, or the
# check failed (unreachable, timeout, a 5xx answer) and failure_mode_allow is off.
EXT_AUTHZ_DENIED_DETAILS = "ext_authz_denied"
EXT_AUTHZ_ERROR_DETAILS = "ext_authz_error"


def rbac_denial(text: str) -> str | None:
    """The policy id inside `rbac_access_denied_matched_policy[...]` (`none`: no ALLOW matched), or None."""
    m = RBAC_DENIED.search(text)
    return m.group(1) if m else None


def jwt_denial(details: str) -> str | None:
    """The JWT filter's message in `jwt_authn_access_denied{Jwt_is_expired}` ("Jwt is expired"), or None.

    Envoy writes the message with every space as `_` (StringUtil::replaceAllEmptySpace); the messages of
    jwt_verify_lib's statuses have no underscores of their own, so turning them back is exact."""
    m = JWT_DENIED.match(details.strip())
    return m.group(1).replace("_", " ") if m else None


def ext_authz_result(details: str) -> str | None:
    """`ext_authz_denied` or `ext_authz_error` as the proof kind it is (EXT_AUTHZ_DENIED / EXT_AUTHZ_ERROR)."""
    return {EXT_AUTHZ_DENIED_DETAILS: EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR_DETAILS: EXT_AUTHZ_ERROR}.get(details.strip())


def parse_policy_id(policy_id: str) -> tuple[str | None, int | None]:
    """istiod's `ns[<ns>]-policy[<name>]-rule[<i>]` -> ("ns/name", i); `none` -> (None, None).

    A CUSTOM policy's rule names (`istio-ext-authz-[<provider>-]ns[..]-policy[..]-rule[i]`, with
    `-deny-due-to-bad-CUSTOM-action` when istiod turned it into an RBAC DENY) name that CUSTOM policy."""
    if policy_id in ("none", ""):
        return None, None
    m = _POLICY_ID.match(policy_id)
    if m:
        return f"{m['ns']}/{m['name']}", int(m["rule"])
    return policy_id, None


@dataclass(frozen=True)
class Evidence:
    """What one curl run observed, kept raw for reports and repro."""

    exit_code: int
    status: int  # %{http_code}; 0 when no response
    body: str  # the first bytes of the body
    stderr: str = ""
    seconds: float = 0.0
    command: str = ""


# What decided, as the enforcing proxy recorded it (a proof's `kind`). The engine's reasons map onto
# them one to one (verdicts.EXPECTED_KIND), so a denial is compared by kind, not only by policy: a STRICT
# rejection (`filter_chain_not_found`) and "no ALLOW policy matched" (`rbac_access_denied_matched_policy
# [none]`) are different facts, and a broken listener must never pass as a policy denial.
DENY_POLICY = "deny-policy"  # a named DENY policy matched: rbac_access_denied_matched_policy[ns[..]-policy[..]..]
NO_ALLOW_MATCHED = "no-allow-matched"  # ALLOW policies exist, none matched: rbac_access_denied_matched_policy[none]
STRICT_MTLS = "strict-mtls"  # PeerAuthentication STRICT refused plaintext (no filter chain / static strict DENY)
PROXY_ALLOWED = "allowed"  # the proxy let it through (naming the ALLOW policy when one decided)
# JWT and CUSTOM (issue 11). Envoy's %RESPONSE_CODE_DETAILS% for each: the JWT filter's
# `jwt_authn_access_denied{<message, spaces as _>}` (envoy jwt_authn filter.cc generateRcDetails), and the
# ext_authz filter's `ext_authz_denied` / `ext_authz_error` (envoy common/ext_authz/ext_authz.h).
JWT_REJECTED = "jwt-rejected"  # RequestAuthentication's JWT filter refused the token (Proof.detail: its message)
EXT_AUTHZ_DENIED = "ext-authz-denied"  # the CUSTOM policy's provider said no (Proof.policy: the CUSTOM policy)
EXT_AUTHZ_ERROR = "ext-authz-error"  # the provider could not be asked or failed (5xx, unreachable, timeout)
KIND_WORDS = {
    DENY_POLICY: "a DENY policy matched",
    NO_ALLOW_MATCHED: "no ALLOW policy matched",
    STRICT_MTLS: "STRICT mTLS rejected plaintext",
    PROXY_ALLOWED: "allowed",
    JWT_REJECTED: "the JWT filter rejected the token",
    EXT_AUTHZ_DENIED: "the external authorizer denied it",
    EXT_AUTHZ_ERROR: "the external authorizer could not decide (error)",
}

# istiod's synthetic DENY sent to ztunnel for a STRICT PeerAuthentication (istio/istio@1.30.3
# pilot/pkg/serviceregistry/ambient/authorization.go `staticStrictPolicyName`): a record naming it is a
# STRICT rejection.
STATIC_STRICT_POLICY = "istio_converted_static_strict"
# ... and the DENY it sends for a workload PeerAuthentication whose portLevelMtls differs from the workload's
# mode (`converted_peer_authentication_<name>`, model/authentication.go GetAmbientPolicyConfigName): a record
# naming one is a STRICT rejection on that port.
CONVERTED_PEER_AUTHENTICATION_PREFIX = "converted_peer_authentication_"

# The suite's own probe id, a request header no scenario may set (validation refuses it): the key to a
# probe's records at HTTP-aware proxies. A scenario's own x-request-id is only a header like any other.
PROBE_HEADER = "x-authz-conformance-probe"
# The local mesh's own header carrying curl's address through HBONE to the proof lookup: a scenario that
# set it could plant a record keyed to another probe, so it is reserved as well.
CLIENT_HEADER = "x-conformance-client"
RESERVED_HEADERS = (PROBE_HEADER, CLIENT_HEADER)


@dataclass(frozen=True)
class Proof:
    """The enforcing proxy's own record of a decision (one access-log line or ztunnel log line).

    `kind` says what decided (DENY_POLICY, NO_ALLOW_MATCHED, STRICT_MTLS, PROXY_ALLOWED); `policy` is
    the deciding policy as the proxy names it, normalised to the scenario's `ns/name` (None when none is
    named), `rule` its index. `layer` is the kind of proxy that wrote it ("sidecar", "ztunnel",
    "waypoint") and `serves` the scenario workload (sidecar, ztunnel) or waypoint (`ns/name`) it acted
    for, so a judge can tell a record of the wrong proxy from the right one. `proxy` is for display.
    """

    proxy: str  # "sidecar:ns/name", "ztunnel:ns/name" (or the node on clusters), "waypoint:ns/name"
    kind: str
    policy: str | None
    rule: int | None
    line: str
    layer: str = ""
    serves: str | None = None
    # what the proxy said beyond kind and policy, where the judge compares it: the JWT filter's message
    # ("Jwt is expired", "Audiences in Jwt are not allowed"...), as `jwt_authn_access_denied{...}` spells it
    # with the underscores turned back into spaces
    detail: str | None = None

    @property
    def denied(self) -> bool:
        return self.kind != PROXY_ALLOWED

    def describe(self) -> str:
        """`no ALLOW policy matched at sidecar:ns/b`, `DENY ns/p rule 0 at waypoint:ns/w`..."""
        if self.kind == DENY_POLICY:
            what = f"DENY {self.policy}" + (f" rule {self.rule}" if self.rule is not None else "")
        elif self.kind == PROXY_ALLOWED and self.policy:
            what = f"allowed by {self.policy}" + (f" rule {self.rule}" if self.rule is not None else "")
        elif self.kind in (EXT_AUTHZ_DENIED, EXT_AUTHZ_ERROR) and self.policy:
            what = f"{KIND_WORDS[self.kind]} (CUSTOM {self.policy})"
        elif self.kind == JWT_REJECTED and self.detail:
            what = f"{KIND_WORDS[self.kind]}: {self.detail}"
        else:
            what = KIND_WORDS.get(self.kind, self.kind)
        return f"{what} at {self.proxy}"


def proof_of_rbac(policy_id: str, *, proxy: str, layer: str, serves: str | None, line: str,
                  to_scenario: Callable[[str], str] | None = None) -> Proof:
    """The proof an Envoy RBAC denial gives (`rbac_access_denied_matched_policy[<policy_id>]`).

    `none` is "no ALLOW matched"; istiod's synthetic `istio_converted_static_strict` DENY (ambient
    authorization.go, sent to ztunnel for STRICT PeerAuthentication) and its `converted_peer_authentication_*`
    DENYs (port-level modes) are STRICT rejections; any other id names a DENY policy (an ALLOW never denies
    by name: Envoy's ALLOW engine denies with `[none]`).
    """
    if policy_id in ("none", ""):
        return Proof(proxy, NO_ALLOW_MATCHED, None, None, line, layer, serves)
    if f"policy[{STATIC_STRICT_POLICY}]" in policy_id or policy_id.rpartition("/")[2] == STATIC_STRICT_POLICY:
        return Proof(proxy, STRICT_MTLS, None, None, line, layer, serves)
    if (f"policy[{CONVERTED_PEER_AUTHENTICATION_PREFIX}" in policy_id
            or policy_id.rpartition("/")[2].startswith(CONVERTED_PEER_AUTHENTICATION_PREFIX)):
        return Proof(proxy, STRICT_MTLS, None, None, line, layer, serves)
    policy, rule = parse_policy_id(policy_id)
    if policy is not None and to_scenario is not None:
        policy = to_scenario(policy)
    return Proof(proxy, DENY_POLICY, policy, rule, line, layer, serves)


# The dynamic metadata key under which the CUSTOM shadow RBAC in front of an ext_authz filter writes the rule it
# matched (istiod model.go RBACExtAuthzShadowRulesStatPrefix + RBACShadowEffectivePolicyID): what names the CUSTOM
# policy of an ext_authz denial. Both targets log `%DYNAMIC_METADATA(envoy.filters.http.rbac)%` as `http_rbac`.
EXT_AUTHZ_POLICY_KEY = "istio_ext_authz_shadow_effective_policy_id"
# The access-log fields both targets write, by name: `details` (%RESPONSE_CODE_DETAILS%), `term`
# (%CONNECTION_TERMINATION_DETAILS%), `flags` (%RESPONSE_FLAGS%), `http_rbac` / `network_rbac`
# (%DYNAMIC_METADATA(envoy.filters.http.rbac)% / (envoy.filters.network.rbac)%).
FILTER_CHAIN_NOT_FOUND = "filter_chain_not_found"


def envoy_denial_proof(fields: Mapping[str, Any], *, proxy: str, layer: str, serves: str | None, line: str,
                       to_scenario: Callable[[str], str] | None = None) -> Proof | None:
    """The denial an Envoy access-log record (`fields`, parsed JSON) proves, or None when it records none.

    One reading for the local mesh and the clusters, in the order Envoy's filters run (istiod puts the JWT
    filter before ext_authz and RBAC, pilot/pkg/networking/core/listener.go buildInboundHTTPFilters / the
    authn and authz plugins): the JWT filter's `jwt_authn_access_denied{<message>}` (the message in
    `detail`); ext_authz's `ext_authz_denied` / `ext_authz_error`, naming the CUSTOM policy whose rule the
    shadow RBAC matched (it is what enabled the filter, filter_enabled_metadata, so a denial always has one);
    an RBAC denial (`rbac_access_denied_matched_policy[...]`); a STRICT listener finding no filter chain for
    plaintext (`flags=NR`, `details=filter_chain_not_found`).
    """
    def get(key: str) -> str:
        value = fields.get(key)
        return "" if value is None or value == "-" else str(value)

    message = jwt_denial(get("details"))
    if message is not None:
        return Proof(proxy, JWT_REJECTED, None, None, line, layer, serves, detail=message)
    ext_authz = ext_authz_result(get("details")) or ext_authz_result(get("term"))
    if ext_authz is not None:
        named = ""
        for key in ("http_rbac", "network_rbac"):
            meta = fields.get(key)
            if isinstance(meta, Mapping) and meta.get(EXT_AUTHZ_POLICY_KEY):
                named = str(meta[EXT_AUTHZ_POLICY_KEY])
                break
        policy, rule = parse_policy_id(named) if named else (None, None)
        if policy is not None and to_scenario is not None:
            policy = to_scenario(policy)
        return Proof(proxy, ext_authz, policy, rule, line, layer, serves)
    for key in ("details", "term"):
        policy_id = rbac_denial(get(key))
        if policy_id is not None:
            return proof_of_rbac(policy_id, proxy=proxy, layer=layer, serves=serves, line=line,
                                 to_scenario=to_scenario)
    if "NR" in get("flags").split(",") and get("details") == FILTER_CHAIN_NOT_FOUND:
        return Proof(proxy, STRICT_MTLS, None, None, line, layer, serves)
    return None


@dataclass(frozen=True)
class Observation:
    """One probe's result: the outcome form (from curl alone), the evidence, the proof.

    `problem` is set when the target found a fault in itself while looking for the proof (the enforcing
    proxy is missing or dead, its log cannot be read, several records claim this probe): the judge
    reports it as infrastructure (or a denial without proof) before comparing any verdict.
    `unconfirmed` is set only by a target whose user opted in to accepting denials it cannot prove.
    """

    outcome: str
    evidence: Evidence
    proof: Proof | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    problem: str | None = None
    unconfirmed: str | None = None

    @property
    def confirmed_denial(self) -> bool:
        return self.proof is not None and self.proof.denied


def classify(evidence: Evidence, destination_ref: str) -> str:
    """Turn curl's result into an outcome form, from curl's output alone.

    - `allowed` only when the destination app answered: 2xx with a body naming the destination
      workload (a body from another workload is an `error`: mis-routing is never a pass);
    - `denied-l7`: HTTP 403 with Envoy's RBAC body;
    - `denied-authn`: HTTP 401 with the JWT filter's status text (`Jwt ...`, `Jwks ...`), or its 403
      `Audiences in Jwt are not allowed`;
    - `denied-custom`: a non-2xx answer with the suite's external authorizer's denial body (a provider that
      cannot be reached gives statusOnError with an empty body: only the proxy's access log tells that apart,
      so the target classifies it with its proof);
    - `denied-upstream`: a 503 from a client-side proxy or waypoint whose upstream connection was
      refused or reset (the form a ztunnel denial takes behind a waypoint or a sidecar client);
    - `denied-l4`: curl exit 56 (reset) or 52 (closed with no response);
    - `timeout`: curl exit 28; everything else is `error`.
    """
    code, status, body = evidence.exit_code, evidence.status, evidence.body
    if code == CURL_OPERATION_TIMEDOUT:
        return TIMEOUT
    if code in (CURL_RECV_ERROR, CURL_GOT_NOTHING):
        return DENIED_L4
    if code != CURL_OK:
        return ERROR
    if status == 403 and body.strip() == RBAC_DENIED_BODY:
        return DENIED_L7
    text = body.strip()
    if (status == 401 and text.startswith(("Jwt", "Jwks"))) or (status == 403 and text == JWT_AUDIENCE_DENIED_BODY):
        return DENIED_AUTHN
    if not 200 <= status < 300 and text == EXT_AUTHZ_DENIED_BODY:
        return DENIED_CUSTOM
    if status == 503 and _upstream_refused(body):
        return DENIED_UPSTREAM
    if 200 <= status < 300 and names_workload(body, destination_ref):
        return ALLOWED
    return ERROR


def _upstream_refused(body: str) -> bool:
    # Envoy's local reply when the upstream connection failed or was reset before headers
    # (router.cc): "upstream connect error or disconnect/reset before headers. reset reason: ..."
    return body.startswith("upstream connect error or disconnect/reset before headers")


def names_workload(body: str, ref: str) -> bool:
    """True when an app's answer says it is workload `ref` (`ns/name`): its first line is `<ref> responding`.

    The rest of the body is a JSON echo of what the app received (method, path, headers, including the
    identity header the proxy forwarded), which reports show as evidence.
    """
    first = body.split("\n", 1)[0].strip()
    return first == f"{ref} responding"


# curl's `-w` output, appended after the body on its own line, so that one stdout carries both. Every
# target runs curl with `-w CURL_WRITE_OUT` and splits with `split_write_out`. The local address and
# port let a target find the enforcing proxy's record of this very connection.
WRITE_OUT_MARKER = "\n@@curl@@ "
CURL_WRITE_OUT = (
    WRITE_OUT_MARKER
    + "http_code=%{http_code} local_ip=%{local_ip} local_port=%{local_port} "
    + "remote_ip=%{remote_ip} remote_port=%{remote_port} time_connect=%{time_connect} "
    + "time_total=%{time_total}\n"
)
BODY_LIMIT = 4096  # Evidence keeps the first bytes of a body, enough for the app's echo


def split_write_out(stdout: str) -> tuple[str, dict[str, str]]:
    """Split curl's stdout into (body, write-out fields); fields are empty when curl wrote none."""
    body, sep, tail = stdout.rpartition(WRITE_OUT_MARKER)
    if not sep:
        return stdout, {}
    return body, write_out_fields(tail)


def write_out_fields(text: str) -> dict[str, str]:
    """The `name=value` fields of one write-out (after WRITE_OUT_MARKER)."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def evidence_from_curl(exit_code: int, stdout: str, stderr: str, seconds: float, command: str) -> Evidence:
    """Evidence from one curl run made with `-w CURL_WRITE_OUT` (no `-o`: the body goes to stdout)."""
    body, fields = split_write_out(stdout)
    return evidence_from_fields(exit_code, body, fields, stderr, seconds, command)


def evidence_from_fields(exit_code: int, body: str, fields: Mapping[str, str], stderr: str, seconds: float,
                         command: str) -> Evidence:
    """Evidence from one transfer's exit code, body and write-out fields (a batch's transfer has its own)."""
    try:
        status = int(fields.get("http_code", "0"))
    except ValueError:
        status = 0
    return Evidence(
        exit_code=exit_code, status=status, body=body[:BODY_LIMIT], stderr=stderr.strip(),
        seconds=seconds, command=command,
    )


# curl's source ports: above Linux's default ephemeral range (32768-60999, where the kernel picks the
# proxies' own upstream ports), and never a listener's (the local mesh remaps scenario ports out of it,
# addresses.build_port_map): a closed probe's TIME_WAIT must never keep a later listener from binding.
SOURCE_PORT_RANGE = (61000, 65535)


class SourcePorts:
    """Source ports lent to curl, per source address, each one only after it rested past TIME_WAIT.

    Linux keeps a closed connection's address in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN), during which
    binding it fails; a port is lent again only after `rest` seconds. The local mesh keeps one pool for
    every session of the process (a later session may get the same loopback block); a cluster session one
    per session (each source pod has its own address). The range (SOURCE_PORT_RANGE) lies
    above Linux's default ephemeral range and holds no listener; a session
    skips the ports its listeners use. When every port of an address is resting (more than ~200 probes a
    second from one source for a minute) `take` gives None and the kernel chooses: a probe whose address
    then repeats is reported without proof, never credited with another's record.

    Lending starts at a random place in the range (`first`), once per pool: another process (the previous
    `pytest`, a minute ago) may have used the same address, and its closed connections' TIME_WAIT on the
    ports it lent first would make curl's bind fail (exit 45, then the probe runs alone with the kernel's
    port: correct, but one more curl process per probe).
    """

    def __init__(self, low: int = SOURCE_PORT_RANGE[0], high: int = SOURCE_PORT_RANGE[1], rest: float = 61.0,
                 clock: Callable[[], float] = time.monotonic, first: int | None = None):
        self._range = range(low, high + 1)
        self._first = random.randrange(len(self._range)) if first is None else first
        self._rest = rest
        self._clock = clock
        # Per address: the next port never lent (ports are lent in order, never-lent ones first), and the ports
        # given back, each with the time it has rested enough. Building a deque of all 4,536 ports per new
        # address, as this did, was a fifth of the suite's Python time (a run's addresses are new ones).
        self._fresh: dict[str, int] = {}
        self._free: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def take(self, address: str, reserved: Container[int] = ()) -> int | None:
        with self._lock:
            free = self._free.setdefault(address, deque())
            size = len(self._range)
            lent = self._fresh.get(address, 0)  # how many never-lent ports were handed out (or set aside)
            while lent < size:
                port = self._range.start + (self._first + lent) % size
                lent += 1
                self._fresh[address] = lent
                if port not in reserved:
                    return port
                free.append((0.0, port))  # a listener's port in this session: keep it for others
            now = self._clock()
            for _ in range(len(free)):
                ready, port = free[0]
                if ready > now:
                    return None
                free.popleft()
                if port not in reserved:
                    return port
                free.append((ready, port))
            return None

    def give_back(self, address: str, port: int | None) -> None:
        if port is None:
            return
        with self._lock:
            self._free[address].append((self._clock() + self._rest, port))
