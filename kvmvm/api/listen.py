"""The API's listening Unix socket, made before anything else is imported: a client that
connects early waits in the backlog while the server finishes starting."""

from __future__ import annotations

import errno
import os
import socket
import stat


def listen(path: str, backlog: int = 64) -> socket.socket:
    """A Unix stream socket bound at path and listening (a stale socket file is reclaimed)."""
    from kvmvm.errors import ConfigError

    reclaim_socket(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        s.listen(backlog)
    except OSError as e:
        s.close()
        raise ConfigError(f"cannot bind the API socket {path}: {e.strerror}") from None
    return s


def reclaim_socket(path: str) -> None:
    """Remove a stale socket left by a VMM that died; refuse a live one or a non-socket."""
    from kvmvm.errors import ConfigError

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"API socket path {path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        raise ConfigError(f"API socket {path}: {e.strerror}") from None
    finally:
        s.close()
    raise ConfigError(f"API socket {path} is in use by another process")
