"""The host terminal as the guest's serial console: raw input when stdin is a TTY,
restored on every exit path (normal return, exception, SIGTERM/SIGHUP).

SIGTERM and SIGHUP stop the VM the way Ctrl-C does (KeyboardInterrupt: the VM is stopped,
torn down and its sockets removed), whether or not stdin is a terminal: their default
action would kill kvmvm before it cleans up.

The handlers are set through `_signal` (the C module): `signal` pulls in `enum`, a
noticeable part of a tiny guest's whole boot. termios and atexit are imported only when
stdin is a terminal.
"""

from __future__ import annotations

import os
import sys


class attached_console:
    """Context manager: wire cfg.serial_in_fd to stdin (when there is one), make a TTY raw
    meanwhile, and turn SIGTERM/SIGHUP into KeyboardInterrupt."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._restore = None
        self._old = {}

    def __enter__(self):
        import _signal

        try:
            self._old = {sig: _signal.signal(sig, self._on_signal)
                         for sig in (_signal.SIGTERM, _signal.SIGHUP)}
        except ValueError:      # not the main thread: leave signals alone
            self._old = {}
        fd = _stdin_fd()
        if fd is None:
            return self
        self.cfg.serial_in_fd = fd
        if os.isatty(fd):
            self._raw(fd)
        return self

    def _on_signal(self, signum, frame):
        if self._restore is not None:
            self._restore()
        raise KeyboardInterrupt

    def _raw(self, fd: int) -> None:
        import atexit
        import termios

        saved = termios.tcgetattr(fd)

        def restore(*_):
            try:
                termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            except (termios.error, OSError):
                pass

        atexit.register(restore)
        self._restore = restore
        raw = termios.tcgetattr(fd)
        raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSAFLUSH, raw)

    def __exit__(self, *exc):
        if self._restore is not None:
            import atexit

            self._restore()
            atexit.unregister(self._restore)
            self._restore = None
        if self._old:
            import _signal

            for sig, h in self._old.items():
                _signal.signal(sig, h)
            self._old = {}
        return False


def _stdin_fd() -> int | None:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
