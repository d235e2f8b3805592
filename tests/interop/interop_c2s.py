"""A small asyncio XMPP client (c2s, SASL PLAIN, no TLS) that drives users on Prosody.

It is independent of s2sfast on purpose: stanzas are parsed with the standard library's expat
(xml.etree.ElementTree.XMLPullParser), so what the user "sees" is not judged by the code under
test. Loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Callable

__all__ = ["C2SClient", "CLIENT_NS", "local", "text_of"]

CLIENT_NS = "jabber:client"
STREAMS_NS = "http://etherx.jabber.org/streams"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
STANZA_ERR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def local(tag: str) -> str:
    """``{ns}name`` -> ``name``."""
    return tag.rsplit("}", 1)[-1]


def text_of(el: ET.Element, path: str) -> str | None:
    """Text of the first child matching a local-name *path* like ``body`` or ``error/text``."""
    node: ET.Element | None = el
    for part in path.split("/"):
        node = next((c for c in node if local(c.tag) == part), None) if node is not None else None
    return node.text if node is not None else None


class C2SClient:
    """One logged-in user: ``await C2SClient.login(port, "bob@b.test", "pw")``.

    Every top-level stanza the server sends is kept (``.received``) and can be awaited with
    :meth:`wait_for`.
    """

    def __init__(self, jid: str, password: str, resource: str) -> None:
        self.user, self.domain = jid.split("@")
        self.password = password
        self.resource = resource
        self.full_jid = f"{jid}/{resource}"
        self.received: list[ET.Element] = []
        self._unseen: list[ET.Element] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._parser: ET.XMLPullParser | None = None
        self._depth = 0
        self.closed = False
        self._ids = itertools.count(1)

    @classmethod
    async def login(
        cls, port: int, jid: str, password: str, resource: str = "r", host: str = "127.0.0.1"
    ) -> C2SClient:
        assert host.startswith("127.") or host == "::1", "loopback only"
        c = cls(jid, password, resource)
        c._reader, c._writer = await asyncio.open_connection(host, port)
        c._task = asyncio.create_task(c._read_loop())
        await c._open_stream()
        token = base64.b64encode(f"\0{c.user}\0{password}".encode()).decode()
        c.send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>")
        r = await c.wait_for(lambda e: local(e.tag) in ("success", "failure"))
        if local(r.tag) != "success":
            raise RuntimeError(f"SASL PLAIN failed for {jid}: {ET.tostring(r)!r}")
        await c._open_stream()
        c.send(
            f"<iq type='set' id='bind1'><bind xmlns='{BIND_NS}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        r = await c.wait_for(lambda e: local(e.tag) == "iq" and e.get("id") == "bind1")
        if r.get("type") != "result":
            raise RuntimeError(f"bind failed for {jid}: {ET.tostring(r)!r}")
        c.send("<presence/>")
        return c

    def next_id(self, prefix: str = "c") -> str:
        return f"{prefix}{next(self._ids)}"

    async def _open_stream(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
            f"xmlns='{CLIENT_NS}' xmlns:stream='{STREAMS_NS}'>"
        )
        await self.wait_for(lambda e: local(e.tag) == "features")

    def send(self, data: str | bytes) -> None:
        assert self._writer is not None
        self._writer.write(data.encode() if isinstance(data, str) else data)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                parser = self._parser
                assert parser is not None
                parser.feed(data)
                for event, el in parser.read_events():
                    if event == "start":
                        self._depth += 1
                    else:
                        self._depth -= 1
                        if self._depth == 1:
                            self.received.append(el)
                            self._unseen.append(el)
                            self._changed.set()
                # the parser may have been replaced by a restart while we looped: fine, the
                # restart happens only after <success/>, which ends this chunk's stanzas
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(
        self, pred: Callable[[ET.Element], bool], timeout: float = 15.0
    ) -> ET.Element:
        """The first not-yet-taken stanza matching *pred* (waits for it)."""

        async def find() -> ET.Element:
            while True:
                for el in self._unseen:
                    if pred(el):
                        self._unseen.remove(el)
                        return el
                if self.closed:
                    raise ConnectionError(f"{self.full_jid}: stream closed while waiting")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def nothing(self, pred: Callable[[ET.Element], bool], wait: float) -> bool:
        """True when no stanza matching *pred* arrives within *wait* seconds."""
        try:
            await self.wait_for(pred, wait)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            try:
                self.send("</stream:stream>")
                await self._writer.drain()
            except (ConnectionError, RuntimeError):
                pass
            self._writer.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 2)
            except (TimeoutError, ConnectionError):
                self._task.cancel()
