"""Helpers for the daemon tests: free ports, a `s2sfast run` subprocess, a raw XEP-0114 client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from s2sfast.protocol.component import COMPONENT_NS, handshake_digest

ROOT = Path(__file__).resolve().parent.parent
READY = "running: hosts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def component_message(i: int, pad: int = 100) -> bytes:
    """Message *i* from a component's domain (one.a.test) to another (two.a.test)."""
    return (
        f"<message from='x@one.a.test' to='y@two.a.test' id='m{i}'><body>{'z' * pad}</body>"
        "</message>"
    ).encode()


def component_config(
    tmp_path: Path,
    comp_port: int,
    general: str = "",
    s2s: str = "",
    *,
    s2s_port: int | None = None,
    listeners: str = "",
) -> Path:
    """``a.toml`` for a.test: plain S2S on *s2s_port* (default: a free port), one XEP-0114
    listener on *comp_port* (password "pw"); *general* and *s2s* are extra lines for
    ``[general]`` and ``[s2s]``, *listeners* extra listener sections."""
    path = tmp_path / "a.toml"
    path.write_text(
        f"""
[general]
  hosts = ["a.test"]
{general}
[[listen.s2s]]
  port = {s2s_port or free_port()}
  ip_address = "127.0.0.1"
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw"
{listeners}
[s2s]
  use_starttls = "false"
{s2s}
"""
    )
    return path


async def component_daemon(tmp_path: Path, extra: str = "") -> tuple[Any, int]:
    """An in-process Daemon for :func:`component_config`, started; returns it and the
    component port. *extra* goes into ``[general]``."""
    from s2sfast.config import load_config
    from s2sfast.server.daemon import Daemon

    comp_port = free_port()
    config = load_config(component_config(tmp_path, comp_port, general=extra))
    daemon = Daemon(config, config.listen_service)
    await daemon.start()
    return daemon, comp_port


class DaemonProcess:
    """``python -m s2sfast run ARGS`` with its stdout and stderr collected line by line.

    ``--log-level info`` is added unless ARGS has a ``--log-level`` or *log_level* is None (then
    the configuration's ``[general] loglevel`` decides): the ready line is an info line.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, log_level: str | None = "info"
    ) -> None:
        if log_level is not None and "--log-level" not in args:
            args = (*args, "--log-level", log_level)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s2sfast", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=ROOT,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._collect, args=(self.proc.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.proc.stderr, self.stderr), daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self, stream, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.stderr)

    def out(self) -> str:
        with self._lock:
            return "\n".join(self.stdout)

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader threads finish
                match = regex.search(self.log())
                if match:
                    return match
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {pattern!r}:\n"
                    f"{self.log()}\n{self.out()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.log()}")

    def wait_ready(self) -> None:
        self.wait_for_log(re.escape(READY))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RawComponent:
    """A minimal XEP-0114 client over a raw socket; what the node sends is read with the framer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from s2sfast.framing import StreamFramer

        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer(default_ns=COMPONENT_NS)
        self.events: list[Any] = []
        self.raw = b""

    @classmethod
    async def connect(
        cls, port: int, domain: str, password: str | None
    ) -> tuple[RawComponent, Any]:
        """Open a stream for *domain* and (unless *password* is None) do the handshake.

        Returns the client and the node's answer: the handshake Stanza, or the stream error
        Stanza when the node refused.
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        writer.write(
            (
                "<stream:stream xmlns='jabber:component:accept' "
                f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
            ).encode()
        )
        opened = await self.next_event()
        if type(opened).__name__ != "StreamOpen":
            return self, opened
        error = self._pending_error()
        if error is not None or password is None:
            return self, error if error is not None else opened
        stream_id = dict(opened.attrs)["id"]
        writer.write(f"<handshake>{handshake_digest(stream_id, password)}</handshake>".encode())
        return self, await self.next_event()

    def _pending_error(self) -> Any:
        for event in self.events:
            if getattr(event, "name", None) in ("stream:error", "error"):
                return event
        return None

    async def next_event(self, timeout: float = 10.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.events:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"nothing from the node within {timeout} s: {self.raw!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            if not chunk:
                return None
            self.raw += chunk
            self.events.extend(self.framer.feed(chunk))
        return self.events.pop(0)

    async def next_stanza(self, timeout: float = 10.0) -> Any:
        event = await self.next_event(timeout)
        assert event is not None and type(event).__name__ == "Stanza", event
        return event

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def eof(self, timeout: float = 10.0) -> bytes:
        """Everything until the node closes the connection."""
        while True:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                return self.raw
            self.raw += chunk

    def close(self) -> None:
        self.writer.close()
