"""BufferedWriter: the write side shared by S2S streams and component connections.

Batching (one write per event-loop iteration), the bounded queue behind a paused transport, and
backpressure to the sources that feed a congested destination live here, apart from the XML
stream machinery in :mod:`s2sfast.net.stream`, so a component connection reuses them as is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from s2sfast.limits import HIGH_WATER, LOW_WATER, MAX_FSM_QUEUE

__all__ = ["BufferedWriter", "NONE_HELD", "is_stanza"]

#: transport buffer marks (s2sfast.limits): above HIGH the transport pauses us and stanzas wait
#: in our own bounded queue, the sources feeding us stop being read; below LOW they resume
_HIGH_WATER = HIGH_WATER
_LOW_WATER = LOW_WATER
# WRITE_STALL_TIMEOUT (s2sfast.limits): seconds a peer may leave our buffer above the
# high-water mark without reading it down to the low one before it counts as dead.
_STANZA_HEADS = (b"<message", b"<presence", b"<iq")


class _NoneHeld(frozenset):  # type: ignore[type-arg]
    """The empty holders of a writer that holds no source and is held by no destination:
    shared by every such writer (an idle stream pays no set), ``clear``/``discard`` do nothing;
    the first :meth:`BufferedWriter.hold_source` / :meth:`BufferedWriter.held_by` makes a set."""

    __slots__ = ()

    def clear(self) -> None:
        pass

    def discard(self, item: Any) -> None:
        pass


_NONE_HELD: Any = _NoneHeld()
#: the shared empty holder set, for other holders of sources (an OutboundLink)
NONE_HELD: Any = _NONE_HELD


def is_stanza(data: bytes) -> bool:
    """Whether *data* written to a stream is a routed stanza (not a control element)."""
    return data.startswith(_STANZA_HEADS)


class BufferedWriter(asyncio.Protocol):
    """The write side of one connection: batched, bounded, and backpressure to its sources.

    Everything written within one event-loop iteration leaves in one ``_emit`` (one
    ``transport.write``, or one ``SSLObject.write``: as few TLS records as the bytes allow),
    flushed by one ``loop.call_soon``. While the transport is above its high-water mark
    (``pause_writing``) stanzas wait in our own queue, bounded by ``max_queue`` stanzas and
    ``max_queue_bytes``: :meth:`write_stanza` refuses past that (the router bounces with
    resource-constraint). Sources (streams or components whose stanzas we carry) that wrote to
    us while we were congested stop being read (:meth:`hold_source`) until we drain.

    A subclass sets ``transport``/``_loop`` and implements ``_emit`` and ``_stalled``.

    Memory: a writer that is idle and uncongested holds no queue structure of its own (the
    drained event, the holder sets and the record of recent writes are made when first needed
    and dropped again once empty), and its fields are slots: with 10,000 idle TLS streams per
    node every few hundred bytes per stream count.
    """

    __slots__ = (
        "max_queue",
        "max_queue_bytes",
        "write_stall_timeout",
        "_wbuf",
        "_wbuf_size",
        "_flush_scheduled",
        "_wpaused",
        "_drained",
        "_stall",
        "_holding",
        "_held_by",
        "_read_paused",
        "_shaped",
        "on_stanza_sent",
        "_recent",
        "_recent_size",
        "_track_recent",
    )

    transport: Any
    _loop: asyncio.AbstractEventLoop

    def _init_writer(
        self, *, max_queue: int | None, max_queue_bytes: int, stall_timeout: float
    ) -> None:
        self.max_queue = max_queue or MAX_FSM_QUEUE
        self.max_queue_bytes = max_queue_bytes
        self.write_stall_timeout = stall_timeout
        #: what waits for the next flush: a list while something does, else the empty tuple
        #: (an idle writer keeps no list)
        self._wbuf: list[bytes] | tuple[()] = ()
        self._wbuf_size = 0
        self._flush_scheduled = False
        self._wpaused = False
        #: what drained() waits on: made by the first writer that waits while we are congested
        self._drained: asyncio.Event | None = None
        self._stall: asyncio.TimerHandle | None = None
        #: sources held (not read) until we drain; destinations holding us (sets once used)
        self._holding: set[BufferedWriter] = _NONE_HELD
        self._held_by: set[Any] = _NONE_HELD
        self._read_paused = False
        self._shaped = False
        #: per-stream send hook: called with each stanza's raw bytes as it is queued for the peer
        self.on_stanza_sent: Callable[[bytes], None] | None = None
        #: what we last handed to the transport (to tell, when the peer stops reading, which
        #: stanzas never left the process); bounded to about two high-water marks, and None
        #: while the transport's buffer is empty (all of it went to the kernel)
        self._recent: deque[bytes] | None = None
        self._recent_size = 0
        #: whether _recent is kept (not needed once XEP-0198 keeps every stanza until acked)
        self._track_recent = True

    # --- writing ---------------------------------------------------------------------------------

    def _writer_open(self) -> bool:
        return self.transport is not None

    def write_stanza(self, raw: bytes) -> bool:
        """Queue one stanza; False when it cannot be taken (closed, or our queue is full)."""
        if not self._writer_open():
            return False
        if self._wpaused and (
            len(self._wbuf) >= self.max_queue or self._wbuf_size >= self.max_queue_bytes
        ):
            return False
        self._queue(raw)
        if self.on_stanza_sent is not None:
            self.on_stanza_sent(raw)
        return True

    def _queue(self, data: bytes) -> None:
        wbuf = self._wbuf
        if wbuf:
            wbuf.append(data)  # type: ignore[union-attr]
        else:
            self._wbuf = [data]
        self._wbuf_size += len(data)
        if self._wpaused:
            return
        if self._wbuf_size >= _HIGH_WATER:
            self._flush()  # a burst: hand it over now, so the transport's backpressure engages
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self, force: bool = False) -> None:
        self._flush_scheduled = False
        wbuf = self._wbuf
        if not wbuf:
            return
        if self.transport is None:
            self._wbuf = ()
            self._wbuf_size = 0
            return
        if self._wpaused and not force:
            return  # resume_writing flushes
        if self._track_recent:
            self._remember(wbuf, self._wbuf_size)
        data = b"".join(wbuf) if len(wbuf) > 1 else wbuf[0]
        self._wbuf = ()
        self._wbuf_size = 0
        self._emit(data)
        if self._recent is not None and self.transport is not None:
            if not self.transport.get_write_buffer_size():
                self._recent = None  # all of it reached the kernel: nothing to claim back
                self._recent_size = 0

    def _emit(self, data: bytes) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _remember(self, chunks: list[bytes] | tuple[()], nbytes: int) -> None:
        recent = self._recent
        if recent is None:
            recent = self._recent = deque()
        recent.extend(chunks)
        size = self._recent_size + nbytes
        while size > 2 * _HIGH_WATER and len(recent) > 1:
            size -= len(recent.popleft())
        self._recent_size = size

    def _unsent_bytes(self) -> int:
        """Bytes of ours still in the transport's buffer (never handed to the kernel)."""
        return self.transport.get_write_buffer_size()

    def _never_sent(self) -> list[bytes]:
        """The stanzas with bytes still in the transport's buffer, oldest first, for a caller
        about to abort the connection: what is wholly there never reached the peer, and the one
        only partly there reached it without its tail, so the peer never gets it whole either."""
        if self.transport is None or self._recent is None:
            return []
        left = self._unsent_bytes()
        out: list[bytes] = []
        for chunk in reversed(self._recent):
            if left <= 0:
                break
            left -= len(chunk)
            if is_stanza(chunk):
                out.append(chunk)
        out.reverse()
        self._recent = None
        self._recent_size = 0
        return out

    def take_unsent(self) -> list[bytes]:
        """Remove and return the stanzas still in our own queue (never handed to the transport)."""
        out = [d for d in self._wbuf if is_stanza(d)]
        self._wbuf = ()
        self._wbuf_size = 0
        return out

    @property
    def queued(self) -> int:
        """Stanzas and control writes waiting in our own queue."""
        return len(self._wbuf)

    # --- backpressure ----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._wpaused = True
        if self._stall is None and self.write_stall_timeout:
            self._stall = self._loop.call_later(self.write_stall_timeout, self._stall_fired)

    def resume_writing(self) -> None:
        self._wpaused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._flush()
        if not self._wpaused:
            self._wake_drained()
            self.release_sources()

    def _stall_fired(self) -> None:
        self._stall = None
        self._stalled()

    def _stalled(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    @property
    def congested(self) -> bool:
        """Whether writers should wait (:meth:`drained`) before writing more."""
        return self._wpaused

    async def drained(self) -> None:
        """Wait until the peer has read our buffer down (or the connection is gone)."""
        if not self._wpaused:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        await self._drained.wait()

    def _wake_drained(self) -> None:
        """Wake every drained() waiter; the next congestion makes a new event."""
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def hold_source(self, source: Any) -> None:
        """*source* fed us while we are congested: stop reading it until we drain."""
        if source is None or source is self or source in self._holding:
            return
        if self._holding is _NONE_HELD:
            self._holding = set()
        self._holding.add(source)
        source.held_by(self)

    def release_sources(self) -> None:
        """We drained (or died): every source we held is read again."""
        if not self._holding:
            return
        holding = self._holding
        self._holding = _NONE_HELD
        for source in holding:
            source.released_by(self)

    def _writer_lost(self) -> None:
        """The connection is gone: wake writers, release sources, forget the destinations."""
        self._wpaused = False
        self._wake_drained()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self.release_sources()
        self._held_by = _NONE_HELD

    # --- as a source ---------------------------------------------------------------------------

    def held_by(self, destination: Any) -> None:
        if self._held_by is _NONE_HELD:
            self._held_by = set()
        self._held_by.add(destination)
        self._update_reading()

    def released_by(self, destination: Any) -> None:
        self._held_by.discard(destination)
        if not self._held_by:
            self._held_by = _NONE_HELD
        self._update_reading()

    @property
    def reading_paused(self) -> bool:
        return self._read_paused

    def _update_reading(self) -> None:
        want_pause = bool(self._held_by) or self._shaped
        transport = self.transport
        if want_pause == self._read_paused or transport is None or transport.is_closing():
            return
        self._read_paused = want_pause
        if want_pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
