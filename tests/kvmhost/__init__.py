"""kvmhost: a standard-KVM test host for the Linux-guest test tier.

The machines kvmvm is developed and tested on expose PVM as /dev/kvm, which cannot boot a
stock Linux guest. kvmhost boots Debian's stock kernel ("L1") under QEMU's TCG emulation of
AMD SVM; inside it kvm_amd provides a standard /dev/kvm. The host root is mounted read-only
and the checkout and KVMVM_HOME read-write at their own paths, so the project's venv and its
compiled extension work unchanged in L1.

    python -m tests.kvmhost run [--timeout S] [--mem MiB] [--cpus N] -- CMD...

or from Python: ``status, output = tests.kvmhost.run(["sh", "-c", "..."], timeout=60)[:2]``
(``run`` returns a :class:`RunResult`).

The image (Debian kernel + busybox initramfs, ~75 MB) is built once into
``${KVMVM_HOME:-~/.cache/kvmvm}/kvmhost/<key>/``; ``python -m tests.kvmhost prepare`` builds it
ahead. Inside L1 the command gets KVMHOST_INSIDE=1 and KVMHOST_L1_DIR (that image: its
kernel serves as an L2 guest kernel too). Debugging: KVMHOST_DEBUG=1 copies L1's console
(kernel and init messages, host-timestamped) to stderr; KVMHOST_APPEND adds kernel arguments;
KVMHOST_QEMU_ARGS adds QEMU arguments; KVMHOST_KERNEL_PACKAGE picks another kernel package.
"""
from .image import Image, KvmhostError, prepare
from .runner import DEFAULT_CPUS, DEFAULT_MEM, TIMEOUT_STATUS, RunResult, run


def linux_kvm_available() -> bool:
    """True when the local /dev/kvm can run a Linux guest: standard KVM, not PVM."""
    import os
    return os.path.exists("/dev/kvm") and not os.path.exists("/sys/module/kvm_pvm")


__all__ = ["Image", "KvmhostError", "RunResult", "prepare", "run", "linux_kvm_available",
           "DEFAULT_CPUS", "DEFAULT_MEM", "TIMEOUT_STATUS"]
