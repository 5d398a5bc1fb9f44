"""Files inside a sandbox: `sb.files.read/write/list/exists/make_dir/remove/rename/get_info`.

Paths are resolved by the guest agent inside the sandbox's own root filesystem; a relative
path is taken from the sandbox's working directory. Every transfer is a flow-controlled
stream, so large files move in bounded pieces both ways.
"""

from __future__ import annotations

import errno as errno_mod
import posixpath
import threading
from dataclasses import dataclass

from kvmvm.agent import protocol as p
from kvmvm.errors import ConfigError, SandboxError, SandboxFileError, SandboxFileNotFound

DEFAULT_READ_LIMIT = 1 << 30
OP_TIMEOUT_S = 120.0


@dataclass
class EntryInfo:
    name: str
    path: str
    type: str          # "file", "dir", "symlink", "other"
    size: int
    mode: int
    mtime: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _num(v) -> int:
    """A number from the guest agent's answer (the guest is not trusted): anything that is
    not an integer counts as 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def entries_from(path: str, r: dict) -> list[EntryInfo]:
    """The entries of an `ls` answer; malformed ones are left out."""
    entries = r.get("entries")
    out = []
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            out.append(EntryInfo(e["name"], posixpath.join(path, e["name"]), str(e.get("type")),
                                 _num(e.get("size")), _num(e.get("mode")), _num(e.get("mtime"))))
    return out


def info_from(path: str, r: dict) -> EntryInfo:
    """A `stat` answer."""
    return EntryInfo(posixpath.basename(path) or "/", path, str(r.get("type")), _num(r.get("size")),
                     _num(r.get("mode")), _num(r.get("mtime")))


def _file_error(result: dict, what: str) -> SandboxFileError:
    code = _num(result.get("code"))
    msg = str(result.get("reason") or what)
    if code == errno_mod.ENOENT:
        return SandboxFileNotFound(code, msg)
    return SandboxFileError(code or errno_mod.EIO, msg)


class Files:
    def __init__(self, sandbox):
        self._sb = sandbox

    def _path(self, path: str) -> str:
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(f"path: a non-empty string without NUL bytes (got {path!r})")
        return posixpath.normpath(posixpath.join(self._sb.cwd, path))

    def _finish(self, st, what: str, timeout: float = OP_TIMEOUT_S) -> dict:
        ch = self._sb._channel
        if not ch.wait(lambda: st.done, timeout):
            self._sb._check_alive(force=ch.error is not None)
            raise SandboxError(f"{what}: no answer from the sandbox within {timeout:g} s")
        if st.result.get("op") == "error":
            raise _file_error(st.result, what)
        return st.result

    def _fs(self, op: str, path: str, **fields) -> dict:
        self._sb._check_alive()
        try:
            st = self._sb._channel.call(self._sb._channel.session.fs_request, op, path, **fields)
        except ConnectionError:
            self._sb._check_alive(force=True)
            raise
        return self._finish(st, f"{op} {path}")

    # --- reading ---
    def read(self, path: str, format: str = "text", *, limit: int = DEFAULT_READ_LIMIT):
        """The file's contents: format "text" (str), "bytes", or "stream" (an iterator of
        bytes chunks). A file larger than `limit` bytes is refused."""
        if format not in ("text", "bytes", "stream"):
            raise ConfigError(f"format: 'text', 'bytes' or 'stream' (got {format!r})")
        if format == "stream":
            return self._read_stream(self._path(path), limit)
        data = b"".join(self._read_stream(self._path(path), limit))
        return data.decode("utf-8", "replace") if format == "text" else data

    def _read_stream(self, path: str, limit: int):
        sb = self._sb
        sb._check_alive()
        ch = sb._channel
        chunks: list[bytes] = []
        total = [0]
        cv = threading.Condition()
        state = {"end": False, "over": False}

        def consume(chan, data):
            with cv:
                if chan is None:
                    state["end"] = True
                elif chan == p.STDOUT:
                    total[0] += len(data)
                    if total[0] > limit:
                        state["over"] = True
                    else:
                        chunks.append(data)
                cv.notify_all()

        def start():
            st = ch.session.get_request(path)
            ch.consumers[st.id] = consume
            return st

        st = ch.call(start)
        while True:
            with cv:
                cv.wait_for(lambda: chunks or state["end"] or state["over"] or ch.error is not None, 1.0)
                ready, chunks[:] = list(chunks), []
                end, over = state["end"], state["over"]
            yield from ready
            if over:
                raise SandboxFileError(errno_mod.EFBIG, f"{path} is larger than the read limit ({limit} bytes)")
            if end:
                break
            if ch.error is not None:
                sb._check_alive(force=True)
        if st.result and st.result.get("op") == "error":
            raise _file_error(st.result, f"read {path}")

    # --- writing ---
    def write(self, path: str, data, *, mode: int = 0o644) -> EntryInfo:
        """Write bytes, str or a binary file object to path (parent directories are made)."""
        path = self._path(path)
        if isinstance(data, str):
            data = data.encode()
        sb = self._sb
        sb._check_alive()
        ch = sb._channel
        st = ch.call(ch.session.put_request, path, mode, True)
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._send(st, memoryview(data))
        else:
            while True:
                chunk = data.read(1 << 16)
                if not chunk:
                    break
                self._send(st, memoryview(chunk))
        if not st.done:
            ch.call(st.close_stdin)
        self._finish(st, f"write {path}")
        return self.get_info(path)

    def _send(self, st, view) -> None:
        ch = self._sb._channel
        while view and not st.done:
            if not ch.wait(lambda: st.done or st.stdin_room() > 0, 5):
                self._sb._check_alive()
                continue

            def put():
                n = min(len(view), st.stdin_room(), 1 << 16)
                if n > 0 and not st.done:
                    st.write(bytes(view[:n]))
                return max(n, 0)

            view = view[ch.call(put):]

    # --- metadata ---
    def list(self, path: str = ".") -> list[EntryInfo]:
        """The entries of a directory (one level)."""
        path = self._path(path)
        return entries_from(path, self._fs("ls", path))

    def get_info(self, path: str) -> EntryInfo:
        path = self._path(path)
        return info_from(path, self._fs("stat", path))

    def exists(self, path: str) -> bool:
        try:
            self.get_info(path)
            return True
        except SandboxFileNotFound:
            return False

    def make_dir(self, path: str) -> bool:
        """Make a directory and its parents; False when it already existed."""
        return bool(self._fs("mkdir", self._path(path), parents=True).get("created"))

    def remove(self, path: str) -> None:
        """Remove a file, or a directory with everything in it."""
        self._fs("rm", self._path(path), recursive=True)

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        new = self._path(new_path)
        self._fs("mv", self._path(old_path), dest=new)
        return self.get_info(new)
