"""Commands inside a sandbox: `sb.commands.run(...)`, results and background handles.

A string runs under `/bin/sh -c`, a list is argv. Output is collected up to a per-call
limit; a command that prints more is killed (its whole process group) and its result says
so (`truncated`, `error`), so a guest can never make the host buffer without bound.
"""

from __future__ import annotations

import signal
import threading
import time
import weakref
from dataclasses import dataclass

from kvmvm.agent import protocol as p
from kvmvm.errors import CommandExitError, CommandTimeout, ConfigError, SandboxError

DEFAULT_OUTPUT_LIMIT = 16 << 20      # bytes per call, stdout and stderr together
KILL_GRACE_S = 2.0                   # after SIGKILL: how long to wait for the stream's end


@dataclass
class CommandResult:
    """How a command ended. exit_code follows the shell: 128+N when killed by signal N."""

    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int
    error: str | None = None          # set when kvmvm ended the command (timeout, output limit)
    truncated: bool = False           # the output limit was reached
    output_limit: int = DEFAULT_OUTPUT_LIMIT

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    def to_dict(self) -> dict:
        return {"stdout": self.stdout, "stderr": self.stderr, "exit_code": self.exit_code,
                "error": self.error, "truncated": self.truncated}


def build_argv(cmd) -> list[str]:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ConfigError("command: an empty command")
        return ["/bin/sh", "-c", cmd]
    if isinstance(cmd, (list, tuple)) and cmd and all(isinstance(a, str) for a in cmd):
        return list(cmd)
    raise ConfigError("command: a string (run by /bin/sh -c) or a non-empty list of strings (argv)")


def build_env(base: dict, extra: dict | None) -> list[str]:
    env = dict(base)
    for k, v in (extra or {}).items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k or not isinstance(v, str) or "\0" in v:
            raise ConfigError(f"envs: {k!r} -> {v!r}: names and values are strings, names without '='")
        env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


def check_limit(output_limit) -> int:
    if not isinstance(output_limit, int) or isinstance(output_limit, bool) or output_limit < 0:
        raise ConfigError(f"output_limit: a number of bytes >= 0 (got {output_limit!r})")
    return output_limit


