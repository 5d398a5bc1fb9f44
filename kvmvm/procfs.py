"""/proc/PID/stat, read one way: start times (pid-checked lock and pid files), states, parents."""
from __future__ import annotations


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [0] is the state, [1] the
    parent, [19] the start time in clock ticks. None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (None: no such process). With the pid it
    names one process for good: a reused pid has another start time."""
    f = stat_fields(pid)
    try:
        return int(f[19]) if f else None
    except (IndexError, ValueError):
        return None


def ended(pid: int | None) -> bool:
    """No process ``pid``, or only its zombie."""
    f = stat_fields(pid) if pid else None
    return not f or f[0] in ("Z", "X")


def children_map() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    import os

    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = stat_fields(d)
            try:
                kids.setdefault(int(f[1]), []).append(int(d)) if f else None
            except (IndexError, ValueError):
                continue
    return kids


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` (a snapshot of /proc; parents first)."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out
