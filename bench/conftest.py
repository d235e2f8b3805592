"""Benchmark session plumbing: the shared corpus and the ratio table printed at the end."""

from __future__ import annotations

import pytest
from corpus import Corpus, chunked, make_corpus

#: name -> (best seconds per pass over the corpus, corpus bytes, stanzas); filled by the suite.
#: The best of several rounds, not the mean: the machine is shared and noise only adds time.
RESULTS: dict[str, tuple[float, int, int]] = {}


@pytest.fixture(scope="session")
def results() -> dict[str, tuple[float, int, int]]:
    return RESULTS


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="session")
def chunks(corpus: Corpus) -> list[bytes]:
    return chunked(corpus.data, 4096)


def ratio_table() -> str:
    """Throughput of every parser measured in this run, and the framer's speed-up over each."""
    if not RESULTS:
        return "no benchmark results (run with --benchmark-only, not --benchmark-disable)"
    framer = RESULTS.get("StreamFramer")
    lines = [
        f"{'parser (4 KiB chunks)':<34}{'MB/s':>9}{'stanzas/s':>13}{'framer is':>12}",
    ]
    for name, (mean, size, stanzas) in sorted(RESULTS.items(), key=lambda kv: kv[1][0]):
        ratio = f"{mean / framer[0]:.1f}x" if framer and name != "StreamFramer" else "-"
        lines.append(f"{name:<34}{size / mean / 1e6:>9.1f}{stanzas / mean:>13,.0f}{ratio:>12}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.section("framer throughput ratios (same corpus, same run)")
    terminalreporter.write_line(ratio_table())
