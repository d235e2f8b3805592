"""``python3 -m bench.e2e``: the deployed node end to end, side by side with Prosody and ejabberd.

Contenders (each measured alone, one after another, in the same run):
  - ``s2sfast daemons (LOOP)``: two ``s2sfast run`` processes, a.test and b.test, TLS required,
    dialback; an XEP-0114 component on each (A's sends, B's receives). LOOP: asyncio, uvloop.
  - ``s2sfast library (LOOP)``: ``await node.send()`` in process A, B's ``on_stanza`` handler.
  - ``Prosody``, ``ejabberd``: two servers each (Debian's packages, tests/interop/servers),
    TLS required, dialback, c2s user alice@a.test -> bob@b.test (SASL PLAIN, loopback).
For each: msg/s, p50/p99/p99.9 latency, CPU seconds per 10k messages of both servers, peak RSS
of each, and p50/p99 latency at half the measured peak rate and at a light load (1,000/s).
Then the scale section (one daemon, 10,000 TLS streams; see bench/e2e/scale.py). Writes JSON
and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python3 bench/e2e/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import paths  # noqa: E402

paths.setup()

from bench.e2e.measure import Sizes, measure_library, measure_servers, stamp  # noqa: E402
from bench.e2e.progress import say  # noqa: E402

CONTENDERS = ("s2sfast", "library", "prosody", "ejabberd")
OUT = paths.ROOT / "bench" / "e2e" / "results"


def _loop_runner(loop: str) -> asyncio.Runner:
    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run_contender(
    kind: str, loop: str, workdir: Path, sizes: Sizes, client_loop: str, tree: Path | None = None
) -> dict:
    result = _run_contender(kind, loop, workdir, sizes, client_loop, tree)
    result["tree"] = paths.tree_label(tree) if tree else "this checkout"
    # the machine is shared: what else ran shows in the load average (1 minute)
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def _run_contender(
    kind: str, loop: str, workdir: Path, sizes: Sizes, client_loop: str, tree: Path | None
) -> dict:
    from bench.e2e.contenders import Daemons, Peers

    if kind == "library":
        with _loop_runner(client_loop) as runner:
            result = runner.run(measure_library(workdir, loop, sizes, tree))
        suffix = f" @{paths.tree_label(tree)}" if tree else ""
        result.update(name=f"s2sfast library ({loop}){suffix}", kind="library", loop=loop)
        return result
    for attempt in range(3):
        if kind == "s2sfast":
            contender: Any = Daemons(workdir, loop, tree, sizes.auth)
        else:
            contender = Peers(kind, workdir)
        say(f"starting {contender.name}")
        try:
            contender.start()
            break
        except Exception as exc:
            # a port found free was taken by another process before the server bound it (the
            # machine is shared): new ports, try again
            contender.stop()
            if "already in use" not in str(exc) or attempt == 2:
                raise
            say(f"{contender.name}: a port was taken meanwhile, again with new ports")
    try:
        with _loop_runner(client_loop) as runner:
            result = runner.run(measure_servers(contender, sizes))
    except BaseException:
        say(contender.log())
        raise
    finally:
        contender.stop()
    result.update(name=contender.name, kind=contender.kind, loop=loop)
    return result


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per contender, the round whose msg/s is the median of its rounds (a measured row, not a
    mix of rounds); a contender that failed in every round keeps its error. With one round, the
    round itself. The row says how many rounds it stands for and their msg/s."""
    if len(rounds) == 1:
        return rounds[0]
    out = []
    for i, first in enumerate(rounds[0]):
        rows = [r[i] for r in rounds]
        ok = sorted((r for r in rows if not r.get("error")), key=lambda r: r["msg_per_s"])
        if not ok:
            out.append(first)
            continue
        row = dict(ok[(len(ok) - 1) // 2])
        row["rounds_msg_per_s"] = [r.get("msg_per_s") for r in rows]
        row["missing"] = sum(r.get("missing", 0) for r in ok)
        out.append(row)
    return out


def _ms(value: float) -> str:
    return f"{value:8.2f}" if value == value else "       -"


def table(results: list[dict[str, Any]], auth: str = "dialback") -> str:
    """The human table; "vs peer" = msg/s over the faster of Prosody and ejabberd."""
    peers = [r["msg_per_s"] for r in results if r["kind"] == "peer" and not r.get("error")]
    best = max(peers) if peers else None
    rates = {r["low_load"]["rate"] for r in results if "low_load" in r}
    low = f"@{rates.pop():,.0f}/s p50" if len(rates) == 1 else "@low p50"
    label = f"contender (TLS required, {auth})"
    w = max([len(label)] + [len(r["name"]) for r in results])
    head = (
        f"{label:<{w}} {'msg/s':>9} {'vs peer':>7} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'CPU s/10k':>9} {'RSS MiB A/B':>12} "
        f"{'@half p50':>9} {'@half p99':>9} {low:>9} {'p99':>6} {'lost':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if r.get("error"):
            lines.append(f"{r['name']:<{w}} {'error: ' + r['error'][:80]}")
            continue
        lat, half = r["latency_ms"], r["half_peak"]["latency_ms"]
        ratio = f"{r['msg_per_s'] / best:6.2f}x" if best else "      -"
        rss = "/".join(f"{k / 1024:.0f}" for k in r["peak_rss_kib"])
        lost = r["missing"] + r["half_peak"]["missing"] + r["low_load"]["missing"]
        low_lat = r["low_load"]["latency_ms"]
        lines.append(
            f"{r['name']:<{w}} {r['msg_per_s']:>9,.0f} {ratio:>7} {_ms(lat['p50'])} "
            f"{_ms(lat['p99'])} {_ms(lat['p99.9'])} {r['cpu_s_per_10k']:>9.3f} {rss:>12} "
            f"{half['p50']:>9.2f} {half['p99']:>9.2f} {low_lat['p50']:>9.2f} "
            f"{low_lat['p99']:>6.2f} {lost:>5}"
        )
    clients = [r for r in results if "client_cpu_share" in r]
    if clients:
        lines.append(
            "load client (c2s / component, this process) busy during the flood: "
            + ", ".join(f"{r['name']} {r['client_cpu_share']:.0%}" for r in clients)
        )
    waits = [r for r in results if "cpu_wait_share" in r.get("half_peak", {})]
    if waits:
        # a shared machine: time runnable but without a CPU is latency the servers did not cause
        lines.append(
            "waiting for a CPU at half peak (share of the time; servers A/B: threads summed, "
            "load client: its loop): "
            + ", ".join(
                f"{r['name']} " + "/".join(f"{w:.0%}" for w in r["half_peak"]["cpu_wait_share"])
                for r in waits
            )
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], scale: dict[str, Any] | None, path: Path) -> bool:
    """Throughput and latency per contender as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if not r.get("error")]
    names = [
        r["name"].replace("s2sfast ", "").replace("@s2sfast-", "@").replace(" ", "\n") for r in ok
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(13, 1.4 * len(ok) + 2), 5.5))
    colours = ["#2a7ab0" if r["kind"] != "peer" else "#b0502a" for r in ok]
    ax1.bar(names, [r["msg_per_s"] for r in ok], color=colours)
    ax1.set_ylabel("messages/s (flood)")
    ax1.set_title("throughput")
    x = range(len(ok))
    width = 0.13
    series = [
        ("p50 flood", [r["latency_ms"]["p50"] for r in ok]),
        ("p99 flood", [r["latency_ms"]["p99"] for r in ok]),
        ("p50 @ half peak", [r["half_peak"]["latency_ms"]["p50"] for r in ok]),
        ("p99 @ half peak", [r["half_peak"]["latency_ms"]["p99"] for r in ok]),
        ("p50 @ low load", [r["low_load"]["latency_ms"]["p50"] for r in ok]),
        ("p99 @ low load", [r["low_load"]["latency_ms"]["p99"] for r in ok]),
    ]
    for i, (label, values) in enumerate(series):
        ax2.bar([v + (i - 2.5) * width for v in x], values, width, label=label)
    ax2.set_yscale("log")
    ax2.set_xticks(list(x), names)
    ax2.set_ylabel("latency, ms (log)")
    ax2.set_title("latency")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
    title = f"s2sfast bench/e2e, {stamp()}"
    if scale and not scale.get("error"):
        title += (
            f"  |  scale: {scale['streams']:,} TLS streams, "
            f"{scale['kib_per_stream']:.1f} KiB/stream, {scale['msg_per_s']:,.0f} msg/s"
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _git_head() -> str:
    """This checkout's commit (or, for an export, its directory name)."""
    return paths.tree_label(paths.ROOT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m bench.e2e",
        description="s2sfast end to end: two daemons (and the library path) against two Prosody "
        "and two ejabberd servers on loopback, same traffic, same run; then one daemon holding "
        "many TLS streams.",
    )
    p.add_argument("--quick", action="store_true",
                   help="small sizes (about a minute): 5,000 messages, 20,000 on the library "
                   "path, 2 s at half peak, scale 600 streams")  # fmt: skip
    p.add_argument("--messages", type=int, help="chat messages per server contender (30000)")
    p.add_argument("--library-messages", type=int, help="messages on the library path (100000)")
    p.add_argument("--size", type=int, default=200, help="bytes per message (200)")
    p.add_argument("--half-seconds", type=float, help="seconds at half the peak rate (5)")
    p.add_argument("--low-rate", type=float, default=1000.0,
                   help="messages per second of the light-load run (1000)")  # fmt: skip
    p.add_argument("--low-seconds", type=float, help="seconds of the light-load run (3)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of {','.join(CONTENDERS)}")  # fmt: skip
    p.add_argument("--loops", help="event loops for s2sfast (default: asyncio,uvloop if installed)")
    p.add_argument("--client-loop", choices=("asyncio", "uvloop"),
                   help="the load client's loop (default: uvloop if installed)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1,
                   help="run every contender this many times, interleaved; the table shows each "
                   "contender's median round by msg/s (the machine is noisy)")  # fmt: skip
    p.add_argument("--auth", choices=("dialback", "trusted"), default="dialback",
                   help="s2sfast authentication: dialback (default: no certificate trusted, as "
                   "for Prosody and ejabberd here) or trusted (a CA both ends trust: SASL "
                   "EXTERNAL where the s2sfast under test offers it)")  # fmt: skip
    p.add_argument("--no-scale", action="store_true", help="skip the scale section")
    p.add_argument("--baseline", type=Path, metavar="TREE",
                   help="also measure the s2sfast of another checkout or export (its framer "
                   "built in place; e.g. git archive OLD | tar -x -C TREE && cd TREE && python3 "
                   "setup.py build_ext --inplace): its daemons, library path and scale run in "
                   "the same run, named @COMMIT")  # fmt: skip
    p.add_argument(
        "--scale-streams",
        type=int,
        help="TLS streams on the scale daemon (10000): 2 per remote domain (its "
        "stream and the daemon's own back for dialback), or 1 when bidirectional",
    )
    p.add_argument("--scale-new", type=int,
                   help="new streams timed with all others open (1000)")  # fmt: skip
    p.add_argument("--scale-messages", type=int, help="messages with all streams open (20000)")
    p.add_argument("--scale-loop", help="the scale daemon's loop (default: asyncio)")
    p.add_argument("--scale-verify-mode", choices=("peer", "none", "both"),
                   help="the scale daemon listener's tls.verify_mode: peer (inbound peers are "
                   "asked for a certificate, the default), none (not asked), or both, one "
                   "scale run each (default: both; --quick: peer)")  # fmt: skip
    p.add_argument("--json", type=Path, help=f"result file (default {OUT}/e2e.json)")
    p.add_argument("--png", type=Path, help=f"plot (default {OUT}/e2e.png)")
    p.add_argument("--workdir", type=Path, help="keep configs and logs here (default: temporary)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy each s2sfast process during the flood; collapsed stacks and a "
                   "top-functions summary per process go to DIR")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.e2e.contenders import Peers, available_loops

    quick = args.quick
    sizes = Sizes(
        messages=args.messages or (5000 if quick else 30000),
        library_messages=args.library_messages or (20000 if quick else 100000),
        size=args.size,
        half_seconds=args.half_seconds or (2.0 if quick else 5.0),
        profile=args.profile,
        low_rate=args.low_rate,
        auth=args.auth,
        low_seconds=args.low_seconds or (1.0 if quick else 3.0),
    )
    if args.profile is not None:
        from bench.e2e.profile import available

        why = available()
        if why:
            print(f"--profile: {why}", file=sys.stderr)
            return 2
    loops = args.loops.split(",") if args.loops else available_loops()
    client_loop = args.client_loop or available_loops()[-1]
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in wanted:
        if c not in CONTENDERS:
            print(f"unknown contender {c!r} (choose from {', '.join(CONTENDERS)})", file=sys.stderr)
            return 2
    json_path = args.json or OUT / "e2e.json"
    png_path = args.png or OUT / "e2e.png"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="s2sfast-e2e-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    rounds: list[list[dict[str, Any]]] = []
    skipped: dict[str, str] = {}
    scale: dict[str, Any] | None = None
    scale_baseline: dict[str, Any] | None = None
    scale_verify_none: dict[str, Any] | None = None
    trees: list[Path | None] = [None]
    if args.baseline is not None:
        if not (args.baseline / "s2sfast").is_dir():
            print(f"--baseline {args.baseline}: no s2sfast/ there", file=sys.stderr)
            return 2
        trees.append(args.baseline.resolve())

    def save(partial: bool = True) -> None:
        """Write the JSON (after every contender too: a run cut short keeps what it measured)."""
        doc = {
            "when": stamp(),
            "partial": partial,
            "git_head": _git_head(),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "sizes": {k: str(v) if isinstance(v, Path) else v for k, v in sizes.__dict__.items()},
            "client_loop": client_loop,
            "auth": args.auth,
            "skipped": skipped,
            "rounds_note": "results: per contender the round with the median msg/s "
            "(all rounds in 'rounds')"
            if len(rounds) > 1
            else "one round",
            # until every round is in: what has been measured so far, round after round
            "results": results or [r for rnd in rounds for r in rnd] + done,
            "rounds": rounds if len(rounds) > 1 else [],
            "scale": scale,
            "scale_baseline": scale_baseline,
            "scale_verify_none": scale_verify_none,
        }
        json_path.write_text(json.dumps(doc, indent=2) + "\n")

    done: list[dict[str, Any]] = []
    try:
        runs: list[tuple[str, str, Path | None]] = []
        for kind in wanted:
            if kind in ("prosody", "ejabberd"):
                why = Peers.missing(kind)
                if why:
                    skipped[kind] = why
                    say(f"{kind}: skipped ({why})")
                    continue
                runs.append((kind, "-", None))
            else:
                runs.extend((kind, loop, tree) for tree in trees for loop in loops)
        for round_no in range(args.rounds):
            if args.rounds > 1:
                say(f"round {round_no + 1} of {args.rounds}")
            done = []
            for k, loop, tree in runs:
                try:
                    done.append(run_contender(k, loop, workdir, sizes, client_loop, tree))
                except Exception as exc:  # one contender failing does not lose the others
                    traceback.print_exc()
                    done.append({"name": f"{k} ({loop})", "kind": k, "loop": loop,
                                 "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                save()
            rounds.append(done)
            done = []
        results = median_rows(rounds)
        if not args.no_scale:
            from bench.e2e import scale as scale_mod

            verify = args.scale_verify_mode or ("peer" if quick else "both")
            modes = ["peer", "none"] if verify == "both" else [verify]
            # the baseline tree in the first mode only: the comparison is commit against commit
            for tree, mode in [(t, m) for t in trees for m in modes if t is None or m == modes[0]]:
                try:
                    one = scale_mod.run(
                        workdir,
                        streams=args.scale_streams or (600 if quick else 10000),
                        new=args.scale_new or (200 if quick else 1000),
                        messages=args.scale_messages or (5000 if quick else 20000),
                        loop=args.scale_loop or "asyncio",
                        tree=tree,
                        auth=sizes.auth,
                        verify_mode=mode,
                    )
                except Exception as exc:
                    traceback.print_exc()
                    one = {"error": f"{type(exc).__name__}: {exc}", "verify_mode": mode}
                if tree is not None:
                    scale_baseline = one
                elif mode == "none" and len(modes) > 1:
                    scale_verify_none = one
                else:
                    scale = one
                save()
    finally:
        if tmp is not None:
            tmp.cleanup()
    save(partial=False)
    print()
    print(table(results, "dialback" if args.auth == "dialback" else "s2sfast trusted certs"))
    for one in (scale, scale_verify_none, scale_baseline):
        if one is not None:
            print()
            print(scale_text(one))
    if args.profile is not None:
        print(f"\nprofiles (py-spy, during the flood): {args.profile}/*.top.txt")
        for r in results:
            for side, top in (r.get("profile") or {}).items():
                head = ", ".join(f"{name} {share:.0%}" for name, share in top["self"][:4])
                print(f"  {r['name']} {side.upper()}: self {head}")
    print(f"\nJSON: {json_path}")
    if plot(results, scale, png_path):
        print(f"plot: {png_path}")
    else:
        print("plot: matplotlib is not installed (pip install 's2sfast[bench]')")
    failed = [r for r in results if r.get("error") or r.get("missing")]
    return 1 if failed else 0


def scale_text(scale: dict[str, Any]) -> str:
    if scale.get("error"):
        return f"scale: error: {scale['error']}"
    lines = [
        f"scale: one daemon ({scale['loop']}, s2sfast of {scale.get('tree', 'this checkout')}): "
        f"{scale['streams']:,} authenticated TLS streams (sockets) from {scale['domains']:,} "
        f"remote domains, {scale['streams_per_domain']} per domain; RLIMIT_NOFILE "
        f"{scale['nofile']}; listener tls.verify_mode {scale.get('verify_mode', 'peer')}"
        + (" (peers not asked for a certificate)" if scale.get("verify_mode") == "none" else ""),
        f"  RSS per idle stream      {scale['kib_per_stream']:8.1f} KiB  "
        f"(daemon {scale['rss_before_kib'] / 1024:.0f} -> {scale['rss_after_kib'] / 1024:.0f} MiB)",
        f"  open all                 {scale['open_seconds']:8.1f} s",
        f"  authenticate {scale['new_streams']:,} new    {scale['new_seconds']:8.2f} s  "
        f"({scale['new_streams'] / scale['new_seconds']:,.0f} streams/s, with all open)",
        f"  messages, all open       {scale['msg_per_s']:8,.0f} msg/s  "
        f"({scale['messages']:,} over {scale['domains']:,} domains, {scale['missing']} missing)",
    ]
    if scale.get("bound"):
        lines.append(f"  bound: {scale['bound']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
