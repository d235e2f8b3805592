"""The s2sfast side of the interop tests: a Config for a.test, an inbox for the Node handler,
and standard-library parsing of what the handler received (independent of s2sfast.xml)."""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from typing import Any

from servers import LOOPBACK

from s2sfast.config import (
    AddressOverride,
    Config,
    DnsOptions,
    HostPolicy,
    ListenS2S,
    ListenTls,
    OutgoingOptions,
    S2SOptions,
)

__all__ = ["A", "B", "Inbox", "node_config", "parse"]

A, B = "a.test", "b.test"  # s2sfast serves A; Prosody serves B
SERVER_NS = "jabber:server"


def node_config(
    port: int,
    *,
    mode: str = "false",
    certfile: str | None = None,
    cafile: str | None = None,
    shared: str | None = None,
    peer_port: int | None = None,
    default_policy: str = "allow",
    host_policy: dict[str, str] | None = None,
    state_timeout_ms: int = 5000,
) -> Config:
    """s2sfast serving a.test on 127.0.0.1:*port*; b.test at *peer_port* (``[s2s] address``;
    None: resolve b.test through DNS)."""
    address: tuple[AddressOverride, ...] = ()
    if peer_port is not None:
        address = (AddressOverride(host=B, ip_address=LOOPBACK, port=peer_port),)
    return Config(
        hosts=(A,),
        listen_s2s=(
            ListenS2S(
                port=port,
                ip_address=LOOPBACK,
                state_timeout=state_timeout_ms,
                tls=ListenTls(cacertfile=cafile),
            ),
        ),
        s2s=S2SOptions(
            default_policy=default_policy,
            host_policy=tuple(HostPolicy(host=h, policy=p) for h, p in (host_policy or {}).items()),
            use_starttls=mode,
            certfile=certfile,
            shared=shared or secrets.token_hex(10),
            address=address,
            outgoing=OutgoingOptions(connection_timeout=3000, ip_versions=(4,)),
            dns=DnsOptions(timeout=2, retries=1),
        ),
    )


def parse(raw: bytes) -> ET.Element:
    """A stanza's raw bytes as an element in jabber:server (the stream's default namespace)."""
    wrapped = (
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' "
        b"xmlns:db='jabber:server:dialback'>" + raw + b"</s:stream>"
    )
    return ET.fromstring(wrapped)[0]


class Inbox:
    """A Node stanza handler that queues what it gets; ``await inbox.get(pred)`` waits."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self._unseen: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, stanza: Any) -> None:
        self.seen.append(stanza)
        self._unseen.append(stanza)
        self._changed.set()

    async def get(self, pred: Any = None, timeout: float = 15.0) -> Any:
        """The first not-yet-taken stanza matching *pred* (any when None)."""

        async def find() -> Any:
            while True:
                for st in self._unseen:
                    if pred is None or pred(st):
                        self._unseen.remove(st)
                        return st
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def nothing(self, pred: Any = None, wait: float = 0.5) -> bool:
        """True when no matching stanza arrives within *wait* seconds."""
        try:
            await self.get(pred, wait)
        except TimeoutError:
            return True
        return False
