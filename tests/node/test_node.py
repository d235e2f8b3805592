"""Node's public API: start/listen addresses, send validation, local domains, policy reload."""

from __future__ import annotations

import pytest
from core_helpers import message, node_config

from s2sfast import Node, load_config
from s2sfast.config import HostPolicy, S2SOptions


def test_package_exports():
    import s2sfast

    assert s2sfast.Node is Node and callable(load_config)
    assert s2sfast.__version__


async def test_send_before_start_and_bad_stanzas():
    node = Node(node_config(["a.test"], port=0))
    with pytest.raises(RuntimeError):
        await node.send(message("u@a.test", "v@b.test", "x"))
    await node.start()
    try:
        host, port = node.listen_addresses()[0]
        assert host == "127.0.0.1" and port > 0
        with pytest.raises(ValueError, match="not at a local domain"):
            await node.send(message("u@elsewhere.test", "v@b.test", "x"))
        with pytest.raises(ValueError):
            await node.send(b"<message from='u@a.test' to='v@b.test'>")  # not complete
        with pytest.raises(ValueError, match="no 'to'"):
            await node.send(b"<message from='u@a.test'/>")
    finally:
        await node.stop()
    assert node.listen_addresses() == []


async def test_async_handler_and_registered_subdomain(federation):
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "addresses": {"bot.b.test": "B"}}, "B": {"hosts": ["b.test"]}}
    )
    got = []

    async def handler(stanza):
        got.append(stanza.id)

    nodes["B"].on_stanza(handler)
    # bot.b.test is served by B from now on (a component's domain), with b.test's options
    nodes["B"].add_local_domain("bot.b.test", "b.test")
    await nodes["A"].send(message("u@a.test", "bot@bot.b.test", "hi bot", id="b1"))
    assert (await nodes["B"].inbox.get()).id == "b1"
    assert got == ["b1"]
    # it originates too: A verifies its dialback key with B, the authoritative server
    await nodes["B"].send(message("bot@bot.b.test", "u@a.test", "hello", id="b2"))
    assert (await nodes["A"].inbox.get()).id == "b2"
    nodes["B"].remove_local_domain("bot.b.test")
    with pytest.raises(ValueError):
        await nodes["B"].send(message("bot@bot.b.test", "u@a.test", "gone", id="b3"))


async def test_reload_policy_applies_to_new_stanzas(federation):
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    await nodes["A"].send(message("u@a.test", "v@b.test", "1", id="1"))
    assert (await nodes["B"].inbox.get()).id == "1"
    nodes["A"].reload_policy(
        S2SOptions(host_policy=(HostPolicy(host="b.test", policy="deny"),)), {}
    )
    assert nodes["A"].config.s2s.use_starttls == "false"  # only the policy changed
    await nodes["A"].send(message("u@a.test", "v@b.test", "2", id="2"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "2" and b"service-unavailable" in bounce.raw


async def test_outcome_events_for_metrics(federation, tls_certfile, tls_ca_file):
    spec = {"mode": "required", "cafile": tls_ca_file}
    nodes = await federation(
        {
            "A": {"hosts": ["a.test"], "certfile": tls_certfile("a.test"), **spec},
            "B": {
                "hosts": ["b.test"],
                "certfile": tls_certfile("b.test"),
                "host_policy": {"c.test": "deny"},
                **spec,
            },
        }
    )
    seen: list[tuple[str, dict]] = []
    nodes["A"].on_event(lambda kind, fields: seen.append((kind, fields)))
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="e1"))
    await nodes["B"].inbox.get()
    kinds = [k for k, _ in seen]
    assert "tls-up" in kinds
    auth = [f for k, f in seen if k == "stream-authenticated" and f["direction"] == "out"]
    assert auth and auth[0]["remote"] == "b.test" and auth[0]["tls"] is True
    nodes["B"].on_event(lambda kind, fields: seen.append((kind, fields)))
    await nodes["B"].send(message("v@b.test", "w@c.test", "denied", id="e2"))
    await nodes["B"].inbox.get()
    assert ("bounce", {"local": "b.test", "condition": "service-unavailable"}) in seen
