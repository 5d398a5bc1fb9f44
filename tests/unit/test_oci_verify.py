"""OCI layout verification against hand-made layouts (hostile input; no tools needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from kvmvm.images import oci
from kvmvm.images.errors import ImageImportError


def _tar(files: dict) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for n, d in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            tf.addfile(ti, io.BytesIO(d))
    return b.getvalue()


def _put(layout, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def make(layout, layers=(b"",), gz=True, config_extra=None, diff_ids=None):
    raw = [_tar({"f": l}) for l in layers]
    blobs = [gzip.compress(r) if gz else r for r in raw]
    descs = [dict(_put(layout, b), mediaType=oci.MT_MANIFEST.replace("manifest.v1+json", "layer.v1.tar+gzip" if gz else "layer.v1.tar"))
             for b in blobs]
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else
                      ["sha256:" + hashlib.sha256(r).hexdigest() for r in raw]}}
    cfg.update(config_extra or {})
    c = dict(_put(layout, json.dumps(cfg).encode()), mediaType=oci.MT_CONFIG)
    m = {"schemaVersion": 2, "mediaType": oci.MT_MANIFEST, "config": c, "layers": descs}
    md = dict(_put(layout, json.dumps(m).encode()), mediaType=oci.MT_MANIFEST,
              annotations={oci.REF_NAME: "t"})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [md]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return md, m, descs


def test_good_layout(tmp_path):
    md, m, _ = make(tmp_path, layers=(b"a" * 100000, b"b"))
    v = oci.verify(tmp_path, oci.find_manifest(tmp_path, "t"))
    assert v.config["config"]["Cmd"] == ["/bin/sh"]
    assert v.uncompressed == [len(_tar({"f": b"a" * 100000})), len(_tar({"f": b"b"}))]
    v2 = oci.verify(tmp_path / ".." / tmp_path.name, md)
    assert v2.config_digest == v.config_digest


def test_uncompressed_layer_diff_id_is_its_digest(tmp_path):
    md, _, descs = make(tmp_path, gz=False)
    v = oci.verify(tmp_path, md)
    assert v.diff_ids[0] == descs[0]["digest"]


@pytest.mark.parametrize("digest", ["sha256:../../../etc/passwd", "sha512:" + "0" * 128,
                                    "sha256:" + "A" * 64, 12, None])
def test_malformed_digests_never_become_paths(tmp_path, digest):
    md, m, _ = make(tmp_path)
    m["layers"][0]["digest"] = digest
    data = json.dumps(m).encode()
    md = dict(_put(tmp_path, data), mediaType=oci.MT_MANIFEST)
    with pytest.raises(ImageImportError, match="malformed"):
        oci.verify(tmp_path, md)


def test_layer_corruptions(tmp_path):
    md, m, descs = make(tmp_path, layers=(b"x" * 5000,))
    p = oci.blob_path(tmp_path, descs[0]["digest"])
    good = p.read_bytes()
    p.write_bytes(good[:-10])
    with pytest.raises(ImageImportError, match="truncated or corrupt"):
        oci.verify(tmp_path, md)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 1
    p.write_bytes(bytes(bad))
    with pytest.raises(ImageImportError, match="does not match its digest|not valid gzip"):
        oci.verify(tmp_path, md)
    p.unlink()
    with pytest.raises(ImageImportError, match="missing"):
        oci.verify(tmp_path, md)


def test_diff_id_mismatch_and_count(tmp_path):
    md, _, _ = make(tmp_path / "a", diff_ids=["sha256:" + "0" * 64])
    with pytest.raises(ImageImportError, match="diff_id"):
        oci.verify(tmp_path / "a", md)
    md, _, _ = make(tmp_path / "b", diff_ids=[])
    with pytest.raises(ImageImportError, match="one digest per layer"):
        oci.verify(tmp_path / "b", md)


def test_json_blobs_are_bounded_and_checked(tmp_path):
    md, m, _ = make(tmp_path)
    big = dict(md, size=oci.JSON_LIMIT + 1)
    with pytest.raises(ImageImportError, match="limit"):
        oci.verify(tmp_path, big)
    with pytest.raises(ImageImportError, match="does not match its digest"):
        oci.verify(tmp_path, dict(md, size=md["size"] - 1))
    junk = _put(tmp_path, b"[1, 2]")
    with pytest.raises(ImageImportError, match="not a JSON object"):
        oci.verify(tmp_path, junk)


def test_fix_media_types(tmp_path):
    md, m, descs = make(tmp_path, gz=False)
    m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"   # skopeo 1.9's label
    data = json.dumps(m).encode()
    wrong = dict(_put(tmp_path, data), mediaType=oci.MT_MANIFEST, annotations={oci.REF_NAME: "t"})
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [wrong]}))
    fixed = oci.fix_layer_media_types(tmp_path, "t")
    assert fixed["digest"] != wrong["digest"]
    _, man = oci.read_json_blob(tmp_path, fixed, "manifest")
    assert man["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    oci.verify(tmp_path, fixed)
    assert oci.fix_layer_media_types(tmp_path, "t") == fixed       # nothing more to fix
