"""RFC 6125 identity and chain checks of s2sfast.net.tls on certificates made by tests/certs.py."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from certs import ID_ON_DNSSRV, ID_ON_XMPPADDR, make_ca, self_signed, utcnow
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sfast.net.tls import PeerNames, name_matches, peer_names, verify_peer

DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def cafile(ca, tmp_path_factory):
    return ca.write_pem(tmp_path_factory.mktemp("names"))


def names_of(issued) -> PeerNames:
    return peer_names(issued.der)


# --- names ------------------------------------------------------------------------------------


def test_peer_names_reads_every_identity_kind(ca):
    cert = ca.issue(
        ["A.Test", "*.muc.a.test"], srv_ids=["a.test"], xmpp_addrs=["a.test"], cn="Display Name"
    )
    names = names_of(cert)
    assert names.dns_names == ("a.test", "*.muc.a.test")
    assert names.srv_ids == (("_xmpp-server", "a.test"),)
    assert names.xmpp_addrs == ("a.test",)
    assert names.common_names == ("Display Name",)
    assert "SRV:_xmpp-server.a.test" in names.describe()


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("a.test", "a.test", True),
        ("a.test", "A.TEST", True),
        ("a.test", "a.test.", True),
        ("a.test", "b.test", False),
        ("a.test", "x.a.test", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.Com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.com", "example.com", False),
        ("f*.example.com", "foo.example.com", False),
        ("a.*.example.com", "a.b.example.com", False),
        ("*.*.example.com", "a.b.example.com", False),
    ],
)
def test_dns_name_matching(ca, pattern, domain, expected):
    assert name_matches(names_of(ca.issue([pattern])), domain) is expected


def test_srv_id_matches_only_xmpp_server_service(ca):
    assert name_matches(names_of(ca.issue([], srv_ids=["a.test"], cn="x")), "a.test")
    assert not name_matches(names_of(ca.issue([], srv_ids=["a.test"], cn="x")), "b.test")
    client_srv = ca.issue([], srv_ids=["_xmpp-client.a.test"], cn="x")
    assert names_of(client_srv).srv_ids == (("_xmpp-client", "a.test"),)
    assert not name_matches(names_of(client_srv), "a.test")


def test_xmpp_addr_matches_the_domain_jid_exactly(ca):
    assert name_matches(names_of(ca.issue([], xmpp_addrs=["a.test"], cn="x")), "a.test")
    assert name_matches(names_of(ca.issue([], xmpp_addrs=["A.test"], cn="x")), "a.test")
    for addr in ("user@a.test", "a.test/resource", "sub.a.test"):
        assert not name_matches(names_of(ca.issue([], xmpp_addrs=[addr], cn="x")), "a.test")


def test_no_common_name_fallback(ca, cafile):
    cn_only = ca.issue([], cn="a.test")
    names = names_of(cn_only)
    assert names.dns_names == () and names.common_names == ("a.test",)
    assert not name_matches(names, "a.test")
    status = verify_peer(cn_only.chain_der, "a.test", cafile=cafile)
    assert status.trusted and not status.name_matches and not status.ok
    assert "does not name a.test" in status.reason and "CN:a.test (not used)" in status.reason


def test_ip_address_san_is_not_a_domain(ca):
    assert not name_matches(names_of(ca.issue(["127.0.0.1"])), "127.0.0.1")


_IP_LITERALS = [
    "0.0.0.0",
    "127.0.0.1",
    "192.0.2.1",
    "255.255.255.255",
    "::",
    "::1",
    "[::1]",
    "2001:db8::1",
    "[2001:DB8::1]",
    "::ffff:192.0.2.1",
    "[::ffff:192.0.2.1]",
    "fe80::1%eth0",
]


@pytest.mark.parametrize("literal", _IP_LITERALS)
def test_an_ip_literal_domain_matches_no_identity(literal):
    """RFC 6125 names DNS domains only: an address matches nothing, even where every identity
    of the certificate spells it (bare, bracketed, wildcarded, with a trailing dot)."""
    bare = literal.lower().removeprefix("[").removesuffix("]")
    spelled = (literal, bare, f"[{bare}]")
    wildcard = ("*." + bare.partition(".")[2],) if "." in bare else ()
    names = PeerNames(
        dns_names=spelled + wildcard,
        srv_ids=tuple(("_xmpp-server", s) for s in spelled),
        xmpp_addrs=spelled,
    )
    assert not name_matches(names, literal)
    assert not name_matches(names, literal.upper())
    if ":" not in literal:
        assert not name_matches(names, literal + ".")


def test_a_certificate_for_an_address_does_not_verify_the_address(ca, cafile):
    status = verify_peer(ca.issue(["0.0.0.0"]).chain_der, "0.0.0.0", cafile=cafile)
    assert status.trusted and not status.name_matches and not status.ok


@pytest.mark.parametrize("domain", ["256.1.1.1", "1.2.3", "0.0.0.0.example", "a.0.0.0.0"])
def test_dotted_names_that_are_not_addresses_are_compared_as_names(domain):
    assert name_matches(PeerNames(dns_names=(domain,)), domain)
    assert name_matches(PeerNames(srv_ids=(("_xmpp-server", domain),)), domain)
    assert not name_matches(PeerNames(dns_names=(domain,)), f"x.{domain}")


def test_unicode_domain_matches_a_label_dns_name(ca):
    assert name_matches(names_of(ca.issue(["xn--bcher-kva.example"])), "bücher.example")


def test_malformed_other_names_are_ignored(ca):
    key = ca.issue(["unused.test"]).key
    bad = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utcnow() - DAY)
        .not_valid_after(utcnow() + DAY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.OtherName(ID_ON_XMPPADDR, b"\x16\x06a.test"),  # wrong string type
                    x509.OtherName(ID_ON_DNSSRV, b"\x0c\x07_a.test"),  # wrong string type
                    x509.OtherName(ID_ON_DNSSRV, b"\x16\x06a.test"),  # no _service label
                    x509.DNSName("ok.test"),
                ]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    names = peer_names(bad.public_bytes(Encoding.DER))
    assert names == PeerNames(dns_names=("ok.test",), common_names=("x",))


def test_peer_names_rejects_garbage():
    with pytest.raises(ValueError):
        peer_names(b"not a certificate")


# --- chains and dates -------------------------------------------------------------------------


def test_valid_chain_through_intermediate(ca, cafile):
    inter = ca.intermediate()
    leaf = inter.issue(["a.test"])
    status = verify_peer(leaf.chain_der, "a.test", cafile=cafile)
    assert status.ok and status.reason is None
    assert status.not_after == leaf.cert.not_valid_after_utc
    # Without the intermediate the leaf cannot be chained.
    alone = verify_peer(leaf.chain_der[:1], "a.test", cafile=cafile)
    assert not alone.trusted and alone.name_matches
    assert "not trusted: no chain to a trusted CA" in alone.reason


def test_two_intermediates(ca, cafile):
    leaf = ca.intermediate("sub 1").intermediate("sub 2").issue(["a.test"])
    assert len(leaf.chain_der) == 3
    assert verify_peer(leaf.chain_der, "a.test", cafile=cafile).ok


def test_expired_and_not_yet_valid(ca, cafile):
    now = utcnow()
    expired = ca.issue(["a.test"], not_before=now - 10 * DAY, not_after=now - DAY)
    status = verify_peer(expired.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and status.name_matches
    assert status.reason.startswith("the certificate expired at ")

    future = ca.issue(["a.test"], not_before=now + DAY, not_after=now + 10 * DAY)
    status = verify_peer(future.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and "not valid before" in status.reason


def test_now_argument_moves_the_clock(ca, cafile):
    leaf = ca.issue(["a.test"])  # valid for 30 days
    assert verify_peer(leaf.chain_der, "a.test", cafile=cafile, now=utcnow() + 29 * DAY).ok
    later = verify_peer(leaf.chain_der, "a.test", cafile=cafile, now=utcnow() + 31 * DAY)
    assert not later.trusted and "expired" in later.reason
    # A naive datetime is taken as UTC.
    naive = (utcnow() + 31 * DAY).replace(tzinfo=None)
    assert not verify_peer(leaf.chain_der, "a.test", cafile=cafile, now=naive).trusted


def test_expired_intermediate_is_not_trusted(ca, cafile):
    now = utcnow()
    old = ca.intermediate("old sub", not_before=now - 10 * DAY, not_after=now - DAY)
    leaf = old.issue(["a.test"])
    status = verify_peer(leaf.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and "not valid at validation time" in status.reason


def test_other_ca_self_signed_and_pinned(ca, cafile, tmp_path):
    stranger = make_ca("someone else").issue(["a.test"])
    status = verify_peer(stranger.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and "someone else" in status.reason

    lone = self_signed("a.test")
    status = verify_peer(lone.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and status.name_matches
    assert status.reason == "the certificate is self-signed and not a trust anchor"

    # The same self-signed certificate listed in the cafile is trusted (pinning).
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(lone.cert_pem())
    assert verify_peer(lone.chain_der, "a.test", cafile=str(pinned)).ok


def test_system_store_does_not_trust_the_test_ca(ca):
    status = verify_peer(ca.issue(["a.test"]).chain_der, "a.test", cafile=None)
    assert not status.trusted and "not trusted" in status.reason


def test_key_usage_for_servers(ca, cafile):
    server_only = ca.issue(["a.test"], ekus=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert verify_peer(server_only.chain_der, "a.test", cafile=cafile).ok
    no_eku = ca.issue(["a.test"], ekus=None)
    assert verify_peer(no_eku.chain_der, "a.test", cafile=cafile).ok
    mail = ca.issue(["a.test"], ekus=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    status = verify_peer(mail.chain_der, "a.test", cafile=cafile)
    assert not status.trusted and "neither serverAuth nor clientAuth" in status.reason


def test_wrong_name_is_trusted_but_not_ok(ca, cafile):
    status = verify_peer(ca.issue(["b.test"]).chain_der, "a.test", cafile=cafile)
    assert status.trusted and not status.name_matches and not status.ok
    assert status.reason == "the certificate does not name a.test (it names DNS:b.test)"


def test_no_certificate_and_garbage(cafile):
    status = verify_peer([], "a.test", cafile=cafile)
    assert not status.ok and status.reason == "the peer presented no certificate"
    assert status.not_after is None
    status = verify_peer([b"\x30\x03junk"], "a.test", cafile=cafile)
    assert not status.ok and "cannot be parsed" in status.reason


def test_unreadable_cafile(ca, tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    status = verify_peer(ca.issue(["a.test"]).chain_der, "a.test", cafile=str(empty))
    assert not status.trusted and "no trust anchors" in status.reason
    missing = verify_peer(ca.issue(["a.test"]).chain_der, "a.test", cafile=str(tmp_path / "no"))
    assert not missing.trusted and "no trust anchors" in missing.reason


def test_rsa_leaf(ca, cafile):
    assert verify_peer(ca.issue(["a.test"], key_type="rsa").chain_der, "a.test", cafile=cafile).ok


# --- properties of the matcher ------------------------------------------------------------------

_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
# A DNS name's top-level label is never all digits (RFC 3696 section 2); that is also what keeps
# a generated name from being an IPv4 address (0.0.0.0), which matches nothing (tested above).
_TLD = _LABEL.filter(lambda s: not s.isdigit())


def _names(min_labels: int, max_labels: int) -> st.SearchStrategy[str]:
    """Dotted DNS names of min..max labels whose last label is not all digits."""
    return st.tuples(st.lists(_LABEL, min_size=min_labels - 1, max_size=max_labels - 1), _TLD).map(
        lambda parts: ".".join([*parts[0], parts[1]])
    )


@settings(max_examples=200, deadline=None)
@given(
    label=_LABEL,
    extra=_LABEL,
    suffix=_names(1, 3),
)
def test_wildcard_covers_exactly_one_label(label, extra, suffix):
    names = PeerNames(dns_names=(f"*.{suffix}",))
    multi_label_suffix = "." in suffix
    assert name_matches(names, f"{label}.{suffix}") is multi_label_suffix
    assert name_matches(names, f"{label.upper()}.{suffix}.") is multi_label_suffix
    assert not name_matches(names, suffix)
    assert not name_matches(names, f"{extra}.{label}.{suffix}")
    # SRV-IDs and xmppAddrs never carry wildcards.
    assert not name_matches(
        PeerNames(srv_ids=(("_xmpp-server", f"*.{suffix}"),)), f"{label}.{suffix}"
    )
    assert not name_matches(PeerNames(xmpp_addrs=(f"*.{suffix}",)), f"{label}.{suffix}")


@settings(max_examples=100, deadline=None)
@given(domain=_names(1, 4), other=_LABEL)
def test_exact_identities_match_only_their_domain(domain, other):
    for names in (
        PeerNames(dns_names=(domain,)),
        PeerNames(srv_ids=(("_xmpp-server", domain),)),
        PeerNames(xmpp_addrs=(domain,)),
    ):
        assert name_matches(names, domain)
        assert name_matches(names, domain.upper())
        assert not name_matches(names, f"{other}.{domain}")
        assert not name_matches(names, f"{domain}.{other}x")
    assert not name_matches(PeerNames(common_names=(domain,)), domain)


@settings(max_examples=200)
@given(ip=st.ip_addresses())
def test_no_ip_address_matches_even_where_every_identity_spells_it(ip):
    forms = [str(ip), ip.exploded]
    if ip.version == 6:
        forms += [f"[{ip}]", f"[{ip.exploded}]", str(ip).upper()]
    names = PeerNames(
        dns_names=tuple(forms),
        srv_ids=tuple(("_xmpp-server", f) for f in forms),
        xmpp_addrs=tuple(forms),
    )
    for form in forms:
        assert not name_matches(names, form)


@pytest.mark.parametrize(
    ("env", "derandomized"),
    [({"CI": "true"}, True), ({"HYPOTHESIS_PROFILE": "ci"}, True), ({}, False)],
)
def test_ci_runs_the_properties_derandomized(env, derandomized):
    """tests/conftest.py selects the "ci" hypothesis profile under CI=true (or
    HYPOTHESIS_PROFILE=ci, which .ci/run sets): the same examples on every run."""
    tests = Path(__file__).resolve().parents[1]
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    clean["PYTHONPATH"] = os.pathsep.join([str(tests), str(tests.parent)])
    code = (
        "import conftest\n"
        "from hypothesis import settings\n"
        "s = settings.default\n"
        "print(s.derandomize, s.database is None, s.deadline, s.print_blob)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, cwd=tests
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(derandomized), str(derandomized), "None", "True"]
