"""``s2sfast probe DOMAIN``: the federation check operators otherwise do by hand from logs.

It walks the path an outgoing S2S stream takes and prints one line per step with the exact
reason of any failure: DNS (every SRV record and address, in the order the node would try
them, ``_xmpps-server`` Direct TLS records mixed with ``_xmpp-server`` ones as XEP-0368 says),
TCP connect, TLS (STARTTLS after the first features, or Direct TLS from the first byte with SNI
and ALPN ``xmpp-server``: protocol, cipher, ALPN, the certificate's names and expiry, and the
RFC 6125 verdict), the stream header and features, SASL EXTERNAL (XEP-0178) when the peer offers
it and our certificate names the local domain, and dialback as the configured local domain.
The ``transport`` line (and ``"transport"`` in ``--json``) says which way the stream went:
"Direct TLS", "STARTTLS" or "plain TCP". Dialback needs the local domain's authoritative server,
i.e. a running node with the same ``[s2s] shared`` secret; without one the probe says how far it
got. An accepted SASL EXTERNAL proves federation without it (the peer trusts our certificate).

Exit status: 0 when federation would succeed, 1 when a step failed, 2 when everything tried
worked but dialback could not be tried (no configured secret), so success is not proven.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any

from s2sfast.config import Config, ConfigError, S2SOptions, load_config
from s2sfast.net.connect import failure_reason
from s2sfast.net.dns import ResolutionError, Resolver
from s2sfast.protocol.dialback import DIALBACK_FEATURE_NS, DIALBACK_NS, make_key, result_bytes
from s2sfast.protocol.errors import STREAM_NS, StreamError, parse_stream_error
from s2sfast.protocol.sasl import EXTERNAL, SASL_NS, auth_bytes, parse_sasl
from s2sfast.protocol.stream_limits import LIMITS_NS, parse_limits

__all__ = ["Step", "Probe", "add_probe_parser", "run", "main"]

TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
#: seconds to wait for each answer from the peer (header, features, proceed, dialback result)
DEFAULT_TIMEOUT = 15.0
EXIT_OK, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 2
#: the report's words for ``Probe.transport``
_TRANSPORT_NAMES = {
    "direct-tls": "Direct TLS (XEP-0368)",
    "starttls": "STARTTLS",
    "plain": "plain TCP",
}


@dataclass(slots=True, kw_only=True)
class Step:
    """One line of the report. *status*: ok, fail, info (a fact), skip (not tried)."""

    step: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        mark = {"ok": "ok", "fail": "FAIL", "info": "..", "skip": "skip"}[self.status]
        return f"[{mark:>4}] {self.step:<10} {self.detail}"


class _Failed(Exception):
    """A step failed; the probe stops there."""


class _Stream:
    """The probe's side of one S2S stream: asyncio streams plus the framer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer: Any = None
        self.events: list[Any] = []

    def restart(self) -> None:
        from s2sfast.framing import StreamFramer

        self.framer = StreamFramer()
        self.events = []

    async def next_event(self, timeout: float, waiting_for: str) -> Any:
        while not self.events:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except TimeoutError:
                raise _Failed(f"no {waiting_for} within {timeout:g} s") from None
            except (ssl.SSLError, OSError) as exc:
                raise _Failed(f"connection failed while waiting for {waiting_for}: {exc}") from None
            if not chunk:
                raise _Failed(f"the peer closed the connection before {waiting_for}")
            try:
                self.events.extend(self.framer.feed(chunk))
            except StreamError as exc:
                raise _Failed(f"the peer sent bad XML ({exc.condition}: {exc.text})") from None
        event = self.events.pop(0)
        name = type(event).__name__
        if name == "StreamClose":
            raise _Failed(f"the peer closed its stream before {waiting_for}")
        if name == "Stanza" and event.name == "error" and event.ns == STREAM_NS:
            raise _Failed(f"stream error from the peer: {_stream_error_text(event.raw)}")
        return event


def _stream_error_text(raw: bytes) -> str:
    parsed = parse_stream_error(raw)
    if parsed is None:
        return raw.decode("utf-8", "replace")
    condition, text = parsed
    return condition + (f" ({text})" if text else "")


def _header(local: str, domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        f"xmlns:stream='{STREAM_NS}' xmlns:db='{DIALBACK_NS}' "
        f"from='{local}' to='{domain}' version='1.0'>"
    ).encode()


