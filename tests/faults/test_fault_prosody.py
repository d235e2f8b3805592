"""SIGKILL of a Prosody peer mid-burst and its restart: component A (on an `s2sfast run`
daemon, a.test) sends numbered messages to bob@b.test on Debian's Prosody 0.12 (the harness in
tests/interop/servers/), bob logs in again after the restart, and every stanza is received by
bob or bounced back to A's component.

Prosody 0.12 uses XEP-0198 on S2S (mod_smacks, ``smacks_enabled_s2s``) only on streams
authenticated by SASL EXTERNAL, so the scenario runs twice: certificates trusted both ways
(SASL EXTERNAL, stream management on: nothing may be missing) and dialback (no stream
management from Prosody: what the kernel took before the crash cannot be known, but nothing
sent after it may vanish). Skipped without Prosody; a failure under S2SFAST_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

import servers  # noqa: E402  (tests/interop/servers: Prosody as a throw-away peer)
from daemon_helpers import free_port  # noqa: E402
from fault_harness import (  # noqa: E402
    IN_FLIGHT,
    CountingComponent,
    FaultDaemon,
    Ledger,
    SendStats,
    clean_exit,
    exit_codes,
    make_tls,
    mib,
    report,
    scrape_queue_depth,
    send_burst,
    wait_until,
    write_config,
)
from interop_c2s import C2SClient, local  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.interop]

N = int(os.environ.get("S2SFAST_FAULT_PROSODY_N", "3000"))
RATE = float(os.environ.get("S2SFAST_FAULT_PROSODY_RATE", "2000"))

#: mod_smacks on b.test with S2S stream management (Prosody refuses a second global
#: modules_enabled, so the host gets the template's list plus "smacks")
SMACKS = """
smacks_enabled_s2s = true
VirtualHost "b.test"
\tmodules_enabled = {
\t\t"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix"; "smacks";
\t}
"""


class C2SInbox:
    """What bob received over every login (a restart makes a new C2S session)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.clients: list[C2SClient] = []

    @property
    def delivered(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            for el in list(client.received):
                mid = el.get("id") or ""
                if local(el.tag) == "message" and el.get("type") != "error":
                    if mid.startswith(self.prefix):
                        out[mid] += 1
        return out

    async def login(self, port: int) -> None:
        self.clients.append(await C2SClient.login(port, "bob@b.test", "pw"))

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.mark.parametrize("auth", ["sasl-external-sm", "dialback"])
async def test_sigkill_prosody_peer_mid_burst_then_restart(tmp_path: Path, auth: str) -> None:
    servers.need_server("prosody")
    ca, tls = make_tls(tmp_path, ("a.test",))
    sasl = auth == "sasl-external-sm"
    a_s2s, a_comp, a_metrics = free_port(), free_port(), free_port()
    extra = SMACKS + (f's2s_ssl = {{ cafile = "{tls.cafile}" }}\n' if sasl else "")
    srv = servers.ProsodyServer(
        "b.test",
        tmp_path / "prosody",
        tls="required",
        remotes={"a.test": a_s2s, "bot.a.test": a_s2s},
        extra_config=extra,
        certificate=ca.issue(["b.test"]),
    )
    cfg = write_config(
        tmp_path / "a.toml",
        host="a.test",
        s2s_port=a_s2s,
        comp_port=a_comp,
        peer="b.test",
        peer_port=srv.s2s_port,
        tls=tls,
        metrics_port=a_metrics,
        s2s_extra=f"  sasl_external = {str(sasl).lower()}",
    )
    daemon = FaultDaemon("a", cfg)
    prefix = f"pk{auth[0]}"
    a = CountingComponent(a_comp, "bot.a.test", "pw-a.test", prefix)
    bob = C2SInbox(prefix)
    try:
        await asyncio.gather(daemon.astart(), asyncio.to_thread(srv.start))
        await asyncio.to_thread(srv.adduser, "bob", "pw")
        await bob.login(srv.c2s_port)
        await a.connect()
        ledger = Ledger(prefix, a, [bob])
        stats = SendStats()
        to = "bob@b.test/r"
        sender = asyncio.create_task(send_burst(a, n=N, rate=RATE, to=to, stats=stats))
        await wait_until(lambda: len(bob.delivered) >= N // 4, 60, "a quarter received by bob")
        await asyncio.to_thread(srv.kill)
        killed_at = stats.sent + int(RATE * IN_FLIGHT)
        await asyncio.to_thread(srv.start)  # the same ports, certificate and accounts
        await bob.login(srv.c2s_port)
        await asyncio.wait_for(sender, 120)
        ledger.sent = stats.sent

        def queued() -> int | None:
            return scrape_queue_depth(a_metrics)

        await ledger.settle(quiet=8.0, cap=90.0, queued=queued)
        q = queued()
        code_a = await daemon.aterminate()
        prosody_log = srv.log() + (srv.dir / "prosody.log.prev").read_text(errors="replace")
        result = ledger.result(
            f"sigkill-prosody-restart[{auth}]",
            queued=q,
            prosody_enabled_sm="<enabled xmlns='urn:xmpp:sm:3'" in prosody_log,
            rss_peak_mib={"a": mib(daemon.rss_peak)},
            exits={"a": exit_codes(daemon)},
        )
        report(result)

        assert stats.sent == N, stats
        if sasl:
            assert result.missing == 0, result.line()
        else:
            late = [i for i in ledger.missing_ids() if i >= killed_at]
            assert late == [], f"{len(late)} lost after the crash: {late[:20]}; {result.line()}"
        assert code_a == 0
        assert clean_exit(daemon) == []
    finally:
        await a.close()
        await bob.close()
        daemon.cleanup()
        srv.stop()
        print(daemon.log()[-20000:])
