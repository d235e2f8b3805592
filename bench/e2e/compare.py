"""``python3 -m bench.e2e.compare RUN.json ...``: several bench/e2e runs side by side.

For every contender: msg/s, CPU s per 10k and p50 at half peak in each run, and the median.
Then, per run, the ratios that do not depend on how busy the shared machine was at that moment
as much as raw figures do: uvloop over asyncio (daemons, library) and s2sfast daemons over the
faster of Prosody and ejabberd."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not files:
        print(__doc__)
        return 2
    runs = [json.loads(f.read_text()) for f in files]
    names: list[str] = []
    for run in runs:
        for r in run["results"]:
            if r["name"] not in names and not r.get("error"):
                names.append(r["name"])
    for field, label, fmt in (
        ("msg_per_s", "msg/s", "{:>9,.0f}"),
        ("cpu_s_per_10k", "CPU s per 10k", "{:>9.3f}"),
        ("half_p50", "p50 ms at half peak", "{:>9.2f}"),
    ):
        print(f"\n{label}: " + " ".join(f"{'run ' + str(i + 1):>9}" for i in range(len(runs))))
        for name in names:
            values = []
            for run in runs:
                r = next((x for x in run["results"] if x["name"] == name), None)
                if r is None or r.get("error"):
                    values.append(None)
                elif field == "half_p50":
                    values.append(r["half_peak"]["latency_ms"]["p50"])
                else:
                    values.append(r[field])
            cells = " ".join(fmt.format(v) if v is not None else f"{'-':>9}" for v in values)
            have = [v for v in values if v is not None]
            median = fmt.format(statistics.median(have)) if have else "-"
            print(f"  {name:<30} {cells}   median {median}")
    print("\nratios per run:")
    for i, run in enumerate(runs):
        by = {r["name"]: r for r in run["results"] if not r.get("error")}
        parts = []
        suffixes = sorted({n.partition(")")[2] for n in by if n.startswith("s2sfast ")})
        for kind in ("daemons", "library"):
            for suffix in suffixes:
                a = by.get(f"s2sfast {kind} (asyncio){suffix}")
                u = by.get(f"s2sfast {kind} (uvloop){suffix}")
                if a and u:
                    parts.append(
                        f"{kind}{suffix} uvloop/asyncio msg/s "
                        f"{u['msg_per_s'] / a['msg_per_s']:.2f}, "
                        f"CPU {u['cpu_s_per_10k'] / a['cpu_s_per_10k']:.2f}"
                    )
            for loop in ("asyncio", "uvloop"):
                new = by.get(f"s2sfast {kind} ({loop})")
                for suffix in suffixes:
                    old = by.get(f"s2sfast {kind} ({loop}){suffix}") if suffix else None
                    if new and old:
                        parts.append(
                            f"{kind} ({loop}) this/{suffix.strip()} msg/s "
                            f"{new['msg_per_s'] / old['msg_per_s']:.2f}, "
                            f"CPU {new['cpu_s_per_10k'] / old['cpu_s_per_10k']:.2f}"
                        )
        peers = [r["msg_per_s"] for r in by.values() if r["kind"] == "peer"]
        if peers:
            for name, r in by.items():
                if r["kind"] == "daemon":
                    parts.append(f"{name} / faster peer {r['msg_per_s'] / max(peers):.2f}x")
        print(f"  run {i + 1} ({run['when']}, {run.get('git_head', '')}):")
        for part in parts:
            print(f"    {part}")
        for key in ("scale", "scale_verify_none", "scale_baseline"):
            sc = run.get(key)
            if sc and not sc.get("error"):
                print(
                    f"    {key} ({sc.get('tree', '')}): {sc['kib_per_stream']:.1f} KiB/stream, "
                    f"{sc['new_streams']:,} new in {sc['new_seconds']:.2f} s, "
                    f"{sc['msg_per_s']:,.0f} msg/s all open"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
