"""The one exception a bad configuration raises (a leaf module: anything may import it)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """An invalid configuration: the message names the option's dotted path, the bad value
    and what was expected (e.g. ``s2s.outgoing.ip_versions: ...``).

    Attributes:
        path: the dotted path of the offending option (None when the whole file is at fault).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# Shown as s2sfast.config.ConfigError, where users import it from.
ConfigError.__module__ = "s2sfast.config"
