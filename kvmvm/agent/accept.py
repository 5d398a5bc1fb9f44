"""Accepting the guest agent's connection: the first one that says HELLO wins.

The agent connects to the host over vsock (the device turns that into a connection to
our Unix listener). A Linux guest's connect() gives up after 2 s of guest time and the
agent then tries again; the device may still complete the attempt it gave up on, and the
guest answers that late completion with a reset. On a loaded host (many VMs, a nested or
emulated one) that happens: the first connection we accept then closes before any byte,
and the agent's HELLO arrives on the next one. So a connection that ends before its
HELLO is dropped and the next one accepted, until the deadline.
"""

from __future__ import annotations

import selectors
import socket
import time

from kvmvm.agent.protocol import ProtocolError
from kvmvm.agent.session import Session
from kvmvm.errors import KvmvmError

MAX_PENDING = 8         # connections accepted and waiting for their HELLO at once


class AgentTimeout(KvmvmError):
    """The agent did not connect, or connected and did not say HELLO, in time."""


def _ended_before_hello(e: ProtocolError) -> bool:
    msg = str(e)
    return msg == "agent closed the connection" or msg.startswith("agent connection lost")


def accept_agent(listener: socket.socket, timeout: float, check=None) -> tuple[Session, int]:
    """The Session of the first connection on listener whose agent says HELLO (its reply
    sent), and how many connections ended before theirs. check() runs every 0.1 s and
    may raise (the VM ended, the start was cancelled). AgentTimeout at the deadline; a
    ProtocolError for a connection that broke the protocol."""
    deadline = time.monotonic() + timeout
    pending: list[Session] = []
    dropped = 0
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    won = None
    try:
        while won is None:
            for key, _ in sel.select(0.1):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    s = Session(conn)
                    pending.append(s)
                    sel.register(conn, selectors.EVENT_READ, s)
                    if len(pending) >= MAX_PENDING:
                        sel.unregister(listener)
                    continue
                s = key.data
                try:
                    s.on_readable()
                except ProtocolError as e:
                    if not _ended_before_hello(e) or s.hello is not None:
                        raise
                    sel.unregister(s.sock)
                    pending.remove(s)
                    s.close()
                    dropped += 1
                    if len(pending) == MAX_PENDING - 1:
                        sel.register(listener, selectors.EVENT_READ)
                    continue
                if s.hello is not None:
                    won = s
                    break
            if won is None:
                if check is not None:
                    check()
                if time.monotonic() > deadline:
                    what = "say hello" if pending else "connect"
                    raise AgentTimeout(f"the guest agent did not {what} within {timeout:g} s")
    finally:
        sel.close()
        for s in pending:
            if s is not won:
                s.close()
    won.handshake(max(1.0, deadline - time.monotonic()))      # sends our HELLO
    return won, dropped
