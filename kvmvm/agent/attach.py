"""Connect a running exec's stdio to host file descriptors, with backpressure both ways.

Host fds keep their blocking mode (they are often shared with a shell): we read stdin only
when select says it is readable (a read then returns what is there), and write output only
as much as the fd takes without blocking: up to a pipe's free space, MSG_DONTWAIT on
sockets, whole chunks to files. The guest gets output credit only for bytes written out,
so a slow consumer slows the container's process, never kvmvm's memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import socket
import stat
import struct
import termios

from kvmvm.agent import protocol as p

F_GETPIPE_SZ = 1032
TTY_CHUNK = 4096


class HostFd:
    """A host output fd and how to write to it without blocking."""

    def __init__(self, fd: int):
        self.fd = fd
        mode = os.fstat(fd).st_mode
        self.kind = ("pipe" if stat.S_ISFIFO(mode) else "sock" if stat.S_ISSOCK(mode)
                     else "file" if stat.S_ISREG(mode) or stat.S_ISCHR(mode) and not os.isatty(fd)
                     else "tty" if os.isatty(fd) else "other")
        self.sock = socket.socket(fileno=os.dup(fd)) if self.kind == "sock" else None
        self.broken = False

    def room(self) -> int:
        if self.kind == "pipe":
            try:
                size = fcntl.fcntl(self.fd, F_GETPIPE_SZ)
                unread = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
                return max(size - unread, 0)
            except OSError:
                return 4096
        if self.kind in ("tty", "other"):
            return TTY_CHUNK
        return 1 << 20

    def write(self, data: bytes) -> int:
        """Bytes written (0 when it would block); a closed reader counts as all written."""
        if self.broken:
            return len(data)
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            n = self.room()
            return os.write(self.fd, data[:n]) if n else 0
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                self.broken = True     # nobody reads: drop the rest, as podman does
                return len(data)
            raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


@contextlib.contextmanager
def raw_terminal(fd: int | None):
    """The host terminal in raw mode (the guest's pty does the line discipline)."""
    if fd is None or not os.isatty(fd):
        yield
        return
    import atexit

    saved = termios.tcgetattr(fd)

    def restore():
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    atexit.register(restore)
    raw = termios.tcgetattr(fd)
    raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    raw[1] &= ~termios.OPOST
    raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSADRAIN, raw)
    try:
        yield
    finally:
        restore()
        atexit.unregister(restore)


def winsize(fd: int | None) -> tuple[int, int] | None:
    if fd is None:
        return None
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return None


class Attach:
    """Pump one exec's stdio until it ended and its output is written, the VM ended, or
    the owner says stop. Signals arrive through `signals` (a list filled by handlers
    with set_wakeup_fd pointing at `wake_r`)."""

    def __init__(self, session, st, *, stdin_fd: int | None, stdout_fd: int, stderr_fd: int,
                 tty_fd: int | None = None):
        self.session, self.st = session, st
        self.stdin_fd = stdin_fd
        self.out = {p.STDOUT: HostFd(stdout_fd), p.STDERR: HostFd(stderr_fd)}
        self.tty_fd = tty_fd
        self.stdin_eof = stdin_fd is None

    def _read_stdin(self) -> None:
        try:
            data = os.read(self.stdin_fd, min(p.DATA_CHUNK, self.st.stdin_room()))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.st.write(data)
        else:
            self.stdin_eof = True
            self.st.close_stdin()

    def _flush(self) -> None:
        for ch, h in self.out.items():
            buf = self.st.out[ch]
            while buf:
                n = h.write(bytes(buf[:1 << 20]))
                if not n:
                    break
                self.st.consumed(ch, n)

    def output_pending(self) -> bool:
        return any(self.st.out[ch] for ch in self.out)

    def step(self, timeout: float, wake_fd: int | None = None) -> None:
        """One round: wait for any fd (at most `timeout`), then move what can move."""
        sel = selectors.PollSelector()
        try:
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.session.wants_write else 0)
            sel.register(self.session.fileno(), ev, "session")
            if wake_fd is not None:
                sel.register(wake_fd, selectors.EVENT_READ, "wake")
            if not self.stdin_eof and not self.st.done and self.st.stdin_room() > 0:
                sel.register(self.stdin_fd, selectors.EVENT_READ, "stdin")
            for ch, h in self.out.items():
                if self.st.out[ch] and not h.broken:
                    with contextlib.suppress(ValueError, KeyError):
                        sel.register(h.fd, selectors.EVENT_WRITE, ch)
            events = sel.select(timeout)
        finally:
            sel.close()
        for key, mask in events:
            if key.data == "session":
                if mask & selectors.EVENT_WRITE:
                    self.session.on_writable()
                if mask & selectors.EVENT_READ:
                    self.session.on_readable()
            elif key.data == "stdin":
                self._read_stdin()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    os.read(wake_fd, 512)
        self._flush()
        if self.session.wants_write:
            self.session.on_writable()

    def close(self) -> None:
        for h in self.out.values():
            h.close()


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def caught_signals(sigs):
    """Record signals in a list and wake a pipe; restore the old handlers afterwards."""
    got: list[int] = []
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handler(signum, frame):
        got.append(signum)

    old = {s: signal.signal(s, handler) for s in sigs}
    old_wake = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield got, r
    finally:
        signal.set_wakeup_fd(old_wake)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)
