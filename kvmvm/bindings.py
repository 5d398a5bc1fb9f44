"""Checked wrappers over the compiled module kvmvm._native (the middle cffi layer).

Every C call that returns -errno is turned into an exception here; nothing above this
module sees a raw return code. Devices written in Python register a handler object and
are called back from vCPU threads through `kvmvm_py_io` (the slow path).
"""

from __future__ import annotations

import errno as _errno
import _thread
import itertools
import os




def _load_native():
    """kvmvm._native, or the build named by KVMVM_NATIVE (an ASan build of the C core that
    the adversarial tests run under: scripts/asan.sh)."""
    path = os.environ.get("KVMVM_NATIVE")
    if not path:
        from kvmvm._native import ffi, lib

        return ffi, lib
    import importlib.machinery
    import importlib.util
    import sys

    loader = importlib.machinery.ExtensionFileLoader("kvmvm._native", path)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("kvmvm._native", loader))
    loader.exec_module(mod)
    sys.modules["kvmvm._native"] = mod
    return mod.ffi, mod.lib


ffi, lib = _load_native()

STOP_REASONS = {
    lib.KVMVM_STOP_NONE: "running",
    lib.KVMVM_STOP_DEBUG_EXIT: "debug-exit",
    lib.KVMVM_STOP_RESET: "reset",
    lib.KVMVM_STOP_HALT: "halt",
    lib.KVMVM_STOP_SHUTDOWN: "triple-fault",
    lib.KVMVM_STOP_FAIL_ENTRY: "fail-entry",
    lib.KVMVM_STOP_INTERNAL_ERROR: "internal-error",
    lib.KVMVM_STOP_TIMEOUT: "timeout",
    lib.KVMVM_STOP_ERROR: "host-error",
    lib.KVMVM_STOP_REQUESTED: "stopped",
    lib.KVMVM_STOP_POWEROFF: "poweroff",
    lib.KVMVM_STOP_SYSTEM_EVENT: "system-event",
    lib.KVMVM_STOP_UNKNOWN_EXIT: "unknown-exit",
    lib.KVMVM_STOP_PANIC: "panic",
}


def check(rc: int, what: str, exc=None) -> int:
    """Return rc when >= 0, else raise exc (default KvmError) with the errno's text."""
    if rc < 0:
        if exc is None:
            # kvmvm.errors only now: this module is on the way to kvmvm.prepared, which
            # `kvmvm boot` starts before anything else
            from kvmvm.errors import KvmError as exc
        err = -rc
        raise exc(err, f"{what}: {os.strerror(err)}")
    return rc


