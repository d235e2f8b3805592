"""MongooseIM's ``[general] loglevel``: how much ``s2sfast run`` logs.

The values and the default are MongooseIM's (its "Options: General" reference): the syslog
severities plus ``none`` and ``all``, default ``"warning"``. ``s2sfast run --log-level`` takes the
same names and wins over the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from s2sfast.config.checks import enum as _enum

__all__ = ["DEFAULT_LOGLEVEL", "LOGLEVELS", "logging_level", "parse_loglevel"]

#: MongooseIM's default: production servers log warnings and errors.
DEFAULT_LOGLEVEL = "warning"

#: Each MongooseIM level name -> the Python logging level that shows what it asks for. Python
#: has no severity above CRITICAL (s2sfast's most severe lines), so emergency and alert show the
#: critical lines too rather than nothing; notice sits between INFO and WARNING; none is above
#: every level, all below every level.
LOGLEVELS: Mapping[str, int] = {
    "none": logging.CRITICAL + 10,
    "emergency": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "notice": (logging.INFO + logging.WARNING) // 2,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "all": 1,
}


def parse_loglevel(general: Mapping[str, Any], path: str = "general.loglevel") -> str:
    """The ``loglevel`` of a ``[general]`` table, :data:`DEFAULT_LOGLEVEL` when unset.

    Raises:
        ConfigError: the value is not one of :data:`LOGLEVELS` (the message names *path*).
    """
    if "loglevel" not in general:
        return DEFAULT_LOGLEVEL
    return _enum(general["loglevel"], path, tuple(LOGLEVELS))


def logging_level(name: str) -> int:
    """The Python logging level for the MongooseIM level *name* (one of :data:`LOGLEVELS`)."""
    return LOGLEVELS[name]
