"""Federation policy: may we talk to a remote domain at all?

MongooseIM's ``[s2s] default_policy`` and ``host_policy``: a ``host_policy`` entry for the exact
remote domain decides, else the default does. It applies to both directions, before any dialback
work (a denied domain costs us no DNS lookup, no connection and no key computation).

Domains compare as DNS names do: case-insensitively, ignoring one trailing dot, and with Unicode
labels taken in their ASCII (IDNA) form, so ``Example.COM.`` and ``example.com`` are the same
entry. There is no wildcard or parent-domain matching: ``host = "example.com"`` does not cover
``muc.example.com``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from s2sfast.protocol.jid import normalize_domain

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from s2sfast.config import S2SOptions

__all__ = ["Policy", "normalize_domain"]

Decision = Literal["allow", "deny"]
_DECISIONS = ("allow", "deny")


class Policy:
    """An immutable allow/deny decision per remote domain.

    Build it with :meth:`from_options` (or the constructor for tests), then ask :meth:`allows`.
    """

    __slots__ = ("_default", "_hosts")

    _default: Decision
    _hosts: Mapping[str, Decision]

    def __init__(
        self,
        default: Decision = "allow",
        hosts: Iterable[tuple[str, Decision]] | Mapping[str, Decision] = (),
    ) -> None:
        """
        Args:
            default: the decision for domains without an entry.
            hosts: ``(domain, decision)`` pairs (or a mapping); a later entry for the same
                domain replaces an earlier one.

        Raises:
            ValueError: a decision is neither "allow" nor "deny".
        """
        if default not in _DECISIONS:
            raise ValueError(f"default policy must be 'allow' or 'deny', not {default!r}")
        items = hosts.items() if hasattr(hosts, "items") else hosts
        table: dict[str, Decision] = {}
        for domain, decision in items:
            if decision not in _DECISIONS:
                raise ValueError(f"policy for {domain!r} must be 'allow' or 'deny'")
            table[normalize_domain(domain)] = decision
        object.__setattr__(self, "_default", default)
        object.__setattr__(self, "_hosts", MappingProxyType(table))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Policy is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Policy is immutable")

    @classmethod
    def from_options(cls, s2s: S2SOptions) -> Policy:
        """The policy of an ``[s2s]`` section (``default_policy`` + ``host_policy``)."""
        return cls(s2s.default_policy, ((hp.host, hp.policy) for hp in s2s.host_policy))

    @property
    def default(self) -> Decision:
        return self._default

    @property
    def hosts(self) -> Mapping[str, Decision]:
        """Normalised domain -> decision (read-only)."""
        return self._hosts

    @property
    def uniform(self) -> bool:
        """Whether every remote domain gets the default (no ``host_policy`` entry)."""
        return not self._hosts

    def decision(self, domain: str) -> Decision:
        """The decision for *domain*: its own entry, else the default ("allow" or "deny")."""
        return self._hosts.get(normalize_domain(domain), self._default)

    def allows(self, domain: str) -> bool:
        """Whether federation with *domain* is allowed (both directions)."""
        return self.decision(domain) == "allow"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self._default == other._default and dict(self._hosts) == dict(other._hosts)

    def __hash__(self) -> int:
        return hash((self._default, frozenset(self._hosts.items())))

    def __repr__(self) -> str:
        return f"Policy(default={self._default!r}, hosts={dict(self._hosts)!r})"
