"""The host terminal as the guest's serial console: raw input when stdin is a TTY,
restored on every exit path (normal return, exception, SIGTERM/SIGHUP)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys


@contextlib.contextmanager
def attached_console(cfg):
    """Wire cfg.serial_in_fd to stdin (when there is one) and make a TTY raw meanwhile.
    (SIGTERM and SIGHUP stop the VM like Ctrl-C: kvmvm.cli installs that for every command.)"""
    fd = _stdin_fd()
    if fd is None:
        yield
        return
    cfg.serial_in_fd = fd
    if not os.isatty(fd):
        yield
        return
    with _raw_tty(fd):
        yield


@contextlib.contextmanager
def _raw_tty(fd: int):
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
        yield
    finally:
        restore()
        atexit.unregister(restore)


def _stdin_fd() -> int | None:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
