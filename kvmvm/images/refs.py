"""Image names and import sources.

Names are kept in their short ("familiar") form, as docker prints them: `docker.io/library/`
and `localhost/` are dropped and a missing tag is `latest`, so `alpine`,
`docker.io/library/alpine:latest` and `alpine:latest` are one name, and an image podman
calls `localhost/app:1` is `app:1`.

A source is what `kvmvm image import` accepts: a docker-archive or OCI archive tarball, an
OCI layout directory, `podman:NAME`, or a registry reference (`docker://...`); explicit
skopeo transports (`docker-archive:`, `oci-archive:`, `oci:`) pass through.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Optional

from kvmvm.errors import ConfigError
from kvmvm.images.errors import ImageImportError
from kvmvm.record import Factory, record

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_REPO = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]+$")
MEMBER_LIMIT = 200_000          # tar members looked at when telling archive kinds apart
JSON_LIMIT = 4 << 20


def split_name(name: str) -> tuple[str, str]:
    """(repository, tag) of a name; the tag defaults to latest. ConfigError if malformed."""
    if "@" in name:
        raise ConfigError(f"{name!r}: a name with a digest (@sha256:...) cannot be a tag; use the digest alone")
    repo, tag = name, "latest"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        repo, tag = name[:colon], name[colon + 1:]
    if not _REPO.match(repo) or not _TAG.match(tag):
        raise ConfigError(f"{name!r} is not a valid image name (NAME[:TAG], lower case)")
    return repo, tag


def familiar(name: str) -> str:
    """The short form of a full name: `docker.io/library/alpine` -> `alpine:latest`."""
    repo, tag = split_name(name)
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/", "localhost/"):
        if repo.startswith(prefix):
            repo = repo[len(prefix):]
            break
    return f"{repo}:{tag}"


def looks_like_digest(ref: str) -> Optional[str]:
    """The hex part of `sha256:HEX...` or of a bare hex prefix (at least 4 digits), else None."""
    h = ref[7:] if ref.startswith("sha256:") else ref
    if 4 <= len(h) <= 64 and _HEX.match(h):
        return h
    return None


@record
class SourceImage:
    """One image of a source: the skopeo reference that copies it, and its names."""

    ref: str
    names: list = Factory(list)


@record
class Source:
    kind: str                       # docker-archive | oci-archive | oci-layout | podman | registry
    text: str                       # as the user wrote it
    path: Optional[Path] = None
    images: list = Factory(list)    # [SourceImage]; filled by `probe` (podman: after the save)


_TRANSPORTS = ("docker-archive:", "oci-archive:", "oci:")


def _pathlike(src: str) -> bool:
    return (src.startswith(("/", "./", "../", "~")) or src.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst"))
            or os.sep in src and not _REPO.match(src.rsplit(":", 1)[0]))


def parse_source(src: str) -> Source:
    """What kind of source `src` is (no heavy I/O: archives are looked into by `probe`)."""
    if not src:
        raise ConfigError("no image source given")
    if src.startswith("podman:"):
        name = src[len("podman:"):]
        if not name:
            raise ConfigError("podman: needs an image name, e.g. podman:alpine:3.19")
        return Source("podman", src)
    if src.startswith("docker://"):
        return Source("registry", src, images=[SourceImage(src, _registry_names(src[9:]))])
    for t in _TRANSPORTS:
        if src.startswith(t):
            rest = src[len(t):]
            path, ref = _split_transport_path(rest)
            kind = {"docker-archive:": "docker-archive", "oci-archive:": "oci-archive", "oci:": "oci-layout"}[t]
            s = Source(kind, src, Path(path).expanduser())
            _must_exist(s.path, src)
            s.images = [SourceImage(src, [familiar(ref)] if ref and _is_full_name(ref) else [])] if ref else []
            return s
    p = Path(src).expanduser()
    if p.is_dir():
        if not (p / "oci-layout").is_file():
            raise ConfigError(f"{src}: a directory, but not an OCI image layout (no oci-layout file)")
        return Source("oci-layout", src, p)
    if p.exists():
        if not p.is_file():
            raise ConfigError(f"{src}: not a regular file or directory")
        return Source(_archive_kind(p), src, p)
    if _pathlike(src):
        raise ConfigError(f"{src}: no such file or directory")
    try:
        split_name(src)
    except ConfigError:
        raise ConfigError(f"{src}: no such file, and not an image reference either") from None
    return Source("registry", src, images=[SourceImage("docker://" + src, _registry_names(src))])


def _split_transport_path(rest: str) -> tuple[str, Optional[str]]:
    # path[:ref]: the last ':' splits only when what precedes it exists as a path
    if ":" in rest:
        path, ref = rest.split(":", 1)
        if os.path.exists(os.path.expanduser(path)):
            return path, ref
    return rest, None


def _must_exist(p: Path, src: str) -> None:
    if not p.exists():
        raise ConfigError(f"{src}: {p}: no such file or directory")


def _is_full_name(ref: str) -> bool:
    try:
        split_name(ref)
    except ConfigError:
        return False
    return "/" in ref or ":" in ref


def _registry_names(ref: str) -> list:
    if "@" in ref:
        return []
    return [familiar(ref)]


def _archive_kind(p: Path) -> str:
    end = 0
    try:
        with tarfile.open(p, "r:*") as tf:
            names = set()
            for i, m in enumerate(tf):
                names.add(m.name.lstrip("./") if m.name not in (".", "./") else ".")
                end = max(end, m.offset_data + (m.size if m.isfile() else 0))
                if i >= MEMBER_LIMIT:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        if "unexpected end of data" in str(e):
            raise ImageImportError(f"{p}: the archive is truncated (unexpected end of data)") from None
        why = " ".join(str(e).split())     # tarfile's "r:*" lists each method on a line of its own
        raise ImageImportError(f"{p}: not a readable tar archive ({why})") from None
    with open(p, "rb") as f:
        magic = f.read(4)
        size = p.stat().st_size
        f.seek(max(0, size - 1024))
        tail = f.read(1024)
    compressed = magic[:2] == b"\x1f\x8b" or magic in (b"\x28\xb5\x2f\xfd", b"\xfd7zX") or magic[:3] == b"BZh"
    # every tool that writes image archives ends them with the two zero blocks tar prescribes
    if not compressed and (end > size or tail.count(0) != len(tail) or size < 1024):
        raise ImageImportError(f"{p}: the archive is truncated (it does not end where tar says it should)")
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise ImageImportError(f"{p}: neither a docker-archive (no manifest.json) nor an OCI archive (no oci-layout)")


def _tar_json(p: Path, member: str):
    try:
        with tarfile.open(p, "r:*") as tf:
            for m in tf:
                if m.name.lstrip("./") == member and m.isfile():
                    if m.size > JSON_LIMIT:
                        raise ImageImportError(f"{p}: {member} is too large ({m.size} bytes)")
                    return json.loads(tf.extractfile(m).read())
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise ImageImportError(f"{p}: unreadable {member} ({e})") from None
    raise ImageImportError(f"{p}: no {member}")


def _names_of(tags) -> list:
    out = []
    for t in tags or []:
        if isinstance(t, str):
            try:
                n = familiar(t)
            except ConfigError:
                continue
            if n not in out:
                out.append(n)
    return out


def probe(s: Source) -> Source:
    """Fill `s.images` from the archive's own index: one entry per image it holds."""
    if s.images:
        return s
    if s.kind == "docker-archive":
        man = _tar_json(s.path, "manifest.json")
        if not isinstance(man, list) or not man:
            raise ImageImportError(f"{s.text}: manifest.json lists no images")
        if len(man) == 1:
            s.images = [SourceImage(f"docker-archive:{s.path}", _names_of(man[0].get("RepoTags")) if isinstance(man[0], dict) else [])]
        else:
            s.images = [SourceImage(f"docker-archive:{s.path}:@{i}", _names_of(m.get("RepoTags")) if isinstance(m, dict) else [])
                        for i, m in enumerate(man)]
        return s
    if s.kind in ("oci-archive", "oci-layout"):
        if s.kind == "oci-archive":
            idx = _tar_json(s.path, "index.json")
        else:
            try:
                idx = json.loads((s.path / "index.json").read_bytes()[:JSON_LIMIT])
            except (OSError, ValueError) as e:
                raise ImageImportError(f"{s.text}: unreadable index.json ({e})") from None
        ms = idx.get("manifests") if isinstance(idx, dict) else None
        if not isinstance(ms, list) or not ms:
            raise ImageImportError(f"{s.text}: index.json lists no images")
        transport = "oci-archive" if s.kind == "oci-archive" else "oci"
        if len(ms) == 1:
            refs = [_ref_name(ms[0])]
            s.images = [SourceImage(f"{transport}:{s.path}", _oci_names(ms[0]))]
            return s
        refs = [_ref_name(m) for m in ms]
        if any(r is None for r in refs) or len(set(refs)) != len(refs):
            raise ImageImportError(f"{s.text}: holds {len(ms)} images, not all with a distinct ref name; "
                                   f"name one as {transport}:{s.path}:REF")
        s.images = [SourceImage(f"{transport}:{s.path}:{r}", _oci_names(m)) for r, m in zip(refs, ms)]
        return s
    return s


def _ref_name(m) -> Optional[str]:
    if not isinstance(m, dict):
        return None
    ann = m.get("annotations") or {}
    r = ann.get("org.opencontainers.image.ref.name") if isinstance(ann, dict) else None
    return r if isinstance(r, str) and r else None


def _oci_names(m) -> list:
    ann = (m.get("annotations") or {}) if isinstance(m, dict) else {}
    if not isinstance(ann, dict):
        return []
    cands = [ann.get("io.containerd.image.name"), ann.get("org.opencontainers.image.ref.name")]
    return _names_of([c for c in cands if isinstance(c, str) and _is_full_name(c)])[:1]
