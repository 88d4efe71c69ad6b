"""Where everything of one local run listens: its own loopback block, one address per workload, ports.

Linux routes all of 127.0.0.0/8 to `lo` (`local 127.0.0.0/8 dev lo`), so a run can take a whole
`127.X.Y.0/24` without root and give each workload its own address. A /24 holds 126 workloads (proxies at
.1-.126, their apps at .129-.254); a bigger run takes as many consecutive /24s as it needs, each laid out
the same way and each claimed on its own, so that a 200-workload mesh is two /24s and never more than the
workloads need. That is what makes `ipBlocks` and
`source.ip` meaningful (every proxy and every out-of-mesh curl binds its workload's address; an unbound
connection on loopback would come from 127.0.0.1), and it keeps two concurrent runs, or a stale Envoy of
a killed run, from ever answering for each other.

Each /24 is taken with an `flock` on its own lock file in the per-user runtime dir (released by the
kernel when the run dies, however it dies) plus binding probes on its first addresses, which catch a
process of a dead run that still holds them. A run of several /24s holds every one of their locks (taken
without blocking, all or none), so two concurrent runs never share a /24 whatever their sizes.

Ports below 1024 cannot be bound without root, and Istio's own proxy ports (15000-15099) and our
outbound listener ports are taken on every proxy address: such scenario ports are remapped to high
ports, consistently, through one `port_map` used for listeners and RBAC `destination_port` rules. The
scenario keeps its port everywhere a client can see it (URL, Host header, HBONE `:authority`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.model import Port, Waypoint, Workload
from conformance.probe import SOURCE_PORT_RANGE

ADMIN_PORT = 15000
HBONE_PORT = 15008
OUTBOUND_BASE = 15100  # outbound listener j of every proxy: OUTBOUND_BASE + j
_MAX_ENTITIES = 126  # per /24: proxies at .1-.126, apps at .129-.254
_APP_OFFSET = 128
MAX_SLASH24 = 16  # a run of 16 /24s holds 2,016 workloads; more would crowd out concurrent runs


class AddressBlockUnavailable(RuntimeError):
    """No free run of 127.X.Y.0/24 blocks could be taken."""


def slash24s_for(entities: int) -> int:
    """How many /24s a run of `entities` workloads and waypoints needs (at least one)."""
    return max(1, -(-entities // _MAX_ENTITIES))


@dataclass
class AddressBlock:
    """Consecutive `127.X.Y.0/24`s held by this run until `release()` (the lock file descriptors are the claim)."""

    prefixes: tuple[str, ...]  # ("127.X.Y", "127.X.Y+1", ...)
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def prefix(self) -> str:
        """The first /24 (a run of one /24 is named by it, as before runs could take several)."""
        return self.prefixes[0]

    @property
    def capacity(self) -> int:
        return len(self.prefixes) * _MAX_ENTITIES

    def describe(self) -> str:
        """`127.X.Y.0/24`, or `127.X.Y.0/24-127.X.Z.0/24` for several."""
        first = f"{self.prefixes[0]}.0/24"
        return first if len(self.prefixes) == 1 else f"{first}-{self.prefixes[-1]}.0/24"

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host}"

    def entity(self, index: int) -> tuple[str, str]:
        """The proxy (or own) address and the app address of the run's `index`-th workload or waypoint."""
        if not 0 <= index < self.capacity:
            raise AddressBlockUnavailable(
                f"workload {index + 1} does not fit {self.describe()} (at most {self.capacity})")
        prefix = self.prefixes[index // _MAX_ENTITIES]
        host = index % _MAX_ENTITIES + 1
        return f"{prefix}.{host}", f"{prefix}.{_APP_OFFSET + host}"

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock


def acquire_block(runtime: Path, attempts: int = 256, size: int = 1) -> AddressBlock:
    """Take the first run of `size` consecutive free /24s of this user's range (second octet from the uid,
    third scanned); every /24 of it is locked and probed, or none is kept.

    Scanning from the start keeps the number of lock files at the number of concurrent runs. Locks are
    taken without blocking, so two runs scanning at once cannot deadlock: each skips what the other holds.
    """
    if not 1 <= size <= MAX_SLASH24:
        raise AddressBlockUnavailable(
            f"{size} /24s asked for: a run takes 1 to {MAX_SLASH24} ({MAX_SLASH24 * _MAX_ENTITIES} workloads)")
    second = 100 + os.getuid() % 100
    last = min(attempts, 256)
    third = 0
    while third + size <= last:
        fds: list[int] = []
        failed_at = None
        for offset in range(size):
            prefix = f"127.{second}.{third + offset}"
            fd = _lock(runtime, prefix)
            if fd is None:
                failed_at = third + offset
                break
            fds.append(fd)
            if not _block_is_free(prefix):
                failed_at = third + offset
                break
        if failed_at is None:
            return AddressBlock(tuple(f"127.{second}.{third + i}" for i in range(size)), fds)
        for fd in fds:
            os.close(fd)
        third = failed_at + 1  # no run through a taken /24 can be free
    raise AddressBlockUnavailable(
        f"no {size} free consecutive loopback /24s in 127.{second}.0-{last - 1}.0: "
        "every one is locked by another run or has listeners from a process that is not ours"
    )


def _lock(runtime: Path, prefix: str) -> int | None:
    """The locked descriptor of `prefix`'s lock file, or None when another run holds it."""
    fd = os.open(runtime / "blocks" / f"{prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _block_is_free(prefix: str) -> bool:
    """Binding probes: the admin port of the first proxies and the first app address must be free.

    With SO_REUSEADDR, as Envoy and the app bind their listeners: then only a socket *listening* there makes the
    bind fail (Linux), not the TIME_WAIT an earlier run's closed connection left for a minute. Without it, the
    admin connections Envoy closed (a server-side TIME_WAIT on `<prefix>.1:15000`) kept every /24 a run had
    used "taken" for a minute, and two `pytest policies` runs within a minute (~110 runs each) ran out of /24s.
    """
    for host, port in ((1, ADMIN_PORT), (2, ADMIN_PORT), (1, HBONE_PORT), (_APP_OFFSET + 1, 0)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((f"{prefix}.{host}", port))
            except OSError:
                return False
    return True


def build_port_map(ports: Iterable[int], outbound_count: int) -> dict[int, int]:
    """Scenario port -> the port really listened on; identity where the scenario's port is bindable.

    Remapped: ports < 1024 (root only), ports in the proxies' own range [15000, 15100 + outbound) and
    curl's source ports (probe.SOURCE_PORT_RANGE, 61000-65535).
    A port p < 1024 goes to 20000 + p when free (80 -> 20080, readable in logs), others to 40000 +
    p % 10000; collisions with any scenario port move up by one.
    """
    wanted = sorted(set(ports))
    reserved_hi = OUTBOUND_BASE + outbound_count
    taken = set(wanted)
    mapping: dict[int, int] = {}

    def bad(p: int) -> bool:
        # curl's source ports (probe.SOURCE_PORT_RANGE) too: a probe's TIME_WAIT must not block a listener
        return p < 1024 or ADMIN_PORT <= p < reserved_hi or SOURCE_PORT_RANGE[0] <= p <= SOURCE_PORT_RANGE[1]

    for p in wanted:
        if not bad(p):
            mapping[p] = p
    for p in wanted:
        if p in mapping:
            continue
        candidate = 20000 + p if p < 1024 else 40000 + p % 10000
        while candidate in taken or bad(candidate) or candidate > 65535:
            candidate = candidate + 1 if candidate < 65535 else 20000
        taken.add(candidate)
        mapping[p] = candidate
    return mapping


@dataclass(frozen=True)
class Layout:
    """Every address and port of one run, decided once before anything starts.

    - `address[ref]`: the workload's (or waypoint's) own address: its proxy listens there, its out-of-mesh
      app listens there, and everything leaving it is bound to it;
    - `app_address[ref]`: where an in-mesh workload's app listens (its proxy forwards there);
    - `port_map`: scenario port -> real port;
    - `outbound[(dest_ref, scenario_port)]`: the outbound listener port, the same on every proxy.
    """

    block: str  # the run's /24s, as AddressBlock.describe() says
    address: Mapping[str, str]
    app_address: Mapping[str, str]
    port_map: Mapping[int, int]
    outbound: Mapping[tuple[str, int], int]

    def real(self, port: int) -> int:
        return self.port_map[port]


def plan_layout(block: AddressBlock, workloads: Sequence[Workload], waypoints: Sequence[Waypoint] = ()) -> Layout:
    """Give each workload and waypoint an address of `block` (in order, filling one /24 after the other), and
    every destination port an outbound port."""
    refs = [w.ref for w in workloads] + [w.ref for w in waypoints]
    if len(refs) > block.capacity:
        raise AddressBlockUnavailable(
            f"{len(refs)} workloads and waypoints do not fit {block.describe()} (at most {block.capacity})"
        )
    pairs = [block.entity(i) for i in range(len(refs))]
    address = {ref: pairs[i][0] for i, ref in enumerate(refs)}
    app_address = {ref: pairs[i][1] for i, ref in enumerate(refs)}
    outbound: dict[tuple[str, int], int] = {}
    all_ports: list[Port] = []
    for w in workloads:
        for p in w.ports:
            outbound[(w.ref, p.number)] = OUTBOUND_BASE + len(outbound)
            all_ports.append(p)
    port_map = build_port_map((p.number for p in all_ports), len(outbound))
    return Layout(block.describe(), address, app_address, port_map, outbound)
