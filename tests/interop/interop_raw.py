"""A raw S2S socket for the negative dialback tests: it speaks just enough jabber:server to
pretend to be a domain it is not, and records what the real server answers (parsed by expat)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from interop_c2s import local

__all__ = ["RawS2S"]

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "version='1.0' from='{frm}' to='{to}'>"
)


class RawS2S:
    """``await RawS2S.open(port, frm, to)``: a plaintext S2S stream claiming to be *frm*."""

    def __init__(self) -> None:
        self.header: dict[str, str] = {}
        self.received: list[ET.Element] = []
        self.closed = False
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, frm: str, to: str) -> RawS2S:
        s = cls()
        s._reader, s._writer = await asyncio.open_connection("127.0.0.1", port)
        s._task = asyncio.create_task(s._read_loop())
        s.send(STREAM_HEADER.format(frm=frm, to=to))
        await s.wait_for(lambda e: local(e.tag) == "features")
        return s

    @property
    def stream_id(self) -> str | None:
        return self.header.get("id")

    def send(self, data: str) -> None:
        assert self._writer is not None
        self._writer.write(data.encode())

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while data := await self._reader.read(65536):
                self._parser.feed(data)
                for event, el in self._parser.read_events():
                    if event == "start":
                        self._depth += 1
                        if self._depth == 1:
                            self.header = dict(el.attrib)
                    else:
                        self._depth -= 1
                        if self._depth == 1:
                            self.received.append(el)
                    self._changed.set()
        except ET.ParseError:
            pass
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(self, pred, timeout: float = 15.0) -> ET.Element:
        async def find() -> ET.Element:
            while True:
                for el in self.received:
                    if pred(el):
                        return el
                if self.closed:
                    raise ConnectionError("the peer closed the stream")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def wait_closed(self, timeout: float = 15.0) -> None:
        async def done() -> None:
            while not self.closed:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(done(), timeout)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
