"""Shared steps of the interop tests: one stanza each way, and the checks on what came back."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from interop_c2s import STANZA_ERR_NS, C2SClient, local, text_of
from interop_node import A, parse

__all__ = [
    "bob_to_node",
    "eventually",
    "error_of",
    "is_message",
    "node_to_bob",
    "stanza_error",
]


def is_message(el: ET.Element, id_: str) -> bool:
    return local(el.tag) == "message" and el.get("id") == id_


def error_of(el: ET.Element) -> tuple[str | None, str | None, str | None]:
    """(error type, defined condition, text) of an error stanza (ElementTree form)."""
    err = next((c for c in el if local(c.tag) == "error"), None)
    if err is None:
        return None, None, None
    conditions = [c for c in err if c.tag.startswith("{" + STANZA_ERR_NS)]
    cond = next((local(c.tag) for c in conditions if local(c.tag) != "text"), None)
    return err.get("type"), cond, text_of(err, "text")


def stanza_error(stanza: Any) -> tuple[str | None, str | None, str | None]:
    """error_of() for a stanza the Node handler received (raw bytes)."""
    return error_of(parse(stanza.raw))


async def bob_to_node(
    bob: C2SClient, node: Any, id_: str, body: str, to: str = f"carol@{A}/x"
) -> Any:
    """bob (Prosody user, c2s) sends a chat message to a.test; returns what the Node handler got."""
    bob.send(f"<message to='{to}' id='{id_}' type='chat'><body>{_esc(body)}</body></message>")
    return await node.inbox.get(lambda s: s.id == id_ and s.type != "error")


async def node_to_bob(
    node: Any, bob: C2SClient, id_: str, body: str, frm: str = f"carol@{A}/x"
) -> ET.Element:
    """node.send() a chat message to bob's full JID; returns what bob's client received."""
    await node.send(
        f"<message from='{frm}' to='{bob.full_jid}' id='{id_}' type='chat'>"
        f"<body>{_esc(body)}</body></message>".encode()
    )
    return await bob.wait_for(lambda e: is_message(e, id_) and e.get("type") != "error")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """*check()* once it is truthy (polled every 50 ms), else its last value after *timeout*
    seconds. For what a peer writes to its log after the fact (ejabberd's logger writes
    asynchronously, so a line may land after the stanza it is about)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := check()) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return value
