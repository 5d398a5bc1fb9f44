"""`kvmvm run [flags] IMAGE [CMD...]`: a container image's command in its own microVM.

podman's flags and exit statuses: the command's own status; 128+N when it died of signal
N; 125 when kvmvm failed (one line naming what); 126 when the command cannot be run; 127
when it is not found. SIGINT, SIGTERM and SIGHUP go to the container's process; a second
SIGINT, or --timeout, stops the VM.
"""

from __future__ import annotations

import math
import os
import sys
import time

import click

KVMVM_FAILED = 125


class RunCommand(click.Command):
    """Usage errors exit 125 (podman), not click's 2."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            e.exit_code = KVMVM_FAILED
            raise


@click.command("run", cls=RunCommand, context_settings={"allow_interspersed_args": False,
                                                        "help_option_names": ["-h", "--help"]})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and stream it to the container.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY (raw host terminal, window size follows).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("--env-file", multiple=True, metavar="FILE", help="Read KEY=VALUE lines from FILE.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="USER[:GROUP]", help="User (names from the image's /etc/passwd).")
@click.option("--entrypoint", metavar="CMD", help="Override the image's Entrypoint (a JSON array or one program).")
@click.option("--hostname", metavar="NAME", help="The container's host name.")
@click.option("--cpus", metavar="N", help="CPU time the VM may use, as podman's (1.5: one and a half CPUs; "
              "the VM gets 2 vCPUs). Default: 1 vCPU, no limit.")
@click.option("-m", "--memory", default="512m", show_default=True, metavar="SIZE", help="VM memory (512m, 2g).")
@click.option("--timeout", metavar="SECONDS", help="Stop the VM after this long (exit 137).")
@click.option("--read-only", is_flag=True, help="Mount the image read-only (/tmp, /run, /var/tmp stay writable).")
@click.option("-v", "--volume", multiple=True, metavar="SRC:DEST[:ro]",
              help="A named volume (NAME:/path; :direct opens it with O_DIRECT) or a host directory "
                   "copied in read-only (/dir:/path:ro).")
@click.option("--net", "--network", "net", default="none", show_default=True, metavar="MODE",
              help="none, user (passt: outbound + -p) or tap=NAME.")
@click.option("-p", "--publish", multiple=True, metavar="[IP:]HOST:GUEST[/udp]",
              help="Publish a port (with --net user), as podman does.")
@click.option("--name", metavar="NAME", help="A name for this container (unique while it runs).")
@click.option("--rm", is_flag=True, help="Remove the container at the end (always the case).")
@click.option("--rootfs", is_flag=True, help="IMAGE is a filesystem image file (ext4 or erofs), not an image name.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def cli(**kw):
    """Run a command of a container image in a new microVM."""
    from kvmvm.errors import KvmvmError

    debug = os.environ.get("KVMVM_DEBUG") == "1"
    try:
        return run(**kw)
    except KvmvmError as e:
        if debug:
            raise
        _say(str(e))
        return KVMVM_FAILED
    except Exception as e:  # a bug in kvmvm: still one line and podman's 125
        if debug:
            raise
        _say(f"internal error: {type(e).__name__}: {e} (KVMVM_DEBUG=1 for a traceback)")
        return KVMVM_FAILED


def _say(msg: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"kvmvm: {msg}\n")
    sys.stderr.flush()


def _fs_type(path: str) -> str:
    from kvmvm.errors import ConfigError

    try:
        with open(path, "rb") as f:
            sb = f.read(2048)
    except OSError as e:
        raise ConfigError(f"--rootfs {path}: {e.strerror}") from None
    if sb[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return "erofs"
    if sb[1024 + 56:1024 + 58] == b"\x53\xef":
        return "ext4"
    raise ConfigError(f"--rootfs {path}: not an ext4 or erofs filesystem image")


def run(interactive, tty, env, env_file, workdir, user, entrypoint, hostname, cpus, memory,
        timeout, read_only, volume, net, publish, name, rm, rootfs, image, command) -> int:
    from kvmvm.agent import spec
    from kvmvm.cli import T0
    from kvmvm.errors import ConfigError, HostUnsupported
    from kvmvm.host import linux_guest_problem

    memory_mib = spec.parse_memory(memory)
    ncpus = spec.parse_cpus(cpus) if cpus is not None else 1
    deadline_s = spec.parse_timeout(timeout)
    if net != "none" and net != "user" and not net.startswith("tap="):
        raise ConfigError(f"--net {net!r}: use none, user or tap=NAME")
    if publish and net != "user":
        raise ConfigError("-p needs --net user")
    vols = _parse_volumes(volume)
    problem = linux_guest_problem()
    if problem:
        raise HostUnsupported(problem)

    if rootfs:
        config, rootfs_path, rootfs_type, use = {}, image, _fs_type(image), None
    else:
        from kvmvm.images import ImageStore

        fstype = os.environ.get("KVMVM_ROOTFS_TYPE")     # erofs (default) or ext4
        img = (ImageStore(rootfs_type=fstype) if fstype else ImageStore()).resolve(image)
        config = dict(img.config.get("config") or {}) if "config" in (img.config or {}) else dict(img.config or {})
        rootfs_path, rootfs_type = str(img.rootfs), img.rootfs_type
        use = getattr(img, "use", None)

    from kvmvm.agent.rundir import RunDir

    with RunDir(name) as rd:
        host = hostname or name or rd.id
        proc = spec.process(config, list(command), entrypoint=entrypoint, env=env, env_files=env_file,
                            workdir=workdir, user=user, tty=tty, hostname=host)
        import contextlib

        with contextlib.ExitStack() as stack:
            if cpus is not None:
                _cpu_quota(float(cpus), stack)
            if use is not None:
                stack.enter_context(use())
            mounts = _mounts(vols, rd, stack)
            nets, cmdline_extra, resolv = _network(net, publish, rd, stack)
            return _run_vm(rd, proc, rootfs_path, rootfs_type, memory_mib=memory_mib, cpus=ncpus,
                           mounts=mounts, nets=nets, cmdline_extra=cmdline_extra, resolv=resolv,
                           readonly=read_only, hostname=host, interactive=interactive, tty=tty,
                           deadline_s=deadline_s, t0=T0)


def _cpu_quota(cpus: float, stack) -> None:
    """--cpus as a limit of CPU time (a cgroup); where this host does not let kvmvm make one,
    one line says so and the VM runs with its vCPUs only (podman does the same)."""
    from kvmvm.jail.cgroup import CpuQuota

    try:
        stack.enter_context(CpuQuota(cpus))
    except OSError as e:
        sys.stderr.write(f"kvmvm: --cpus {cpus:g}: CPU time not limited (no cgroup: {e.strerror or e}); "
                         f"the VM has {math.ceil(cpus)} vCPU(s)\n")


def _parse_volumes(volume) -> list:
    if not volume:
        return []
    from kvmvm.images.volumes import check_unique_targets, parse_volume_spec

    specs = [parse_volume_spec(v) for v in volume]
    check_unique_targets(specs)
    return specs


def _mounts(vols, rd, stack) -> list:
    from kvmvm.agent.guest import Mount

    out = []
    for v in vols:
        if v.kind == "hostdir":
            from kvmvm.images.hostdir import pack_readonly

            path, fstype = pack_readonly(v.source, rd.path)
            out.append(Mount(str(path), fstype, v.target, True))
        else:
            from kvmvm.images.volumes import VolumeStore

            vs = VolumeStore()
            path = vs.get_or_create(v.source)
            if not v.readonly:     # one writer at a time: ext4 in two kernels would corrupt it
                stack.enter_context(vs.lock(v.source))
            out.append(Mount(str(path), "ext4", v.target, v.readonly, v.direct))
    return out


def publish_option(spec: str) -> str:
    """podman's `-p [IP:]HOST:GUEST[/tcp|/udp]` as a `--net user` option in passt's syntax
    (`tcp=[IP/]HOST:GUEST`). IPv6 addresses go in brackets, as podman writes them."""
    from kvmvm.errors import ConfigError

    port, _, proto = spec.partition("/")
    if proto not in ("", "tcp", "udp"):
        raise ConfigError(f"-p {spec}: the protocol must be tcp or udp")
    addr = ""
    if port.startswith("["):
        addr, sep, port = port[1:].partition("]:")
        if not sep:
            raise ConfigError(f"-p {spec}: expected [IPV6]:HOST:GUEST")
    elif port.count(":") == 2:
        addr, _, port = port.partition(":")
    if port.startswith(":") or port.endswith(":"):
        raise ConfigError(f"-p {spec}: give both ports, HOST:GUEST (kvmvm picks no host port)")
    return f"{proto or 'tcp'}={addr + '/' if addr else ''}{port}"


def _network(net, publish, rd, stack):
    """(MachineConfig nets, extra kernel command line, resolv.conf text) for --net."""
    if net == "none":
        return [], "", None
    if net.startswith("tap="):
        return [net], "", None
    opts = [publish_option(spec) for spec in publish]
    # passt answers DHCP; the kernel asks at boot (ip=dhcp), and the agent writes the
    # name servers it learnt (/proc/net/pnp) into resolv.conf
    return [",".join(["user", *opts])], "ip=dhcp", None


def _run_vm(rd, proc, rootfs_path, rootfs_type, *, memory_mib, cpus, mounts, nets, cmdline_extra,
            resolv, readonly, hostname, interactive, tty, deadline_s, t0) -> int:
    import contextlib
    import signal

    from kvmvm.agent import attach as at
    from kvmvm.agent.guest import Cancelled, ContainerVm, VmFailed
    from kvmvm.agent.protocol import ProtocolError

    vm = ContainerVm(rd, rootfs=rootfs_path, rootfs_type=rootfs_type, memory_mib=memory_mib, cpus=cpus,
                     mounts=mounts, nets=nets, cmdline_extra=cmdline_extra, readonly=readonly,
                     hostname=hostname, resolv=resolv, t0_ns=t0)
    stdin_fd = _fd(sys.stdin) if interactive else None
    tty_fd = stdin_fd if (tty and stdin_fd is not None and os.isatty(stdin_fd)) else None
    size_fd = tty_fd if tty_fd is not None else (_fd(sys.stdout) if tty and os.isatty(1) else None)
    status = KVMVM_FAILED
    sigs = (*at.FORWARDED, signal.SIGWINCH) if tty else at.FORWARDED
    try:
        with at.caught_signals(sigs) as (got, wake):
            deadline = None if deadline_s is None else time.monotonic() + deadline_s
            try:
                session = vm.start(cancelled=lambda: any(s in at.FORWARDED for s in got))
            except Cancelled:
                sig = next(s for s in got if s in at.FORWARDED)
                _say(f"stopped by signal {sig} while the VM was starting")
                return 128 + sig
            rows, cols = at.winsize(size_fd) or (24, 80)
            st = session.exec(proc["argv"], env=proc["env"], cwd=proc["cwd"], user=proc["user"],
                              tty=tty, rows=rows, cols=cols, stdin=interactive, main=True)
            a = at.Attach(session, st, stdin_fd=stdin_fd, stdout_fd=1, stderr_fd=2, tty_fd=tty_fd)
            interrupts = 0
            with at.raw_terminal(tty_fd):
                while not (st.done and not a.output_pending()):
                    a.step(0.25, wake)
                    while got:
                        sig = got.pop(0)
                        if sig == signal.SIGWINCH:
                            ws = at.winsize(size_fd)
                            if ws:
                                st.resize(*ws)
                            continue
                        if sig == signal.SIGINT:
                            interrupts += 1
                        if interrupts >= 2:
                            vm.stop()
                            _say("interrupted twice: VM stopped")
                            return 130
                        st.signal(sig)
                    if deadline is not None and time.monotonic() >= deadline:
                        vm.stop()
                        _say(f"--timeout: stopped the VM after {deadline_s:g} s")
                        return 137
                    if vm.poll_end(0) is not None and not st.done:
                        # what the agent had sent is still in the socket: take it first
                        with contextlib.suppress(ProtocolError):
                            for _ in range(20):
                                session.pump(0.05)
                        if not st.done:
                            _say(f"the VM ended before the container's process did ({vm.end_message()})"
                                 f"{vm._console_hint()}")
                            return KVMVM_FAILED
            vm.t["exec_started"] = getattr(st, "t_started_ns", 0)
            vm.t["exit"] = getattr(st, "t_done_ns", 0)
            r = st.result
            if r.get("op") == "error":
                _say(r.get("reason", "exec failed"))
                status = r.get("code") or KVMVM_FAILED
            else:
                status = st.exit_status
            vm.shutdown()
    except VmFailed as e:
        _say(str(e))
        return KVMVM_FAILED
    except ProtocolError as e:
        _say(f"guest agent: {e}; VM stopped")
        return KVMVM_FAILED
    finally:
        vm.close()
        _report_timings(vm)
    return status


def _report_timings(vm) -> None:
    path = os.environ.get("KVMVM_RUN_TIMINGS")
    if path:
        import json

        with open(path, "a") as f:
            f.write(json.dumps(vm.timings()) + "\n")


def _fd(f) -> int | None:
    try:
        fd = f.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