class CommandHandle:
    """A running command. `wait()` returns its CommandResult (raising CommandExitError on a
    non-zero status unless check=False); `kill()`, `send_stdin()`, `close_stdin()`, `pid`."""

    def __init__(self, sandbox, stream, argv, *, output_limit: int, on_stdout=None, on_stderr=None,
                 check: bool = True):
        self._sb = sandbox
        self._ch = sandbox._channel
        self._st = stream
        self.argv = argv
        self.output_limit = output_limit
        self._on = {p.STDOUT: on_stdout, p.STDERR: on_stderr}
        self._buf = {p.STDOUT: bytearray(), p.STDERR: bytearray()}
        self._total = 0
        self._check = check
        self.truncated = False
        self.error: str | None = None
        self._finished = threading.Event()
        self._killing = False

    # the channel's I/O thread calls this (outside its lock)
    def _consume(self, chan, data) -> None:
        if chan is None:
            self._finished.set()
            return
        room = self.output_limit - self._total
        if len(data) > room:
            if not self.truncated:
                self.truncated = True
                self.error = f"output limit of {self.output_limit} bytes reached; the command was killed"
                self._signal(signal.SIGKILL)
            data = data[:max(room, 0)]
        if data:
            self._buf[chan] += data
            self._total += len(data)
            fn = self._on[chan]
            if fn is not None:
                try:
                    fn(data.decode("utf-8", "replace"))
                except Exception:
                    pass

    def _signal(self, sig: int) -> None:
        try:
            self._ch.call(self._st.signal, int(sig), True)
        except ConnectionError:
            pass

    @property
    def pid(self) -> int | None:
        """The process's pid inside the guest (once it started)."""
        self._ch.wait(lambda: self._st.started is not None or self._st.done, 10)
        return (self._st.started or {}).get("pid")

    @property
    def stdout(self) -> str:
        return bytes(self._buf[p.STDOUT]).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._buf[p.STDERR]).decode("utf-8", "replace")

    def send_stdin(self, data) -> None:
        """Write to the command's stdin (blocks while the guest has not taken earlier input)."""
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        while view:
            self._sb._check_alive()
            if not self._ch.wait(lambda: self._st.done or self._st.stdin_room() > 0, 5):
                if self._st.done:
                    raise SandboxError("the command has ended; its stdin is closed")
                continue
            if self._st.done:
                raise SandboxError("the command has ended; its stdin is closed")
            n = self._ch.call(lambda: self._put(view))
            view = view[n:]

    def _put(self, view) -> int:
        n = min(len(view), max(self._st.stdin_room(), 0), 1 << 16)
        if n:
            self._st.write(bytes(view[:n]))
        return n

    def close_stdin(self) -> None:
        if not self._st.done and not self._st.stdin_eof:
            self._ch.call(self._st.close_stdin)

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Signal the command and every process it started; False if it had already ended."""
        if self._st.done:
            return False
        self._signal(sig)
        return True

    def is_running(self) -> bool:
        return not self._finished.is_set()

    def _result(self) -> CommandResult:
        r = self._st.result or {}
        if r.get("op") == "error":
            code = r.get("code") or 125
            err = self.error or str(r.get("reason"))
        else:
            code = self._st.exit_status if self._st.result else -1
            err = self.error
        return CommandResult(bytes(self._buf[p.STDOUT]), bytes(self._buf[p.STDERR]), code, err,
                             self.truncated, self.output_limit)

    def wait(self, timeout: float | None = None, *, check: bool | None = None) -> CommandResult:
        """Wait for the end. With a timeout the command is killed when it runs past it
        (CommandTimeout, a TimeoutError; the sandbox lives on)."""
        check = self._check if check is None else check
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished.is_set():
            self._sb._check_alive()
            if self._ch.error is not None and not self._finished.is_set():
                self._sb._check_alive(force=True)
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                self._kill_for_timeout(timeout)
            self._finished.wait(max(left, 0))
        res = self._result()
        if self._st.result and self._st.result.get("op") == "error":
            raise SandboxError(f"cannot run {self.argv[0]!r}: {self._st.result.get('reason')}")
        if check and res.exit_code != 0:
            raise CommandExitError(res)
        return res

    def _kill_for_timeout(self, timeout: float) -> None:
        self.error = f"timed out after {timeout:g} s; the command was killed"
        self._signal(signal.SIGKILL)
        self._finished.wait(KILL_GRACE_S)
        res = self._result()
        res.error = self.error
        raise CommandTimeout(f"command {' '.join(self.argv)[:80]!r} timed out after {timeout:g} s "
                             f"and was killed", res)


class Commands:
    """`sb.commands`: run processes in the sandbox."""

    def __init__(self, sandbox):
        self._sb = sandbox

    def run(self, cmd, *, background: bool = False, envs: dict | None = None, cwd: str | None = None,
            user: str | None = None, stdin=None, timeout: float | None = 60.0, on_stdout=None,
            on_stderr=None, check: bool = True, output_limit: int | None = None):
        """Run cmd (a string: /bin/sh -c; a list: argv). Returns a CommandResult, or a
        CommandHandle with background=True. stdin: bytes, str or a binary file object."""
        sb = self._sb
        argv = build_argv(cmd)
        limit = check_limit(sb.output_limit if output_limit is None else output_limit)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"timeout: a number of seconds > 0, or None (got {timeout!r})")
        cwd = cwd or sb.cwd
        if not cwd.startswith("/"):
            raise ConfigError(f"cwd: an absolute path inside the sandbox (got {cwd!r})")
        env = build_env(sb.env, envs)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        sb._check_alive()
        ch = sb._channel
        user = sb.user if user is None else user

        h = CommandHandle(sb, None, argv, output_limit=limit, on_stdout=on_stdout, on_stderr=on_stderr,
                          check=check)

        def start():    # under the channel's lock: the consumer is in place before any output
            st = ch.session.exec(argv, env=env, cwd=cwd, user=user or "", stdin=stdin is not None or background,
                                 rlimits=sb._rlimits or None)
            h._st = st
            ch.consumers[st.id] = _weak_consumer(h)

        try:
            ch.call(start)
        except ValueError as e:
            raise ConfigError(f"command: {e}") from None
        except ConnectionError:
            sb._check_alive(force=True)
            raise
        if stdin is not None:
            if isinstance(stdin, (bytes, bytearray, memoryview)):
                feed = lambda: (h.send_stdin(bytes(stdin)), h.close_stdin())  # noqa: E731
            else:
                feed = lambda: _feed_file(h, stdin)  # noqa: E731
            if background:
                threading.Thread(target=_quiet(feed), daemon=True, name="kvmvm-sandbox-stdin").start()
            else:
                _quiet(feed)()
        if background:
            return h
        return h.wait(timeout)

    def kill(self, pid: int) -> bool:
        """Kill a process in the sandbox by pid (a background command or anything else)."""
        if not isinstance(pid, int) or pid <= 1:
            raise ConfigError(f"pid: a process id > 1 (got {pid!r})")
        r = self.run(["kill", "-9", str(pid)], check=False, timeout=10)
        return r.exit_code == 0


def _weak_consumer(h: CommandHandle):
    """h._consume without a strong reference: the channel (kept by the sandbox's finalizer)
    must not keep a handle, hence its sandbox, alive; a dropped handle's output is dropped."""
    ref = weakref.ref(h)

    def consume(chan, data) -> None:
        handle = ref()
        if handle is not None:
            handle._consume(chan, data)
    return consume


def _feed_file(h: CommandHandle, f) -> None:
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        h.send_stdin(chunk)
    h.close_stdin()


def _quiet(fn):
    def run():
        try:
            fn()
        except (SandboxError, OSError):
            pass      # the command ended before taking all its input
    return run

