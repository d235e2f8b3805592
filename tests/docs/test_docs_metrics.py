"""docs/metrics.md names every metric the daemon registers, with its labels, and no other.

The metrics are read from a real ``Metrics`` (the daemon's) over a real, unstarted Node: the
exported names from the exposition text (``# TYPE`` lines), the label names from the counters it
creates and the families its node collector yields. The page's table rows are
``| `name` | type | `label`, `label` | ... |``.
"""

from __future__ import annotations

import re

from docs_helpers import page
from prometheus_client import Counter

from s2sfast.config import config_from_dict
from s2sfast.node import Node
from s2sfast.server.component import ComponentRegistry
from s2sfast.server.metrics import Metrics, _NodeCollector

_ROW = re.compile(r"^\| `(s2sfast_[a-z_]+)` \| (\w+) \| ([^|]*) \|", re.MULTILINE)


def _registered() -> dict[str, tuple[str, set[str]]]:
    """Exported metric name -> (type, label names), from the daemon's own registry."""
    node = Node(config_from_dict({"general": {"hosts": ["a.example"]}}))
    components = ComponentRegistry()
    metrics = Metrics(node, components)
    text = metrics.render().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    labels: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            labels[f"{value._name}_total"] = set(value._labelnames)
    for family in _NodeCollector(node, components).collect():
        labels[family.name] = set(family._labelnames)
    assert set(labels) == set(types), "every exported family was found with its labels"
    return {name: (types[name], labels[name]) for name in types}


def _documented() -> dict[str, tuple[str, set[str]]]:
    out = {}
    for name, kind, cell in _ROW.findall(page("metrics.md")):
        out[name] = (kind, set(re.findall(r"`([a-z_]+)`", cell)))
    return out


def test_every_registered_metric_is_documented_with_its_type_and_labels():
    registered = _registered()
    documented = _documented()
    assert len(registered) >= 10
    missing = set(registered) - set(documented)
    assert not missing, f"registered, not in docs/metrics.md: {sorted(missing)}"
    for name, (kind, labels) in registered.items():
        assert documented[name] == (kind, labels), f"{name}: the page says {documented[name]}"


def test_the_page_documents_no_metric_that_does_not_exist():
    extra = set(_documented()) - set(_registered())
    assert not extra, f"in docs/metrics.md, not registered: {sorted(extra)}"
