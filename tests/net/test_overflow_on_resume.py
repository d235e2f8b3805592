"""A stream that overflows its write bound while the transport itself is resuming it.

When a slow peer reads again, asyncio's ``_write_ready`` calls ``resume_writing``, and our
flush writes what waited in the stream's own queue. If that exceeds ``max_write_buffer`` the
stream gives up on the peer (resource-constraint) and aborts. Aborting right there, inside
``_write_ready``, made asyncio deliver ``connection_lost`` twice (the second failing inside
asyncio's callback); the abort now waits for the loop's next turn. Real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import time
from socket import SO_RCVBUF, SO_SNDBUF, SOL_SOCKET
from typing import Any

import pytest

from s2sfast.config import StreamManagementOptions
from s2sfast.router import stanza_from_bytes

NO_SM = StreamManagementOptions(enabled=False)


@pytest.mark.parametrize("mode", ["false", "required"])
async def test_overflow_found_while_resuming_aborts_once(
    federation: Any, tls_certfile: Any, tls_ca_file: str, mode: str
) -> None:
    def spec(host: str) -> dict[str, Any]:
        tls = {"certfile": tls_certfile(host), "cafile": tls_ca_file} if mode != "false" else {}
        return {"hosts": [host], "mode": mode, "stream_management": NO_SM, **tls}

    nodes = await federation({"A": spec("a.test"), "B": spec("b.test")})
    a, b = nodes["A"], nodes["B"]
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        await a.send(b"<message from='u@a.test' to='v@b.test' id='warm'><body>w</body></message>")
        assert (await b.inbox.get()).id == "warm"
        out = a.router.outbound[("a.test", "b.test")].stream
        (inbound,) = [s for s in b.router.streams if s.direction == "in" and s.authenticated]
        # small kernel buffers, so that A's transport buffer (not the sockets) holds the backlog
        out.transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_SNDBUF, 16384)
        inbound.transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_RCVBUF, 16384)
        inbound.transport.pause_reading()  # B stops reading: A's socket and transport fill
        out.max_write_buffer = 600 * 1024
        body = "x" * 900
        for i in range(3000):  # ~2.8 MB: most of it waits in A's own queue, paused
            raw = f"<message from='u@a.test' to='v@b.test' id='m{i}'><body>{body}</body></message>"
            a.router.send(raw.encode(), stanza_from_bytes(raw.encode()))
            if i % 200 == 0:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 10
        while not out.congested:
            assert time.monotonic() < deadline, "A's stream never paused"
            await asyncio.sleep(0.01)
        inbound.transport.resume_reading()  # A's transport drains, resumes A, the flush overflows
        await asyncio.wait_for(out.closed, 15)  # A gave up on the peer and closed, once
        await asyncio.sleep(0.2)
        assert errors == [], [e.get("message") for e in errors]
    finally:
        loop.set_exception_handler(None)
