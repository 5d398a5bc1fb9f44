"""The host terminal as the guest's serial console: raw input when stdin is a TTY,
restored on every exit path (normal return, exception, SIGTERM/SIGHUP).

termios, signal and atexit are imported only when stdin is a terminal: `signal` alone
pulls in `enum`, a noticeable part of a tiny guest's whole boot.
"""

from __future__ import annotations

import os
import sys


class attached_console:
    """Context manager: wire cfg.serial_in_fd to stdin (when there is one) and make a TTY
    raw meanwhile."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._restore = None
        self._old = {}

    def __enter__(self):
        fd = _stdin_fd()
        if fd is None:
            return self
        self.cfg.serial_in_fd = fd
        if os.isatty(fd):
            self._raw(fd)
        return self

    def _raw(self, fd: int) -> None:
        import atexit
        import signal
        import termios

        saved = termios.tcgetattr(fd)

        def restore(*_):
            try:
                termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            except (termios.error, OSError):
                pass

        atexit.register(restore)
        self._restore = restore

        def on_signal(signum, frame):
            restore()
            raise KeyboardInterrupt

        self._old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        raw = termios.tcgetattr(fd)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSAFLUSH, raw)

    def __exit__(self, *exc):
        if self._restore is None:
            return False
        import atexit
        import signal

        self._restore()
        atexit.unregister(self._restore)
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._restore = None
        return False


def _stdin_fd() -> int | None:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
