"""The API's listening Unix socket, made before anything else is imported: a client that
connects early waits in the backlog while the server finishes starting. Built on `_socket`
(the `socket` module's enum machinery costs more than the rest of this path); kvmvm.errors
only when there is an error to raise."""

import _socket
import errno
import os
import stat


def listen(path: str, backlog: int = 64):
    """A Unix stream socket bound at path and listening (a stale socket file is reclaimed),
    as a Listener."""
    reclaim_socket(path)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.bind(path)
        s.listen(backlog)
    except OSError as e:
        s.close()
        raise _bad(f"cannot bind the API socket {path}: {e.strerror}") from None
    return Listener(s)


class Listener:
    """The bound, listening socket (`raw`, a `_socket.socket`) until a server takes it."""

    def __init__(self, raw):
        self.raw = raw

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


def reclaim_socket(path: str) -> None:
    """Remove a stale socket left by a VMM that died; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise _bad(f"API socket path {path} exists and is not a socket")
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        raise _bad(f"API socket {path}: {e.strerror}") from None
    finally:
        s.close()
    raise _bad(f"API socket {path} is in use by another process")


def _bad(msg: str):
    from kvmvm.errors import ConfigError

    return ConfigError(msg)
