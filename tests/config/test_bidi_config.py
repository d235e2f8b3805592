"""``[s2s] bidi`` (XEP-0288, an s2sfast addition): off by default, a boolean, per host too,
and shown by the effective-config dump."""

from __future__ import annotations

import pytest

from s2sfast.config import ConfigError, config_from_dict, config_to_dict


def _doc(s2s=None, host_s2s=None):
    data = {"general": {"hosts": ["a.example", "b.example"]}}
    if s2s is not None:
        data["s2s"] = s2s
    if host_s2s is not None:
        data["host_config"] = [{"host": "b.example", "s2s": host_s2s}]
    return data


def test_off_by_default_and_dumped():
    config = config_from_dict(_doc())
    assert config.s2s.bidi is False
    assert config_to_dict(config)["s2s"]["bidi"] is False


def test_on_globally_and_off_for_one_host():
    config = config_from_dict(_doc({"bidi": True}, {"bidi": False}))
    assert config.s2s_for("a.example").bidi is True
    assert config.s2s_for("b.example").bidi is False
    assert config_to_dict(config)["s2s"]["bidi"] is True


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_only_a_boolean(value):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_doc({"bidi": value}))
    assert info.value.path == "s2s.bidi"
    assert "a boolean" in str(info.value)
