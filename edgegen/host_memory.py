"""This host's memory available to new allocations, and the share of it one step may take."""

from __future__ import annotations

from pathlib import Path

MEMORY_SHARE = 0.5  # of the available memory one step (calibration, a trial run) may take


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def over_share(nbytes: int) -> int | None:
    """The available memory where nbytes exceed MEMORY_SHARE of it, else None (also where it cannot be read)."""
    available = available_memory()
    return available if available is not None and nbytes > available * MEMORY_SHARE else None
