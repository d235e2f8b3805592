"""XEP-0185 keys, db:* builders/parsers and pending-verification bookkeeping."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from s2sfast.protocol.dialback import (
    PendingVerifications,
    key_matches,
    make_key,
    parse_dialback,
    result_bytes,
    verify_bytes,
)


def test_key_matches_formula_written_out():
    secret = "82gc8b23ct7824"
    hashed = hashlib.sha256(secret.encode()).hexdigest().encode()
    expected = hmac.new(hashed, b"b.test a.test abc", hashlib.sha256).hexdigest()
    assert make_key(secret, "b.test", "a.test", "abc") == expected


def test_key_depends_on_every_input():
    base = make_key("s", "b.test", "a.test", "id1")
    assert make_key("t", "b.test", "a.test", "id1") != base
    assert make_key("s", "c.test", "a.test", "id1") != base
    assert make_key("s", "b.test", "c.test", "id1") != base
    assert make_key("s", "b.test", "a.test", "id2") != base


def test_key_matches_accepts_only_the_right_key():
    key = make_key("s", "b.test", "a.test", "id1")
    assert key_matches("s", "b.test", "a.test", "id1", key)
    assert key_matches("s", "b.test", "a.test", "id1", f"  {key}\n")
    assert not key_matches("s", "b.test", "a.test", "id1", key[:-1] + "0")
    assert not key_matches("s", "b.test", "a.test", "id1", None)
    assert not key_matches("s", "b.test", "a.test", "id1", "")
    assert not key_matches("s", "b.test", "a.test", "id1", "ü" * 64)


def test_result_request_and_answer_round_trip():
    req = parse_dialback(result_bytes(from_="a.test", to="b.test", key="abcd"))
    assert (req.kind, req.from_, req.to, req.type, req.key, req.id) == (
        "result",
        "a.test",
        "b.test",
        None,
        "abcd",
        None,
    )
    ans = parse_dialback(result_bytes(from_="b.test", to="a.test", type="valid"))
    assert ans.type == "valid" and ans.key is None


def test_error_answer_carries_condition():
    raw = verify_bytes(
        from_="a.test", to="b.test", id="x", type="error", error_condition="policy-violation"
    )
    parsed = parse_dialback(raw)
    assert parsed.kind == "verify" and parsed.type == "error"
    assert parsed.error_condition == "policy-violation"


def test_parse_real_prosody_and_ejabberd_answers():
    prosody = (
        b"<db:result to='a.test' id='2ddf209e' from='b.test' type='valid'>a88c9dd1</db:result>"
    )
    p = parse_dialback(prosody)
    assert p.type == "valid" and p.id == "2ddf209e" and p.key == "a88c9dd1"
    ejabberd = b"<db:result type='valid' to='b.test' from='e.test'/>"
    e = parse_dialback(ejabberd)
    assert e.type == "valid" and e.id is None and e.key is None


def test_attribute_values_are_escaped():
    raw = verify_bytes(from_="a'b", to="c<d", id="&", key="k")
    parsed = parse_dialback(raw)
    assert (parsed.from_, parsed.to, parsed.id) == ("a'b", "c<d", "&")


@pytest.mark.parametrize(
    "raw",
    [
        b"<message/>",
        b"<db:result from='a' to='b'>",
        b"<db:other from='a' to='b'/>",
        b"<db:result from='a' to='b'>" + b"0" * 2000 + b"</db:result>",
    ],
)
def test_parse_rejects_non_dialback(raw):
    with pytest.raises(ValueError):
        parse_dialback(raw)


def test_pending_matches_from_to_id_exactly_once():
    p = PendingVerifications()
    p.add(originating="a.test", receiving="b.test", stream_id="s1")
    assert not p.take(from_="b.test", to="a.test", stream_id="s1")
    assert not p.take(from_="a.test", to="b.test", stream_id="s2")
    assert not p.take(from_="a.test", to="b.test", stream_id=None)
    assert p.take(from_="a.test", to="b.test", stream_id="s1")
    assert not p.take(from_="a.test", to="b.test", stream_id="s1")
    assert len(p) == 0


def test_pending_is_bounded_and_drains():
    p = PendingVerifications()
    for i in range(p.MAX_PENDING):
        p.add(originating="a.test", receiving="b.test", stream_id=str(i))
    with pytest.raises(OverflowError):
        p.add(originating="a.test", receiving="b.test", stream_id="x")
    assert len(p.drain()) == p.MAX_PENDING
    assert len(p) == 0
