"""Where to connect for a remote XMPP domain: address overrides, SRV (RFC 2782), A/AAAA fallback.

The outgoing side asks :meth:`Resolver.resolve` for a domain and gets an ordered list of
:class:`Candidate` addresses to try (see :mod:`s2sfast.net.connect`), or a typed
:class:`ResolutionError` whose ``condition`` is the RFC 6120 stanza-error condition to bounce with.
Each candidate says whether it speaks Direct TLS (XEP-0368: TLS from the first byte) or plain TCP
with STARTTLS.

Order of business (RFC 6120 section 3.2, XEP-0368, RFC 2782 section "Usage rules"):

1. an ``[s2s] address`` entry for the domain bypasses DNS entirely (``tls = true`` on it means
   the address speaks Direct TLS, as in MongooseIM 6.4);
2. ``_xmpp-server._tcp.<domain>`` SRV records and, when the local host may use TLS at all
   (``use_starttls`` is not "false"), ``_xmpps-server._tcp.<domain>`` (Direct TLS) records, asked
   at once and ordered as ONE record set (XEP-0368 section 3: priorities and weights mixed), by
   priority and then weighted-random; each target's A/AAAA in ``outgoing.ip_versions`` order (glue
   from the additional section is used when present); a single record with target "." means "no
   service here" (for ``_xmpps-server``: no Direct TLS, the ``_xmpp-server`` records still
   apply, but XEP-0368 forbids the A/AAAA fallback: the domain has said it uses SRV);
3. when neither name has any SRV record (NXDOMAIN or an empty answer): the domain's own
   A/AAAA on ``outgoing.port``, with STARTTLS. A timed-out or failed SRV query is not "no SRV
   record", so it does not fall back: that could connect to the wrong host while the DNS is merely
   slow. When one of the two names answers with records and the other fails, the records are
   used (the failure is logged).

Each query is bounded by ``dns.timeout`` seconds and tried ``dns.retries`` times, and a silent
server sees exactly ``retries`` packets per question. For that every attempt uses a fresh c-ares
channel (about half a millisecond; S2S resolves once per connection, not per stanza): a long-lived
channel adapts its timeout to past latency, down to 250 ms, and would then give up on a slow but
working recursive resolver long before ``dns.timeout``; and closing the channel is the only way
to cancel one abandoned query without cancelling everyone else's. There is no cache here: the
system's resolver caches, and tests see every query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import aiodns
import aiodns.error
import pycares

from s2sfast.config import AddressOverride, DnsOptions, S2SOptions

__all__ = [
    "SRV_PREFIX",
    "XMPPS_SRV_PREFIX",
    "DEFAULT_MAX_CONCURRENT_QUERIES",
    "Candidate",
    "SrvRecord",
    "Resolver",
    "ResolutionError",
    "DomainNotFound",
    "NoXmppService",
    "DnsTimeout",
    "DnsFailure",
    "order_srv",
]

log = logging.getLogger("s2sfast.dns")

#: RFC 6120 section 3.2.1: the service name for server-to-server connections.
SRV_PREFIX = "_xmpp-server._tcp."
#: XEP-0368 section 3: the service name for server-to-server Direct TLS (TLS from the first byte).
XMPPS_SRV_PREFIX = "_xmpps-server._tcp."

Source = Literal["address", "srv", "fallback"]

_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_QTYPE = {socket.AF_INET: "A", socket.AF_INET6: "AAAA"}
_RECORD_TYPE = {"A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA}
#: c-ares's per-query timeout relative to ours: longer, so our own bound decides
_CARES_TIMEOUT_FACTOR = 1.5
#: DNS queries in flight per resolver. Each holds a c-ares channel with its own event thread,
#: two pipe fds and an inotify instance (Linux allows 128 per user by default); a node restarting
#: with thousands of peers must not open thousands at once. 16 lookups of a few milliseconds
#: each still resolve a thousand domains in seconds. Waiting for a slot does not count against
#: ``dns.timeout``.
DEFAULT_MAX_CONCURRENT_QUERIES = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One address to try, in the order :meth:`Resolver.resolve` returned it.

    Attributes:
        ip: an IPv4 or IPv6 literal.
        port: TCP port.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        host: the name it came from (SRV target, the domain itself, or the override's IP).
        source: "address" (``[s2s] address`` override), "srv", or "fallback" (domain's A/AAAA).
        direct_tls: True when the address speaks Direct TLS (XEP-0368: an ``_xmpps-server``
            record, or an override with ``tls = true``): TLS starts with the first byte, with
            SNI and ALPN ``xmpp-server``, and there is no STARTTLS step.
    """

    ip: str
    port: int
    family: int
    host: str
    source: Source
    direct_tls: bool = False

    @property
    def transport(self) -> str:
        """ "Direct TLS" or "STARTTLS" (the plain TCP start; STARTTLS may or may not follow)."""
        return "Direct TLS" if self.direct_tls else "STARTTLS"

    def __str__(self) -> str:
        ip = f"[{self.ip}]" if self.family == socket.AF_INET6 else self.ip
        tls = ", Direct TLS" if self.direct_tls else ""
        return f"{self.host} {ip}:{self.port} ({self.source}{tls})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvRecord:
    """One SRV record's data; ``target`` has no trailing dot, and "." (no service) is ``""``.

    ``direct_tls``: it came from ``_xmpps-server._tcp`` (XEP-0368) rather than ``_xmpp-server``.
    """

    priority: int
    weight: int
    port: int
    target: str
    direct_tls: bool = False


