"""Process memory on the CPU: how much is resident, and handing freed memory back.

A scrub runs thousands of chunks, each allocating and freeing the same few hundred MB of
tensors. The C allocator (glibc's malloc) keeps freed blocks for reuse, and across many chunks
of slightly different shapes its heaps fragment: on a 100,000-row paren run the process grew
past 13 GB while the live tensors stayed under 1 GB. Returning freed memory after every
allocation (a fixed small mmap threshold) bounds it, but makes every chunk fault its pages
in anew, which on this machine made the engine 3-5x slower.

`ResidentGuard` does neither: the engine checks the resident set after each chunk (one read
of `/proc/self/statm`) and, only when it has grown past a limit, asks the allocator to hand
its free pages back (`malloc_trim`). The live tensors are untouched; the cost is one trim,
and the page faults of the next chunk, per crossing of the limit.

Example:
    >>> guard = ResidentGuard(limit_mb=resident_mb() + 10_000)
    >>> guard.check()          # far below the limit: nothing to do
    False
    >>> guard.peak_mb >= guard.start_mb > 0
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

log = logging.getLogger(__name__)

_LIBC: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not available


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is False:
        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.malloc_trim  # noqa: B018 (glibc only: musl and macOS have no malloc_trim)
            _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = None
    return _LIBC if _LIBC is not False else None  # type: ignore[return-value]


def resident_mb() -> float:
    """The process's resident memory now, in MB (Linux; elsewhere its lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 1024


def trim() -> bool:
    """Hand the allocator's free memory back to the system (glibc `malloc_trim(0)`); False
    where the C library has no such call."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


_SETTLED: list[float] = []  # the resident memory measured after the last trim by settled_mb


def settled_mb(slack_mb: float = 256.0) -> float:
    """Resident memory, with the allocator's free memory handed back first if the process
    has grown more than `slack_mb` past the level seen after the last such trim: close to
    what is live, without trimming (and faulting pages in again) at every call."""
    now = resident_mb()
    if not _SETTLED or now > _SETTLED[-1] + slack_mb:
        trim()
        now = resident_mb()
        _SETTLED[:] = [now]
    return now


class ResidentGuard:
    """Keeps the resident set near `limit_mb` by trimming freed memory when it is crossed.

    `check()` after each unit of work; `peak_mb` is the most seen at a check (or at entry),
    `trims` how many trims it took.
    """

    def __init__(self, limit_mb: float):
        self.limit_mb = limit_mb
        self.start_mb = self.peak_mb = resident_mb()
        self.trims = 0
        self.over = False  # still above the limit after a trim: live memory, not retention

    def check(self) -> bool:
        """Trim if over the limit; True when a trim was made."""
        now = resident_mb()
        self.peak_mb = max(self.peak_mb, now)
        if now <= self.limit_mb or not trim():
            return False
        self.trims += 1
        after = resident_mb()
        if after > self.limit_mb and not self.over:
            self.over = True
            log.warning("memory: %.0f MB resident after handing freed memory back, above the "
                        "limit of %.0f MB: the live tensors need more; raise the budget "
                        "(--memory-budget, memory_budget_mb) or lower the chunk budget "
                        "(memory_mb)",
                        after, self.limit_mb)
        return True
