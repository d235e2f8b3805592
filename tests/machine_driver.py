"""Drives a sans-IO negotiation machine with a peer's bytes, the way stream.py does: bytes go
through a real StreamFramer, framing errors fail the machine, TLS restarts the framer."""

from __future__ import annotations

from typing import Any

from s2sfast.framing import StreamFramer
from s2sfast.protocol.errors import FramingError
from s2sfast.protocol.events import SendBytes, TlsUp


class MachineDriver:
    """Base for the test drivers: subclasses set ``self.machine`` before calling ``__init__``."""

    machine: Any

    def __init__(self) -> None:
        self.framer = StreamFramer()

    def send(self, data: bytes) -> list:
        try:
            events = self.framer.feed(data)
        except FramingError as exc:
            return self.machine.fail(exc)
        actions = []
        for ev in events:
            actions += self.machine.receive(ev)
        return actions

    def event(self, ev: Any) -> list:
        return self.machine.receive(ev)

    def tls_up(self, chain: tuple[bytes, ...] = (b"der",)) -> list:
        self.framer = StreamFramer()
        return self.event(TlsUp(chain=chain))


def out(actions: list) -> bytes:
    """The bytes the actions write to the peer."""
    return b"".join(a.data for a in actions if isinstance(a, SendBytes))


def of(actions: list, kind: type) -> list:
    """The actions of one kind, in order."""
    return [a for a in actions if isinstance(a, kind)]
