"""String, IP and path matching exactly as the two data planes do it.

Two families live here because Istio has two: Envoy (sidecars and waypoints, configured by istiod's
`pilot/pkg/security/authz/matcher` and `model/generator.go`) and ztunnel (`istio/ztunnel src/rbac.rs`,
fed by istiod's ambient translation). They agree on the four pattern forms of the API (exact, `prefix*`,
`*suffix`, `*` presence) but not on every detail, so each function says which data plane it follows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

Predicate = Callable[[str], bool]


def pattern_kind(value: str) -> str:
    """The API's four string forms (authorization_policy.proto, "string match" note)."""
    if value == "*":
        return "presence"
    if value.startswith("*"):
        return "suffix"
    if value.endswith("*"):
        return "prefix"
    return "exact"


@lru_cache(maxsize=65536)
def envoy_string(value: str, prefix: str = "") -> Predicate:
    """istio matcher/string.go StringMatcherWithPrefix: used for principals (prefix `spiffe://`),
    paths, SNI. `*` becomes regex `.+` (non-empty; the prefix is ignored); `*v` with a prefix becomes
    regex `<prefix>.*<quoted v>`, without a prefix a suffix match; `v*` a prefix match; else exact.
    """
    kind = pattern_kind(value)
    if kind == "presence":
        return lambda s: len(s) > 0
    if kind == "suffix":
        rest = value[1:]
        if prefix:
            # string.go: `prefix + ".*" + QuoteMeta(rest)` as RE2 over the whole string: the prefix and the
            # suffix cannot share characters, so `*/cluster.local/ns/a/sa/b` does not match
            # `spiffe://cluster.local/ns/a/sa/b` (the `/` of `spiffe://` is not the suffix's `/`). Found by
            # tests/test_differential.py.
            least = len(prefix) + len(rest)
            return lambda s: len(s) >= least and s.startswith(prefix) and s.endswith(rest)
        return lambda s: s.endswith(rest)
    if kind == "prefix":
        start = prefix + value[:-1]
        return lambda s: s.startswith(start)
    whole = prefix + value
    return lambda s: s == whole


@lru_cache(maxsize=65536)
def envoy_regex(regex: str) -> Predicate:
    """Envoy safe_regex (RE2) matches the whole string."""
    try:
        compiled = re.compile(regex)
    except re.error:
        return lambda s: False
    # The strings matched are few (the mesh's identities, its paths and headers) and each is matched again and
    # again (every probe from a workload, every cell of a matrix): remember the answers. Bounded, so a long run
    # over generated strings cannot grow it without end.
    seen: dict[str, bool] = {}

    def match(s: str) -> bool:
        found = seen.get(s)
        if found is None:
            if len(seen) >= _REGEX_MEMO:
                seen.clear()
            found = seen[s] = compiled.fullmatch(s) is not None
        return found

    return match


_REGEX_MEMO = 4096  # answers remembered per regex


@lru_cache(maxsize=65536)
def envoy_header(value: str, ignore_case: bool = False) -> Callable[[str | None], bool]:
    """istio matcher/header.go HeaderMatcher (methods, request.headers) and HostMatcher (hosts:
    `ignore_case: true`). `*` is `present_match`; a missing header matches no other form.
    """
    kind = pattern_kind(value)
    fold: Callable[[str], str] = str.lower if ignore_case else (lambda s: s)
    if kind == "presence":
        return lambda s: s is not None
    if kind == "suffix":
        rest = fold(value[1:])
        return lambda s: s is not None and fold(s).endswith(rest)
    if kind == "prefix":
        start = fold(value[:-1])
        return lambda s: s is not None and fold(s).startswith(start)
    whole = fold(value)
    return lambda s: s is not None and fold(s) == whole


@lru_cache(maxsize=65536)
def ztunnel_string(value: str) -> Predicate:
    """ztunnel src/rbac.rs StringMatch::matches after istiod's stringToMatch (ambient/authorization.go):
    Presence is "not empty"; no regexes anywhere.
    """
    kind = pattern_kind(value)
    if kind == "presence":
        return lambda s: s != ""
    if kind == "suffix":
        rest = value[1:]
        return lambda s: s.endswith(rest)
    if kind == "prefix":
        start = value[:-1]
        return lambda s: s.startswith(start)
    return lambda s: s == value


@lru_cache(maxsize=65536)
def cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR or a bare address (a /32 or /128), as istiod's AddrStrToCidrRange and stringToIP read it."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_in(value: str, ip: str | None) -> bool:
    net, addr = cidr(value), _address(ip) if ip else None
    return net is not None and addr is not None and addr.version == net.version and addr in net


def quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta: escape every RE2 metacharacter."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


# -- paths -----------------------------------------------------------------------------------------

_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# A segment that is `.` or `..` as sent, followed by `;parameters` (not `%2e`, not `...;`).
_DOT_SEGMENT_WITH_PARAMETERS = re.compile(r"(?<=/)(\.\.?);[^/]*")


@lru_cache(maxsize=65536)
def normalize_path(raw: str, dot_segment_parameters: bool = False) -> str:
    """The path a sidecar's RBAC filter sees under Istio's default normalization, BASE.

    istio.io/latest/docs/reference/config/security/normalization/: BASE is RFC 3986 normalization
    (Envoy `normalize_path: true`, istiod's buildHTTPConnectionManager): decode percent-encoded
    unreserved characters (and uppercase the remaining escapes), turn `\\` into `/`, remove `.` and
    `..` segments. Slashes are not merged, `%2F` is not decoded. The query is not part of the path that
    `paths` match (Envoy `url_path`), and the fragment never leaves curl.

    `dot_segment_parameters` (versions.DOT_SEGMENT_PARAMETERS: Envoy CVE-2026-73551, Istio 1.30.4): a
    segment sent as `.;x` or `..;x` is first cut to `.` / `..`, so `/public/..;x/admin` is `/admin`.
    Before, it was an ordinary segment and the path stayed as sent. Only literal dots count: `%2e%2e;x` is
    decoded to `..;x` afterwards and kept (checked against Envoy 1.40.0 with and without its runtime guard
    `envoy.reloadable_features.strip_dotdot_segments_with_parameters`).
    """
    path = raw.split("#", 1)[0].split("?", 1)[0]
    if dot_segment_parameters:
        path = _DOT_SEGMENT_WITH_PARAMETERS.sub(r"\1", path)
    out: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "%" and i + 2 < len(path) + 0 and _is_hex(path[i + 1 : i + 3]):
            decoded = chr(int(path[i + 1 : i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + path[i + 1 : i + 3].upper())
            i += 3
            continue
        out.append("/" if ch == "\\" else ch)
        i += 1
    return remove_dot_segments("".join(out) or "/")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end == -1 else end
            out += inp[:end]
            inp = inp[end:]
    return out or "/"


@lru_cache(maxsize=65536)
def path_template(value: str) -> Predicate | None:
    """Path templates (Istio 1.22+, matcher/template.go → Envoy uri_template): `{*}` is exactly one
    segment, `{**}` zero or more characters across segments and only last. None if not a template.
    """
    if "{*}" not in value and "{**}" not in value:
        return None
    regex = ""
    for part in re.split(r"(\{\*\*\}|\{\*\})", value):
        if part == "{**}":
            regex += r"[^?#]*"
        elif part == "{*}":
            regex += r"[^/?#]+"
        else:
            regex += re.escape(part)
    compiled = re.compile(regex)
    return lambda s: compiled.fullmatch(s) is not None
