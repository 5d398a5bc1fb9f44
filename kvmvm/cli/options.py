"""Option tables for commands on the start-up-critical path, readable without click.

`kvmvm boot` is declared here once: kvmvm.cli.boot builds its click command from the table
(help, usage errors), and kvmvm.cli.fast parses the common case with it without importing
click at all (click costs about as much as booting a tiny guest).
"""

from __future__ import annotations


class Opt:
    __slots__ = ("flags", "dest", "kind", "default", "help", "multiple", "choices", "metavar",
                 "hidden")

    def __init__(self, flags, dest, kind, default=None, help="", multiple=False, choices=None,
                 metavar=None, hidden=False):
        self.flags = flags          # ("--cmdline", "--append")
        self.dest = dest
        self.kind = kind            # str | int | float | "flag" | "choice"
        self.default = default
        self.help = help
        self.multiple = multiple
        self.choices = choices
        self.metavar = metavar
        self.hidden = hidden


BOOT = [
    Opt(("--kernel",), "kernel", str, None,
        "Kernel image (ELF vmlinux / PVH ELF, or bzImage). Default: kvmvm's own kernel."),
    Opt(("--initrd",), "initrd", str, None,
        "Initial ramdisk. Default with the default kernel: kvmvm's initramfs."),
    Opt(("--cmdline", "--append"), "cmdline", str, None, "Kernel command line."),
    Opt(("--memory",), "memory", int, 128, "Guest RAM in MiB."),
    Opt(("--cpus",), "cpus", int, 1, "Number of vCPUs."),
    Opt(("--timeout",), "timeout", float, None, "Stop the VM after this many seconds (exit 124)."),
    Opt(("--entry",), "entry", "choice", "auto",
        "ELF entry: PVH note, or the 64-bit entry with boot_params.", choices=("auto", "pvh", "64")),
    Opt(("--bzimage",), "use_bzimage", "flag", False, "Default kernel: boot the bzImage, not vmlinux."),
    Opt(("--no-acpi",), "no_acpi", "flag", False, "Give the guest no ACPI tables."),
    Opt(("--pit",), "pit", "choice", "auto",
        "In-kernel i8254 PIT: auto gives one to Linux kernels only.", choices=("auto", "on", "off")),
    Opt(("--json",), "as_json", "flag", False, "Print a final JSON object with the outcome."),
    Opt(("--drive",), "drives", str, (), "virtio-blk raw image (repeatable; the first is /dev/vda).",
        multiple=True, metavar="PATH[,ro][,direct]"),
    Opt(("--net",), "nets", str, (), "virtio-net over a TAP, over passt with user, or over an "
        "inherited stream socket with fd=N (repeatable).",
        multiple=True, metavar="tap=NAME[,mac=MAC]|user[,tcp=H:G]|fd=N[,peer=passt]"),
    Opt(("--vsock",), "vsock", str, None, "virtio-vsock, Firecracker-style host UDS.",
        metavar="cid=N,uds=PATH"),
    Opt(("--no-rng",), "no_rng", "flag", False, "No virtio-rng device."),
    Opt(("--seccomp-level",), "seccomp_level", "choice", "2",
        "seccomp filters of kvmvm's threads: 0 off, 1 system calls only, 2 with their arguments.",
        choices=("0", "1", "2")),
    Opt(("--jail",), "jail", "flag", False,
        "Run the VM jailed: namespaces, a pivot_root into a folder holding only what it needs, "
        "cgroup limits, rlimits, an unprivileged uid/gid (docs/security.md). Needs root."),
    Opt(("--jail-uid",), "jail_uid", int, None, "uid the jailed VM runs as (default 990000)."),
    Opt(("--jail-gid",), "jail_gid", int, None, "gid the jailed VM runs as (default 990000)."),
    Opt(("--jail-netns",), "jail_netns", str, None,
        "Network namespace of the jailed VM: a path to join (TAPs live there) or 'new' (empty). "
        "Default: this one.", metavar="PATH|new"),
    Opt(("--jail-memory",), "jail_memory", int, None,
        "cgroup memory limit in MiB (default: --memory + 256)."),
    Opt(("--jail-pids",), "jail_pids", int, None, "cgroup limit on threads (default 128)."),
    Opt(("--jail-cpu",), "jail_cpu", float, None, "cgroup CPU time limit in CPUs (default: --cpus + 1)."),
    Opt(("--jail-probe",), "jail_probe", str, None, "Test hook (KVMVM_TEST_HOOKS=1).", hidden=True),
    Opt(("--virtio-cmdline",), "virtio_cmdline", "choice", "auto",
        "List virtio devices as virtio_mmio.device= on the kernel command line: auto is off for "
        "a Linux kernel with ACPI (the DSDT lists them) and on otherwise.",
        choices=("auto", "on", "off")),
    Opt(("--api-sock",), "api_sock", str, None,
        "Serve Firecracker's API (the post-boot part: GET /, /vm/config, PATCH /vm, actions) "
        "on this Unix socket while the VM runs.", metavar="PATH"),
]


def parse(table, argv):
    """Parse argv against table: a dict of dest -> value, or None when anything is unusual
    (unknown option, --help, a bad value): the caller then lets click parse and report."""
    by_flag = {f: o for o in table for f in o.flags}
    out = {o.dest: (list(o.default) if o.multiple else o.default) for o in table}
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        o = by_flag.get(name)
        if o is None:
            return None
        if o.kind == "flag":
            if eq:
                return None
            out[o.dest] = True
            continue
        if not eq:
            if i >= len(argv):
                return None
            val = argv[i]
            i += 1
        try:
            if o.kind == "choice":
                if val not in o.choices:
                    return None
                v = val
            else:
                v = o.kind(val)
        except ValueError:
            return None
        if o.multiple:
            out[o.dest].append(v)
        else:
            out[o.dest] = v
    for o in table:
        if o.multiple:
            out[o.dest] = tuple(out[o.dest])
    return out


RESTORE = [
    Opt(("--net-override",), "net_override", str, (),
        "Attach network device IFACE (ethN, or its old TAP name) to another TAP.", multiple=True,
        metavar="IFACE=TAP"),
    Opt(("--vsock-uds",), "vsock_uds", str, None, "The vsock device's new Unix socket.",
        metavar="PATH"),
    Opt(("--timeout",), "timeout", float, None, "Stop the VM after this many seconds (exit 124)."),
    Opt(("--json",), "as_json", "flag", False, "Print a final JSON object with the outcome."),
]
