"""`python tests/integration/fakevm_run.py [FLAGS] -- CMD...` = `kvmvm run FLAGS IMAGE CMD...` with the VM replaced
by the agent as a host process (`kvmvm-agent --fd N`): everything of `kvmvm run` but the
VM itself (flags, stdio pumping, signals, timeout, tty, exit statuses) runs on any host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from kvmvm.procfs import descendants


class FakeVm:
    def __init__(self, rundir, **kw):
        self.rundir, self.kw = rundir, kw
        self.proc = None
        self.session = None
        self.t = {}
        self.stop_info = None

    def start(self, timeout=30, cancelled=None):
        from kvmvm.agent.initramfs import agent_binary
        from kvmvm.agent.session import Session

        import ctypes

        ctypes.CDLL(None).prctl(36, 1)      # PR_SET_CHILD_SUBREAPER: the "VM"'s processes stay ours
        a, b = socket.socketpair()
        self.proc = subprocess.Popen([str(agent_binary()), "--fd", str(b.fileno())], pass_fds=(b.fileno(),),
                                     start_new_session=True)
        b.close()
        self.session = Session(a)
        self.session.handshake(timeout)
        return self.session

    def poll_end(self, timeout=0):
        if self.stop_info is None and self.proc is not None:
            try:
                self.proc.wait(timeout)
                self.stop_info = "ended"
            except subprocess.TimeoutExpired:
                pass
        return self.stop_info

    def end_message(self):
        return "agent process ended"

    def _console_hint(self):
        return ""

    def stop(self):
        """Stopping a VM ends everything in it: the agent and every process it started
        (each container process has a session of its own, so killing the agent alone
        would leave them running on the host)."""
        # this process is their subreaper (start): an orphan of the agent is still below us
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.stop_info is None:
            self.proc.wait()
            self.stop_info = "stopped"

    def shutdown(self, grace=3.0):
        self.session.close()
        if self.poll_end(grace) is None:
            self.stop()

    def timings(self):
        return {}

    def close(self):
        if self.session is not None:
            self.session.close()
        self.stop()


if __name__ == "__main__":
    import kvmvm.agent.guest as guest

    guest.ContainerVm = FakeVm
    os.environ["KVMVM_ALLOW_PVM"] = "1"
    from kvmvm.cli import main

    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else 0
    sys.exit(main(["run", "--rootfs", *args[:cut], os.environ["FAKEVM_ROOTFS"], *args[cut + 1:]]))
