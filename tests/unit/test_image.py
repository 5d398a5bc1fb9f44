"""kvmvm.image: cache keys, config verification, the initramfs, the boot index, missing
Debian packages, `kvmvm kernel` output (and its deprecated `kvmvm image` aliases).
Fast: nothing here builds a kernel."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import subprocess
import sys

import pytest
from click.testing import CliRunner

from kvmvm.cli import main as cli_main
from kvmvm.cli.kernel import cli as kernel_cli
from kvmvm.errors import ConfigError, MissingPackages
from kvmvm.image import cache, cached_default, deps, index, initramfs, kconfig, kernel


def fake_static_elf(payload: bytes = b"") -> bytes:
    """A 64-bit ELF header with no program headers: 'static' as far as the check goes."""
    hdr = bytearray(64)
    hdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<QHH", hdr, 32, 64, 0, 0)  # e_phoff (unused), e_flags... then below
    struct.pack_into("<HH", hdr, 54, 56, 0)      # e_phentsize 56, e_phnum 0
    return bytes(hdr) + payload


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "kvmvm-home"
    monkeypatch.setenv("KVMVM_HOME", str(h))
    return h


@pytest.fixture
def busybox(tmp_path):
    p = tmp_path / "busybox"
    p.write_bytes(fake_static_elf(b"busybox-payload"))
    return p


# --- cache keys --------------------------------------------------------------------

def test_cache_key_stable_and_sensitive():
    frag = kernel.fragment_text()
    k = kernel.kernel_key(frag, "6.1.192-2")
    assert k == kernel.kernel_key(frag, "6.1.192-2")
    assert len(k) == 16 and int(k, 16) >= 0
    assert k != kernel.kernel_key(frag + b"CONFIG_FOO=y\n", "6.1.192-2")
    assert k != kernel.kernel_key(frag, "6.1.193-1")
    assert k != kernel.kernel_key(frag, "6.1.192-2", builder="kernel-999")


def test_cache_key_parts_have_boundaries():
    assert cache.cache_key("ab", "c") != cache.cache_key("a", "bc")


def test_initramfs_key_follows_init_and_busybox():
    k = initramfs.initramfs_key(b"#!/bin/sh\n", b"bb1")
    assert k == initramfs.initramfs_key(b"#!/bin/sh\n", b"bb1")
    assert k != initramfs.initramfs_key(b"#!/bin/sh\necho\n", b"bb1")
    assert k != initramfs.initramfs_key(b"#!/bin/sh\n", b"bb2")


def test_home_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("KVMVM_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.kvmvm_home() == tmp_path / ".cache" / "kvmvm"
    monkeypatch.setenv("KVMVM_HOME", str(tmp_path / "x"))
    assert cache.kvmvm_home() == tmp_path / "x"


# --- config fragment and verification ----------------------------------------------

def test_verify_reports_missing_and_wrong_symbols():
    wanted = kconfig.parse("CONFIG_PVH=y\nCONFIG_VIRTIO_MMIO=y\n# CONFIG_MODULES is not set\n"
                           "CONFIG_NR_CPUS=64\n")
    got = kconfig.parse("CONFIG_PVH=y\nCONFIG_NR_CPUS=8\nCONFIG_EXTRA=y\n")
    bad = kconfig.verify(wanted, got)
    assert ("CONFIG_VIRTIO_MMIO", "y", None) in bad
    assert ("CONFIG_NR_CPUS", "64", "8") in bad
    assert [b[0] for b in bad] == ["CONFIG_VIRTIO_MMIO", "CONFIG_NR_CPUS"]  # MODULES unset: ok
    assert "CONFIG_VIRTIO_MMIO (wanted y, got n)" in kconfig.describe(bad)


def test_verify_unwanted_symbol_that_is_set():
    bad = kconfig.verify(kconfig.parse("# CONFIG_MODULES is not set\n"),
                         kconfig.parse("CONFIG_MODULES=y\n"))
    assert bad == [("CONFIG_MODULES", None, "y")]


def test_configure_fails_loudly_on_dropped_symbol(tmp_path, monkeypatch):
    """configure() names the symbols Kconfig dropped (make is faked)."""
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_PVH=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n")
    out = tmp_path / "out"

    def fake_make(src, out_, args, log, progress, steps=False):
        (out_ / ".config").write_text("CONFIG_PVH=y\n")

    monkeypatch.setattr(kernel, "_run_make", fake_make)
    with pytest.raises(Exception) as ei:
        kernel.configure(tmp_path, out, frag, tmp_path / "log", kernel.Progress())
    assert "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES" in str(ei.value)
    assert "CONFIG_PVH " not in str(ei.value)


def test_shipped_fragment_has_the_essentials():
    frag = kconfig.parse(kernel.fragment_text().decode())
    for sym in ["CONFIG_PVH", "CONFIG_KVM_GUEST", "CONFIG_PARAVIRT", "CONFIG_ACPI",
                "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_VIRTIO_MMIO",
                "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET",
                "CONFIG_VIRTIO_VSOCKETS", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_DEVMEM",
                "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_EXT4_FS", "CONFIG_OVERLAY_FS",
                "CONFIG_DEVTMPFS", "CONFIG_CGROUPS", "CONFIG_MEMCG", "CONFIG_USER_NS",
                "CONFIG_X86_X2APIC", "CONFIG_SMP", "CONFIG_FUTEX", "CONFIG_EPOLL",
                "CONFIG_EROFS_FS", "CONFIG_EROFS_FS_ZIP", "CONFIG_TMPFS_XATTR", "CONFIG_UNIX98_PTYS",
                "CONFIG_CGROUP_PIDS", "CONFIG_CFS_BANDWIDTH", "CONFIG_EXT4_FS_SECURITY"]:
        assert frag.get(sym) == "y", sym
    for sym in ["CONFIG_MODULES", "CONFIG_RANDOMIZE_BASE"]:
        assert sym in frag and frag[sym] is None, sym


# --- initramfs ---------------------------------------------------------------------

def test_initramfs_contents():
    init = initramfs.init_text()
    blob = initramfs.pack(init, b"BUSYBOX")
    ents = {e.path: e for e in initramfs.read_newc(blob)}
    assert ents["init"].kind == "f" and ents["init"].mode & 0o111 == 0o111
    assert ents["init"].data == init
    assert ents["bin/busybox"].kind == "f" and ents["bin/busybox"].mode == 0o755
    assert ents["bin/busybox"].data == b"BUSYBOX"
    assert ents["bin/sh"].kind == "l" and ents["bin/sh"].data == b"busybox"
    assert ents["dev/console"].kind == "c" and ents["dev/console"].rdev == (5, 1)
    for d in ("proc", "sys", "dev", "tmp", "run"):
        assert ents[d].kind == "d"


def test_initramfs_is_deterministic_gzip_newc():
    a = initramfs.pack(b"#!/bin/sh\n", b"x" * 1001)
    assert a == initramfs.pack(b"#!/bin/sh\n", b"x" * 1001)
    assert a[:2] == b"\x1f\x8b" and a[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    raw = gzip.decompress(a)
    assert raw.startswith(b"070701") and b"TRAILER!!!" in raw and len(raw) % 4 == 0


def test_init_script_contract():
    text = initramfs.init_text().decode()
    assert text.startswith("#!/bin/sh\n")
    assert text.count("kvmvm: init ready") == 1
    assert "devmem 0xd0000000 8 123" in text
    assert "busybox --install -s" in text
    assert "mount -t devtmpfs" in text and "cttyhack sh" in text
    assert "poweroff -f" in text and "reboot -f" in text


def test_guest_images_init_is_the_package_copy():
    link = Path(__file__).resolve().parents[2] / "guest-images" / "initramfs" / "init"
    assert link.read_bytes() == initramfs.init_text()


def test_static_check():
    assert initramfs._is_static_elf(fake_static_elf())
    assert not initramfs._is_static_elf(b"#!/bin/sh\n")
    # busybox-static is a declared prerequisite (scripts/apt-packages.txt): the real one is static
    assert initramfs.BUSYBOX.is_file(), f"{initramfs.BUSYBOX} missing (apt-get install busybox-static)"
    assert initramfs._is_static_elf(initramfs.BUSYBOX.read_bytes())


def test_dynamic_busybox_rejected(tmp_path):
    p = tmp_path / "bb"
    p.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ConfigError, match="busybox-static"):
        initramfs.read_busybox(p)


def test_initramfs_build_is_cached_and_atomic(home, busybox):
    a = initramfs.build(home, busybox=busybox)
    assert a.path.is_file() and a.path.parent.parent == home / "initramfs"
    mtime = a.path.stat().st_mtime_ns
    b = initramfs.build(home, busybox=busybox)
    assert b.path == a.path and b.path.stat().st_mtime_ns == mtime
    assert [p.name for p in (home / "initramfs").iterdir()] == [a.key]  # no leftovers
    assert initramfs.cached(home, busybox=busybox).path == a.path


def test_staging_leaves_nothing_on_failure(tmp_path):
    entry = tmp_path / "kernel" / "abc"
    with pytest.raises(RuntimeError):
        with cache.staging(entry, {"k": 1}) as tmp:
            (tmp / "vmlinux").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not entry.exists()
    assert list((tmp_path / "kernel").iterdir()) == []


# --- kernel cache lookups (no build) -------------------------------------------------

def _fake_kernel_entry(home: Path, version: str) -> Path:
    key = kernel.kernel_key(kernel.fragment_text(), version)
    with cache.staging(home / "kernel" / key, {"kernel_version": "6.1.192-kvmvm",
                                               "builder": kernel.BUILDER_VERSION}) as tmp:
        (tmp / "vmlinux").write_bytes(b"\x7fELF")
        (tmp / "bzImage").write_bytes(b"MZ")
    return home / "kernel" / key


def test_kernel_cache_hit_needs_no_build(home, monkeypatch):
    monkeypatch.setattr(kernel, "source_version", lambda tarball=None: "6.1.192-2")
    assert kernel.cached(home) is None
    entry = _fake_kernel_entry(home, "6.1.192-2")
    monkeypatch.setattr(kernel, "_run_make", lambda *a, **k: pytest.fail("must not build"))
    k = kernel.build(home, jobs=1)
    assert k.vmlinux == entry / "vmlinux" and k.kernel_version == "6.1.192-kvmvm"
    monkeypatch.setattr(kernel, "source_version", lambda tarball=None: "6.1.193-1")
    assert kernel.cached(home) is None  # a new source version is a new key


def test_kernel_jobs_validated(home):
    with pytest.raises(ConfigError):
        kernel.build(home, jobs=0)


# --- CLI -----------------------------------------------------------------------------

def test_kernel_list_json_keys(home, monkeypatch, busybox):
    monkeypatch.setattr(kernel, "source_version", lambda tarball=None: "6.1.192-2")
    monkeypatch.setattr(initramfs, "BUSYBOX", busybox)
    r = CliRunner().invoke(kernel_cli, ["list", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"vmlinux", "bzimage", "initramfs", "key", "kernel_version"} <= set(d)
    assert d["vmlinux"] is None and d["bzimage"] is None and d["initramfs"] is None

    entry = _fake_kernel_entry(home, "6.1.192-2")
    initramfs.build(home, busybox=busybox)
    d = json.loads(CliRunner().invoke(kernel_cli, ["list", "--json"]).output)
    assert d["vmlinux"] == str(entry / "vmlinux") and os.path.isabs(d["vmlinux"])
    assert d["bzimage"] == str(entry / "bzImage")
    assert d["initramfs"] and Path(d["initramfs"]).is_file()
    assert d["kernel_version"] == "6.1.192-kvmvm" and d["key"] == entry.name
    assert cached_default(home).complete


def test_kernel_build_bad_jobs_is_one_line_exit_2(capsys):
    assert cli_main(["kernel", "build", "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kvmvm: --jobs must be at least 1, not 0"]


@pytest.mark.parametrize("cmd", ["build", "list"])
def test_image_build_and_list_are_deprecated_aliases(cmd, home, capsys):
    args = ["image", cmd, "--jobs", "0"] if cmd == "build" else ["image", cmd, "--json"]
    rc = cli_main(args)
    err = capsys.readouterr()
    assert err.err.splitlines()[0] == f"kvmvm: `kvmvm image {cmd}` is deprecated: use `kvmvm kernel {cmd}`"
    if cmd == "build":
        assert rc == 2 and err.err.splitlines()[1:] == ["kvmvm: --jobs must be at least 1, not 0"]
    else:
        assert rc == 0 and json.loads(err.out)["home"] == str(home)


# --- missing Debian packages --------------------------------------------------------

def test_kernel_build_names_missing_packages_in_one_line(tmp_path):
    """No build tool on PATH and nothing cached: one line naming the Debian packages, and
    how to install them; with --install-deps but no apt-get: one line saying so."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty), KVMVM_HOME=str(tmp_path / "home"))
    base = [sys.executable, "-m", "kvmvm", "kernel", "build", "--plain"]
    p = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    want = sorted(set(kernel.HOST_TOOLS.values()))
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert " ".join(want) in p.stderr and "--install-deps" in p.stderr
    assert f"apt-get install -y --no-install-recommends {' '.join(want)}" in p.stderr
    p = subprocess.run(base + ["--install-deps"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert ("needs apt-get" if os.geteuid() == 0 else "needs root") in p.stderr


def test_require_nothing_missing_is_silent():
    deps.require([])
    with pytest.raises(MissingPackages) as e:
        deps.require(["a", "b", "a"])
    assert e.value.packages == ["a", "b"]


# --- the boot index -----------------------------------------------------------------

def test_index_follows_inputs_and_artifacts(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    inputs = [tmp_path / n for n in ("frag", "init", "tarball")]
    for p in inputs:
        p.write_text(p.name)
    arts = {k: str(tmp_path / k) for k in ("vmlinux", "bzimage", "initramfs")}
    for p in arts.values():
        Path(p).write_text("x")
    assert index.lookup(str(home)) is None
    index.record(str(home), {**arts, "key": "k1"}, [str(p) for p in inputs] + [str(tmp_path / "absent")])
    hit = index.lookup(str(home))
    assert hit and hit["vmlinux"] == arts["vmlinux"] and hit["key"] == "k1"
    inputs[2].write_text("a new source version")          # an input changed: miss
    assert index.lookup(str(home)) is None
    index.record(str(home), {**arts, "key": "k2"}, [str(p) for p in inputs])
    assert index.lookup(str(home))["key"] == "k2"
    os.unlink(arts["initramfs"])                           # an artifact is gone: miss
    assert index.lookup(str(home)) is None
    (home / index.NAME).write_text("{not an index")        # a damaged index: miss, no error
    assert index.lookup(str(home)) is None


def test_cached_default_writes_the_index(home, monkeypatch, busybox):
    monkeypatch.setattr(kernel, "source_version", lambda tarball=None: "6.1.192-2")
    monkeypatch.setattr(initramfs, "BUSYBOX", busybox)
    _fake_kernel_entry(home, "6.1.192-2")
    initramfs.build(home, busybox=busybox)
    assert index.lookup(str(home)) is None
    art = cached_default(home)
    hit = index.lookup(str(home))
    assert hit and hit["vmlinux"] == str(art.vmlinux) and hit["initramfs"] == str(art.initramfs)


def test_default_boot_path_imports_no_build_code():
    """`kvmvm boot` with the default kernel resolves it through the index alone."""
    code = ("import sys; import kvmvm.image.index as i; i.lookup()\n"
            "print(sorted(m for m in sys.modules if m.startswith('kvmvm.image')),"
            " [m for m in ('dataclasses', 'json', 're') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[2])).stdout
    assert out.strip() == "['kvmvm.image', 'kvmvm.image.index'] []", out
