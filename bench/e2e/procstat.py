"""What /proc says about a server process (and its children): CPU ticks, peak and current RSS,
open sockets. Linux only; every figure the harness reports about a server comes from here."""

from __future__ import annotations

import os
from pathlib import Path

#: clock ticks per second of utime/stime in /proc/PID/stat
CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """*pid* and every descendant (ejabberd's VM, a wrapper's child, ...)."""
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            tasks = Path(f"/proc/{p}/task").iterdir()
            for task in tasks:
                text = (task / "children").read_text()
                out.extend(int(c) for c in text.split())
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* and its descendants, in seconds."""
    total = 0
    for p in children(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def run_delay_seconds(pid: int, main_thread: bool = False) -> float:
    """Seconds *pid* and its descendants (every thread, summed: may exceed the wall time) spent
    runnable but waiting for a CPU (/proc/PID/task/TID/schedstat, second field): how much a
    busy machine held them back. *main_thread*: only *pid*'s own main thread."""
    if main_thread:
        try:
            return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0
    total = 0
    for p in children(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def _status_kib(pid: int, key: str) -> int:
    total = 0
    for p in children(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of *pid* and its descendants, in KiB."""
    return _status_kib(pid, "VmHWM")


def rss_kib(pid: int) -> int:
    """VmRSS (resident set now) of *pid* and its descendants, in KiB."""
    return _status_kib(pid, "VmRSS")


def socket_count(pid: int) -> int:
    """Open sockets of *pid* (its /proc/PID/fd entries that are sockets)."""
    n = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE towards *want*: the hard limit too where the OS lets
    us (root, up to fs.nr_open), else the soft limit up to the hard one. Returns (soft, hard)
    after. Children inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):  # not privileged, or above fs.nr_open
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
