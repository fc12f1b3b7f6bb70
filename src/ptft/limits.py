"""Oversized requests are refused before they allocate: each pipeline estimates the memory a request needs
from its sizes (dimensions, sample counts, widths) during validation and compares it with this machine's
memory, so dln.dim=1e9 or data.p=1e9+7 ends in one line naming the key instead of minutes of allocation,
a hang or a MemoryError.

The limit is the machine's physical memory (os.sysconf, else psutil if installed, else 16 GiB); the
environment variable PTFT_MEMORY_LIMIT_GB sets another (e.g. a SLURM job's share, or more on a node
whose swap you mean to use).
"""
from __future__ import annotations

import os

from ptft import ConfigError

ENV = "PTFT_MEMORY_LIMIT_GB"
GIB = 2**30


def memory_limit() -> float:
    """Bytes a single request may need: $PTFT_MEMORY_LIMIT_GB, else the machine's physical memory."""
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            gb = float(env)
        except ValueError:
            gb = float("nan")
        if not 0 < gb < float("inf"):
            raise ConfigError(f"${ENV}={env!r} must be a number of GiB > 0 (the memory a request may use)")
        return gb * GIB
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        try:
            import psutil

            return float(psutil.virtual_memory().total)
        except Exception:  # no psutil, or it cannot tell
            return 16.0 * GIB


def check_memory(subject: str, nbytes: float, fix: str) -> None:
    """ConfigError if `subject` (the keys and values of the request) needs more than memory_limit() bytes;
    nothing is allocated. `fix` says what to lower."""
    limit = memory_limit()
    if not nbytes <= limit:
        raise ConfigError(f"{subject} needs about {nbytes / GIB:.3g} GiB of memory, more than the limit of "
                          f"{limit / GIB:.3g} GiB (this machine's memory; ${ENV} sets another); {fix}")
