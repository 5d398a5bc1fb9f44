"""seccomp levels and thread classes (the filters themselves: kvmvm/native/seccomp.c).

Every C thread of a VM (vCPUs, virtio workers, the console reader and writer) filters
itself at the VM's level as it starts. The main thread is filtered only when the process
ends with the VM (`kvmvm boot`): a filter is for good, and a program using the Python API
goes on after its VM. docs/security.md lists each class's system calls and why.
"""

from __future__ import annotations

import os

OFF, BASIC, ADVANCED = 0, 1, 2
DEFAULT_LEVEL = ADVANCED
# the process's exit status after a forbidden system call (as Firecracker's)
EXIT_STATUS = 148
CLASSES = ("vcpu", "worker", "serial-writer", "serial-reader", "main", "spawner")


def test_hook() -> int:
    """The thread class told to make a forbidden call once filtered (tests only), or -1.

    Honoured only with KVMVM_TEST_HOOKS=1: KVMVM_TEST_SECCOMP_VIOLATE=<class>.
    """
    if os.environ.get("KVMVM_TEST_HOOKS") != "1":
        return -1
    name = os.environ.get("KVMVM_TEST_SECCOMP_VIOLATE", "")
    return CLASSES.index(name) if name in CLASSES else -1


def filter_main_thread(level: int) -> None:
    """Filter the calling thread (for good) at level; a no-op at level 0."""
    from kvmvm.bindings import check, lib

    check(lib.kvmvm_seccomp_main(level, test_hook()), "seccomp filter of the main thread")


def allowlist(cls: str, level: int = ADVANCED) -> list[str]:
    """The system calls a thread class adds to the common list ("common": that list)."""
    from kvmvm.bindings import check, ffi, lib

    buf = ffi.new("char[]", 4096)
    i = len(CLASSES) if cls == "common" else CLASSES.index(cls)
    check(lib.kvmvm_seccomp_describe(i, level, buf, 4096), "seccomp allowlist")
    return ffi.string(buf).decode().split()
