"""Settings a negotiation machine is given once and never changes: one object for many streams.

Every stream to a listener (incoming) or of a local domain (outgoing) is told the same things,
so each machine keeps a reference to a shared frozen dataclass instead of its own fields
(memory per idle stream, issue 14). :class:`SharedSettings` keeps the objects in use, weakly;
:func:`setting` exposes one field as a machine attribute.
"""

from __future__ import annotations

import weakref
from dataclasses import fields, replace
from operator import attrgetter
from typing import Any, Generic, TypeVar

__all__ = ["SharedSettings", "setting"]

S = TypeVar("S")


class SharedSettings(Generic[S]):
    """Equal settings objects of one dataclass, kept once while machines use them.

    Fields are compared by value, except those named in *by_identity* (a live collection that
    may change, so only the same object is the same setting). Settings with an unhashable
    field (a test's stand-in) are not shared.
    """

    __slots__ = ("_live", "_names", "_by_identity")

    def __init__(self, cls: type[S], by_identity: tuple[str, ...] = ()) -> None:
        self._live: weakref.WeakValueDictionary[tuple[Any, ...], S] = weakref.WeakValueDictionary()
        self._names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        self._by_identity = by_identity

    def share(self, settings: S) -> S:
        """An equal settings object already in use, or *settings* (then kept for the next)."""
        ident = self._by_identity
        key = tuple(
            id(value) if name in ident else value
            for name, value in ((n, getattr(settings, n)) for n in self._names)
        )
        try:
            hit = self._live.get(key)
        except TypeError:  # an unhashable field: not shared
            return settings
        if hit is None or any(getattr(hit, n) is not getattr(settings, n) for n in ident):
            hit = self._live[key] = settings
        return hit


def setting(name: str) -> property:
    """A field of the machine's ``_settings``; setting it gives that machine its own copy."""

    def set_(machine: Any, value: Any) -> None:
        machine._settings = replace(machine._settings, **{name: value})

    return property(attrgetter(f"_settings.{name}"), set_)
