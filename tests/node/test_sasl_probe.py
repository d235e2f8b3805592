"""``s2sfast probe`` and SASL EXTERNAL: against a running Node that trusts our certificate the
probe authenticates with EXTERNAL and proves federation without dialback (no node of ours needs
to answer a verify); one that does not trust it offers no EXTERNAL, and the probe says so."""

from __future__ import annotations

from core_helpers import node_config

from s2sfast.server.probe import EXIT_OK, Probe


def _steps(probe):
    return [(s.step, s.status, s.detail) for s in probe.steps]


async def _probe(federation, dns_server, tls_certfile, b_cafile, tls_ca_file, **a_options):
    nodes = await federation(
        {
            "B": {
                "hosts": ["b.test"],
                "mode": "required",
                "certfile": tls_certfile("b.test"),
                "cafile": b_cafile,
                "sasl_external": True,
            }
        }
    )
    config = node_config(
        ["a.test"],
        port=0,
        addresses={"b.test": nodes["B"].port},
        mode="required",
        certfile=tls_certfile("a.test"),
        cafile=tls_ca_file,
        **a_options,
    )
    probe = Probe("b.test", local="a.test", config=config, nameservers=[dns_server.nameserver])
    return await probe.run(), probe


async def test_probe_proves_federation_with_external(
    federation, dns_server, tls_certfile, tls_ca_file
):
    code, probe = await _probe(
        federation, dns_server, tls_certfile, tls_ca_file, tls_ca_file, sasl_external=True
    )
    steps = _steps(probe)
    assert code == EXIT_OK, steps
    assert (
        "sasl",
        "ok",
        "SASL EXTERNAL as a.test accepted: b.test trusts our certificate",
    ) in steps
    assert not [s for s in steps if s[0] == "dialback"]  # not needed, so not tried
    assert [s for s in steps if s[0] == "stream"][-1][1] == "ok"  # the restarted stream opened


async def test_probe_without_trust_gets_no_external(
    federation, dns_server, tls_certfile, tls_ca_file
):
    """B trusts only the system store: our test-CA certificate proves nothing to it."""
    code, probe = await _probe(
        federation, dns_server, tls_certfile, None, tls_ca_file, sasl_external=True
    )
    steps = _steps(probe)
    sasl = [s for s in steps if s[0] == "sasl"]
    assert sasl and sasl[0][1] == "info" and "not offered" in sasl[0][2], steps
    assert [s for s in steps if s[0] == "dialback"]  # dialback is tried next
    assert code != EXIT_OK  # no a.test node answers B's verify


async def test_probe_does_not_try_external_when_turned_off(
    federation, dns_server, tls_certfile, tls_ca_file
):
    code, probe = await _probe(
        federation, dns_server, tls_certfile, tls_ca_file, tls_ca_file, sasl_external=False
    )
    steps = _steps(probe)
    assert ("sasl", "skip", "SASL EXTERNAL offered, not tried: [s2s] sasl_external is off") in (
        steps
    )
    assert [s for s in steps if s[0] == "dialback"]  # dialback is tried instead
