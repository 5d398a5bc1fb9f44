"""Reading and verifying an OCI image layout (the form skopeo normalises every source to).

Everything in a layout is untrusted input: digests are checked for form before they become
paths, JSON blobs are bounded in size, and every blob is hashed and compared with the digest
and size its parent names. Each layer is hashed twice in one pass: compressed (the
manifest's digest) and uncompressed (the config's `rootfs.diff_ids`), so a corrupted layer
is caught whichever format it came in.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zlib
from pathlib import Path
from typing import Callable, Optional

from kvmvm.images.errors import ImageImportError
from kvmvm.images.tools import which

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
JSON_LIMIT = 4 << 20          # manifests, indexes and configs are a few KiB
CHUNK = 1 << 20

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": None,
}
REF_NAME = "org.opencontainers.image.ref.name"


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]


def check_digest(digest, what: str = "digest") -> str:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise ImageImportError(f"malformed {what} {str(digest)[:80]!r} (only sha256 digests are supported)")
    return digest


def blob_path(layout: Path, digest: str) -> Path:
    check_digest(digest)
    return layout / "blobs" / "sha256" / digest[7:]


def _descriptor(d, what: str) -> tuple[str, int]:
    if not isinstance(d, dict):
        raise ImageImportError(f"malformed {what} descriptor")
    size = d.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageImportError(f"malformed {what} descriptor: bad size {size!r}")
    return check_digest(d.get("digest"), f"{what} digest"), size


def read_json_blob(layout: Path, desc: dict, what: str) -> tuple[bytes, dict]:
    """A manifest or config blob: size-bounded, digest-checked, parsed."""
    digest, size = _descriptor(desc, what)
    if size > JSON_LIMIT:
        raise ImageImportError(f"{what} {short(digest)} is {size} bytes (limit {JSON_LIMIT})")
    p = blob_path(layout, digest)
    try:
        with open(p, "rb") as f:
            data = f.read(JSON_LIMIT + 1)
    except FileNotFoundError:
        raise ImageImportError(f"{what} {short(digest)} is missing from the image") from None
    if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageImportError(f"{what} {short(digest)} does not match its digest (corrupt image)")
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ImageImportError(f"{what} {short(digest)} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ImageImportError(f"{what} {short(digest)} is not a JSON object")
    return data, obj


def read_index(layout: Path) -> dict:
    try:
        data = (layout / "index.json").read_bytes()[: JSON_LIMIT + 1]
        idx = json.loads(data)
    except (OSError, ValueError) as e:
        raise ImageImportError(f"{layout}: unreadable index.json ({e})") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("manifests"), list):
        raise ImageImportError(f"{layout}: index.json has no manifests list")
    return idx


def find_manifest(layout: Path, ref: Optional[str]) -> dict:
    """The descriptor of the manifest tagged `ref` (or the only one) in index.json."""
    ms = read_index(layout)["manifests"]
    if ref is not None:
        ms = [m for m in ms if isinstance(m, dict) and m.get("annotations", {}).get(REF_NAME) == ref]
    if len(ms) != 1:
        raise ImageImportError(f"{layout}: expected one manifest{' tagged ' + ref if ref else ''}, found {len(ms)}")
    return ms[0]


_OCI_LAYER = {None: "application/vnd.oci.image.layer.v1.tar",
              "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
              "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def fix_layer_media_types(layout: Path, ref: str) -> dict:
    """Make each layer's media type say its real compression, rewriting the manifest (and
    its entry in index.json) when one does not; returns the manifest's descriptor.

    skopeo 1.9 copies a docker-archive's uncompressed layers under "+gzip" media types
    when it is told not to compress them, and umoci then refuses them."""
    desc = find_manifest(layout, ref)
    _, manifest = read_json_blob(layout, desc, "manifest")
    changed = False
    for layer in manifest.get("layers") or []:
        if not isinstance(layer, dict) or layer.get("mediaType") not in LAYER_TYPES:
            continue
        try:
            real = sniff(blob_path(layout, check_digest(layer.get("digest"), "layer digest")))
        except OSError:
            continue                    # verify() says what is missing
        if LAYER_TYPES[layer["mediaType"]] != real:
            layer["mediaType"] = _OCI_LAYER[real]
            changed = True
    if not changed:
        return desc
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    idx = read_index(layout)
    for m in idx["manifests"]:
        if isinstance(m, dict) and m.get("annotations", {}).get(REF_NAME) == ref:
            m["digest"], m["size"] = digest, len(data)
            m["mediaType"] = MT_MANIFEST
    (layout / "index.json").write_text(json.dumps(idx))
    return find_manifest(layout, ref)


class Verified:
    """What verification established about one image (digests and sizes from its blobs)."""

    def __init__(self, manifest_digest: str, manifest: dict, manifest_bytes: bytes,
                 config_digest: str, config: dict, layers: list[dict], diff_ids: list[str],
                 uncompressed: list[int]):
        self.manifest_digest = manifest_digest
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.config_digest = config_digest
        self.config = config
        self.layers = layers
        self.diff_ids = diff_ids
        self.uncompressed = uncompressed

    @property
    def blobs(self) -> list[str]:
        return [self.manifest_digest, self.config_digest] + [l["digest"] for l in self.layers]


Advance = Callable[[int], None]


def sniff(path: Path) -> Optional[str]:
    """The layer's compression by its first bytes: media types cannot be trusted for it
    (skopeo 1.9 labels the uncompressed layers of a docker-archive "+gzip")."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def _hash_layer(path: Path, compression: Optional[str], advance: Advance) -> tuple[str, int, str, int]:
    """(digest, size, diff_id, uncompressed size) of one layer blob, read once."""
    outer, inner = hashlib.sha256(), hashlib.sha256()
    size = usize = 0
    if compression == "zstd":
        return _hash_zstd(path, advance)
    d = zlib.decompressobj(wbits=31) if compression == "gzip" else None
    in_member = False                   # a gzip member has begun and not yet ended
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(CHUNK), b""):
            outer.update(buf)
            size += len(buf)
            advance(len(buf))
            if d is None:
                usize += len(buf)       # uncompressed: the diff_id is the digest
                continue
            while buf:
                try:
                    out = d.decompress(buf)
                except zlib.error as e:
                    raise ImageImportError(f"layer {path.name[:12]} is not valid gzip ({e})") from None
                in_member = True
                inner.update(out)
                usize += len(out)
                buf = b""
                if d.eof:                           # concatenated gzip members
                    buf, d, in_member = d.unused_data, zlib.decompressobj(wbits=31), False
    if in_member:
        raise ImageImportError(f"layer {path.name[:12]} is truncated (its gzip stream ends early)")
    if d is None:
        return "sha256:" + outer.hexdigest(), size, "sha256:" + outer.hexdigest(), usize
    return "sha256:" + outer.hexdigest(), size, "sha256:" + inner.hexdigest(), usize


