"""Firecracker's REST API on a Unix socket, served by kvmvm (docs/firecracker-compat.md).

`serve(path, vmm)` starts the threaded server for a `Vmm` (kvmvm.api.vmm); the endpoint
groups live one per module (boot_source, drives, net, actions, ...). Imported only by
commands that serve the API, so `kvmvm boot`'s start-up does not pay for it; and imports
nothing itself (not even `__future__`): kvmvm.api.listen, below it, runs before the API
socket listens.
"""


def serve(path: str, vmm, max_payload: "int | None" = None, sock=None):
    """Serve `vmm` on `path` (or on `sock`, from kvmvm.api.listen.listen(path)) in a daemon
    thread; returns the ApiServer (`.close()` stops it and removes the socket)."""
    from kvmvm.api.router import Router
    from kvmvm.api.server import MAX_PAYLOAD, ApiServer

    return ApiServer(path, Router(vmm), max_payload or MAX_PAYLOAD, sock).start()


def serve_machine(path: str, machine, instance_id: str = "anonymous-instance"):
    """kvmvm boot --api-sock: serve the post-boot API for a Machine built by the CLI.
    Returns (server, vmm)."""
    import signal

    from kvmvm.api.vmm import Vmm

    if machine.vm is None:
        machine.build()
    vmm = Vmm(instance_id)
    vmm.attach(machine)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:   # a stop request ends the VM cleanly
        signal.signal(signal.SIGTERM, _interrupt)
    return serve(path, vmm), vmm


def _interrupt(signum, frame):
    raise KeyboardInterrupt
