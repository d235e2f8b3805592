"""bench/auth_paths.py in small: a new domain pair with certificates trusted both ways needs one
connection (XEP-0344 or SASL EXTERNAL) instead of dialback's two, 7-8 round trips instead of 14,
and with a 20 ms round trip reaches its first stanza sooner. Timed, so it lives in bench/."""

from __future__ import annotations

import asyncio

from auth_paths import run_mode


def test_certificates_save_the_verify_connection_and_its_round_trips(tmp_path):
    rows = {
        mode: asyncio.run(run_mode(mode, 5, 20.0, str(tmp_path)))
        for mode in ("dialback", "xep0344", "sasl")
    }
    dialback, xep0344, sasl = rows["dialback"], rows["xep0344"], rows["sasl"]
    assert dialback["methods"] == xep0344["methods"] == ["dialback"]
    assert sasl["methods"] == ["sasl-external"]
    assert (dialback["connections"], xep0344["connections"], sasl["connections"]) == (2, 1, 1)
    assert dialback["round_trips"] == 14
    assert xep0344["round_trips"] == 7 and sasl["round_trips"] == 8
    # 6 or 7 round trips of 20 ms saved: far above the noise of a shared machine
    assert dialback["median_ms"] - xep0344["median_ms"] > 80
    assert dialback["median_ms"] - sasl["median_ms"] > 60
