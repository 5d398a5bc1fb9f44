"""The content-addressed container image store under $KVMVM_HOME/images (docs/images.md).

    blobs/sha256/<hex>        verified manifests, configs and layers (read-only, shared)
    ids/<hex>/meta.json       one imported image, named by its config digest
    ids/<hex>/rootfs.erofs    its layers applied, packed once, shared read-only by every VM
    ids/<hex>/.use            held with a shared flock by each VM running the image
    names.json                {"alpine:3.19": "sha256:<config digest>", ...}
    locks/<hex>.lock          one import/build of an image at a time
    .lock                     the store: publishing, names, removal and blob collection
    tmp/<dir>/                an import in progress; its .owner flock tells a live one from a leftover
    /dev/shm/kvmvm-unpack-*   an import's layers applied in memory (when they fit), same .owner rule

An image is known by its config digest, which is podman's image ID (`podman images
--no-trunc`): the same image gets the same digest whichever archive format it came in,
whereas manifest digests change when a tool converts between formats. Every import goes
through skopeo into a private OCI layout, is verified blob by blob (oci.py), unpacked by
umoci and packed by mkfs (rootfs.py), then published by rename under the store lock, so a
reader sees a complete image or none, and an interrupted import leaves only a tmp/ entry
that the next import or prune removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from kvmvm.errors import ConfigError
from kvmvm.image.cache import atomic_write, kvmvm_home
from kvmvm.images import oci, rootfs
from kvmvm.images.errors import ImageImportError, ImageInUse, ImageNotFound
from kvmvm.images.progress import ImportProgress
from kvmvm.images.refs import Source, familiar, looks_like_digest, parse_source, probe
from kvmvm.images.tools import last_line, run, which

DEFAULT_FSTYPE = "erofs"
META_SCHEMA = 1
STALE_S = 60          # a tmp/ entry without an .owner lock this old is a leftover
SHM = Path("/dev/shm")
SHM_PREFIX = "kvmvm-unpack-"
_NET_WORDS = ("dial tcp", "lookup ", "no such host", "network is unreachable", "connection refused",
              "i/o timeout", "TLS handshake", "server misbehaving", "pinging container registry")


def _skopeo_reason(text: str) -> str:
    """skopeo's last line without its logrus wrapping (time=... level=fatal msg="...")."""
    line = last_line(text)
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rstrip('"').replace('\\"', '"')
    return line


@dataclass(frozen=True, eq=False)
class Image:
    """One image of the store. `digest` is the config digest (podman's image ID)."""

    digest: str
    names: list
    config: dict                    # the OCI config's "config" object: Entrypoint, Cmd, Env, ...
    manifest_digest: str
    created: Optional[str]
    size: int                       # bytes of the uncompressed layers (podman's SIZE)
    layers: list                    # diff_ids, bottom first
    architecture: str
    os: str
    rootfs_type: str
    store: "ImageStore" = field(repr=False, default=None)
    assigned: tuple = field(repr=False, default=())     # the names an import just gave it

    @property
    def id(self) -> str:
        return self.digest[7:]

    @property
    def dir(self) -> Path:
        return self.store.ids / self.id

    @property
    def rootfs(self) -> Path:
        """The read-only filesystem image of the merged layers (built now if missing)."""
        p = self.dir / f"rootfs.{self.rootfs_type}"
        if not p.exists():
            self.store._build_rootfs(self)
        return p

    @contextlib.contextmanager
    def use(self) -> Iterator["Image"]:
        """Hold the image for a running VM: `kvmvm image rm` refuses it meanwhile."""
        try:
            f = open(self.dir / ".use", "rb")
        except FileNotFoundError:
            raise ImageNotFound(f"image {self.id[:12]} was removed") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield self

    def to_json(self) -> dict:
        p = self.dir / f"rootfs.{self.rootfs_type}"
        return {"digest": self.digest, "id": self.id[:12], "names": list(self.names),
                "manifest_digest": self.manifest_digest, "created": self.created, "size": self.size,
                "architecture": self.architecture, "os": self.os, "layers": len(self.layers),
                "rootfs": str(p) if p.exists() else None, "rootfs_type": self.rootfs_type,
                "rootfs_size": p.stat().st_size if p.exists() else None}