class PyDevice:
    """The interface (duck-typed) of a device written in Python: offsets are relative to its
    base; `mark_broken()`, when present, is called if a handler raises."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


_handles = itertools.count(1)
_py_devices: dict[int, PyDevice] = {}
_py_lock = _thread.allocate_lock()   # (threading costs an import on the boot path)


def register_py_device(dev: PyDevice) -> int:
    with _py_lock:
        h = next(_handles)
        _py_devices[h] = dev
    return h


def unregister_py_device(handle: int) -> None:
    with _py_lock:
        _py_devices.pop(handle, None)


@ffi.def_extern()
def kvmvm_py_io(handle, is_write, offset, data, length):
    dev = _py_devices.get(handle)
    if dev is None:
        return 0
    try:
        if is_write:
            dev.write(offset, bytes(ffi.buffer(data, length)))
        else:
            out = dev.read(offset, length) or b""
            n = min(len(out), length)
            if n:
                ffi.memmove(data, out[:n], n)
    except Exception:  # a Python device must never take the vCPU thread down
        import logging

        logging.getLogger("kvmvm").exception("python device %r failed at offset %#x", dev, offset)
        broken = getattr(dev, "mark_broken", None)
        if broken:
            broken()
    return 0


class GuestMemory:
    """A stand-alone bounds-checked guest memory (no KVM): used by unit tests and tools."""

    def __init__(self):
        self._gm = ffi.gc(lib.kvmvm_gmem_new(), lib.kvmvm_gmem_free)
        if self._gm == ffi.NULL:
            raise MemoryError("guest memory")

    def add(self, gpa: int, size: int) -> int:
        from kvmvm.errors import GuestMemoryError

        return check(lib.kvmvm_gmem_add(self._gm, gpa, size), f"map {size:#x} bytes at {gpa:#x}",
                     GuestMemoryError)

    def read(self, gpa: int, size: int) -> bytes:
        buf = ffi.new("uint8_t[]", size)
        rc = lib.kvmvm_gmem_read(self._gm, gpa, buf, size)
        if rc < 0:
            from kvmvm.errors import GuestMemoryError

            raise GuestMemoryError(f"read of {size:#x} bytes at {gpa:#x} is outside guest memory")
        return bytes(ffi.buffer(buf, size))

    def write(self, gpa: int, data: bytes) -> None:
        rc = lib.kvmvm_gmem_write(self._gm, gpa, data, len(data))
        if rc < 0:
            from kvmvm.errors import GuestMemoryError

            raise GuestMemoryError(f"write of {len(data):#x} bytes at {gpa:#x} is outside guest memory")

    def load_file(self, gpa: int, fd: int, offset: int, length: int, map: bool = False) -> None:
        from kvmvm.errors import GuestMemoryError

        check(lib.kvmvm_gmem_load_file(self._gm, gpa, fd, offset, length, int(map)),
              f"load {length:#x} bytes at {gpa:#x}", GuestMemoryError)

    def contains(self, gpa: int, size: int) -> bool:
        return lib.kvmvm_gmem_check(self._gm, gpa, size) == 0


class Bus:
    """A stand-alone Bus (the type each VM has twice: PIO and MMIO) with Python devices."""

    def __init__(self):
        self._bus = ffi.gc(lib.kvmvm_bus_new(), lib.kvmvm_bus_free)
        self._handles: dict[int, int] = {}

    def insert(self, base: int, length: int, dev: PyDevice) -> None:
        h = register_py_device(dev)
        rc = lib.kvmvm_bus_insert_py(self._bus, base, length, h)
        if rc < 0:
            unregister_py_device(h)
            why = {_errno.EEXIST: "overlaps an existing range", _errno.EINVAL: "is empty",
                   _errno.EOVERFLOW: "wraps past the end of the address space"}.get(-rc, os.strerror(-rc))
            from kvmvm.errors import BusError

            raise BusError(f"range {base:#x}+{length:#x} {why}")
        self._handles[base] = h

    def remove(self, base: int) -> None:
        from kvmvm.errors import BusError

        check(lib.kvmvm_bus_remove(self._bus, base), f"remove range at {base:#x}", BusError)
        unregister_py_device(self._handles.pop(base))

    def read(self, addr: int, size: int) -> tuple[bool, bytes]:
        buf = ffi.new("uint8_t[]", size)
        handled = lib.kvmvm_bus_dispatch(self._bus, addr, 0, buf, size)
        return bool(handled), bytes(ffi.buffer(buf, size))

    def write(self, addr: int, data: bytes) -> bool:
        buf = ffi.new("uint8_t[]", data)
        return bool(lib.kvmvm_bus_dispatch(self._bus, addr, 1, buf, len(data)))

    def __len__(self) -> int:
        return lib.kvmvm_bus_count(self._bus)

    def __del__(self):
        for h in self._handles.values():
            unregister_py_device(h)


def cpuid_shape(entries: list[tuple[int, int, int, int, int, int, int]], vcpu_id: int, ncpus: int):
    """Apply kvmvm's CPUID topology to (function, index, flags, eax, ebx, ecx, edx) tuples."""
    arr = ffi.new("struct kvmvm_cpuid_entry[]", len(entries))
    for i, e in enumerate(entries):
        (arr[i].function, arr[i].index, arr[i].flags, arr[i].eax, arr[i].ebx, arr[i].ecx,
         arr[i].edx) = e
    check(lib.kvmvm_cpuid_shape(arr, len(entries), vcpu_id, ncpus), "cpuid", ValueError)
    return [(a.function, a.index, a.flags, a.eax, a.ebx, a.ecx, a.edx) for a in arr]
