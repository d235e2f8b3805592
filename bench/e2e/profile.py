"""``--profile DIR``: py-spy attached to each s2sfast process during the flood.

py-spy (``pip install py-spy``) samples the running process from outside (``--nonblocking``:
the process is never paused), writes the collapsed stacks (``DIR/NAME.txt``: one line per
stack, ``frame;frame;... count``, the input of flamegraph.pl or speedscope) and a summary
(``DIR/NAME.top.txt``): the functions with the most samples on top of the stack (self) and
anywhere in it (total). Python frames only; ext/ is profiled with callgrind/perf (see
"Profiling the extension")."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def available() -> str | None:
    """Why py-spy cannot profile here, or None."""
    return None if shutil.which("py-spy") else "py-spy is not installed (pip install py-spy)"


class Profiler:
    """py-spy record on *pid* until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 1000) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking",
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def stop(self) -> dict[str, list[tuple[str, float]]]:
        """Stop sampling (SIGINT makes py-spy write its file); the summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"py-spy wrote no profile: {err[-500:]}")
        top = summarise(self.out.read_text())
        lines = [f"{'self %':>7} function (file)"]
        lines += [f"{share:7.1%} {name}" for name, share in top["self"]]
        lines += ["", f"{'total %':>7} function (file)"]
        lines += [f"{share:7.1%} {name}" for name, share in top["total"]]
        self.out.with_suffix(".top.txt").write_text("\n".join(lines) + "\n")
        return top


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    return f"{func} ({Path(path).name})"


def summarise(collapsed: str, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The *n* functions with the most samples, on top of the stack and anywhere in it."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += k
        for name in set(frames):
            anywhere[name] += k
    total = max(1, total)
    return {
        "samples": [("all", float(total))],
        "self": [(name, c / total) for name, c in own.most_common(n)],
        # the trunk every sample shares (runpy, the event loop's run_forever, ...) says nothing
        "total": [
            (name, c / total) for name, c in anywhere.most_common(n + 30) if c < 0.97 * total
        ][:n],
    }
