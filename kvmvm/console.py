"""The host terminal as the guest's serial console: raw input when stdin is a TTY,
restored on every exit path (normal return, exception, SIGTERM/SIGHUP).

SIGTERM and SIGHUP end the VM like Ctrl-C (status 130) whether stdin is a terminal or not:
their default action would kill kvmvm before it removes the VM's sockets and TAPs."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys


@contextlib.contextmanager
def attached_console(cfg):
    """Wire cfg.serial_in_fd to stdin (when there is one) and make a TTY raw meanwhile."""
    fd = _stdin_fd()
    if fd is not None:
        cfg.serial_in_fd = fd
    if fd is None or not os.isatty(fd):
        with _signals_interrupt(lambda: None):
            yield
        return
    import termios

    saved = termios.tcgetattr(fd)

    def restore(*_):
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)

    atexit.register(restore)

    raw = termios.tcgetattr(fd)
    raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, raw)
    try:
        with _signals_interrupt(restore):
            yield
    finally:
        restore()
        atexit.unregister(restore)


@contextlib.contextmanager
def _signals_interrupt(before):
    """SIGTERM and SIGHUP raise KeyboardInterrupt (after `before()`) while the VM runs."""
    def on_signal(signum, frame):
        before()
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _stdin_fd() -> int | None:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
