"""bench/e2e in quick mode for s2sfast only (daemons and library path on the stock loop, a
small scale section): the command runs, writes its JSON with every field, and every message
arrived. No timing assertions: the figures are the benchmark's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 2000
LIBRARY = 4000
SCALE_STREAMS = 160
SCALE_NEW = 40
SCALE_MESSAGES = 1000

FLOOD_FIELDS = {
    "name", "kind", "loop", "messages", "received", "missing", "duplicates", "seconds",
    "msg_per_s", "latency_ms", "cpu_s", "cpu_s_per_10k", "peak_rss_kib", "half_peak", "low_load",
}  # fmt: skip
SCALE_FIELDS = {
    "verify_mode", "domains", "streams", "streams_per_domain", "daemon_sockets", "rss_before_kib",
    "rss_after_kib",
    "kib_per_stream", "open_seconds", "new_streams", "new_seconds", "messages", "received",
    "missing", "msg_per_s", "nofile",
}  # fmt: skip


def test_quick_run_for_s2sfast(tmp_path: Path) -> None:
    out, png = tmp_path / "e2e.json", tmp_path / "e2e.png"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.e2e", "--quick",
            "--contenders", "s2sfast,library", "--loops", "asyncio", "--client-loop", "asyncio",
            "--messages", str(MESSAGES), "--library-messages", str(LIBRARY),
            "--half-seconds", "0.5", "--low-seconds", "0.3", "--scale-streams", str(SCALE_STREAMS),
            "--scale-new", str(SCALE_NEW), "--scale-messages", str(SCALE_MESSAGES),
            "--scale-verify-mode", "both",
            "--json", str(out), "--png", str(png), "--workdir", str(tmp_path / "work"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    names = [r["name"] for r in doc["results"]]
    assert names == ["s2sfast daemons (asyncio)", "s2sfast library (asyncio)"], doc["results"]
    for r, n in zip(doc["results"], (MESSAGES, LIBRARY), strict=True):
        assert FLOOD_FIELDS <= set(r), r
        assert (r["messages"], r["received"], r["missing"], r["duplicates"]) == (n, n, 0, 0)
        assert set(r["latency_ms"]) == {"p50", "p99", "p99.9"}
        assert len(r["peak_rss_kib"]) == 2 and all(k > 0 for k in r["peak_rss_kib"])
        for paced in (r["half_peak"], r["low_load"]):
            assert paced["missing"] == 0 and paced["received"] == paced["messages"] > 0, paced
    # one scale run with inbound peers asked for their certificate, one without
    for key, mode in (("scale", "peer"), ("scale_verify_none", "none")):
        scale = doc[key]
        assert SCALE_FIELDS <= set(scale), scale
        assert scale["verify_mode"] == mode
        # every domain's stream (and the daemon's own stream back, unless bidirectional) is open
        per_domain = scale["streams_per_domain"]
        assert per_domain in (1, 2), scale
        assert scale["domains"] == SCALE_STREAMS // per_domain, scale
        assert scale["streams"] == scale["daemon_sockets"] == scale["domains"] * per_domain, scale
        assert scale["new_streams"] == SCALE_NEW, scale
        assert (scale["received"], scale["missing"]) == (SCALE_MESSAGES, 0)
    configs = {mode: (tmp_path / "work" / f"scale-{mode}" / "d.toml").read_text()
               for mode in ("peer", "none")}  # fmt: skip
    assert "verify_mode" not in configs["peer"]
    assert 'tls.verify_mode = "none"' in configs["none"]
    assert "listener tls.verify_mode none (peers not asked for a certificate)" in proc.stdout
    assert "s2sfast daemons (asyncio)" in proc.stdout  # the table
    if png.exists():  # matplotlib installed (the 'bench' extra)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
