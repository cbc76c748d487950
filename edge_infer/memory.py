"""This process's memory as the kernel counts it: peak and current resident set size.

Imports nothing heavy, so benchmark peers that must not load the runtime can read it too.
"""

from __future__ import annotations

import resource


def proc_status_mb(*fields: str) -> dict[str, float]:
    """``/proc/self/status`` fields (e.g. ``VmHWM``, ``VmRSS``) in MiB; missing ones left out."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``, which a process started by
    fork and exec inherits from its parent (a small run started from a large test process
    would report the parent's peak); ``ru_maxrss`` only where there is no ``/proc``.
    """
    got = proc_status_mb("VmHWM")
    return got["VmHWM"] if "VmHWM" in got else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``), 0 where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0