def _features(raw: bytes) -> dict[str, Any]:
    from lxml import etree

    element = etree.fromstring(b"<w xmlns:stream='" + STREAM_NS.encode() + b"'>" + raw + b"</w>")[0]
    out: dict[str, Any] = {"starttls": False, "starttls_required": False, "dialback": False}
    names = []
    for child in element:
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        names.append(f"{qname.localname} ({qname.namespace})")
        if qname.namespace == TLS_NS and qname.localname == "starttls":
            out["starttls"] = True
            out["starttls_required"] = any(etree.QName(c).localname == "required" for c in child)
        elif qname.namespace == DIALBACK_FEATURE_NS:
            out["dialback"] = True
        elif qname.namespace == SASL_NS and qname.localname == "mechanisms":
            out["external"] = any((m.text or "").strip().upper() == EXTERNAL for m in child)
        elif qname.namespace == LIMITS_NS and qname.localname == "limits":
            limits = parse_limits(child)  # XEP-0478: what the peer accepts
            if limits is not None:
                names[-1] += f" max-bytes={limits.max_bytes} idle-seconds={limits.idle_seconds}"
    out["offered"] = names
    return out


class Probe:
    """One probe run. *config* None: defaults, STARTTLS used when offered, no dialback.

    Args:
        domain: the remote XMPP domain.
        local: the local domain we speak as (``from``).
        config: the local node's configuration (its ``[s2s]`` for *local*), or None.
        nameservers: DNS servers to ask (None: the system's).
        timeout: seconds for each answer from the peer.
    """

    def __init__(
        self,
        domain: str,
        *,
        local: str,
        config: Config | None,
        nameservers: list[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.domain = domain.lower()
        self.local = local.lower()
        self.config = config
        self.s2s: S2SOptions = config.s2s_for(self.local) if config else S2SOptions()
        #: how TLS is judged: the configured mode; without a config, use it when offered
        self.mode = self.s2s.use_starttls if config else "optional"
        self.cafile = config.listen_s2s[0].tls.cacertfile if config and config.listen_s2s else None
        self.nameservers = nameservers
        self.timeout = timeout
        self.steps: list[Step] = []
        #: "direct-tls", "starttls" or "plain" once known (None: no connection was made)
        self.transport: str | None = None

    def _add(self, step: str, status: str, detail: str, **data: Any) -> Step:
        entry = Step(step=step, status=status, detail=detail, data=data)
        self.steps.append(entry)
        return entry

    async def run(self) -> int:
        """Run every step; returns the exit status (see the module docstring)."""
        try:
            stream = await self._connect(await self._resolve())
            try:
                code = await self._negotiate(stream)
            finally:
                stream.writer.close()
        except _Failed as exc:
            self._add(self._current, "fail", str(exc))
            code = EXIT_FAILED
        if self.transport is not None:
            name = _TRANSPORT_NAMES[self.transport]
            self._add("transport", "info", name, transport=self.transport)
        return code

    # --- steps ---------------------------------------------------------------------------------

    _current = "resolve"

    async def _resolve(self) -> list[Any]:
        self._current = "resolve"
        resolver = Resolver.from_options(self.s2s.dns, self.nameservers)
        try:
            # as the node would; without --config TLS is used when offered (Direct TLS too)
            s2s = dataclasses.replace(self.s2s, use_starttls=self.mode)
            candidates = await resolver.resolve(self.domain, s2s)
        except ResolutionError as exc:
            raise _Failed(f"{self.domain}: {exc.reason}") from None
        finally:
            await resolver.close()
        self._add(
            "resolve",
            "ok",
            f"{self.domain}: {len(candidates)} address(es) to try, in this order",
            candidates=[str(c) for c in candidates],
        )
        for index, candidate in enumerate(candidates, 1):
            self._add("resolve", "info", f"#{index} {candidate}")
        return candidates

    async def _connect(self, candidates: list[Any]) -> _Stream:
        """TCP to the first candidate that accepts (as the node does); a Direct TLS one then
        goes straight into its TLS handshake (a failure there is final, as in the node)."""
        self._current = "connect"
        timeout_ms = self.s2s.outgoing.connection_timeout
        timeout = None if timeout_ms is None else timeout_ms / 1000
        reasons = []
        for candidate in candidates:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(candidate.ip, candidate.port), timeout
                )
            except OSError as exc:
                reason = failure_reason(exc)
                detail = (
                    f"no answer within {timeout_ms} ms"
                    if reason == "timeout"
                    else exc.strerror or str(exc) or type(exc).__name__
                )
                self._add("connect", "info", f"{candidate}: {reason} ({detail})")
                reasons.append(f"{candidate.ip}:{candidate.port} {reason}")
                continue
            self._add("connect", "ok", f"connected to {candidate}", transport=candidate.transport)
            stream = _Stream(reader, writer)
            if candidate.direct_tls:
                self.transport = "direct-tls"
                try:
                    await self._tls(stream, direct=True)
                except BaseException:
                    writer.close()
                    raise
            return stream
        raise _Failed(f"no address accepted a connection: {'; '.join(reasons)}")

    async def _open(self, stream: _Stream) -> tuple[str, dict[str, Any]]:
        self._current = "stream"
        stream.restart()
        stream.writer.write(_header(self.local, self.domain))
        opened = await stream.next_event(self.timeout, "the stream header")
        if type(opened).__name__ != "StreamOpen":
            raise _Failed(f"expected the stream header, got {opened!r}")
        attrs = dict(opened.attrs)
        stream_id = attrs.get("id") or ""
        if attrs.get("version", "").split(".")[0] != "1":
            raise _Failed(f"the peer speaks XMPP version {attrs.get('version')!r}, not 1.x")
        features = await stream.next_event(self.timeout, "stream features")
        if getattr(features, "name", None) != "features" or features.ns != STREAM_NS:
            raise _Failed(f"expected <stream:features/>, got {features!r}")
        feats = _features(features.raw)
        self._add(
            "stream",
            "ok",
            f"from={attrs.get('from')!r} id={stream_id!r}; features: "
            + (", ".join(feats["offered"]) or "none"),
            stream_id=stream_id,
            features=feats["offered"],
        )
        return stream_id, feats

    async def _negotiate(self, stream: _Stream) -> int:
        stream_id, feats = await self._open(stream)
        self._current = "tls"
        if self.transport == "direct-tls":
            pass  # TLS is up already: a <starttls/> offered now is not taken up
        elif feats["starttls"] and self.mode != "false":
            await self._starttls(stream)
            stream_id, feats = await self._open(stream)
        elif feats["starttls_required"]:
            raise _Failed('the peer requires STARTTLS but s2s.use_starttls is "false"')
        elif self.mode in ("required", "required_trusted"):
            raise _Failed(f"the peer does not offer STARTTLS; use_starttls is {self.mode!r}")
        else:
            self.transport = "plain"
            self._add("tls", "info", "not used (plain TCP)")
        if self.transport != "plain":
            code = await self._sasl_external(stream, feats)
            if code is not None:
                return code
        return await self._dialback(stream, stream_id)

    async def _sasl_external(self, stream: _Stream, feats: dict[str, Any]) -> int | None:
        """SASL EXTERNAL as the local domain when offered and our certificate can prove it:
        EXIT_OK once accepted (the restarted stream opens); None: dialback goes on."""
        from s2sfast.net.peercert import own_certificate_problem

        self._current = "sasl"
        if not feats.get("external"):
            self._add(
                "sasl",
                "info",
                f"SASL EXTERNAL not offered ({self.domain} does not trust our certificate for "
                f"{self.local}, or does not do it)",
            )
            return None
        if self.config is None or not self.s2s.sasl_external:
            problem = "no --config" if self.config is None else "[s2s] sasl_external is off"
        else:
            problem = own_certificate_problem(self.s2s.certfile, self.local)
        if problem is not None:
            self._add("sasl", "skip", f"SASL EXTERNAL offered, not tried: {problem}")
            return None
        stream.writer.write(auth_bytes(self.local))
        answer = await stream.next_event(self.timeout, "the SASL EXTERNAL outcome")
        if getattr(answer, "name", None) == "success" and answer.ns == SASL_NS:
            self._add(
                "sasl",
                "ok",
                f"SASL EXTERNAL as {self.local} accepted: {self.domain} trusts our certificate",
                method="sasl-external",
            )
            await self._open(stream)  # the stream restarts after <success/>
            stream.writer.write(b"</stream:stream>")
            return EXIT_OK
        why = parse_sasl(answer.raw).condition or answer.raw.decode("utf-8", "replace")
        self._add("sasl", "info", f"SASL EXTERNAL as {self.local} refused ({why}); dialback next")
        return None

    async def _starttls(self, stream: _Stream) -> None:
        self._current = "tls"
        stream.writer.write(f"<starttls xmlns='{TLS_NS}'/>".encode())
        answer = await stream.next_event(self.timeout, "<proceed/>")
        if getattr(answer, "name", None) != "proceed":
            raise _Failed(f"STARTTLS refused: {answer.raw.decode('utf-8', 'replace')}")
        self.transport = "starttls"
        await self._tls(stream, direct=False)

    async def _tls(self, stream: _Stream, *, direct: bool) -> None:
        """The TLS handshake on *stream* (SNI = the domain, ALPN xmpp-server) and its verdict."""
        self._current = "tls"
        from s2sfast.net.tls import make_client_context, peer_chain, verify_peer

        # we judge the certificate ourselves (RFC 6125) so that the report can say why
        ctx = make_client_context(dataclasses.replace(self.s2s, use_starttls="optional"))
        assert ctx is not None
        try:
            await asyncio.wait_for(
                stream.writer.start_tls(ctx, server_hostname=self.domain), self.timeout
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            what = "Direct TLS handshake" if direct else "TLS handshake"
            raise _Failed(f"{what} failed: {exc or type(exc).__name__}") from None
        sslobj = stream.writer.get_extra_info("ssl_object")
        version, cipher = sslobj.version(), sslobj.cipher()[0]
        alpn = sslobj.selected_alpn_protocol()
        chain = peer_chain(sslobj)
        status = verify_peer(chain, self.domain, cafile=self.cafile)
        shown = status.names.describe()
        expiry = status.not_after.strftime("%Y-%m-%d") if status.not_after else "?"
        verdict = (
            "trusted and names " + self.domain
            if status.ok
            else f"NOT acceptable for {self.domain}: {status.reason}"
        )
        self._add(
            "tls",
            "ok" if status.ok or self.mode != "required_trusted" else "fail",
            f"{'Direct TLS' if direct else 'STARTTLS'}: {version} {cipher}"
            f"{f', ALPN {alpn}' if alpn else ''}; certificate {shown}, {len(chain)} in chain, "
            f"expires {expiry}; {verdict}",
            transport="direct-tls" if direct else "starttls",
            alpn=alpn,
            version=version,
            cipher=cipher,
            trusted=status.trusted,
            name_matches=status.name_matches,
            reason=status.reason,
        )
        if self.mode == "required_trusted" and not status.ok:
            self._current = "tls"
            raise _Failed(f'use_starttls = "required_trusted" refuses this peer: {status.reason}')

    async def _dialback(self, stream: _Stream, stream_id: str) -> int:
        self._current = "dialback"
        if self.config is None or getattr(self.config, "shared_generated", True):
            why = (
                "no --config"
                if self.config is None
                else "[s2s] shared is not set, so no running node's key can be made"
            )
            self._add(
                "dialback", "skip", f"not tried ({why}); federation is not proven past this point"
            )
            stream.writer.write(b"</stream:stream>")
            return EXIT_INCOMPLETE
        key = make_key(self.s2s.shared, self.domain, self.local, stream_id)
        stream.writer.write(result_bytes(from_=self.local, to=self.domain, key=key))
        while True:
            event = await stream.next_event(
                self.timeout, f"the dialback result (the peer asks {self.local}'s node)"
            )
            if getattr(event, "name", None) == "result" and event.ns == DIALBACK_NS:
                break
        verdict = event.type or "?"
        if verdict != "valid":
            raise _Failed(
                f"{self.domain} answered type={verdict!r}: " + event.raw.decode("utf-8", "replace")
            )
        self._add("dialback", "ok", f"{self.local} -> {self.domain} authenticated (valid)")
        stream.writer.write(b"</stream:stream>")
        return EXIT_OK


# --- the command ---------------------------------------------------------------------------


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``s2sfast probe`` on the ``s2sfast`` command's subparsers."""
    parser = subparsers.add_parser(
        "probe",
        help="check federation with DOMAIN step by step",
        description="Resolve DOMAIN, connect, show its stream features, negotiate TLS and "
        "judge its certificate, and run dialback as the local domain (needs a running node "
        "with the configured [s2s] shared). Exit 0: federation works; 1: a step failed; "
        "2: every step tried worked but dialback could not be tried.",
    )
    _arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--config", metavar="FILE", help="the local node's mongooseim.toml")
    parser.add_argument("--from", dest="local", metavar="LOCAL", help="local domain to speak as")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--nameserver",
        action="append",
        metavar="IP[:PORT]",
        help="DNS server to ask instead of the system's (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )


async def run(args: argparse.Namespace) -> int:
    """``s2sfast probe``: print the report, return the exit status."""
    config = None
    if args.config:
        try:
            config = load_config(args.config)
        except (ConfigError, OSError) as exc:
            print(f"s2sfast: invalid configuration: {exc}", file=sys.stderr)
            return EXIT_FAILED
    local = args.local or (config.hosts[0] if config else "localhost")
    if config is not None and local.lower() not in {h.lower() for h in config.hosts}:
        if not any(local.lower().endswith("." + h.lower()) for h in config.hosts):
            print(f"s2sfast probe: {local} is not a host of {args.config}", file=sys.stderr)
            return EXIT_FAILED
    probe = Probe(
        args.domain,
        local=local,
        config=config,
        nameservers=args.nameserver,
        timeout=args.timeout,
    )
    code = await probe.run()
    verdict = {EXIT_OK: "success", EXIT_FAILED: "failure", EXIT_INCOMPLETE: "incomplete"}[code]
    if args.json:
        doc = {
            "domain": probe.domain,
            "from": probe.local,
            "result": verdict,
            "ok": code == EXIT_OK,
            "transport": probe.transport,
            "steps": [dataclasses.asdict(s) for s in probe.steps],
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for step in probe.steps:
            print(step.line())
        print(f"federation {probe.local} -> {probe.domain}: {verdict}")
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m s2sfast.server.probe DOMAIN ...`` (the same as ``s2sfast probe``)."""
    parser = argparse.ArgumentParser(prog="s2sfast probe")
    _arguments(parser)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
