"""``[general] loglevel``: MongooseIM's names and default, read into Config.loglevel."""

from __future__ import annotations

import logging

import pytest

from s2sfast.config import ConfigError, config_from_dict, config_to_dict
from s2sfast.config.loglevel import DEFAULT_LOGLEVEL, LOGLEVELS, logging_level
from s2sfast.server.defaults import embedded_config

# MongooseIM's "Options: General" reference, general.loglevel: the names and the default.
MONGOOSEIM_NAMES = [
    "none",
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "info",
    "debug",
    "all",
]


def _load(general: dict) -> object:
    return config_from_dict({"general": {"hosts": ["a.test"], **general}})


def test_default_is_mongooseims_warning():
    assert DEFAULT_LOGLEVEL == "warning"
    assert _load({}).loglevel == "warning"


@pytest.mark.parametrize("name", MONGOOSEIM_NAMES)
def test_every_mongooseim_name_is_read(name):
    config = _load({"loglevel": name})
    assert config.loglevel == name
    assert config_to_dict(config)["general"]["loglevel"] == name


def test_names_are_mongooseims_exactly():
    assert list(LOGLEVELS) == MONGOOSEIM_NAMES


@pytest.mark.parametrize("value", ["WARNING", "warn", "verbose", "", 3, True, ["debug"]])
def test_other_values_are_refused_naming_the_option(value):
    with pytest.raises(ConfigError) as info:
        _load({"loglevel": value})
    message = str(info.value)
    assert "general.loglevel" in message and '"warning"' in message and '"all"' in message


def test_levels_order_like_syslog_severities():
    levels = [logging_level(name) for name in MONGOOSEIM_NAMES]
    assert levels == sorted(levels, reverse=True)
    assert logging_level("none") > logging.CRITICAL  # nothing at all
    assert logging_level("critical") == logging.CRITICAL
    assert logging_level("error") == logging.ERROR
    assert logging_level("warning") == logging.WARNING
    assert logging.INFO < logging_level("notice") < logging.WARNING
    assert logging_level("info") == logging.INFO
    assert logging_level("debug") == logging.DEBUG
    assert 0 < logging_level("all") < logging.DEBUG  # everything, below debug too


def test_a_loglevel_is_not_named_as_ignored(caplog):
    with caplog.at_level(logging.INFO, logger="s2sfast.config"):
        _load({"loglevel": "debug"})
    assert not [r for r in caplog.records if "loglevel" in r.getMessage()]


def test_embedded_defaults_log_at_info(tmp_path):
    assert embedded_config(tmp_path / "data").config.loglevel == "info"
