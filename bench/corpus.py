"""A deterministic, realistic S2S stream for the framer benchmarks.

What a busy federation link carries: chat messages with UTF-8 text, the five entities and
receipts/chat-state/stable-id payloads, presences with entity capabilities (XEP-0115) and vCard
avatar hashes, XEP-0199 pings and their results, and service-discovery (XEP-0030) results, with
an occasional whitespace keepalive. The mix averages 300-500 bytes per stanza. The same seed
always gives the same bytes, so runs and machines compare.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

__all__ = ["Corpus", "make_corpus", "chunked", "HEADER", "CLOSE"]

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.example' to='b.example' id='5f1c2a39-0d8e-4c7b-9a61-3e2f8b7c4d10' "
    b"version='1.0' xml:lang='en'>"
)
CLOSE = b"</stream:stream>"

_USERS_A = ["alice", "anders", "amélie", "aiko", "arjun", "ana.maria", "alexei"]
_USERS_B = ["bob", "björn", "beatriz", "bao", "bongani", "brigitte", "boris"]
_RESOURCES = ["Conversations.x7Kq", "gajim.4F2A", "phone", "laptop-7", "Dino.9b1e"]
_TEXTS = [
    "Are we still on for lunch tomorrow?",
    "Grüße aus München! Das Wetter ist schön heute.",
    "Ça marche, à tout à l'heure 👍",
    "日本語のメッセージです。よろしくお願いします。",
    "Привет! Как дела? Созвонимся вечером.",
    "if a < b && c > d then \"swap\" the 'values'",
    "Meeting moved to 15:30 — room 4 ☕",
    "😀😀 that's hilarious 🎉🎉",
    "The build failed again: expected <result/> but got <error/>",
    "ok",
    "Συνάντηση αύριο στις 10:00; Ευχαριστώ!",
    "Tack för senast, vi hörs snart! 🌲",
]
_CAPS_NODES = [
    "https://conversations.im",
    "https://gajim.org",
    "https://dino.im",
    "http://psi-im.org",
]
_FEATURES = [
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "urn:xmpp:carbons:2",
    "urn:xmpp:mam:2",
    "http://jabber.org/protocol/commands",
    "urn:xmpp:blocking",
    "vcard-temp",
    "msgoffline",
    "jabber:iq:last",
]


@dataclass(frozen=True)
class Corpus:
    """The stream bytes and what a correct framer must find in them."""

    data: bytes
    stanzas: int
    seed: int

    @property
    def body_bytes(self) -> int:
        return len(self.data) - len(HEADER) - len(CLOSE)


def _escape(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        text = text.replace("'", "&apos;").replace('"', "&quot;")
    return text


def _jid(rnd: random.Random, users: list[str], domain: str, full: bool) -> str:
    jid = f"{rnd.choice(users)}@{domain}"
    return f"{jid}/{rnd.choice(_RESOURCES)}" if full else jid


def _id(rnd: random.Random) -> str:
    a, b, c = rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16)
    return f"{a:08x}-{b:04x}-{c:04x}"


def _message(rnd: random.Random) -> str:
    sid = _id(rnd)
    body = _escape(" ".join(rnd.choice(_TEXTS) for _ in range(rnd.randint(1, 3))))
    extras = ["<active xmlns='http://jabber.org/protocol/chatstates'/>"]
    if rnd.random() < 0.7:
        extras.append("<request xmlns='urn:xmpp:receipts'/>")
    if rnd.random() < 0.5:
        extras.append("<markable xmlns='urn:xmpp:chat-markers:0'/>")
    extras.append(f"<origin-id xmlns='urn:xmpp:sid:0' id='{sid}'/>")
    return (
        f"<message from='{_jid(rnd, _USERS_A, 'a.example', True)}' "
        f"to='{_jid(rnd, _USERS_B, 'b.example', False)}' type='chat' id='{sid}' "
        f"xml:lang='en'><body>{body}</body>{''.join(extras)}</message>"
    )


def _presence(rnd: random.Random) -> str:
    ver = hashlib.sha1(rnd.randbytes(8)).digest().hex()[:27] + "="
    photo = hashlib.sha1(rnd.randbytes(8)).hexdigest()
    status = _escape(rnd.choice(["In a meeting", "Unterwegs 🚲", "ランチ中", "", "Back at 3"]))
    show = rnd.choice(["", "<show>away</show>", "<show>dnd</show>", "<show>xa</show>"])
    return (
        f"<presence from='{_jid(rnd, _USERS_A, 'a.example', True)}' "
        f"to='{_jid(rnd, _USERS_B, 'b.example', False)}' xml:lang='en'>{show}"
        + (f"<status>{status}</status>" if status else "")
        + f"<priority>{rnd.randint(0, 50)}</priority>"
        f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
        f"node='{rnd.choice(_CAPS_NODES)}' ver='{ver}'/>"
        f"<x xmlns='vcard-temp:x:update'><photo>{photo}</photo></x></presence>"
    )


def _ping(rnd: random.Random) -> str:
    if rnd.random() < 0.5:
        return (
            f"<iq from='a.example' to='b.example' type='get' id='{_id(rnd)}'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
    return f"<iq from='a.example' to='b.example' type='result' id='{_id(rnd)}'/>"


def _disco(rnd: random.Random) -> str:
    features = rnd.sample(_FEATURES, rnd.randint(4, len(_FEATURES)))
    name = _escape(rnd.choice(["Prosody", "ejabberd", "MongooseIM", "Tigase & friends"]), True)
    return (
        f"<iq from='a.example' to='{_jid(rnd, _USERS_B, 'b.example', True)}' type='result' "
        f"id='{_id(rnd)}'><query xmlns='http://jabber.org/protocol/disco#info'>"
        f"<identity category='server' type='im' name='{name}'/>"
        + "".join(f"<feature var='{f}'/>" for f in features)
        + "</query></iq>"
    )


_KINDS = [(_message, 0.55), (_presence, 0.25), (_ping, 0.12), (_disco, 0.08)]


def make_corpus(stanzas: int = 10_000, seed: int = 6120) -> Corpus:
    """A stream of *stanzas* stanzas: header, stanzas and keepalives, closing tag."""
    rnd = random.Random(seed)
    kinds = [k for k, _ in _KINDS]
    weights = [w for _, w in _KINDS]
    parts = [HEADER]
    for _ in range(stanzas):
        parts.append(rnd.choices(kinds, weights)[0](rnd).encode("utf-8"))
        if rnd.random() < 0.02:
            parts.append(b" ")
    parts.append(CLOSE)
    return Corpus(b"".join(parts), stanzas, seed)


def chunked(data: bytes, size: int = 4096) -> list[bytes]:
    """*data* in reads of *size* bytes, as a socket would deliver a busy stream."""
    return [data[i : i + size] for i in range(0, len(data), size)]


if __name__ == "__main__":
    c = make_corpus()
    print(f"{c.stanzas} stanzas, {len(c.data)} bytes, {c.body_bytes / c.stanzas:.0f} B/stanza")
