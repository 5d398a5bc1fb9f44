"""`kvmvm firecracker` (also installed as `kvmvm-firecracker`): Firecracker's command line.

It takes Firecracker's flags with their meaning, serves its API on `--api-sock` (kvmvm.api)
and/or boots what `--config-file` describes (the JSON of GET /vm/config), and exits when the
guest ends, with kvmvm boot's exit statuses. A Firecracker flag kvmvm does not implement
gets one line naming it (exit 2). Arguments are parsed without click: start-up to a
listening socket is part of what clients wait for, so nothing is imported before the
socket listens that the arguments do not need (not even `__future__`).
"""

import os
import sys
import time

T0 = time.monotonic_ns()

USAGE = """\
usage: kvmvm firecracker [--api-sock PATH] [--config-file PATH] [--no-api] [--id ID]
                         [--boot-timer] [--log-path PATH] [--level LEVEL] [--show-level]
                         [--show-log-origin] [--module M] [--metrics-path PATH]
                         [--http-api-max-payload-size N] [--version]

Serve Firecracker's API on a Unix socket with kvmvm as the VMM (docs/firecracker-compat.md).
"""

DEFAULT_API_SOCK = "/run/firecracker.socket"
# flag -> (dest, takes a value)
FLAGS = {
    "--api-sock": ("api_sock", True),
    "--config-file": ("config_file", True),
    "--no-api": ("no_api", False),
    "--id": ("id", True),
    "--boot-timer": ("boot_timer", False),
    "--log-path": ("log_path", True),
    "--level": ("level", True),
    "--module": ("module", True),
    "--show-level": ("show_level", False),
    "--show-log-origin": ("show_log_origin", False),
    "--metrics-path": ("metrics_path", True),
    "--http-api-max-payload-size": ("max_payload", True),
    "--no-seccomp": ("no_seccomp", False),        # kvmvm installs no Firecracker seccomp filters
    "--start-time-us": ("start_time_us", True),
    "--start-time-cpu-us": ("start_time_cpu_us", True),
    "--parent-cpu-time-us": ("parent_cpu_time_us", True),
    "--version": ("version", False),
    "--help": ("help", False),
    "-h": ("help", False),
}
UNSUPPORTED = {"--seccomp-filter": True, "--mmds-size-limit": True, "--describe-snapshot": True,
               "--snapshot-version": False, "--enable-pci": False}


def parse(argv: list[str]) -> dict:
    out: dict = {"api_sock": DEFAULT_API_SOCK, "id": "anonymous-instance", "level": None}
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in UNSUPPORTED:
            raise _bad(f"firecracker: {name} is not supported by kvmvm")
        if name not in FLAGS:
            raise _bad(f"firecracker: unknown argument {a!r} (see --help)")
        dest, takes = FLAGS[name]
        if not takes:
            if eq:
                raise _bad(f"firecracker: {name} takes no value")
            out[dest] = True
            continue
        if not eq:
            if i >= len(argv):
                raise _bad(f"firecracker: {name} needs a value")
            val = argv[i]
            i += 1
        out[dest] = val
    iid = out["id"]
    if not 1 <= len(iid) <= 64 or not all(c.isalnum() or c == "-" for c in iid):
        raise _bad(f"firecracker: invalid --id {iid!r} (1-64 alphanumeric characters or '-')")
    if out.get("no_api") and not out.get("config_file"):
        raise _bad("firecracker: --no-api needs --config-file")
    for k in ("max_payload", "start_time_us", "start_time_cpu_us", "parent_cpu_time_us"):
        if k in out:
            try:
                out[k] = int(out[k])
                if out[k] < 0:
                    raise ValueError
            except ValueError:
                raise _bad(f"firecracker: {k.replace('_', '-')} must be a non-negative integer") from None
    return out


def _bad(msg: str):
    """A ConfigError (kvmvm.errors is imported only when there is one to raise)."""
    from kvmvm.errors import ConfigError

    return ConfigError(msg)


# GET /vm/config's sections -> the request that configures each (config files use the same JSON)
SECTIONS = [("logger", "/logger", None), ("metrics", "/metrics", None),
            ("boot-source", "/boot-source", None), ("machine-config", "/machine-config", None),
            ("cpu-config", "/cpu-config", None), ("drives", "/drives/", "drive_id"),
            ("network-interfaces", "/network-interfaces/", "iface_id"), ("vsock", "/vsock", None),
            ("entropy", "/entropy", None), ("serial", "/serial", None), ("balloon", "/balloon", None),
            ("mmds-config", "/mmds/config", None), ("pmem", "/pmem/", "id"),
            ("memory-hotplug", "/hotplug/memory", None)]


def apply_config(router, data) -> None:
    """Configure through the same handlers as the API; the first refusal is a ConfigError."""
    import json

    from kvmvm.errors import ConfigError

    if not isinstance(data, dict):
        raise ConfigError("config file: the top level must be a JSON object")
    known = {s[0] for s in SECTIONS}
    for k in data:
        if k not in known:
            raise ConfigError(f"config file: unknown section {k!r}")
    for key, path, id_field in SECTIONS:
        value = data.get(key)
        if value is None:
            continue
        items = value if id_field else [value]
        if id_field and not isinstance(value, list):
            raise ConfigError(f"config file: {key} must be a list")
        for item in items:
            p = path + (str(item.get(id_field, "")) if id_field and isinstance(item, dict) else "")
            status, payload = router("PUT", p, json.dumps(item).encode())
            if status >= 400:
                raise ConfigError(f"config file: {key}: {payload['fault_message']}")


