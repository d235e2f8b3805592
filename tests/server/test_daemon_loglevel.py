"""`s2sfast run` logs at MongooseIM's ``[general] loglevel`` (default "warning"); ``--log-level``
wins over the file in both directions.

Each run takes a component's message for b.test, whose [s2s] address override is a closed
port: resolving it logs a DEBUG line (``b.test: [s2s] address override -> ...``), the refused
connection a WARNING line (``stream a.test -> b.test failed``), in that order. The component
connection is an INFO line, as is the ready line ``running: hosts``.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawComponent, component_config, free_port
from dnsserver import closed_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

_DEBUG = r" DEBUG s2sfast\.dns: b\.test: \[s2s\] address override -> "
_WARNING = r" WARNING \S+: stream a\.test -> b\.test failed \("


def _config(tmp_path: Path, comp_port: int, loglevel: str | None) -> Path:
    return component_config(
        tmp_path,
        comp_port,
        general=f'  loglevel = "{loglevel}"' if loglevel else "",
        s2s=f'  address = [{{host = "b.test", ip_address = "127.0.0.1", port = {closed_port()}}}]',
    )


async def _component(daemon: DaemonProcess, port: int) -> RawComponent:
    """The component once the daemon listens (no ready line below info: poll the port)."""
    deadline = time.monotonic() + 20
    while True:
        assert daemon.proc.poll() is None, daemon.log()
        try:
            comp, answer = await RawComponent.connect(port, "a.test", "pw")
        except OSError:
            assert time.monotonic() < deadline, f"no component listener:\n{daemon.log()}"
            await asyncio.sleep(0.05)
            continue
        assert answer.name == "handshake", answer
        return comp


@pytest.mark.parametrize(
    ("loglevel", "flag", "shown", "hidden"),
    [
        (None, None, ["WARNING"], ["INFO", "DEBUG"]),  # MongooseIM's default, warning
        ("debug", None, ["WARNING", "INFO", "DEBUG"], []),
        ("debug", "warning", ["WARNING"], ["INFO", "DEBUG"]),  # the flag wins, quieter
        ("error", "debug", ["WARNING", "INFO", "DEBUG"], []),  # the flag wins, louder
        ("notice", None, ["WARNING"], ["INFO", "DEBUG"]),
    ],
)
async def test_run_logs_at_the_files_loglevel_unless_the_flag_says(
    tmp_path: Path, loglevel: str | None, flag: str | None, shown: list[str], hidden: list[str]
) -> None:
    comp_port = free_port()
    args = ["--config", str(_config(tmp_path, comp_port, loglevel))]
    daemon = DaemonProcess(*args, *(["--log-level", flag] if flag else []), log_level=None)
    try:
        comp = await _component(daemon, comp_port)
        comp.send("<message from='a.test' to='bob@b.test' id='l1'><body>hi</body></message>")
        daemon.wait_for_log(_WARNING)  # after the DEBUG line, if that is shown at all
        log = daemon.log()
        if "DEBUG" in shown:
            assert re.search(_DEBUG, log), log
        if "INFO" in shown:
            assert " INFO s2sfast.daemon: running: hosts a.test" in log
        for level in hidden:
            assert f" {level} " not in log, log
        comp.close()
    finally:
        daemon.kill()  # a stop would wait DRAIN_TIMEOUT for the stanza queued to b.test
