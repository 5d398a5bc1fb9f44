"""The host terminal as the guest's serial console: raw input when stdin is a TTY,
restored on every exit path (normal return, exception, SIGTERM/SIGHUP)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys


@contextlib.contextmanager
def attached_console(cfg):
    """Wire cfg.serial_in_fd to stdin (when there is one) and make a TTY raw meanwhile.

    SIGTERM and SIGHUP stop the VM the way Ctrl-C does (KeyboardInterrupt: the VM is
    stopped, torn down and its sockets removed), whether or not stdin is a terminal.
    """
    with _stop_on_signals():
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
def _stop_on_signals():
    def on_signal(signum, frame):
        raise KeyboardInterrupt

    try:
        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:      # not the main thread: leave signals alone
        old = {}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


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