def main(argv: list[str]) -> int:
    opts = parse(argv)
    if opts.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if opts.get("version"):
        from kvmvm import __version__
        from kvmvm.api.instance import FIRECRACKER_API_VERSION

        sys.stdout.write(f"kvmvm {__version__} (Firecracker API v{FIRECRACKER_API_VERSION})\n")
        return 0
    listener = None
    if not opts.get("no_api"):     # connectable at once; requests wait in the backlog
        from kvmvm.api.listen import listen

        listener = listen(opts["api_sock"])
    try:
        return _run(opts, listener)
    finally:
        if listener is not None and listener.fileno() >= 0:   # never handed to a server
            listener.close()
            _unlink(opts["api_sock"])


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _run(opts: dict, listener) -> int:
    from kvmvm.api.router import Router
    from kvmvm.api.vmm import Vmm
    from kvmvm.console import attached_console

    vmm = Vmm(opts["id"], T0)
    vmm.boot_timer = bool(opts.get("boot_timer"))
    if "start_time_us" in opts:
        vmm.metrics.start_us = max(0, time.monotonic_ns() // 1000 - opts["start_time_us"])
    router = Router(vmm)
    server = None
    try:
        if opts.get("log_path"):
            log_cfg = {"log_path": opts["log_path"], "level": opts["level"] or "Info",
                       "show_level": bool(opts.get("show_level")),
                       "show_log_origin": bool(opts.get("show_log_origin"))}
            _put(router, "/logger", log_cfg)
        elif opts["level"]:
            raise _bad("firecracker: --level needs --log-path (kvmvm logs to a file only)")
        if opts.get("metrics_path"):
            _put(router, "/metrics", {"metrics_path": opts["metrics_path"]})
        with attached_console(vmm):
            if opts.get("config_file"):
                _boot_from_file(router, vmm, opts["config_file"])
            if not opts.get("no_api"):
                from kvmvm.api import serve

                server = serve(opts["api_sock"], vmm, opts.get("max_payload"), listener)
                vmm.logger.info(f"API server listening on {opts['api_sock']}.")
                _preload_in_background()
            _wait(vmm)
    finally:
        _ignore_signals()           # a late SIGTERM must not cut the clean-up short
        if server is not None:
            server.close()
        vmm.stop()
        if vmm.machine is not None and vmm.state != "Not started":
            vmm.ended.wait(2.0)
        vmm.close()
    res = vmm.result
    if res is None:
        return 130
    if res.outcome != "ok" or os.environ.get("KVMVM_VERBOSE") == "1":
        sys.stdout.flush()
        sys.stderr.write(f"kvmvm: {res.message}\n")
    return res.status


def _ignore_signals() -> None:
    import _signal

    for sig in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT):
        _signal.signal(sig, _signal.SIG_IGN)


def _put(router, path: str, body: dict) -> None:
    import json

    from kvmvm.errors import ConfigError

    status, payload = router("PUT", path, json.dumps(body).encode())
    if status >= 400:
        raise ConfigError(f"firecracker: {payload['fault_message']}")


def _boot_from_file(router, vmm, path: str) -> None:
    import json

    from kvmvm.errors import ConfigError

    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"config file {path}: not valid JSON: {e}") from None
    apply_config(router, data)
    _put(router, "/actions", {"action_type": "InstanceStart"})


def _preload_in_background() -> None:
    """Import what later requests and InstanceStart need (json, threading, the C core,
    loaders, devices) while the API waits for its configuration, so the start itself does
    not pay for it. Meanwhile the interpreter switches threads every 0.5 ms instead of 5:
    a request that arrives during an import is answered without waiting out the import."""
    import _thread

    def preload():
        import importlib

        try:
            for name in ("json", "threading", "kvmvm.machine", "kvmvm.bindings", "kvmvm.vm",
                         "kvmvm.boot.elf", "kvmvm.boot.bzimage", "kvmvm.boot.acpi",
                         "kvmvm.boot.pvh", "kvmvm.boot.bootparams", "kvmvm.boot.mptable",
                         "kvmvm.devices", "kvmvm.devices.virtio.blk", "kvmvm.devices.virtio.net",
                         "kvmvm.devices.virtio.vsock", "kvmvm.devices.virtio.rng"):
                importlib.import_module(name)
        except Exception:   # noqa: BLE001 - InstanceStart reports any real problem
            pass
        finally:
            sys.setswitchinterval(interval)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    try:
        _thread.start_new_thread(preload, ())
    except RuntimeError:
        sys.setswitchinterval(interval)


def _wait(vmm) -> None:
    """Until the guest ends; SIGTERM and SIGINT end it (and this process) too."""
    import _signal      # not `signal`: its enums would be imported while the API answers

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (_signal.SIGTERM, _signal.SIGHUP):
        if _signal.getsignal(sig) in (_signal.SIG_DFL, None):
            _signal.signal(sig, on_signal)
    try:
        while not vmm.ended.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass


def entry() -> None:
    """The `kvmvm-firecracker` command (bin/kvmvm-firecracker)."""
    from kvmvm.cli import exit_now, main as kvmvm_main

    exit_now(kvmvm_main(["firecracker", *sys.argv[1:]]))


def __getattr__(name):
    # `kvmvm --help` lists commands through click; build that command only when asked
    if name != "cli":
        raise AttributeError(name)
    import click

    @click.command("firecracker", context_settings={"ignore_unknown_options": True,
                                                    "allow_extra_args": True, "help_option_names": []})
    @click.pass_context
    def cli(ctx):
        """Firecracker's command line and API (kvmvm firecracker --help)."""
        return main(list(ctx.args))

    return cli
