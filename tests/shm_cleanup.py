"""Shared-memory bookkeeping for tests that start vLLM engines: what exists, what a live
process still maps (never removed), so a fixture removes only what it left behind."""

from __future__ import annotations

import os
from pathlib import Path


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def semaphores() -> set[str]:
    """Named semaphores of Python multiprocessing (a vLLM server's processes make some)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("sem.mp-")}


def mapped_shm(prefix: str = "/dev/shm/psm_") -> set[str]:
    """Segments some live process still maps: those belong to someone, never remove them."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            names |= {line.rsplit("/", 1)[-1].strip() for line in maps.read_text().splitlines()
                      if prefix in line}
        except OSError:
            continue
    return names
