"""bench/bidi_connections.py in small: with TLS and certificates trusted both ways, bidi
(XEP-0288) halves the connections, TLS handshakes and authenticated streams per domain pair;
with plain dialback (a verify stream per pair) it changes nothing. Counts, not timings."""

from __future__ import annotations

import asyncio

import pytest
from bidi_connections import run


@pytest.mark.parametrize("mode", ["xep0344", "sasl", "dialback"])
def test_bidi_halves_connections_and_handshakes_with_certificates(mode, tmp_path):
    pairs = 3
    off = tmp_path / "off"
    on = tmp_path / "on"
    off.mkdir()
    on.mkdir()
    without = asyncio.run(run(mode, False, pairs, str(off)))
    with_bidi = asyncio.run(run(mode, True, pairs, str(on)))
    assert without["connections"] == without["authenticated_streams"] == 2 * pairs
    if mode == "dialback":
        assert with_bidi["connections"] == 2 * pairs and with_bidi["tls_handshakes"] == 0
        return
    assert without["tls_handshakes"] == 2 * pairs
    assert with_bidi["connections"] == with_bidi["tls_handshakes"] == pairs
    assert with_bidi["authenticated_streams"] == with_bidi["live_connections"] == pairs
