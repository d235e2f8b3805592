"""Stream errors both ways: what we write (stream_error_bytes) and what we read of a peer's."""

from __future__ import annotations

import pytest

from s2sfast.protocol.errors import parse_stream_error, stream_error_bytes


def test_our_stream_error_reads_back() -> None:
    raw = stream_error_bytes("policy-violation", "a < b & 'c'")
    assert parse_stream_error(raw) == ("policy-violation", "a < b & 'c'")


def test_peer_error_without_text() -> None:
    raw = (
        b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    )
    assert parse_stream_error(raw) == ("host-unknown", None)


def test_text_before_the_condition_and_foreign_children() -> None:
    raw = (
        b"<stream:error><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>"
        b" Received SIGTERM </text><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<app-specific xmlns='urn:example'/></stream:error>"
    )
    assert parse_stream_error(raw) == ("system-shutdown", "Received SIGTERM")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"<stream:error/>", ("undefined-condition", None)),
        (b"<stream:error>", None),
        (b"not xml", None),
    ],
)
def test_empty_or_broken(raw: bytes, expected: object) -> None:
    assert parse_stream_error(raw) == expected
