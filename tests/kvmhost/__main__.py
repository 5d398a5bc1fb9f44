"""Command line: ``python -m tests.kvmhost run [--timeout S] [--mem MiB] [--cpus N] -- CMD...``

Exit status: the command's own; 124 on --timeout, when L1 froze (--stall) or when its kernel
died; 125 when L1 cannot run it (one line on stderr says why); 130/143 when interrupted by
SIGINT/SIGTERM (L1 is torn down first).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from . import image, runner

FAILURE_STATUS = 125


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise(signum, frame):  # noqa: ARG001
    raise _Signalled(signum)


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.kvmhost", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run CMD inside a fresh L1 with a standard /dev/kvm")
    r.add_argument("--timeout", type=float, help="kill L1 after S seconds (boot included); exit 124")
    r.add_argument("--mem", type=int, default=runner.DEFAULT_MEM, help="L1 memory in MiB (default %(default)s)")
    r.add_argument("--cpus", type=int, default=runner.DEFAULT_CPUS, help="L1 vCPUs (default %(default)s)")
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="extra variable for CMD")
    r.add_argument("--share", action="append", default=[], metavar="DIR",
                   help="another host directory to mount read-write at its own path")
    r.add_argument("--stall", type=float, default=runner.DEFAULT_STALL,
                   help="kill L1 (exit 124) when its heartbeat stops for S seconds (default %(default)s; 0: never)")
    r.add_argument("--report", metavar="FILE", help="write timings and status as JSON to FILE")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sub.add_parser("prepare", help="build (or find) the cached L1 image and print its directory")
    a = p.parse_args(argv)

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)
    try:
        if a.command == "prepare":
            print(image.prepare(_err).dir)
            return 0
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        if not cmd:
            p.error("no command given (python -m tests.kvmhost run -- CMD...)")
        env = dict(kv.split("=", 1) for kv in a.env)
        t0 = time.monotonic()
        res = runner.run(cmd, timeout=a.timeout, mem=a.mem, cpus=a.cpus, env=env, shares=a.share,
                         stream=sys.stdout.buffer, log=_err, stall=a.stall)
        if a.report:
            with open(a.report, "w") as f:
                json.dump({"status": res.status, "timed_out": res.timed_out, "stalled": res.stalled, "ready_s": res.ready_s,
                           "run_s": res.total_s, "total_s": time.monotonic() - t0}, f)
        if res.timed_out and not res.stalled:  # a stall was reported as it happened
            _err(f"kvmhost: timeout after {a.timeout:g} s")
        return res.status
    except image.KvmhostError as e:
        _err(f"kvmhost: {e}")
        return FAILURE_STATUS
    except _Signalled as s:
        _err(f"kvmhost: interrupted by {signal.Signals(s.signum).name}; L1 torn down")
        return 128 + s.signum


if __name__ == "__main__":
    sys.exit(main())
