"""What this host offers kvmvm, checked one item at a time (`kvmvm doctor`).

Each check gives a status: "ok"; "warn" (works, with a limit worth knowing); "missing"
(an optional feature's tool is absent: the fix installs it); "fail" (kvmvm cannot run VMs
here until it is fixed). Nothing here changes the host.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import asdict, dataclass

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
# the capabilities kvmvm uses: name -> (KVM_CAP_* number, required)
KVM_CAPS = {
    "irqchip": (0, True), "user-memory": (3, True), "ext-cpuid": (7, True),
    "irqfd": (32, False), "pit2": (33, False), "ioeventfd": (36, False),
    "immediate-exit": (136, False),
}
KVM_CAP_NR_MEMSLOTS, KVM_CAP_MAX_VCPUS = 10, 66

# feature -> [(command, Debian package)]: the host tools each kvmvm feature runs
TOOLS = {
    "benchmarks": [("qemu-system-x86_64", "qemu-system-x86")],
    "container images": [("podman", "podman"), ("skopeo", "skopeo"), ("umoci", "umoci"),
                         ("mkfs.erofs", "erofs-utils"), ("mkfs.ext4", "e2fsprogs")],
    "networking": [("passt", "passt"), ("ip", "iproute2")],
}


@dataclass
class Check:
    name: str
    status: str        # ok | warn | missing | fail
    detail: str
    fix: str = ""


def _kvm_checks(path: str) -> list[Check]:
    if not os.path.exists(path):
        return [Check("/dev/kvm", "fail", f"{path} does not exist",
                      "load kvm_intel or kvm_amd (`sudo modprobe kvm_intel`), enable virtualisation "
                      "in the firmware, or on a cloud VM pick an instance type with nested virtualisation")]
    if not os.access(path, os.R_OK | os.W_OK):
        return [Check("/dev/kvm", "fail", f"{path} is not readable and writable by this user",
                      "run as root, or `sudo usermod -aG kvm $USER` and log in again")]
    out = [Check("/dev/kvm", "ok", f"{path} is readable and writable")]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return out + [Check("KVM API", "fail", f"cannot open {path}: {e.strerror}")]
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        if api != 12:
            return out + [Check("KVM API", "fail", f"API version {api}, kvmvm needs 12",
                                "use a Linux kernel from this decade")]
        caps = {n: fcntl.ioctl(fd, KVM_CHECK_EXTENSION, c) for n, (c, _) in KVM_CAPS.items()}
        have = [n for n, v in caps.items() if v > 0]
        lacking = [n for n, v in caps.items() if v <= 0]
        vcpus = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS)
        slots = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS)
        required_missing = [n for n in lacking if KVM_CAPS[n][1]]
        detail = f"API 12; {', '.join(have)}; up to {vcpus} vCPUs, {slots} memory slots"
        if lacking:
            detail += f"; lacks {', '.join(lacking)}"
        out.append(Check("KVM API", "fail" if required_missing else ("warn" if lacking else "ok"), detail,
                         "a newer host kernel" if lacking else ""))
        try:
            os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
            out.append(Check("VM creation", "ok", "KVM_CREATE_VM works"))
        except OSError as e:
            why = "another hypervisor holds VT-x/AMD-V" if e.errno == errno.EBUSY else e.strerror
            out.append(Check("VM creation", "fail", f"KVM_CREATE_VM failed: {why}",
                             "stop the other hypervisor (VirtualBox, VMware) or free memory"))
    except OSError as e:
        out.append(Check("KVM API", "fail", f"ioctl on {path} failed: {e.strerror}"))
    finally:
        os.close(fd)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _is_vm() -> bool:
    flags = next((line for line in (_read("/proc/cpuinfo") or "").splitlines() if line.startswith("flags")), "")
    return "hypervisor" in flags.split()


def _kind_checks() -> list[Check]:
    from kvmvm.host import PVM_MODULE

    vm_note = "this host is itself a VM (nested virtualisation: exits cost more)" if _is_vm() \
        else "bare metal"
    if os.path.exists(PVM_MODULE):
        kind = Check("KVM kind", "warn", f"PVM (kvm_pvm: guest kernel code is emulated); {vm_note}",
                     "Linux guests cannot boot on PVM: tiny guests run here; `./dev boot` in a kvmvm "
                     "checkout runs Linux inside its software-emulated test host; or use hardware KVM")
        nested = Check("nested KVM", "warn", "PVM offers no nested virtualisation to guests")
        return [kind, nested]
    mod = next((m for m in ("kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")), None)
    if mod is None:
        return [Check("KVM kind", "warn", f"unknown (neither kvm_intel, kvm_amd nor kvm_pvm is loaded); {vm_note}")]
    kind = Check("KVM kind", "ok", f"hardware KVM ({mod}); {vm_note}")
    flag = _read(f"/sys/module/{mod}/parameters/nested")
    on = flag in ("Y", "1")
    nested = Check("nested KVM", "ok" if on else "warn",
                   f"{mod} nested={flag}: guests {'can' if on else 'cannot'} run KVM themselves",
                   "" if on else f"`echo 'options {mod} nested=1' | sudo tee /etc/modprobe.d/kvm-nested.conf` "
                                 f"and reload {mod} (only needed to run KVM inside guests)")
    return [kind, nested]


def _device_checks() -> list[Check]:
    out = []
    tun = "/dev/net/tun"
    if os.access(tun, os.R_OK | os.W_OK):
        out.append(Check("TUN", "ok", f"{tun} (virtio-net over a TAP)"))
    else:
        out.append(Check("TUN", "missing", f"{tun} is {'not accessible' if os.path.exists(tun) else 'absent'}"
                         " (needed for --net tap=...)", "`sudo modprobe tun`, or run as root"))
    vhost = "present, unused" if os.path.exists("/dev/vhost-vsock") else "absent, not needed"
    out.append(Check("vsock", "ok", f"virtio-vsock in user space over Unix sockets (Firecracker's "
                     f"protocol); /dev/vhost-vsock {vhost}"))
    return out


def _tool_checks() -> list[Check]:
    out = []
    for feature, tools in TOOLS.items():
        absent = [(t, p) for t, p in tools if shutil.which(t) is None]
        if not absent:
            out.append(Check(feature, "ok", ", ".join(t for t, _ in tools)))
            continue
        pkgs = " ".join(dict.fromkeys(p for _, p in absent))
        out.append(Check(feature, "missing", f"not found: {', '.join(t for t, _ in absent)}",
                         f"`sudo apt-get install {pkgs}`"))
    return out


def _kernel_checks() -> list[Check]:
    from kvmvm.image.default import cached_default, missing_packages

    art = cached_default()
    if art.complete:
        out = [Check("guest kernel", "ok", f"{art.kernel_version} in {art.vmlinux.parent}; "
                     f"initramfs {art.initramfs}")]
    else:
        out = [Check("guest kernel", "missing", f"not built for the current inputs (cache: {art.home})",
                     "`kvmvm kernel build` (6-8 min on 2 cores; needed by `kvmvm boot` without --kernel)")]
    need = missing_packages()
    if need:
        out.append(Check("kernel build tools", "missing", f"not installed: {' '.join(need)}",
                         "`sudo kvmvm kernel build --install-deps`"))
    return out


def _core_checks() -> list[Check]:
    from kvmvm import tiny

    out = []
    try:
        from kvmvm._native import lib
    except ImportError as e:
        out.append(Check("C core", "fail", f"kvmvm._native does not load: {e}", "reinstall kvmvm (pip install)"))
    else:
        from kvmvm.version import core_build

        out.append(Check("C core", "ok", core_build(lib)))
    d = tiny.directory()
    out.append(Check("tiny guests", "ok", f"{len(tiny.guests())} in {d}") if d else
               Check("tiny guests", "missing", "none built", tiny.HOW))
    return out


def run_checks(kvm_path: str = "/dev/kvm") -> list[Check]:
    """Every check, in the order `kvmvm doctor` prints them."""
    return (_core_checks() + _kvm_checks(kvm_path) + _kind_checks() + _device_checks()
            + _tool_checks() + _kernel_checks())


def as_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
