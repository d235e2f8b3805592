"""Whether our own certificate can prove our domain before we offer SASL EXTERNAL as the
originating server (s2sfast.net.peercert.own_certificate_problem), on real PEM files."""

from __future__ import annotations

import datetime as dt
import os

from certs import self_signed, utcnow

from s2sfast.net.peercert import own_certificate_problem


def test_a_ca_issued_certificate_for_the_domain_is_good(tls_ca, tmp_path):
    path = tls_ca.issue(["a.test"]).write_pem(tmp_path)
    assert own_certificate_problem(path, "a.test") is None
    assert own_certificate_problem(path, "A.TEST") is None


def test_wildcard_covers_one_label(tls_ca, tmp_path):
    path = tls_ca.issue(["*.a.test"]).write_pem(tmp_path)
    assert own_certificate_problem(path, "h1.a.test") is None
    assert "does not name a.test" in own_certificate_problem(path, "a.test")


def test_self_signed_is_judged_by_the_peer(tmp_path):
    """Trust is the peer's call (it pins or not): a self-signed certificate naming us passes."""
    path = self_signed("a.test").write_pem(tmp_path)
    assert own_certificate_problem(path, "a.test") is None


def test_expired_not_yet_valid_and_wrong_name(tls_ca, tmp_path):
    past = utcnow() - dt.timedelta(days=2)
    expired = tls_ca.issue(
        ["a.test"], not_before=past - dt.timedelta(days=30), not_after=past
    ).write_pem(tmp_path, "expired.pem")
    assert "our certificate expired at" in own_certificate_problem(expired, "a.test")
    future = utcnow() + dt.timedelta(days=2)
    early = tls_ca.issue(
        ["a.test"], not_before=future, not_after=future + dt.timedelta(days=30)
    ).write_pem(tmp_path, "early.pem")
    assert "not valid before" in own_certificate_problem(early, "a.test")
    wrong = tls_ca.issue(["c.test"]).write_pem(tmp_path, "wrong.pem")
    assert own_certificate_problem(wrong, "a.test") == (
        "our certificate does not name a.test (it names DNS:c.test)"
    )


def test_missing_or_unreadable_certfile(tmp_path):
    assert own_certificate_problem(None, "a.test") == "no certfile"
    assert "cannot read" in own_certificate_problem(str(tmp_path / "none.pem"), "a.test")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert "no PEM certificate" in own_certificate_problem(str(junk), "a.test")


def test_a_replaced_file_is_read_again(tls_ca, tmp_path):
    path = tls_ca.issue(["c.test"]).write_pem(tmp_path, "cert.pem")
    assert own_certificate_problem(path, "a.test") is not None
    good = tls_ca.issue(["a.test"]).write_pem(tmp_path, "good.pem")
    os.replace(good, path)
    stamp = os.stat(path).st_mtime + 5  # a later modification time, as a renewal has
    os.utime(path, (stamp, stamp))
    assert own_certificate_problem(path, "a.test") is None
