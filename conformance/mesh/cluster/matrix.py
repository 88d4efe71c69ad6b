"""The tested matrix (clusters/versions.yaml): what the kind target and the workflows install, pinned.

One file says which kind binary (sha256), node image (digest), Istio releases (tarball sha256), Gateway
API CRDs (vendored in clusters/gateway-api/, sha256), Helm (tarball sha256) and workload images (digests)
the suite is tested with, so that the kind target, the GitHub Actions matrix and the tool installer can never disagree.
This module reads it, and doubles as the small command line the workflows call:

    python -m conformance.mesh.cluster.matrix github            # the e2e job matrix, as JSON
    python -m conformance.mesh.cluster.matrix install --dest D  # kind + istioctl, checksums verified
    python -m conformance.mesh.cluster.matrix install --dest D --charts  # + the release's Helm charts
    python -m conformance.mesh.cluster.matrix install --dest D --no-kind --helm  # + helm (the ambient upgrade)

The e2e job matrix itself (modes x releases x shards, with timeouts) is computed from the scenario
files by the plan (conformance/mesh/cluster/plan.py, `authz-conformance plan --format github-e2e`);
`github` here is the unsharded one, kept for tools that only need the releases and modes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conformance.errors import TargetUnavailable
from conformance.model import MODES, Mode

REPO_ROOT = Path(__file__).resolve().parents[3]
CLUSTERS_DIR = REPO_ROOT / "clusters"
VERSIONS_FILE = CLUSTERS_DIR / "versions.yaml"
DIGEST_PINNED = "@sha256:"


@dataclass(frozen=True)
class IstioRelease:
    version: str
    url: str
    sha256: str | None
    gateway_api: str

    @property
    def revision(self) -> str:
        """The revision name a canary install of this release uses (`1.30.3` -> `1-30-3`)."""
        return self.version.replace(".", "-")


@dataclass(frozen=True)
class GatewayAPI:
    """One Gateway API release's standard-channel CRDs, vendored (clusters/gateway-api/PROVENANCE.md)."""

    version: str
    path: Path
    sha256: str
    release_url: str  # the published release asset the vendored file is byte-identical to

    def read(self) -> str:
        """The vendored YAML, refused unless its sha256 is the pinned one (nothing is downloaded)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise TargetUnavailable(f"Gateway API {self.version} CRDs not found at {self.path}: the cluster "
                                    "targets run from a checkout of the project") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256:
            raise MatrixError(f"{self.path}: sha256 {actual} is not the one clusters/versions.yaml pins for "
                              f"Gateway API {self.version} ({self.sha256})")
        return data.decode("utf-8")


@dataclass(frozen=True)
class Helm:
    """The pinned Helm release (the ambient upgrade procedure's tool, upgrade.py) for one platform."""

    version: str  # as `helm version --template {{.Version}}` prints it: v3.21.0
    url: str
    sha256: str | None
    member: str  # the binary inside the tarball: linux-amd64/helm


@dataclass(frozen=True)
class ModeInstall:
    """How Istio is installed for one mode: a profile, an IstioOperator overlay, Gateway API or not."""

    mode: Mode
    profile: str
    overlay: Path
    gateway_api: bool


@dataclass(frozen=True)
class UpgradePath:
    """One upgrade the upgrade job validates: the suite at `source`, Istio's documented upgrade, the suite at
    `target`."""

    source: str
    target: str
    modes: tuple[Mode, ...]

    @property
    def id(self) -> str:
        """A name for job and artifact names: `1-30-5-to-1-31-0`."""
        return f"{self.source.replace('.', '-')}-to-{self.target.replace('.', '-')}"


@dataclass(frozen=True)
class Matrix:
    kind_version: str
    kind_binaries: Mapping[str, tuple[str, str | None]]  # platform -> (url, sha256)
    node_image: str
    kubernetes: str
    kind_config: Path
    istio: Mapping[str, IstioRelease]
    default_istio: str
    gateway_api: Mapping[str, GatewayAPI]
    helm: Mapping[str, Helm]  # platform -> the pinned release's tarball
    images: Mapping[str, str]
    modes: Mapping[Mode, ModeInstall]
    matrix_modes: tuple[Mode, ...]
    matrix_istio: tuple[str, ...]
    upgrades: tuple[UpgradePath, ...]  # the first is the main path

    @property
    def upgrade_modes(self) -> tuple[Mode, ...]:
        return tuple(dict.fromkeys(m for u in self.upgrades for m in u.modes))

    def release(self, version: str) -> IstioRelease:
        """The pinned release for `1.30.3` (exact) or `1.30` (the newest pinned for that line, as
        `--istio-version 1.30` means the newest modelled 1.30 patch: conformance/versions.py)."""
        if version in self.istio:
            return self.istio[version]
        line = [r for v, r in self.istio.items() if v.rsplit(".", 1)[0] == version]
        if line:
            return max(line, key=lambda r: tuple(int(x) for x in r.version.split(".")))
        known = ", ".join(sorted(self.istio))
        raise TargetUnavailable(f"Istio {version} is not in the tested matrix (clusters/versions.yaml has {known})")

    def gateway_api_for(self, istio_version: str) -> GatewayAPI:
        """The vendored Gateway API CRDs of the release `istio_version` was built with (its go.mod)."""
        return self.gateway_api[self.release(istio_version).gateway_api]

    def github_matrix(self) -> dict[str, Any]:
        """The e2e workflow's `strategy.matrix`: one job per mode and Istio release."""
        include = []
        for version in self.matrix_istio:
            release = self.istio[version]
            for mode in self.matrix_modes:
                include.append({"mode": mode, "istio": version, "gateway_api": release.gateway_api,
                                "node_image": self.node_image, "kind": self.kind_version})
        return {"include": include}


class MatrixError(ValueError):
    """clusters/versions.yaml is malformed: a missing key, an unpinned image, an unknown mode."""


def _req(data: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise MatrixError(f"clusters/versions.yaml: {where}: missing key {key!r}")
    return data[key]


def load(path: Path = VERSIONS_FILE) -> Matrix:
    """Read and check the matrix: every image pinned by digest, every mode and version known."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise TargetUnavailable(f"{path} not found: the cluster targets run from a checkout of the project "
                                "(pip install -e .)") from exc
    base = path.parent
    kind = _req(raw, "kind", "top level")
    binaries = {plat: (_req(b, "url", f"kind.binaries.{plat}"), b.get("sha256"))
                for plat, b in _req(kind, "binaries", "kind").items()}
    node_image = str(_req(kind, "node_image", "kind"))
    istio = _req(raw, "istio", "top level")
    releases = {}
    for version, rel in _req(istio, "releases", "istio").items():
        releases[str(version)] = IstioRelease(str(version), _req(rel, "url", f"istio.releases.{version}"),
                                              rel.get("sha256"), str(_req(rel, "gateway_api", f"istio {version}")))
    gateway = {str(v): GatewayAPI(str(v), base / str(_req(g, "file", f"gateway_api.{v}")),
                                  str(_req(g, "sha256", f"gateway_api.{v}")), str(g.get("release", "")))
               for v, g in _req(raw, "gateway_api", "top level").items()}
    helm_raw = _req(raw, "helm", "top level")
    helm_version = str(_req(helm_raw, "version", "helm"))
    helm = {str(plat): Helm(helm_version, str(_req(b, "url", f"helm.binaries.{plat}")), b.get("sha256"),
                            str(_req(b, "member", f"helm.binaries.{plat}")))
            for plat, b in _req(helm_raw, "binaries", "helm").items()}
    images = {str(k): str(v) for k, v in _req(raw, "images", "top level").items()}
    modes: dict[Mode, ModeInstall] = {}
    for name, m in _req(raw, "modes", "top level").items():
        if name not in MODES:
            raise MatrixError(f"clusters/versions.yaml: modes: unknown mode {name!r}")
        modes[name] = ModeInstall(name, str(_req(m, "profile", f"modes.{name}")),
                                  base / str(_req(m, "overlay", f"modes.{name}")), bool(m.get("gateway_api")))
    matrix = _req(raw, "matrix", "top level")
    upgrades = tuple(
        UpgradePath(str(_req(u, "from", f"upgrades[{i}]")), str(_req(u, "to", f"upgrades[{i}]")),
                    tuple(_req(u, "modes", f"upgrades[{i}]")))
        for i, u in enumerate(_req(raw, "upgrades", "top level") or ()))
    result = Matrix(
        kind_version=str(_req(kind, "version", "kind")), kind_binaries=binaries, node_image=node_image,
        kubernetes=str(kind.get("kubernetes", "")), kind_config=base / str(_req(kind, "config", "kind")),
        istio=releases, default_istio=str(_req(istio, "default", "istio")), gateway_api=gateway, helm=helm,
        images=images,
        modes=modes, matrix_modes=tuple(_req(matrix, "modes", "matrix")),
        matrix_istio=tuple(str(v) for v in _req(matrix, "istio", "matrix")),
        upgrades=upgrades,
    )
    _check(result)
    return result


def _check(m: Matrix) -> None:
    for name, image in [("kind.node_image", m.node_image), *((f"images.{k}", v) for k, v in m.images.items())]:
        if DIGEST_PINNED not in image:
            raise MatrixError(f"clusters/versions.yaml: {name}: {image!r} is not pinned by digest (@sha256:...)")
    for key in ("curl", "app"):
        if key not in m.images:
            raise MatrixError(f"clusters/versions.yaml: images: missing {key!r}")
    if not m.upgrades:
        raise MatrixError("clusters/versions.yaml: upgrades: at least one upgrade path")
    for version in (*m.matrix_istio, m.default_istio, *(v for u in m.upgrades for v in (u.source, u.target))):
        if version not in m.istio:
            raise MatrixError(f"clusters/versions.yaml: Istio {version} is used but not in istio.releases")
    for rel in m.istio.values():
        if rel.gateway_api not in m.gateway_api:
            raise MatrixError(f"clusters/versions.yaml: Istio {rel.version}: Gateway API {rel.gateway_api} "
                              "is not in gateway_api")
    for gw in m.gateway_api.values():
        if not gw.path.is_file():
            raise MatrixError(f"clusters/versions.yaml: gateway_api.{gw.version}: {gw.path} does not exist "
                              "(the CRDs are vendored, see clusters/gateway-api/PROVENANCE.md)")
    for mode in (*m.matrix_modes, *m.upgrade_modes):
        if mode not in m.modes:
            raise MatrixError(f"clusters/versions.yaml: mode {mode!r} has no install settings in modes")


# ---------------------------------------------------------------------------------------------------
# Installing the pinned binaries (used by the workflows; never by the suite itself, which only looks
# for binaries on PATH or given by option, and never downloads anything).

Fetcher = Callable[[str, Path], None]


def _urlfetch(url: str, dest: Path) -> None:  # pragma: no cover - network, CI only
    with urllib.request.urlopen(url, timeout=120) as response, open(dest, "wb") as fh:
        shutil.copyfileobj(response, fh)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_download(url: str, pinned: str | None, dest: Path, fetch: Fetcher = _urlfetch,
                      warn: Callable[[str], None] = print, published: str = ".sha256") -> str:
    """Download `url` to `dest` and check its sha256 against the pin; returns the digest.

    Without a pin, the digest published beside the artifact (`<url><published>`: Istio's `.sha256`, Helm's
    `.sha256sum`, both starting with the hex digest) is used instead and a warning says what to pin; a
    mismatch is always fatal.
    """
    fetch(url, dest)
    actual = sha256_of(dest)
    expected = pinned
    if not expected:
        side = dest.with_name(dest.name + published)
        fetch(url + published, side)
        expected = side.read_text().split()[0].strip()
        warn(f"::warning::{url} has no sha256 pin in clusters/versions.yaml; verified against the published "
             f"{url}{published} instead. Pin it: sha256: {actual}")
    if actual != expected:
        dest.unlink(missing_ok=True)
        raise SystemExit(f"checksum mismatch for {url}: expected {expected}, got {actual}")
    return actual


def install(matrix: Matrix, dest: Path, istio_versions: Sequence[str], with_kind: bool = True,
            fetch: Fetcher = _urlfetch, platform: str = "linux-amd64", charts: bool = False,
            helm: bool = False) -> list[Path]:
    """Put `kind` and `istioctl-<version>` (plus `istioctl` for the first version) into `dest`.

    With `charts`, also `charts-<version>/`: the Helm charts inside the same verified tarball
    (`istio-<v>/manifests/charts`), which Istio's ambient upgrade procedure installs and upgrades with
    Helm (conformance/mesh/cluster/upgrade.py): no chart repository is ever consulted. With `helm`, also
    `helm`: the pinned Helm release, its tarball verified like Istio's (the pin, else Helm's published
    `.sha256sum`), so the upgrade never runs whatever Helm the runner happens to have.
    """
    dest.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    if with_kind:
        url, sha = matrix.kind_binaries[platform]
        path = dest / "kind"
        verified_download(url, sha, path, fetch)
        path.chmod(0o755)
        made.append(path)
    for i, version in enumerate(istio_versions):
        release = matrix.release(version)
        with tempfile.TemporaryDirectory() as tmp:
            tarball = Path(tmp) / Path(release.url).name
            verified_download(release.url, release.sha256, tarball, fetch)
            target = dest / f"istioctl-{release.version}"
            with tarfile.open(tarball) as tar:
                _extract_binary(tar, f"istio-{release.version}/bin/istioctl", target, release.url)
                if charts:
                    made.append(_extract_charts(tar, release.version, dest / f"charts-{release.version}"))
            made.append(target)
            if i == 0:
                shutil.copyfile(target, dest / "istioctl")
                (dest / "istioctl").chmod(0o755)
                made.append(dest / "istioctl")
    if helm:
        pinned = matrix.helm[platform]
        with tempfile.TemporaryDirectory() as tmp:
            tarball = Path(tmp) / Path(pinned.url).name
            # get.helm.sh publishes `<tarball>.sha256sum` ("<digest>  <name>"; helm/helm Makefile `checksum`)
            verified_download(pinned.url, pinned.sha256, tarball, fetch, published=".sha256sum")
            with tarfile.open(tarball) as tar:
                made.append(_extract_binary(tar, pinned.member, dest / "helm", pinned.url))
    return made


def _extract_binary(tar: tarfile.TarFile, member: str, target: Path, url: str) -> Path:
    """One regular file of a verified tarball, as an executable at `target`."""
    source = tar.extractfile(member) if member in tar.getnames() else None
    if source is None:
        raise SystemExit(f"{url}: {member} not found in the tarball")
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    target.chmod(0o755)
    return target


def _extract_charts(tar: tarfile.TarFile, version: str, target: Path) -> Path:
    """`istio-<v>/manifests/charts/**` into `target`, refusing anything that is not a plain file or
    directory inside it (links and `..` paths: the tarball is verified, but extraction stays strict)."""
    prefix = f"istio-{version}/manifests/charts/"
    found = False
    for member in tar.getmembers():
        if not member.name.startswith(prefix) or member.name == prefix:
            continue
        rel = Path(member.name[len(prefix):])
        if rel.is_absolute() or ".." in rel.parts:
            raise SystemExit(f"refusing tarball member {member.name}")
        out = target / rel
        if member.isdir():
            out.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            with open(out, "wb") as fh:
                shutil.copyfileobj(source, fh)
            found = True
    if not found:
        raise SystemExit(f"{prefix} not found in the Istio {version} tarball")
    return target


def _checked(crds: GatewayAPI) -> GatewayAPI:
    """`crds` once its file is the pinned one (read() refuses any other)."""
    crds.read()
    return crds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.mesh.cluster.matrix",
                                     description="The tested matrix of clusters/versions.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("github", help="print the e2e job matrix as JSON (for strategy.matrix)")
    sp = sub.add_parser("install", help="download kind and istioctl at the pinned versions, checksums verified")
    sp.add_argument("--dest", required=True, type=Path)
    sp.add_argument("--istio", action="append", default=None, help="Istio release (repeatable)")
    sp.add_argument("--no-kind", action="store_true")
    sp.add_argument("--charts", action="store_true", help="also extract each release's Helm charts (charts-<v>/)")
    sp.add_argument("--helm", action="store_true", help="also the pinned helm (the ambient upgrade's tool)")
    sp = sub.add_parser("get", help="print one value: node-image, kind-version, helm-version, gateway-api-crds "
                                    "ISTIO (the vendored file), image NAME, upgrades")
    sp.add_argument("what")
    sp.add_argument("arg", nargs="?")
    args = parser.parse_args(argv)
    matrix = load()
    if args.command == "github":
        print(json.dumps(matrix.github_matrix()))
    elif args.command == "install":
        for path in install(matrix, args.dest, args.istio or [matrix.default_istio], with_kind=not args.no_kind,
                            charts=args.charts, helm=args.helm):
            print(path)
    elif args.command == "get":
        values = {
            "node-image": lambda: matrix.node_image,
            "kind-version": lambda: matrix.kind_version,
            "helm-version": lambda: matrix.helm["linux-amd64"].version,
            "gateway-api-crds": lambda: _checked(matrix.gateway_api_for(args.arg)).path,
            "image": lambda: matrix.images[args.arg],
            "upgrades": lambda: json.dumps([{"from": u.source, "to": u.target, "modes": list(u.modes), "id": u.id}
                                            for u in matrix.upgrades]),
        }
        if args.what not in values:
            parser.error(f"unknown value {args.what!r}")
        print(values[args.what]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
