"""clusters/versions.yaml: the one place the tested matrix lives, checked, and the pinned installer."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import yaml

from conformance.errors import TargetUnavailable
from conformance.mesh.cluster import matrix as matrix_mod
from conformance.versions import PINNED_PATCH, IstioVersion

M = matrix_mod.load()


def test_matrix_is_pinned_and_consistent():
    assert M.kind_version.startswith("v") and "@sha256:" in M.node_image
    assert all("@sha256:" in image for image in M.images.values())
    assert set(M.matrix_modes) == {"sidecar", "ambient", "waypoint", "mixed"}
    assert {v.rsplit(".", 1)[0] for v in M.matrix_istio} == {"1.31", "1.30"}  # issue 16: 1.30 and 1.31
    for version in M.matrix_istio:
        major, minor, patch = map(int, version.split("."))
        assert PINNED_PATCH[(major, minor)] == patch, "versions.yaml and conformance/versions.py must agree"
    assert M.istio["1.30.3"].sha256 == "55ada076ba1b37af49e8a24e5e539b4abccabdb33894c923279edd293eea3993"
    # sigs.k8s.io/gateway-api in istio/istio go.mod at each tag
    assert M.istio["1.29.6"].gateway_api == "v1.4.1" and M.istio["1.30.3"].gateway_api == "v1.5.1"
    assert M.istio["1.30.5"].gateway_api == "v1.5.1" and M.istio["1.31.0"].gateway_api == "v1.6.0"  # release branches
    # the upgrade teams face next is the main path; 1.29 -> 1.30 stays (issue 16)
    assert [(u.source, u.target) for u in M.upgrades] == [("1.30.5", "1.31.0"), ("1.29.6", "1.30.5")]
    assert M.upgrades[0].id == "1-30-5-to-1-31-0" and set(M.upgrade_modes) == {"sidecar", "ambient"}
    assert M.gateway_api["v1.4.1"].path == matrix_mod.CLUSTERS_DIR / "gateway-api" / "v1.4.1" / "standard-install.yaml"
    assert M.gateway_api["v1.4.1"].release_url.endswith("/v1.4.1/standard-install.yaml")
    # a node image built for kind v0.32.0 (one listed in its release notes), by digest
    assert M.kind_version == "v0.32.0"
    assert M.node_image == ("kindest/node:v1.35.5@sha256:"
                            "ce977ae6d65918d0b58a5f8b5e940429c2ce42fa3a5619ec2bbc60b949c0ac95")
    assert M.kind_binaries["linux-amd64"][1] and len(M.kind_binaries["linux-amd64"][1]) == 64
    assert M.modes["sidecar"].profile == "default" and M.modes["ambient"].profile == "ambient"
    assert M.modes["waypoint"].gateway_api and M.modes["waypoint"].overlay.exists()
    assert M.kind_config.exists()
    assert M.release("1.30") == M.istio["1.30.5"] and M.release("1.30.3").revision == "1-30-3"  # newest of the line
    assert str(IstioVersion.parse(M.default_istio)) == M.default_istio
    with pytest.raises(TargetUnavailable, match="not in the tested matrix"):
        M.release("1.27")


def test_overlays_enable_json_access_logs_with_the_proof_fields():
    import json

    from conformance.probe import PROBE_HEADER

    for mode in ("sidecar", "ambient"):
        overlay = yaml.safe_load(M.modes[mode].overlay.read_text())
        mesh = overlay["spec"]["meshConfig"]
        assert mesh["accessLogFile"] == "/dev/stdout" and mesh["accessLogEncoding"] == "JSON"
        fmt = json.loads(mesh["accessLogFormat"])
        assert fmt["details"] == "%RESPONSE_CODE_DETAILS%" and fmt["term"] == "%CONNECTION_TERMINATION_DETAILS%"
        # the suite's own probe header, never one a scenario can set (probe.PROBE_HEADER)
        assert fmt["probe"] == f"%REQ({PROBE_HEADER.upper()})%"
        assert fmt["src"] == "%DOWNSTREAM_REMOTE_ADDRESS%" and fmt["local"] == "%DOWNSTREAM_LOCAL_ADDRESS%"
        assert fmt["upstream_local"] == "%UPSTREAM_LOCAL_ADDRESS%" and fmt["flags"] == "%RESPONSE_FLAGS%"
        # the CUSTOM policy of an ext_authz denial, from the shadow RBAC's dynamic metadata (probe.EXT_AUTHZ_POLICY_KEY)
        assert fmt["http_rbac"] == "%DYNAMIC_METADATA(envoy.filters.http.rbac)%"


def test_github_matrix():
    include = M.github_matrix()["include"]
    assert len(include) == len(M.matrix_modes) * len(M.matrix_istio)
    assert all(job["node_image"] == M.node_image for job in include)


def test_unpinned_images_are_refused(tmp_path):
    raw = yaml.safe_load(matrix_mod.VERSIONS_FILE.read_text())
    raw["images"]["curl"] = "curlimages/curl:8.16.0"
    (tmp_path / "versions.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(matrix_mod.MatrixError, match="not pinned by digest"):
        matrix_mod.load(tmp_path / "versions.yaml")


def test_missing_file_is_a_reason_to_skip(tmp_path):
    with pytest.raises(TargetUnavailable, match="checkout"):
        matrix_mod.load(tmp_path / "nope.yaml")


def fake_fetcher(files: dict[str, bytes]):
    def fetch(url: str, dest: Path) -> None:
        dest.write_bytes(files[url])
    return fetch


def test_verified_download(tmp_path):
    data = b"binary"
    digest = hashlib.sha256(data).hexdigest()
    assert matrix_mod.verified_download("u", digest, tmp_path / "a", fake_fetcher({"u": data})) == digest
    with pytest.raises(SystemExit, match="checksum mismatch"):
        matrix_mod.verified_download("u", "0" * 64, tmp_path / "b", fake_fetcher({"u": data}))
    assert not (tmp_path / "b").exists()
    warnings: list[str] = []
    fetch = fake_fetcher({"u": data, "u.sha256": f"{digest}  file\n".encode()})
    matrix_mod.verified_download("u", None, tmp_path / "c", fetch, warn=warnings.append)
    assert warnings and "Pin it: sha256: " + digest in warnings[0]
    with pytest.raises(SystemExit):
        matrix_mod.verified_download("u", None, tmp_path / "d",
                                     fake_fetcher({"u": data, "u.sha256": b"f" * 64}), warn=warnings.append)


def test_install_extracts_istioctl_and_kind(tmp_path):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        content = b"#!/bin/sh\necho istioctl\n"
        info = tarfile.TarInfo("istio-1.30.3/bin/istioctl")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    tarball = tar_bytes.getvalue()
    kind = b"kind-binary"
    release = M.istio["1.30.3"]
    kind_url, _ = M.kind_binaries["linux-amd64"]
    from dataclasses import replace

    pinned = replace(M, kind_binaries={"linux-amd64": (kind_url, hashlib.sha256(kind).hexdigest())},
                     istio={"1.30.3": matrix_mod.IstioRelease(
                         "1.30.3", release.url, hashlib.sha256(tarball).hexdigest(), release.gateway_api)})
    made = matrix_mod.install(pinned, tmp_path / "bin", ["1.30.3"],
                              fetch=fake_fetcher({kind_url: kind, release.url: tarball}))
    assert [p.name for p in made] == ["kind", "istioctl-1.30.3", "istioctl"]
    assert (tmp_path / "bin" / "istioctl").read_bytes() == content


def test_install_extracts_the_releases_helm_charts(tmp_path):
    tar_bytes = io.BytesIO()
    files = {"istio-1.30.3/bin/istioctl": b"#!/bin/sh\n",
             "istio-1.30.3/manifests/charts/ztunnel/Chart.yaml": b"name: ztunnel\n",
             "istio-1.30.3/manifests/charts/istio-control/istio-discovery/Chart.yaml": b"name: istiod\n",
             "istio-1.30.3/samples/x.yaml": b"x"}
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    tarball = tar_bytes.getvalue()
    release = M.istio["1.30.3"]
    from dataclasses import replace

    pinned = replace(M, istio={"1.30.3": matrix_mod.IstioRelease(
        "1.30.3", release.url, hashlib.sha256(tarball).hexdigest(), release.gateway_api)})
    made = matrix_mod.install(pinned, tmp_path, ["1.30.3"], with_kind=False,
                              fetch=fake_fetcher({release.url: tarball}), charts=True)
    charts = tmp_path / "charts-1.30.3"
    assert charts in made
    assert (charts / "ztunnel" / "Chart.yaml").read_bytes() == b"name: ztunnel\n"
    assert (charts / "istio-control" / "istio-discovery" / "Chart.yaml").exists()
    assert not (charts / "samples").exists() and not (tmp_path / "samples").exists()


def test_chart_extraction_refuses_paths_outside(tmp_path):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        info = tarfile.TarInfo("istio-1.30.3/manifests/charts/../../../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    tar_bytes.seek(0)
    with tarfile.open(fileobj=tar_bytes) as tar, pytest.raises(SystemExit, match="refusing"):
        matrix_mod._extract_charts(tar, "1.30.3", tmp_path / "charts")


def test_command_line(capsys):
    assert matrix_mod.main(["github"]) == 0
    assert '"include"' in capsys.readouterr().out
    assert matrix_mod.main(["get", "node-image"]) == 0
    assert capsys.readouterr().out.strip() == M.node_image
    assert matrix_mod.main(["get", "gateway-api-crds", "1.30"]) == 0
    assert capsys.readouterr().out.strip() == str(matrix_mod.CLUSTERS_DIR / "gateway-api/v1.5.1/standard-install.yaml")


# The sha256 of each vendored file, as clusters/gateway-api/PROVENANCE.md records it: independent public pins of
# the release asset https://github.com/kubernetes-sigs/gateway-api/releases/download/<v>/standard-install.yaml
# have the same digests, so the vendored files are byte-identical to what `kubectl apply` of the release takes.
VENDORED_GATEWAY_API = {
    "v1.4.1": "73b91b77f6be023a8c92c969fc664e5bd3b1a28aea59eac9ebc904607354dad2",
    "v1.5.1": "751002b3b91a87f7ae3bd2517c79a47a8d7ed6702901808a1cf9bd97d284f9b8",
}


@pytest.mark.parametrize("version", sorted(VENDORED_GATEWAY_API))
def test_vendored_gateway_api_crds_are_the_pinned_standard_channel(version):
    crds = M.gateway_api[version]
    assert crds.sha256 == VENDORED_GATEWAY_API[version]
    text = crds.read()  # checks the sha256
    docs = [d for d in yaml.safe_load_all(text) if d]
    defs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    # what a waypoint needs (Gateway, GatewayClass) and what the suite's routes would use (HTTPRoute)
    assert {"gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io",
            "httproutes.gateway.networking.k8s.io"} <= set(defs)
    for crd in defs.values():
        notes = crd["metadata"]["annotations"]
        assert notes["gateway.networking.k8s.io/bundle-version"] == version
        assert notes["gateway.networking.k8s.io/channel"] == "standard"
        assert crd["spec"]["group"] == "gateway.networking.k8s.io"
    gateway = defs["gateways.gateway.networking.k8s.io"]["spec"]
    assert gateway["names"]["kind"] == "Gateway"
    assert [v["name"] for v in gateway["versions"] if v["served"] and v["storage"]] == ["v1"]
    assert {d["kind"] for d in docs} <= {"CustomResourceDefinition", "ValidatingAdmissionPolicy",
                                         "ValidatingAdmissionPolicyBinding"}


def test_every_istio_release_has_its_vendored_gateway_api_and_a_changed_file_is_refused(tmp_path):
    for version in M.istio:
        assert M.gateway_api_for(version).path.is_file()
    assert M.gateway_api_for("1.29").version == "v1.4.1" and M.gateway_api_for("1.30.3").version == "v1.5.1"
    from dataclasses import replace

    original = M.gateway_api["v1.5.1"]
    changed = tmp_path / "standard-install.yaml"
    changed.write_bytes(original.path.read_bytes() + b"# one more line\n")
    with pytest.raises(matrix_mod.MatrixError, match=r"is not the one clusters/versions\.yaml pins"):
        replace(original, path=changed).read()
    with pytest.raises(TargetUnavailable, match="not found"):
        replace(original, path=tmp_path / "missing.yaml").read()
    raw = yaml.safe_load(matrix_mod.VERSIONS_FILE.read_text())
    raw["gateway_api"]["v1.5.1"]["file"] = "gateway-api/v9.9.9/standard-install.yaml"
    (tmp_path / "versions.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(matrix_mod.MatrixError, match="does not exist"):
        matrix_mod.load(tmp_path / "versions.yaml")


def helm_tarball(member: str = "linux-amd64/helm") -> bytes:
    """A tarball laid out like Helm's (helm/helm@v3.21.0 Makefile `dist`: `tar -zcf helm-<v>-<os-arch>.tar.gz
    <os-arch>`, so the binary is linux-amd64/helm beside LICENSE and README.md)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in ((member, b"#!/bin/sh\necho v3.21.0\n"), ("linux-amd64/LICENSE", b"Apache")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def test_helm_is_pinned_to_the_release_istio_builds_with():
    helm = M.helm["linux-amd64"]
    # istio/istio 1.30.3 go.mod: helm.sh/helm/v3 v3.21.0; the digest from Helm's v3.21.0 release notes
    assert helm.version == "v3.21.0"
    assert helm.url == "https://get.helm.sh/helm-v3.21.0-linux-amd64.tar.gz"
    assert helm.sha256 == "0093eb572e3d2380f094df162ddb525e219249de88957afe24cfbb19632acd36"
    assert helm.member == "linux-amd64/helm"


def test_install_puts_the_verified_pinned_helm_into_dest(tmp_path):
    from dataclasses import replace

    tarball = helm_tarball()
    url = M.helm["linux-amd64"].url
    digest = hashlib.sha256(tarball).hexdigest()
    pinned = replace(M, helm={"linux-amd64": replace(M.helm["linux-amd64"], sha256=digest)})
    made = matrix_mod.install(pinned, tmp_path / "a", [], with_kind=False, fetch=fake_fetcher({url: tarball}),
                              helm=True)
    assert made == [tmp_path / "a" / "helm"] and made[0].read_bytes().startswith(b"#!/bin/sh")
    assert made[0].stat().st_mode & 0o111
    # the real pin: a tarball with other bytes is refused and nothing is left behind
    with pytest.raises(SystemExit, match="checksum mismatch"):
        matrix_mod.install(M, tmp_path / "b", [], with_kind=False, fetch=fake_fetcher({url: tarball}), helm=True)
    assert not (tmp_path / "b" / "helm").exists()
    # unpinned: Helm's published `.sha256sum` ("<digest>  <file>") decides, with a warning to pin it
    unpinned = replace(M, helm={"linux-amd64": replace(M.helm["linux-amd64"], sha256=None)})
    sums = {url: tarball, url + ".sha256sum": f"{digest}  helm-v3.21.0-linux-amd64.tar.gz\n".encode()}
    assert matrix_mod.install(unpinned, tmp_path / "c", [], with_kind=False, fetch=fake_fetcher(sums),
                              helm=True) == [tmp_path / "c" / "helm"]
    sums[url + ".sha256sum"] = f"{'0' * 64}  helm-v3.21.0-linux-amd64.tar.gz\n".encode()
    with pytest.raises(SystemExit, match="checksum mismatch"):
        matrix_mod.install(unpinned, tmp_path / "d", [], with_kind=False, fetch=fake_fetcher(sums), helm=True)
    # a tarball without the binary where Helm puts it
    other = helm_tarball("darwin-amd64/helm")
    odd = replace(M, helm={"linux-amd64": replace(M.helm["linux-amd64"], sha256=hashlib.sha256(other).hexdigest())})
    with pytest.raises(SystemExit, match="linux-amd64/helm not found"):
        matrix_mod.install(odd, tmp_path / "e", [], with_kind=False, fetch=fake_fetcher({url: other}), helm=True)


def test_helm_version_on_the_command_line(capsys):
    assert matrix_mod.main(["get", "helm-version"]) == 0
    assert capsys.readouterr().out.strip() == "v3.21.0"
