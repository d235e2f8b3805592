"""docs/configuration.md names exactly the options the configuration loader accepts.

The accepted options are derived from the loader itself, never listed here: a complete document
is loaded while ``loader._known`` (the check every table the loader reads goes through, with the
keys that table takes) is recorded, and the recorded key sets are walked to dotted paths; the
``[general]`` and ``[[host_config]]`` keys come from ``config_to_dict`` of the same load, the
``[[listen.service]]`` keys from its parser's known-key set, the Prometheus listener's from the
fields of ``ListenPrometheus``. The reference is read from its headings (``### `dotted.path```),
each of which must give a syntax, a default and a TOML example that sets that very option.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import pytest
from docs_helpers import blocks, page

import s2sfast.config.loader as loader
import s2sfast.config.service as service
from s2sfast.config import config_to_dict
from s2sfast.server.metrics import ListenPrometheus

#: every table the loader reads, opened once (values only where a table needs one); the shaper
#: and access rule are named NAME and RULE, as the reference writes them
_COMPLETE = """
[general]
  hosts = ["a.example"]

[[listen.s2s]]
  port = 5269
  shaper = "RULE"
  [listen.s2s.tls]

[[listen.service]]
  port = 5347
  password = "secret"

[access]
  RULE = [{acl = "all", value = "NAME"}]

[shaper.NAME]
  max_rate = 1000

[s2s]
  host_policy = [{host = "x.example", policy = "deny"}]
  address = [{host = "y.example", ip_address = "127.0.0.1"}]
  [s2s.outgoing]
  [s2s.dns]
  [s2s.stream_management]

[[host_config]]
  host = "a.example"
  [host_config.s2s]
"""

_HEADING = re.compile(r"^### `([^`]+)`[ \t]*$", re.MULTILINE)
_INDEX = re.compile(r"\[\d+\]")


def _recorded(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, tuple[str, ...]], Any]:
    """Load the complete document, recording each table path -> the keys the loader takes."""
    seen: dict[str, tuple[str, ...]] = {}
    real = loader._known

    def known(table: Any, path: str, keys: Any) -> Any:
        seen[_INDEX.sub("[]", path)] = tuple(keys)
        return real(table, path, keys)

    monkeypatch.setattr(loader, "_known", known)
    config = loader.config_from_dict(tomllib.loads(_COMPLETE))
    return seen, config


def _leaves(tables: dict[str, tuple[str, ...]]) -> set[str]:
    """Dotted paths of the keys that are not themselves tables the loader opened."""
    paths = set()
    for table, keys in tables.items():
        for key in keys:
            path = f"{table}.{key}"
            if path in tables or f"{path}[]" in tables:
                continue  # a table (or array of tables) whose own keys are listed
            paths.add(path)
    return paths


def accepted_options(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    tables, config = _recorded(monkeypatch)
    dump = config_to_dict(config)

    # [[host_config]] s2s tables take exactly the [s2s] options (documented once, under s2s.)
    host_s2s = {t: k for t, k in tables.items() if t.startswith("host_config[].s2s")}
    assert host_s2s["host_config[].s2s"] == tables["s2s"]
    for table in host_s2s:
        del tables[table]
    # every sub-table the effective configuration has must have been opened by _COMPLETE, so
    # that a new [s2s] sub-table cannot pass for a single option
    for key, value in dump["s2s"].items():
        if isinstance(value, dict):
            assert f"s2s.{key}" in tables, f"_COMPLETE must open [s2s.{key}]"
        elif isinstance(value, list) and key not in ("host_policy", "address", "ip_versions"):
            assert f"s2s.{key}[]" in tables, f"_COMPLETE must give s2s.{key} an entry"

    options = _leaves(tables)
    options |= {f"general.{key}" for key in dump["general"]}
    options |= {
        f"host_config[].{key}" for key in dump["host_config"][0] if key != "s2s"
    }  # its s2s table: the [s2s] options
    options |= {f"listen.service[].{key}" for key in service._KNOWN}
    handler = "listen.http[].handlers.mongoose_prometheus_handler[]"
    for field in dataclasses.fields(ListenPrometheus):
        where = "listen.http[]" if field.name in ("port", "ip_address") else handler
        options.add(f"{where}.{field.name}")
    return options


def documented_options() -> dict[str, str]:
    """Each ``### `path``` heading of the reference -> the text up to the next heading."""
    text = page("configuration.md")
    starts = list(_HEADING.finditer(text))
    out: dict[str, str] = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        section = text[match.end() : end]
        section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
        assert match.group(1) not in out, f"{match.group(1)} documented twice"
        out[match.group(1)] = section
    return out


def test_every_accepted_option_is_documented(monkeypatch):
    missing = accepted_options(monkeypatch) - set(documented_options())
    assert not missing, f"accepted by the loader, not in docs/configuration.md: {sorted(missing)}"


def test_every_documented_option_is_accepted(monkeypatch):
    extra = set(documented_options()) - accepted_options(monkeypatch)
    assert not extra, f"in docs/configuration.md, not accepted by the loader: {sorted(extra)}"


def test_the_derivation_sees_the_options_it_must():
    # not a list of every option: a few from each source, so that a derivation that silently
    # stopped recording cannot make both directions pass on an empty set
    with pytest.MonkeyPatch.context() as mp:
        options = accepted_options(mp)
    for path in (
        "general.hosts",
        "listen.s2s[].tls.mode",
        "s2s.stream_management.resend",
        "s2s.address[].tls",
        "access.RULE[].acl",
        "listen.service[].password",
        "listen.http[].handlers.mongoose_prometheus_handler[].path",
        "host_config[].host",
    ):
        assert path in options
    assert len(options) > 60


def _flatten(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        out: set[str] = set()
        for key, sub in value.items():
            out |= _flatten(sub, f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = set()
        for item in value:
            out |= _flatten(item, f"{prefix}[]")
        return out
    return {prefix}


@pytest.mark.parametrize("path", sorted(documented_options()))
def test_each_option_has_syntax_default_and_an_example_setting_it(path):
    section = documented_options()[path]
    assert "- **Syntax:**" in section, f"{path}: no Syntax line"
    assert "- **Default:**" in section, f"{path}: no Default line"
    examples = [b for b in blocks(section) if b.lang == "toml"]
    assert examples, f"{path}: no TOML example"
    pattern = re.escape(path).replace("NAME", r"[^.\[\]]+").replace("RULE", r"[^.\[\]]+")
    set_paths = set()
    for example in examples:
        set_paths |= _flatten(tomllib.loads(example.body))
    assert any(re.fullmatch(pattern, p) for p in set_paths), (
        f"{path}: the example sets {sorted(set_paths)}, not this option"
    )