def _hash_zstd(path: Path, advance: Advance) -> tuple[str, int, str, int]:
    outer, inner = hashlib.sha256(), hashlib.sha256()
    size = usize = 0
    p = subprocess.Popen([which("zstd"), "-dcq", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(CHUNK), b""):
            outer.update(buf)
            size += len(buf)
            advance(len(buf))
    for buf in iter(lambda: p.stdout.read(CHUNK), b""):
        inner.update(buf)
        usize += len(buf)
    if p.wait() != 0:
        raise ImageImportError(f"layer {path.name[:12]} is not valid zstd (corrupt or truncated)")
    return "sha256:" + outer.hexdigest(), size, "sha256:" + inner.hexdigest(), usize


def verify(layout: Path, manifest_desc: dict, advance: Advance = lambda n: None,
           layer_done: Callable[[int, int, str], None] = lambda i, n, d: None) -> Verified:
    """Check one image of the layout end to end; ImageImportError (one line) otherwise."""
    mbytes, manifest = read_json_blob(layout, manifest_desc, "manifest")
    mdigest = manifest_desc["digest"]
    mt = manifest.get("mediaType", manifest_desc.get("mediaType"))
    if mt == MT_INDEX or "manifests" in manifest:
        raise ImageImportError("the image is an index (several platforms): skopeo should have picked one")
    if manifest.get("schemaVersion") != 2:
        raise ImageImportError(f"manifest {short(mdigest)}: unsupported schemaVersion {manifest.get('schemaVersion')!r}")
    cbytes, config = read_json_blob(layout, manifest.get("config"), "config")
    cdigest = manifest["config"]["digest"]
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageImportError(f"manifest {short(mdigest)} has no layers list")
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise ImageImportError(f"config {short(cdigest)}: rootfs.diff_ids does not list one digest per layer "
                               f"({len(diff_ids) if isinstance(diff_ids, list) else 'none'} for {len(layers)} layers)")
    for d in diff_ids:
        check_digest(d, "diff_id")
    uncompressed = []
    for i, layer in enumerate(layers):
        digest, size = _descriptor(layer, f"layer {i + 1}")
        mtype = layer.get("mediaType")
        if mtype not in LAYER_TYPES:
            raise ImageImportError(f"layer {i + 1} ({short(digest)}): unsupported media type {str(mtype)[:80]!r}")
        p = blob_path(layout, digest)
        try:
            actual_size = p.stat().st_size
        except FileNotFoundError:
            raise ImageImportError(f"layer {i + 1} ({short(digest)}) is missing from the image") from None
        if actual_size != size:
            raise ImageImportError(f"layer {i + 1} ({short(digest)}) is {actual_size} bytes, the manifest says {size} (truncated or corrupt)")
        got, _, diff_id, usize = _hash_layer(p, sniff(p), advance)
        if got != digest:
            raise ImageImportError(f"layer {i + 1} ({short(digest)}) does not match its digest (corrupt)")
        if diff_id != diff_ids[i]:
            raise ImageImportError(f"layer {i + 1} ({short(digest)}): its content does not match the config's "
                                   f"diff_id {short(diff_ids[i])} (corrupt or truncated layer)")
        uncompressed.append(usize)
        layer_done(i, len(layers), digest)
    return Verified(mdigest, manifest, mbytes, cdigest, config, layers, diff_ids, uncompressed)
