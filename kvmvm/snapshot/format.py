"""The snapshot directory (docs/snapshot-format.md): a JSON header, a state file of
sections (vCPUs, VM, devices) and one sparse memory file per RAM region.

`load()` checks everything a restore relies on before anything is built, and refuses a
snapshot it cannot restore faithfully with one line (SnapshotError, exit status 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from kvmvm.errors import ConfigError
from kvmvm.record import record

FORMAT = "kvmvm-snapshot"
VERSION = 1
HEADER_FILE = "snapshot.json"
STATE_FILE = "state.bin"


def memory_file(i: int) -> str:
    return f"memory-{i}.raw"


class SnapshotError(ConfigError):
    """A snapshot that cannot be restored here: missing, truncated, corrupt, another format
    version or another kind of host CPU. The CLI prints one line and exits 2."""

    exit_code = 2


@record
class Snapshot:
    """A snapshot directory and its header."""

    path: str
    header: dict

    @property
    def config(self) -> dict:
        return self.header["config"]

    @property
    def regions(self) -> list[dict]:
        return self.header["memory"]

    @property
    def state_path(self) -> str:
        return os.path.join(self.path, self.header["state"]["file"])

    def memory_path(self, i: int) -> str:
        return os.path.join(self.path, self.header["memory"][i]["file"])


def kvmvm_version() -> str:
    try:
        from importlib.metadata import version

        return version("kvmvm")
    except Exception:
        return "0"


def host_cpu() -> dict:
    """This host's CPU vendor, family and model (what a snapshot must be restored on)."""
    out = {"vendor": "unknown", "family": 0, "model": 0}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "vendor_id":
                    out["vendor"] = v
                elif k == "cpu family":
                    out["family"] = int(v)
                elif k == "model":
                    out["model"] = int(v)
    except (OSError, ValueError):
        pass
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_header(out_dir: str, header: dict) -> None:
    """Last step of a save: a directory without its header is not a snapshot."""
    tmp = os.path.join(out_dir, HEADER_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(header, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(out_dir, HEADER_FILE))


def _fail(snap_dir: str, why: str) -> SnapshotError:
    return SnapshotError(f"cannot restore {snap_dir}: {why}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_name(v) -> bool:
    """A file name inside the snapshot directory: no path, nothing that leaves it."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\0" not in v


def _shape_problem(h: dict) -> str | None:
    """What is missing or of the wrong type in a header (None: its shape is right).
    Everything else in it is checked by what reads it."""
    for key in ("host_cpu", "state", "memory", "config"):
        if key not in h:
            return f"no {key!r}"
    if not isinstance(h["host_cpu"], dict):
        return "'host_cpu' is not an object"
    st = h["state"]
    if not (isinstance(st, dict) and _plain_name(st.get("file")) and _is_int(st.get("size"))
            and isinstance(st.get("sha256"), str)):
        return "'state' is not {file, size, sha256}"
    if not isinstance(h["config"], dict):
        return "'config' is not an object"
    regions = h["memory"]
    if not isinstance(regions, list) or not regions:
        return "'memory' is not a list of regions"
    for r in regions:
        if not (isinstance(r, dict) and _plain_name(r.get("file")) and _is_int(r.get("gpa"))
                and _is_int(r.get("size"))):
            return "a 'memory' region is not {file, gpa, size}"
    cpuid = h.get("guest_cpuid")
    if cpuid is not None and not (isinstance(cpuid, list) and all(
            isinstance(e, list) and len(e) == 7 and all(_is_int(x) for x in e) for e in cpuid)):
        return "'guest_cpuid' is not a list of [function, index, flags, eax, ebx, ecx, edx]"
    return None


def _regular(snap_dir: str, what: str, path: str) -> os.stat_result:
    """stat of a state or memory file, which must be a regular file (a FIFO or a device
    would block or never end)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _fail(snap_dir, f"{what} file {os.path.basename(path)}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(snap_dir, f"{what} file {os.path.basename(path)} is not a regular file")
    return st


def load(snap_dir: str) -> tuple[Snapshot, bytes]:
    """The checked header and the state bytes of a snapshot directory."""
    hp = os.path.join(snap_dir, HEADER_FILE)
    if not os.path.isdir(snap_dir):
        raise _fail(snap_dir, "no such directory")
    try:
        with open(hp) as f:
            header = json.load(f)
    except FileNotFoundError:
        raise _fail(snap_dir, f"not a kvmvm snapshot (no {HEADER_FILE})") from None
    except (OSError, ValueError) as e:
        raise _fail(snap_dir, f"{HEADER_FILE} is unreadable or corrupt ({e})") from None
    except RecursionError:
        raise _fail(snap_dir, f"{HEADER_FILE} is corrupt (nested too deep)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(snap_dir, f"{HEADER_FILE} is not a kvmvm snapshot header")
    if header.get("version") != VERSION:
        raise _fail(snap_dir, f"snapshot format version {header.get('version')!r}; this kvmvm "
                              f"({kvmvm_version()}) restores version {VERSION}")
    why = _shape_problem(header)
    if why:
        raise _fail(snap_dir, f"{HEADER_FILE} is corrupt ({why})")
    snap = Snapshot(snap_dir, header)
    cpu, state, regions = header["host_cpu"], header["state"], header["memory"]
    here = host_cpu()
    if (cpu.get("vendor"), cpu.get("family"), cpu.get("model")) != \
            (here["vendor"], here["family"], here["model"]):
        raise _fail(snap_dir, f"taken on a {cpu.get('vendor')} family {cpu.get('family')} model "
                              f"{cpu.get('model')} CPU; this host has a {here['vendor']} family "
                              f"{here['family']} model {here['model']}")
    size = _regular(snap_dir, "state", snap.state_path).st_size
    if size != state["size"]:
        raise _fail(snap_dir, f"state file {state['file']} is truncated or padded "
                              f"({size} bytes, the header says {state['size']})")
    try:
        with open(snap.state_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _fail(snap_dir, f"state file {state['file']}: {e.strerror}") from None
    if len(data) != state["size"]:    # it changed under us
        raise _fail(snap_dir, f"state file {state['file']} is truncated or padded "
                              f"({len(data)} bytes, the header says {state['size']})")
    if sha256(data) != state["sha256"]:
        raise _fail(snap_dir, f"state file {state['file']} is corrupt (SHA-256 mismatch)")
    for i, r in enumerate(regions):
        size = _regular(snap_dir, "memory", snap.memory_path(i)).st_size
        if size != r["size"]:
            raise _fail(snap_dir, f"memory file {r['file']} is truncated ({size} bytes; the "
                                  f"region has {r['size']})")
    return snap, data


def fc_snapshot_dir(snapshot_path: str, mem_file_path: str | None) -> str:
    """The snapshot directory for Firecracker's PUT /snapshot/create or /snapshot/load
    fields: kvmvm's snapshot is a directory (a header, a state file, one memory file per RAM
    region), so snapshot_path names it, and mem_file_path must be the same directory or a
    file inside it."""
    d = os.path.abspath(snapshot_path)
    if mem_file_path:
        m = os.path.abspath(mem_file_path)
        if m != d and os.path.dirname(m) != d:
            raise SnapshotError(f"mem_file_path {mem_file_path} must be the snapshot directory "
                                f"{snapshot_path} or a file in it (kvmvm keeps one memory file per "
                                f"RAM region there)")
    return d