class ResolutionError(Exception):
    """The domain cannot be reached through DNS; ``str(err)`` is a one-line human reason.

    Attributes:
        domain: the remote domain that was being resolved.
        reason: the one-line explanation (also the exception's message).
        condition: the RFC 6120 stanza-error condition to bounce stanzas with.
        temporary: True when retrying later may succeed (time-outs, server failures).
    """

    condition: ClassVar[str] = "remote-server-not-found"
    temporary: ClassVar[bool] = False

    def __init__(self, domain: str, reason: str) -> None:
        self.domain = domain
        self.reason = reason
        super().__init__(reason)


class DomainNotFound(ResolutionError):
    """NXDOMAIN, or no address records for the domain (or for any of its SRV targets)."""


class NoXmppService(ResolutionError):
    """The SRV answer is the single target "." (RFC 2782): the domain offers no S2S service."""


class DnsTimeout(ResolutionError):
    """The nameservers did not answer within ``dns.timeout`` seconds, ``dns.retries`` times."""

    condition = "remote-server-timeout"
    temporary = True


class DnsFailure(ResolutionError):
    """The nameservers answered with an error (SERVFAIL, REFUSED, a malformed answer...)."""

    temporary = True


def _norm(domain: str) -> str:
    return domain.rstrip(".").lower()


