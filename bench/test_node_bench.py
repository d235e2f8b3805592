"""Whole-node benchmarks: RSS per idle stream and stanza throughput, as same-run ratios.

Memory: node A (hosts hN.a.test) opens one stream per (hN.a.test, b.test) pair to node B on
127.0.0.1, in waves below limits.MAX_NEGOTIATING_PER_ADDRESS; VmRSS before and after, per
stream end, against DESIGN.md's 64 KiB per idle TLS stream. Throughput: 20,000 ~400-byte
messages a.test -> b.test over one authenticated stream, counted at B's handler, against
xml.etree's XMLPullParser framing the same bytes from a loopback socket. Each measurement runs
in a fresh interpreter (bench/node_helpers.py). Run: ``pytest bench/ --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

import pytest
from node_helpers import TARGET_KIB, run_isolated

PAIRS = 200
MESSAGES = 20000
#: throughput rounds; the table uses the best (the machine is shared, noise only adds time)
ROUNDS = 3
MODES = {"required": "TLS (use_starttls required)", "false": "plain (use_starttls false)"}

MEMORY: dict[str, dict[str, Any]] = {}
THROUGHPUT: dict[str, dict[str, Any]] = {}


def memory_table() -> str:
    lines = [
        f"{'mode':<30}{'pairs':>6}{'ends':>6}{'KiB/end':>9}{'KiB/pair':>10}{'vs 64 KiB':>11}",
    ]
    for mode, r in MEMORY.items():
        lines.append(
            f"{MODES[mode]:<30}{r['pairs']:>6}{r['stream_ends']:>6}{r['kib_per_stream']:>9.1f}"
            f"{r['kib_per_pair']:>10.1f}{r['kib_per_stream'] / TARGET_KIB:>10.2f}x"
        )
    return "\n".join(lines)


def throughput_table() -> str:
    base = THROUGHPUT.get("etree")
    lines = [f"{'receive path':<34}{'msgs/s':>10}{'MB/s':>8}{'time vs etree':>15}"]
    for name, r in sorted(THROUGHPUT.items(), key=lambda kv: kv[1]["seconds"]):
        label = "xml.etree XMLPullParser (parse)" if name == "etree" else f"node, {MODES[name]}"
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base and name != "etree" else "-"
        lines.append(
            f"{label:<34}{r['messages'] / r['seconds']:>10,.0f}"
            f"{r['bytes'] / r['seconds'] / 1e6:>8.1f}{ratio:>15}"
        )
    return "\n".join(lines)


class _Report:
    """Prints the node tables after pytest-benchmark's own (a plugin, not a conftest hook)."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if MEMORY:
            terminalreporter.section("node memory per stream (RSS delta / stream ends)")
            terminalreporter.write_line(memory_table())
        if THROUGHPUT:
            terminalreporter.section(f"node throughput ({MESSAGES:,} messages, best of {ROUNDS})")
            terminalreporter.write_line(throughput_table())


@pytest.fixture(scope="session")
def node_report(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("s2sfast-node-bench"):
        manager.register(_Report(), "s2sfast-node-bench")


@pytest.mark.parametrize("mode", list(MODES))
def test_memory_per_stream(benchmark, node_report, mode):
    benchmark.group = "node memory"
    args = ("memory", "--mode", mode, "--pairs", str(PAIRS))
    result = benchmark.pedantic(run_isolated, args=args, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    # every pair authenticated on its own outbound stream; B's verify link back counts too
    assert result["authenticated_out"] >= PAIRS and result["a_out_pairs"] >= PAIRS
    assert result["stream_ends"] >= 2 * PAIRS
    assert result["tls_ends"] == (result["all_ends"] if mode == "required" else 0)
    assert result["rss_after_kib"] > result["rss_before_kib"]
    MEMORY[mode] = result


@pytest.mark.parametrize("name", ["etree", *MODES])
def test_throughput(benchmark, node_report, name):
    benchmark.group = "node throughput"
    args = ("etree",) if name == "etree" else ("throughput", "--mode", name)
    runs: list[dict[str, Any]] = []

    def run() -> None:
        runs.append(run_isolated(*args, "--messages", str(MESSAGES)))

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    best = min(runs, key=lambda r: r["seconds"])
    assert all(r["received"] == MESSAGES for r in runs)
    if name != "etree":
        assert best["tls"] == [name == "required"]
    benchmark.extra_info.update(best)
    THROUGHPUT[name] = best
