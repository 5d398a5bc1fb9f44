"""One sandbox's connection to its guest agent, shared by many threads.

An I/O thread owns the socket: it reads frames, writes what callers queued and drains
every stream's output into its consumer (a callable run on this thread, outside the lock),
so a guest process never blocks on output nobody reads. Callers change the Session only
under `lock` (through `call`) and wait on `cv` for their stream to end.
"""

from __future__ import annotations

import os
import selectors
import threading

from kvmvm.agent import protocol as p
from kvmvm.agent.protocol import ProtocolError


class Channel:
    def __init__(self, session, name: str = "sandbox"):
        """Consumers are called fn(channel, bytes) for output and fn(None, None) once at the
        stream's end, after its last output."""
        self.session = session
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.error: str | None = None          # why the connection ended
        self.consumers: dict[int, object] = {}  # stream id -> fn(chan, bytes) (runs on the I/O thread)
        self._closing = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._loop, name=f"kvmvm-{name}-io", daemon=True)
        self.thread.start()

    # --- callers ---
    def call(self, fn, *a, **kw):
        """Run fn (which queues frames on the session) under the lock, then wake the I/O thread."""
        with self.lock:
            if self.error is not None:
                raise ConnectionError(self.error)
            r = fn(*a, **kw)
        self.wake()
        return r

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def wait(self, pred, timeout: float | None) -> bool:
        """Wait until pred() (called under the lock) or the connection ended; pred's value."""
        with self.cv:
            self.cv.wait_for(lambda: pred() or self.error is not None, timeout)
            return bool(pred())

    def close(self) -> None:
        with self.lock:
            self._closing = True
            if self.error is None:
                self.error = "the sandbox was closed"
            self.cv.notify_all()
        self.wake()
        if threading.current_thread() is not self.thread:
            self.thread.join(5)
        self.session.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # --- the I/O thread ---
    def _drain(self) -> list:
        """Under the lock: take every stream's output (giving the guest credit back)."""
        out = []
        for sid, st in list(self.session.streams.items()) + [(s.id, s) for s in self._ended]:
            fn = self.consumers.get(sid)
            for chan in (p.STDOUT, p.STDERR):
                if st.out[chan]:
                    data = st.take(chan)
                    if fn is not None:
                        out.append((fn, chan, data))
            if st.done and fn is not None:
                out.append((fn, None, None))    # the end, after its last bytes
                del self.consumers[sid]
        self._ended = []
        return out

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sock = self.session.sock
        sel.register(sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        self._ended = []
        try:
            while True:
                with self.lock:
                    if self._closing:
                        return
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.session.wants_write else 0)
                sel.modify(sock, want)
                events = sel.select(1.0)
                with self.lock:
                    if self._closing:
                        return
                    before = dict(self.session.streams)
                    try:
                        for key, mask in events:
                            if key.fileobj == self._wake_r:
                                try:
                                    while os.read(self._wake_r, 4096):
                                        pass
                                except BlockingIOError:
                                    pass
                                continue
                            if mask & selectors.EVENT_WRITE:
                                self.session.on_writable()
                            if mask & selectors.EVENT_READ:
                                self.session.on_readable()
                        if self.session.wants_write:
                            self.session.on_writable()
                    except ProtocolError as e:
                        self.error = str(e)
                        self.cv.notify_all()
                        return
                    # streams that ended in this pass still hold their last output
                    self._ended = [st for sid, st in before.items() if sid not in self.session.streams]
                    work = self._drain()
                for fn, chan, data in work:
                    try:
                        fn(chan, data)
                    except Exception:       # a consumer's bug must not end the I/O thread
                        pass
                work = fn = data = None     # hold no consumer (and its sandbox) while idle
                with self.lock:
                    self.cv.notify_all()
        finally:
            sel.close()