@dataclass
class PruneResult:
    images: list = field(default_factory=list)      # digests removed
    blobs: int = 0
    bytes: int = 0


class ImageStore:
    """Container images under `root` (default $KVMVM_HOME/images)."""

    def __init__(self, root=None, rootfs_type: str = DEFAULT_FSTYPE):
        if rootfs_type not in rootfs.FSTYPES:
            raise ConfigError(f"unknown rootfs type {rootfs_type!r} (known: {', '.join(rootfs.FSTYPES)})")
        self.root = Path(root) if root is not None else kvmvm_home() / "images"
        self.rootfs_type = rootfs_type
        self.blobs = self.root / "blobs" / "sha256"
        self.ids = self.root / "ids"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.names_file = self.root / "names.json"

    # ---- locks and staging -------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, path: Path, block: bool = True) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            yield

    def _store_lock(self):
        return self._flock(self.root / ".lock")

    def _image_lock(self, hexd: str, block: bool = True):
        return self._flock(self.locks / f"{hexd}.lock", block)

    @contextlib.contextmanager
    def _staging(self, parent: Optional[Path] = None, prefix: str = "") -> Iterator[Path]:
        parent = self.tmp if parent is None else parent
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        owner = open(work / ".owner", "w")
        fcntl.flock(owner, fcntl.LOCK_EX)
        try:
            yield work
        finally:
            _rmtree(work)
            owner.close()

    def reclaim(self) -> int:
        """Remove tmp/ entries (and in-memory unpack trees) whose importing process is gone;
        returns how many."""
        n = 0
        try:
            entries = list(self.tmp.iterdir())
        except FileNotFoundError:
            entries = []
        with contextlib.suppress(OSError):
            entries += [d for d in SHM.iterdir() if d.name.startswith(SHM_PREFIX)]
        for d in entries:
            try:
                f = open(d / ".owner", "r")
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    if time.time() - d.lstat().st_mtime > STALE_S:
                        _rmtree(d)
                        n += 1
                continue
            except OSError:
                continue
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue                     # a live import
                _rmtree(d)
                n += 1
        return n

    # ---- names -------------------------------------------------------------------------
    def _names(self) -> dict:
        try:
            d = json.loads(self.names_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ImageImportError(f"{self.names_file} is corrupt ({e}); remove it to start afresh") from None
        return d if isinstance(d, dict) else {}

    def _write_names(self, names: dict) -> None:
        atomic_write(self.names_file, (json.dumps(names, indent=1, sort_keys=True) + "\n").encode())

    # ---- reading -----------------------------------------------------------------------
    def _load(self, hexd: str, names: Optional[dict] = None) -> Image:
        try:
            meta = json.loads((self.ids / hexd / "meta.json").read_text())
        except FileNotFoundError:
            raise ImageNotFound(f"image {hexd[:12]} not found") from None
        digest = meta["digest"]
        names = self._names() if names is None else names
        return Image(digest=digest, names=sorted(n for n, d in names.items() if d == digest),
                     config=meta.get("config") or {}, manifest_digest=meta["manifest_digest"],
                     created=meta.get("created"), size=meta.get("size", 0),
                     layers=[l["diff_id"] for l in meta.get("layers", [])],
                     architecture=meta.get("architecture", ""), os=meta.get("os", ""),
                     rootfs_type=self.rootfs_type, store=self)

    def _ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.ids.iterdir() if (p / "meta.json").is_file())
        except FileNotFoundError:
            return []

    def list(self) -> list[Image]:
        """Every image, newest first."""
        names = self._names()
        out = [self._load(h, names) for h in self._ids()]
        return sorted(out, key=lambda i: (i.created or "", i.digest), reverse=True)

    def resolve(self, ref: str) -> Image:
        """An image by name[:tag] (tag defaults to latest), or by full or short digest."""
        if not isinstance(ref, str) or not ref:
            raise ConfigError("no image given")
        names = self._names()
        try:
            name = familiar(ref)
        except ConfigError:
            name = None
        if name is not None and name in names:
            return self._load(names[name][7:], names)
        h = looks_like_digest(ref)
        if h is not None:
            hits = [x for x in self._ids() if x.startswith(h)]
            if len(hits) > 1:
                raise ConfigError(f"{ref!r} is ambiguous: {len(hits)} images start with it")
            if hits:
                return self._load(hits[0], names)
            if len(h) == 64:       # a manifest digest (what registries and docker print)
                for x in self._ids():
                    if self._load(x, names).manifest_digest == "sha256:" + h:
                        return self._load(x, names)
        raise ImageNotFound(f"image {ref!r} not found (kvmvm images lists them; kvmvm image import adds one)")

    # ---- importing ---------------------------------------------------------------------
    def import_(self, src: str, name: Optional[str] = None,
                progress: Optional[ImportProgress] = None) -> list[Image]:
        """Import every image of `src` (see refs.parse_source); returns them in order."""
        progress = progress or ImportProgress()
        if src == "-":
            return self._import_stdin(name, progress)
        source = parse_source(src)
        if name is not None:
            name = familiar(name)
        for tool in ("skopeo", "umoci", "mkfs.erofs" if self.rootfs_type == "erofs" else "mkfs.ext4"):
            which(tool)                 # a missing one is named before any work is done
        self.reclaim()
        out = []
        with self._staging() as work:
            if source.kind == "podman":
                source = self._podman_save(source, work, progress)
            probe(source)
            if name is not None and len(source.images) != 1:
                raise ConfigError(f"{src} holds {len(source.images)} images: --name needs exactly one")
            layout = work / "layout"
            for i, si in enumerate(source.images):
                ref = f"img{i}"
                progress.phase(f"copying {_brief(si.ref)}")
                self._skopeo_copy(si.ref, layout, ref, work, source.kind)
                desc = oci.fix_layer_media_types(layout, ref)
                _, man = oci.read_json_blob(layout, desc, "manifest")
                layers = man.get("layers") if isinstance(man.get("layers"), list) else []
                total = sum(l["size"] for l in layers if isinstance(l, dict) and isinstance(l.get("size"), int))
                progress.phase(f"verifying {len(layers)} layer{'s' if len(layers) != 1 else ''}", total=total or None)
                v = oci.verify(layout, desc, *self._verify_progress(layout, progress))
                self._check_platform(v)
                names = [name] if name is not None else list(si.names)
                out.append(self._publish(layout, ref, v, names, work, progress))
        return out

    def _import_stdin(self, name: Optional[str], progress: ImportProgress) -> list[Image]:
        """`podman save IMG | kvmvm image import -`: the archive is spooled to the store's tmp/."""
        import sys

        self.tmp.mkdir(parents=True, exist_ok=True)
        with self._staging() as spool:
            tar = spool / "stdin.tar"
            progress.phase("reading the archive from stdin")
            with open(tar, "wb") as f:
                for buf in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
                    f.write(buf)
                    progress.advance(len(buf))
            if tar.stat().st_size == 0:
                raise ConfigError("import -: nothing on stdin (pipe an archive in: podman save IMAGE | kvmvm image import -)")
            return self.import_(str(tar), name=name, progress=progress)

    def _podman_save(self, source: Source, work: Path, progress: ImportProgress) -> Source:
        # an OCI archive keeps podman's config blob as is, so the digest is podman's image ID
        # (a docker-archive would have it rewritten)
        pname = source.text[len("podman:"):]
        tar = work / "podman.tar"
        progress.phase(f"podman save {pname}")
        run(["podman", "save", "--quiet", "--format", "oci-archive", "-o", tar, pname],
            what=f"podman save {pname}")
        s = Source("oci-archive", source.text, tar)
        probe(s)
        if len(s.images) == 1 and not s.images[0].names and looks_like_digest(pname) is None:
            with contextlib.suppress(ConfigError):
                s.images[0].names = [familiar(pname)]     # saved by a short name
        return s

    def _skopeo_copy(self, ref: str, layout: Path, tag: str, work: Path, kind: str) -> None:
        env = dict(os.environ, TMPDIR=str(work))
        # uncompressed layers stay uncompressed: compressing them only to unpack them again
        # cost most of an import's time (measured in docs/images.md)
        argv = [which("skopeo"), "copy", "--quiet", "--dest-oci-accept-uncompressed-layers",
                ref, f"oci:{layout}:{tag}"]
        p = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if p.returncode == 0:
            return
        why = _skopeo_reason(p.stderr or p.stdout) or f"exit status {p.returncode}"
        if kind == "registry" and any(w in why for w in _NET_WORDS):
            tail = why[why.find("dial tcp"):] if "dial tcp" in why else why
            raise ImageImportError(f"{ref}: no registry is reachable from this machine ({tail[:120]}); "
                                   f"import a saved archive or podman:NAME instead")
        m = re.search(r"[Dd]igest did not match, expected (sha256:[0-9a-f]{64})", why)
        if m:
            why = f"a blob does not match its digest {oci.short(m.group(1))} (corrupt archive)"
        raise ImageImportError(f"{_brief(ref)}: {why[:300]}")

    def _verify_progress(self, layout: Path, progress: ImportProgress):
        def advance(n: int) -> None:
            progress.advance(n)

        def layer_done(i: int, n: int, digest: str) -> None:
            size = oci.blob_path(layout, digest).stat().st_size
            progress.step(f"layer {i + 1}/{n} {oci.short(digest)} {human_size(size)} verified")

        return advance, layer_done

    @staticmethod
    def _check_platform(v: oci.Verified) -> None:
        arch, osname = v.config.get("architecture"), v.config.get("os")
        if osname not in (None, "", "linux"):
            raise ImageImportError(f"image {oci.short(v.config_digest)} is for {osname}, not linux")
        if arch not in (None, "", "amd64"):
            raise ImageImportError(f"image {oci.short(v.config_digest)} is for {arch}; kvmvm runs amd64 guests")

    def _publish(self, layout: Path, ref: str, v: oci.Verified, names: list, work: Path,
                 progress: ImportProgress) -> Image:
        hexd = v.config_digest[7:]
        fstype = self.rootfs_type
        with self._image_lock(hexd):
            idir = self.ids / hexd
            out = None
            if not (idir / "meta.json").is_file():
                out = work / f"out-{hexd}"
                out.mkdir()
                self._pack(layout, ref, work, out / f"rootfs.{fstype}", fstype, len(v.layers), progress,
                           sum(v.uncompressed))
                (out / ".use").touch()
                atomic_write(out / "meta.json", _meta(v))
                os.chmod(out, 0o755)
            elif not (idir / f"rootfs.{fstype}").exists():
                self._pack(layout, ref, work, work / f"rootfs.{fstype}", fstype, len(v.layers), progress,
                           sum(v.uncompressed))
                os.rename(work / f"rootfs.{fstype}", idir / f"rootfs.{fstype}")
            else:
                progress.note(f"sha256:{hexd[:12]} is already in the store")
            with self._store_lock():
                self.blobs.mkdir(parents=True, exist_ok=True)
                for d in v.blobs:
                    _link_blob(oci.blob_path(layout, d), self.blobs / d[7:])
                if out is not None:
                    self.ids.mkdir(parents=True, exist_ok=True)
                    os.rename(out, idir)
                all_names = self._names()
                for n in names:
                    all_names[n] = v.config_digest
                self._write_names(all_names)
                img = self._load(hexd, all_names)
                object.__setattr__(img, "assigned", tuple(names))
                return img

    def _pack(self, layout, ref, work, out, fstype, nlayers, progress, size: int) -> None:
        if rootfs.rootless():
            progress.note("not running as root: every file will be owned by this user and device "
                          "nodes will be empty files (import as root for exact ownership)")
        with self._unpack_dir(work, size) as udir:
            try:
                self._unpack_mkfs(layout, ref, udir / "rootfs", out, fstype, nlayers, progress)
                return
            except (ImageImportError, OSError):
                if udir == work:
                    raise
                # /dev/shm filled up (many small files take a page each) or failed otherwise:
                # once more on disk, where the failure, if any, is the real one
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        self._unpack_mkfs(layout, ref, work / "rootfs", out, fstype, nlayers, progress)

    @staticmethod
    def _unpack_mkfs(layout, ref, tree: Path, out: Path, fstype: str, nlayers: int,
                     progress: ImportProgress) -> None:
        progress.phase(f"applying {nlayers} layer{'s' if nlayers != 1 else ''}")
        try:
            rootfs.unpack(layout, ref, tree)
            progress.phase(f"building the {fstype} image")
            rootfs.mkfs(tree, out, fstype)
        finally:
            _rmtree(tree)

    @contextlib.contextmanager
    def _unpack_dir(self, work: Path, size: int) -> Iterator[Path]:
        """Where the layers are applied: the merged tree only lives until mkfs has read it,
        so it goes to memory (/dev/shm) when it fits with room to spare; writing ~10,000
        files to a disk and removing them again was half of an import's time (benchmarks/)."""
        if size > 0 and rootfs.shm_fits(SHM, size):
            with self._staging(SHM, SHM_PREFIX) as d:
                if rootfs.xattrs_work(d):
                    yield d
                    return
        yield work

    def _build_rootfs(self, img: Image) -> None:
        """Rebuild a missing rootfs image from the stored blobs (a store made with another
        rootfs type, or a deleted file)."""
        with self._image_lock(img.id):
            target = img.dir / f"rootfs.{img.rootfs_type}"
            if target.exists():
                return
            meta = json.loads((img.dir / "meta.json").read_text())
            with self._staging() as work:
                layout = work / "layout"
                (layout / "blobs" / "sha256").mkdir(parents=True)
                (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
                mdesc = {"mediaType": oci.MT_MANIFEST, "digest": meta["manifest_digest"],
                         "size": (self.blobs / meta["manifest_digest"][7:]).stat().st_size,
                         "annotations": {oci.REF_NAME: "img"}}
                (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
                digests = [meta["manifest_digest"], meta["config_digest"]] + [l["digest"] for l in meta["layers"]]
                for d in digests:
                    try:
                        os.link(self.blobs / d[7:], layout / "blobs" / "sha256" / d[7:])
                    except FileExistsError:
                        pass
                    except FileNotFoundError:
                        raise ImageImportError(f"image {img.id[:12]}: blob {d[7:19]} is missing from the store; import the image again") from None
                self._pack(layout, "img", work, work / target.name, img.rootfs_type, len(meta["layers"]),
                           ImportProgress(), int(meta.get("size") or 0))
                os.rename(work / target.name, target)

    # ---- removing ----------------------------------------------------------------------
    def remove(self, ref: str, force: bool = False) -> list[str]:
        """Untag `ref` if it is one of several names of an image, else delete the image.
        Returns podman-style lines: "Untagged: NAME", "Deleted: sha256:...".
        """
        img = self.resolve(ref)
        try:
            by_name = familiar(ref) in img.names
        except ConfigError:
            by_name = False
        with self._image_lock(img.id), self._store_lock():
            names = self._names()
            mine = sorted(n for n, d in names.items() if d == img.digest)
            if by_name and len(mine) > 1:
                del names[familiar(ref)]
                self._write_names(names)
                return [f"Untagged: {familiar(ref)}"]
            if len(mine) > 1 and not force:
                raise ConfigError(f"image {img.id[:12]} has {len(mine)} names ({', '.join(mine)}): "
                                  f"remove them one by one or use --force")
            self._delete(img.id)
            for n in mine:
                del names[n]
            self._write_names(names)
            self._collect_blobs()
            return [f"Untagged: {n}" for n in mine] + [f"Deleted: {img.digest}"]

    def _delete(self, hexd: str) -> None:
        """Remove one image directory (store lock and image lock held)."""
        idir = self.ids / hexd
        try:
            f = open(idir / ".use", "rb")
        except FileNotFoundError:
            f = None
        if f is not None:
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ImageInUse(f"image {hexd[:12]} is in use by a running VM") from None
                self.tmp.mkdir(parents=True, exist_ok=True)
                gone = Path(tempfile.mkdtemp(prefix="deleted-", dir=self.tmp))
                os.rename(idir, gone / hexd)        # readers see it whole or not at all
        else:
            gone = None
            if idir.exists():
                self.tmp.mkdir(parents=True, exist_ok=True)
                gone = Path(tempfile.mkdtemp(prefix="deleted-", dir=self.tmp))
                os.rename(idir, gone / hexd)
        if gone is not None:
            _rmtree(gone)
        # locks/<hex>.lock stays: unlinking a lock file that another process waits on would
        # let a third one lock a new file of the same name

    def _collect_blobs(self) -> tuple[int, int]:
        """Remove blobs no image refers to (store lock held); (count, bytes)."""
        keep = set()
        for h in self._ids():
            try:
                meta = json.loads((self.ids / h / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            keep.update(d[7:] for d in [meta["manifest_digest"], meta["config_digest"]])
            keep.update(l["digest"][7:] for l in meta.get("layers", []))
        n = size = 0
        try:
            blobs = list(self.blobs.iterdir())
        except FileNotFoundError:
            return 0, 0
        for b in blobs:
            if b.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    size += b.stat().st_size
                    b.unlink()
                    n += 1
        return n, size

    def prune(self) -> PruneResult:
        """Remove images without a name (not in use), unreferenced blobs, and leftovers of
        interrupted imports."""
        res = PruneResult()
        self.reclaim()
        with self._store_lock():
            named = set(self._names().values())
            for h in self._ids():
                if "sha256:" + h in named:
                    continue
                try:
                    with self._image_lock(h, block=False):
                        self._delete(h)
                except (BlockingIOError, ImageInUse):
                    continue                 # being imported, or used by a VM
                res.images.append("sha256:" + h)
            res.blobs, res.bytes = self._collect_blobs()
        return res


def _meta(v: oci.Verified) -> bytes:
    cfg = v.config
    meta = {
        "schema": META_SCHEMA,
        "digest": v.config_digest,
        "manifest_digest": v.manifest_digest,
        "config_digest": v.config_digest,
        "config": cfg.get("config") if isinstance(cfg.get("config"), dict) else {},
        "created": cfg.get("created") if isinstance(cfg.get("created"), str) else None,
        "architecture": cfg.get("architecture") or "",
        "os": cfg.get("os") or "",
        "size": sum(v.uncompressed),
        "layers": [{"digest": l["digest"], "size": l["size"], "mediaType": l["mediaType"],
                    "diff_id": d, "uncompressed": u}
                   for l, d, u in zip(v.layers, v.diff_ids, v.uncompressed)],
        "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()


def _link_blob(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    os.chmod(dst, 0o444)


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _brief(ref: str) -> str:
    return ref if len(ref) <= 100 else ref[:48] + "..." + ref[-48:]


def human_size(n: int) -> str:
    """Decimal units as podman prints them: 5.6 MB, 913 kB."""
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            v = n / k
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n} B"