def _ip_family(text: str) -> int | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """Order SRV records as RFC 2782 says: priority ascending, weighted-random within one.

    Within a priority, repeatedly: arrange the remaining records in random order with the
    weight-0 ones first, draw an integer uniformly from 0 to the sum of their weights
    (inclusive), take the first record whose running weight sum reaches it. Weight-0 records
    thus come first only with a small chance when others have weight, and uniformly at random
    when all weights are 0.

    Args:
        records: the SRV answer (targets "." already removed).
        rng: the random source (inject a seeded ``random.Random`` in tests).
    Returns:
        A new list, in the order to try.
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            rng.shuffle(group)  # RFC 2782: "in any order"; random keeps zero weights fair
            group.sort(key=lambda r: r.weight != 0)  # stable: weight-0 records first
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    ordered.append(group.pop(i))
                    break
    return ordered


class _QueryTimeout(Exception):
    pass


class _QueryFailed(Exception):
    pass


class _BadName(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Answer:
    """A query's outcome: values (SrvRecord or IP strings), or why there are none.

    ``glue`` holds the additional section's addresses as (name, qtype, ip).
    """

    values: list
    glue: list[tuple[str, str, str]]
    status: Literal["ok", "nxdomain", "nodata"]


class Resolver:
    """Resolves remote XMPP domains to connection candidates with aiodns (c-ares).

    One instance per node; it creates its c-ares channel on first use in the running loop.

    Args:
        nameservers: ``"ip"`` / ``"ip:port"`` / ``"[ipv6]:port"`` strings; None uses the
            system's resolver configuration (tests always pass a loopback server).
        timeout: seconds each query attempt may take (``dns.timeout``).
        retries: attempts per query (``dns.retries``), at least 1.
        rng: random source for SRV weight selection (seed it in tests).
        max_concurrent: DNS queries in flight at once (more wait for a slot).
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        timeout: float = 10,
        retries: int = 2,
        rng: random.Random | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_QUERIES,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"dns timeout must be positive, got {timeout!r}")
        if retries < 1:
            raise ValueError(f"dns retries must be at least 1, got {retries!r}")
        self.nameservers = list(nameservers) if nameservers is not None else None
        self.timeout = float(timeout)
        self.retries = retries
        self.rng = rng or random.Random()
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent!r}")
        self._slots = asyncio.Semaphore(max_concurrent)
        #: c-ares channels of the queries in flight (one per attempt)
        self._open: set[aiodns.DNSResolver] = set()

    @classmethod
    def from_options(
        cls,
        dns: DnsOptions,
        nameservers: Sequence[str] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> Resolver:
        """A resolver configured by ``[s2s] dns`` (``timeout``, ``retries``)."""
        return cls(nameservers, timeout=dns.timeout, retries=dns.retries, rng=rng)

    async def close(self) -> None:
        """Cancel the queries in flight and release their c-ares channels."""
        for channel in list(self._open):
            self._open.discard(channel)
            await channel.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public ------------------------------------------------------------------------------

    async def resolve(self, domain: str, s2s: S2SOptions) -> list[Candidate]:
        """Candidates to connect to for *domain*, in the order to try them.

        Args:
            domain: the remote XMPP domain.
            s2s: the effective ``[s2s]`` options of the local host that connects
                (``address`` overrides, ``outgoing.port``, ``outgoing.ip_versions``).
        Returns:
            A non-empty list of distinct candidates.
        Raises:
            DomainNotFound, NoXmppService, DnsTimeout, DnsFailure (all ResolutionError).
        """
        domain = _norm(domain)
        for override in s2s.address:
            if _norm(override.host) == domain:
                return [self._override(domain, override, s2s)]
        families = [_FAMILY[v] for v in s2s.outgoing.ip_versions]
        literal = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
        family = _ip_family(literal)
        if family is not None:  # an IP-literal domain (RFC 6120 allows them): nothing to look up
            if family not in families:
                raise DomainNotFound(domain, f"{domain} is an address of a disabled IP version")
            port = s2s.outgoing.port
            return [
                Candidate(ip=literal, port=port, family=family, host=literal, source="fallback")
            ]
        names = [SRV_PREFIX + domain]
        if s2s.use_starttls != "false":  # no TLS at all: Direct TLS records are of no use
            names.append(XMPPS_SRV_PREFIX + domain)
        answers = await asyncio.gather(*(self._srv(domain, n) for n in names))
        plain = answers[0]
        tls = answers[1] if len(answers) > 1 else None
        usable = [r for a in answers if isinstance(a, _Answer) for r in a.values if r.target]
        if usable:
            for answer in answers:
                if isinstance(answer, ResolutionError):
                    log.warning("%s: %s; using the other SRV records", domain, answer.reason)
            return await self._from_srv(domain, usable, answers, families)
        # no usable record: a failure of either query is the answer (a slow DNS is no reason to
        # fall back to A/AAAA), then "." for _xmpp-server (no service), else A/AAAA
        for answer in (plain, tls):
            if isinstance(answer, ResolutionError):
                raise answer
        if plain.status == "ok":  # only "." records
            raise NoXmppService(
                domain,
                f"{SRV_PREFIX}{domain} has target '.': {domain} offers no XMPP S2S service",
            )
        if tls is not None and tls.status == "ok":
            # XEP-0368 section 5: "." for _xmpps-server says the domain uses SRV, so there is
            # no A/AAAA fallback; without an _xmpp-server record there is nothing to try
            raise NoXmppService(
                domain,
                f"{XMPPS_SRV_PREFIX}{domain} has target '.' (no Direct TLS) and there is no "
                f"{SRV_PREFIX}{domain} record: {domain} offers no XMPP S2S service",
            )
        return await self._fallback(domain, plain, families, s2s.outgoing.port)

    async def _srv(self, domain: str, name: str) -> _Answer | ResolutionError:
        """One SRV question, its records tagged Direct TLS or not, or the error it ends in."""
        try:
            answer = await self._query(name, "SRV")
        except _BadName:
            return DomainNotFound(domain, f"{domain!r} is not a valid DNS name")
        except _QueryTimeout:
            return DnsTimeout(domain, f"DNS timeout for {name} ({self._budget()})")
        except _QueryFailed as e:
            return DnsFailure(domain, f"DNS failure for {name}: {e}")
        if name.startswith(XMPPS_SRV_PREFIX):
            values = [replace(r, direct_tls=True) for r in answer.values]
            return _Answer(values, answer.glue, answer.status)
        return answer

    # -- the three ways ----------------------------------------------------------------------

    def _override(self, domain: str, override: AddressOverride, s2s: S2SOptions) -> Candidate:
        family = _ip_family(override.ip_address)
        if family is None:
            raise DomainNotFound(
                domain, f"[s2s] address for {domain}: {override.ip_address!r} is not an IP address"
            )
        candidate = Candidate(
            ip=override.ip_address,
            port=override.port if override.port is not None else s2s.outgoing.port,
            family=family,
            host=override.ip_address,
            source="address",
            direct_tls=override.tls,
        )
        log.debug("%s: [s2s] address override -> %s", domain, candidate)
        return candidate

    async def _from_srv(
        self,
        domain: str,
        usable: list[SrvRecord],
        answers: Sequence[_Answer | ResolutionError],
        families: list[int],
    ) -> list[Candidate]:
        ordered = order_srv(usable, self.rng)
        glue: dict[tuple[str, str], list[str]] = {}
        for answer in answers:
            if isinstance(answer, _Answer):
                for name, qtype, ip in answer.glue:
                    glue.setdefault((name, qtype), []).append(ip)
        targets = list(dict.fromkeys(r.target for r in ordered))
        results = await asyncio.gather(*(self._addresses(t, families, glue) for t in targets))
        by_target = dict(zip(targets, results, strict=True))
        candidates: list[Candidate] = []
        problems: list[str] = []
        timed_out = failed = False
        for rec in ordered:
            addrs, problem, t_out, fail = by_target[rec.target]
            timed_out |= t_out
            failed |= fail
            if problem and problem not in problems:
                problems.append(problem)
            candidates += [
                Candidate(
                    ip=ip,
                    port=rec.port,
                    family=fam,
                    host=rec.target,
                    source="srv",
                    direct_tls=rec.direct_tls,
                )
                for fam, ip in addrs
            ]
        candidates = _dedupe(candidates)
        if candidates:
            log.debug("%s: SRV -> %s", domain, ", ".join(map(str, candidates)))
            return candidates
        reason = f"no usable address for the SRV targets of {domain}: " + "; ".join(problems)
        if timed_out:
            raise DnsTimeout(domain, reason)
        if failed:
            raise DnsFailure(domain, reason)
        raise DomainNotFound(domain, reason)

    async def _fallback(
        self, domain: str, srv: _Answer, families: list[int], port: int
    ) -> list[Candidate]:
        addrs, problem, timed_out, failed = await self._addresses(domain, families, {})
        if addrs:
            candidates = _dedupe(
                [
                    Candidate(ip=ip, port=port, family=fam, host=domain, source="fallback")
                    for fam, ip in addrs
                ]
            )
            log.debug("%s: no SRV, A/AAAA -> %s", domain, ", ".join(map(str, candidates)))
            return candidates
        srv_name = SRV_PREFIX + domain
        if timed_out:
            raise DnsTimeout(domain, f"no SRV for {srv_name}, and {problem}")
        if failed:
            raise DnsFailure(domain, f"no SRV for {srv_name}, and {problem}")
        if srv.status == "nxdomain" and problem.startswith("NXDOMAIN"):
            raise DomainNotFound(domain, f"NXDOMAIN for {srv_name} and {domain}")
        raise DomainNotFound(domain, f"no SRV record for {srv_name}, and {problem}")

    async def _addresses(
        self, host: str, families: list[int], glue: dict[tuple[str, str], list[str]]
    ) -> tuple[list[tuple[int, str]], str, bool, bool]:
        """Addresses of *host* in *families* order, plus why there are none.

        Returns:
            (addresses as (family, ip), problem text or "", any query timed out, any failed).
        """
        literal = _ip_family(host)
        if literal is not None:  # an IP literal as SRV target: not RFC, but seen in the wild
            if literal in families:
                return [(literal, host)], "", False, False
            return [], f"{host} is an IP literal of a disabled IP version", False, False
        qtypes = [_QTYPE[f] for f in families]
        results = await asyncio.gather(
            *(self._lookup(host, q, glue.get((host, q))) for q in qtypes),
            return_exceptions=True,
        )
        addrs: list[tuple[int, str]] = []
        notes: list[str] = []
        timed_out = failed = False
        for family, qtype, res in zip(families, qtypes, results, strict=True):
            if isinstance(res, _QueryTimeout):
                timed_out = True
                notes.append(f"DNS timeout for {qtype} ({self._budget()})")
            elif isinstance(res, _QueryFailed):
                failed = True
                notes.append(f"DNS failure for {qtype}: {res}")
            elif isinstance(res, _BadName):
                notes.append("not a valid DNS name")
                break
            elif isinstance(res, BaseException):
                raise res
            elif res.status == "ok":
                addrs += [(family, ip) for ip in res.values]
            else:
                notes.append(f"NXDOMAIN for {qtype}" if res.status == "nxdomain" else f"no {qtype}")
        if addrs:
            return addrs, "", timed_out, failed
        if all(isinstance(r, _Answer) and r.status == "nxdomain" for r in results):
            return [], f"NXDOMAIN for {host}", False, False
        return [], f"{host}: " + ", ".join(notes), timed_out, failed

    async def _lookup(self, host: str, qtype: str, glued: list[str] | None) -> _Answer:
        if glued:
            return _Answer(glued, [], "ok")
        return await self._query(host, qtype)

    # -- one query, with retries -------------------------------------------------------------

    def _budget(self) -> str:
        return f"{self.retries} attempt(s) of {self.timeout:g} s"

    async def _query(self, name: str, qtype: str) -> _Answer:
        """One DNS question, ``retries`` attempts of ``timeout`` seconds each.

        Raises:
            _QueryTimeout: every attempt timed out.
            _QueryFailed: the server answered with an error (message says which).
            _BadName: *name* cannot be a DNS name (nothing was sent).
        """
        code = pycares.QUERY_TYPE_SRV if qtype == "SRV" else _RECORD_TYPE[qtype]
        for attempt in range(1, self.retries + 1):
            # a fresh channel per attempt: c-ares has no latency history, so it waits exactly
            # its configured timeout (see module doc), and closing it cancels an abandoned query
            async with self._slots:
                answer = await self._attempt(name, qtype, code)
            if answer is not None:
                return answer
            log.debug("DNS %s %s: attempt %d/%d timed out", name, qtype, attempt, self.retries)
        raise _QueryTimeout()

    async def _attempt(self, name: str, qtype: str, code: int) -> _Answer | None:
        """One attempt on its own c-ares channel; None when it timed out."""
        channel = aiodns.DNSResolver(
            nameservers=self.nameservers,
            loop=asyncio.get_running_loop(),
            timeout=self.timeout * _CARES_TIMEOUT_FACTOR,
            tries=1,
        )
        self._open.add(channel)
        try:
            async with asyncio.timeout(self.timeout):
                result = await channel.query_dns(name, qtype)
        except TimeoutError:
            return None
        except aiodns.error.DNSError as e:
            errno = e.args[0] if e.args else None
            if errno == aiodns.error.ARES_ENOTFOUND:
                return _Answer([], [], "nxdomain")
            if errno == aiodns.error.ARES_ENODATA:
                return _Answer([], [], "nodata")
            if errno == aiodns.error.ARES_ETIMEOUT:
                return None
            if errno == aiodns.error.ARES_EBADNAME:
                raise _BadName() from None
            detail = e.args[1] if len(e.args) > 1 else str(e)
            raise _QueryFailed(detail) from None
        finally:
            self._open.discard(channel)
            await channel.close()
        return _parse(result, code)


def _parse(result: pycares.DNSResult, code: int) -> _Answer:
    values: list = []
    for rr in result.answer:
        if rr.type != code:  # e.g. the CNAME records leading to the answer
            continue
        if code == pycares.QUERY_TYPE_SRV:
            d = rr.data
            values.append(
                SrvRecord(priority=d.priority, weight=d.weight, port=d.port, target=_norm(d.target))
            )
        else:
            values.append(rr.data.addr)
    if not values:
        return _Answer([], [], "nodata")
    glue = [
        (_norm(rr.name), qtype, rr.data.addr)
        for rr in result.additional
        for qtype, qcode in _RECORD_TYPE.items()
        if rr.type == qcode
    ]
    return _Answer(values, glue, "ok")


def _dedupe(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[tuple[str, int, bool]] = set()
    out = []
    for c in candidates:
        key = (c.ip, c.port, c.direct_tls)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
