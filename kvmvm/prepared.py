"""PreparedVm: a VM created on a C thread while the process goes on starting up.

Its own module, importing only the compiled core: `kvmvm boot` starts it first thing, and
the earlier it starts, the sooner the kernel's waits for it are over.
"""

from __future__ import annotations

from kvmvm.bindings import ffi, lib


class PreparedVm:
    """A VM being created, with its RAM regions, on a C thread while the caller goes on
    starting up (the kernel makes each memory slot wait for an SRCU grace period). Hand it
    to Vm(prepared=...); one that is never used is freed by discard() or the collector."""

    def __init__(self, dev_path: str, regions, pit: bool = False, seccomp_level: int = 0):
        """seccomp_level: also compile that level's filters on the thread (set_seccomp
        then finds them ready)."""
        self.dev_path, self.regions, self.pit = dev_path, [tuple(r) for r in regions], pit
        gpas = ffi.new("uint64_t[]", [g for g, _ in self.regions])
        sizes = ffi.new("uint64_t[]", [n for _, n in self.regions])
        p = lib.kvmvm_vm_prepare(dev_path.encode(), gpas, sizes, len(self.regions), int(pit),
                                 int(seccomp_level))
        self._p = None if p == ffi.NULL else p

    def take(self):
        """(vm cdata or NULL, -errno, regions added); None when already taken."""
        if self._p is None:
            return None
        err, nr = ffi.new("int *"), ffi.new("int *")
        vm = lib.kvmvm_vm_prepared(self._p, err, nr)
        self._p = None
        return vm, err[0], nr[0]

    def discard(self) -> None:
        got = self.take()
        if got is not None and got[0] != ffi.NULL:
            lib.kvmvm_vm_free(got[0])

    def __del__(self):
        try:
            self.discard()
        except Exception:
            pass
