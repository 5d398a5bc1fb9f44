"""What this host's KVM can run."""

from __future__ import annotations

import os

PVM_MODULE = "/sys/module/kvm_pvm"


def linux_guest_problem(kvm_path: str = "/dev/kvm") -> str | None:
    """Why this host's KVM cannot boot a stock Linux guest, or None when it can.

    The PVM hypervisor (an out-of-tree /dev/kvm) emulates guest kernel-mode code one
    instruction at a time and stops on instructions Linux uses (xsave, popcnt, ...).
    """
    if os.environ.get("KVMVM_ALLOW_PVM") == "1":
        return None
    if os.path.exists(PVM_MODULE):
        return ("this host's /dev/kvm is the PVM hypervisor, which cannot run a stock Linux "
                "guest; run `./dev boot` from a kvmvm checkout (it boots the guest inside a "
                "software-emulated standard-KVM test host) or use a host with hardware KVM")
    return None
