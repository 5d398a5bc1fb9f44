"""Image names, digests and import sources (no tools needed)."""

from __future__ import annotations

import json
import tarfile

import pytest

from kvmvm.errors import ConfigError
from kvmvm.images.errors import ImageImportError, ImageNotFound
from kvmvm.images.refs import familiar, looks_like_digest, parse_source, probe, split_name
from kvmvm.errors import KvmvmError


@pytest.mark.parametrize("name,short", [
    ("alpine", "alpine:latest"),
    ("alpine:3.19", "alpine:3.19"),
    ("docker.io/library/alpine:3.19", "alpine:3.19"),
    ("docker.io/bitnami/redis", "bitnami/redis:latest"),
    ("localhost/kvmvm-test:1", "kvmvm-test:1"),
    ("quay.io/podman/hello:v1.2", "quay.io/podman/hello:v1.2"),
    ("localhost:5000/app:dev", "localhost:5000/app:dev"),
    ("my.registry:5000/a/b", "my.registry:5000/a/b:latest"),
])
def test_familiar(name, short):
    assert familiar(name) == short


@pytest.mark.parametrize("bad", ["Alpine", "alpine:", "alpine:-x", "a b", "alpine@sha256:" + "0" * 64, "/abs", ""])
def test_bad_names(bad):
    with pytest.raises(ConfigError):
        split_name(bad)


def test_digests():
    h = "ab" * 32
    assert looks_like_digest("sha256:" + h) == h
    assert looks_like_digest(h[:12]) == h[:12]
    assert looks_like_digest("abc") is None            # too short to mean a digest
    assert looks_like_digest("alpine") is None


def test_errors_are_kvmvm_errors():
    e = ImageNotFound("image 'x' not found")
    assert isinstance(e, LookupError) and isinstance(e, KvmvmError)
    assert str(e) == "image 'x' not found" and e.exit_code == 1


def test_sources(tmp_path):
    assert parse_source("podman:alpine:3.19").kind == "podman"
    s = parse_source("docker://docker.io/library/alpine:3.19")
    assert s.kind == "registry" and s.images[0].names == ["alpine:3.19"]
    s = parse_source("busybox")                      # neither a file nor a transport: a registry ref
    assert s.kind == "registry" and s.images[0].ref == "docker://busybox"
    with pytest.raises(ConfigError, match="no such file"):
        parse_source("./missing.tar")
    with pytest.raises(ConfigError, match="no such file"):
        parse_source(str(tmp_path / "x.tar"))
    with pytest.raises(ConfigError, match="not an OCI image layout"):
        parse_source(str(tmp_path))
    with pytest.raises(ConfigError, match="needs an image name"):
        parse_source("podman:")
    (tmp_path / "oci-layout").write_text("{}")
    assert parse_source(str(tmp_path)).kind == "oci-layout"


def _tar(path, members: dict):
    import io

    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_probe_docker_archive_several_images(tmp_path):
    man = [{"Config": "a.json", "RepoTags": ["docker.io/library/alpine:3.19", "localhost/x:1"], "Layers": []},
           {"Config": "b.json", "RepoTags": None, "Layers": []}]
    p = _tar(tmp_path / "d.tar", {"manifest.json": json.dumps(man).encode()})
    s = probe(parse_source(str(p)))
    assert s.kind == "docker-archive"
    assert [i.ref for i in s.images] == [f"docker-archive:{p}:@0", f"docker-archive:{p}:@1"]
    assert s.images[0].names == ["alpine:3.19", "x:1"] and s.images[1].names == []


def test_probe_oci_archive_names(tmp_path):
    idx = {"schemaVersion": 2, "manifests": [
        {"digest": "sha256:" + "1" * 64, "size": 1, "annotations": {"org.opencontainers.image.ref.name": "localhost/app:2"}},
        {"digest": "sha256:" + "2" * 64, "size": 1, "annotations": {"org.opencontainers.image.ref.name": "3.19"}}]}
    p = _tar(tmp_path / "o.tar", {"oci-layout": b"{}", "index.json": json.dumps(idx).encode()})
    s = probe(parse_source(str(p)))
    assert s.kind == "oci-archive"
    assert [(i.ref, i.names) for i in s.images] == [(f"oci-archive:{p}:localhost/app:2", ["app:2"]),
                                                    (f"oci-archive:{p}:3.19", [])]
    idx["manifests"][1]["annotations"] = {}
    p2 = _tar(tmp_path / "o2.tar", {"oci-layout": b"{}", "index.json": json.dumps(idx).encode()})
    with pytest.raises(ImageImportError, match="distinct ref name"):
        probe(parse_source(str(p2)))


def test_probe_rejects_non_images(tmp_path):
    p = _tar(tmp_path / "junk.tar", {"hello": b"x"})
    with pytest.raises(ImageImportError, match="neither"):
        parse_source(str(p))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(_tar(tmp_path / "big.tar", {"manifest.json": b"[]", "x": b"y" * 10000}).read_bytes()[:3000])
    with pytest.raises(ImageImportError, match="truncated"):
        parse_source(str(cut))
