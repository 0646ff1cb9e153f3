"""Memory of a process and its children, read from Linux ``/proc`` (stdlib only).

Used by the benches and the hostile tests; it imports nothing else, so a bench
that measures imports can use it first.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["peaks_mib", "process_tree", "reset_peaks", "status_mib"]


def status_mib(pid: int | str, field: str) -> float | None:
    """A ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM``, in kB) in MiB.

    ``pid`` may be ``"self"``. None when the process is gone or has no such line.
    """
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (those alive now)."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree.extend(int(child) for child in task.read_text().split())
            except OSError:  # the task ended meanwhile
                continue
        index += 1
    return tree


def reset_peaks(pid: int | str) -> None:
    """Reset the peak RSS (``VmHWM``) of ``pid`` and of its descendants."""
    members = [pid] if pid == "self" else process_tree(int(pid))
    for member in members:
        try:
            Path(f"/proc/{member}/clear_refs").write_text("5")
        except OSError:  # gone, or not ours: its peak is then the lifetime's
            continue


def peaks_mib(pid: int) -> tuple[float, float]:
    """Peak RSS since :func:`reset_peaks`: the process, and the process with its children."""
    tree = process_tree(pid)
    own = status_mib(pid, "VmHWM") or 0.0
    return own, sum(status_mib(member, "VmHWM") or 0.0 for member in tree)
