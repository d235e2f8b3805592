"""MongooseIM's max_fsm_queue: [general] and per listener, the per-connection queue bound."""

from __future__ import annotations

import pytest

from s2sfast.config import ConfigError, config_from_dict, config_to_dict
from s2sfast.limits import MAX_FSM_QUEUE


def _doc(general: dict | None = None, s2s: dict | None = None, service: dict | None = None):
    listen: dict = {"s2s": [{"port": 5269, **(s2s or {})}]}
    if service is not None:
        listen["service"] = [{"port": 5347, "password": "pw", **service}]
    return {"general": {"hosts": ["a.test"], **(general or {})}, "listen": listen}


def test_not_set_is_the_named_default_and_listeners_inherit():
    config = config_from_dict(_doc(service={}))
    assert config.max_fsm_queue == MAX_FSM_QUEUE
    assert config.listen_s2s[0].max_fsm_queue is None
    assert config.listen_service[0].max_fsm_queue is None
    out = config_to_dict(config)
    assert out["general"]["max_fsm_queue"] == MAX_FSM_QUEUE
    assert "max_fsm_queue" not in out["listen"]["s2s"][0]
    assert "max_fsm_queue" not in out["listen"]["service"][0]


def test_general_and_listener_values_are_read_not_ignored(caplog):
    config = config_from_dict(
        _doc({"max_fsm_queue": 500}, {"max_fsm_queue": 50}, {"max_fsm_queue": 70})
    )
    assert config.max_fsm_queue == 500
    assert config.listen_s2s[0].max_fsm_queue == 50
    assert config.listen_service[0].max_fsm_queue == 70
    assert "max_fsm_queue" not in caplog.text  # not listed as ignored
    plain = config_from_dict(_doc({"max_fsm_queue": 500}, {"max_fsm_queue": 50}))
    again = config_to_dict(plain)
    again["listen"]["s2s"][0]["tls"] = {}
    again["s2s"] = {"shared": plain.s2s.shared}
    del again["host_config"]
    back = config_from_dict(again)
    assert back.max_fsm_queue == 500 and back.listen_s2s[0].max_fsm_queue == 50


@pytest.mark.parametrize(
    "doc, path",
    [
        (_doc({"max_fsm_queue": 0}), "general.max_fsm_queue"),
        (_doc({"max_fsm_queue": "infinity"}), "general.max_fsm_queue"),
        (_doc(s2s={"max_fsm_queue": -1}), "listen.s2s[0].max_fsm_queue"),
        (_doc(service={"max_fsm_queue": 0}), "listen.service[0].max_fsm_queue"),
    ],
)
def test_max_fsm_queue_must_be_a_positive_integer(doc, path):
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc)
    assert path in str(err.value)
