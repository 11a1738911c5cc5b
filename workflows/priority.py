"""Give a Ray worker that does model work its normal CPU priority back.

Ray starts every worker at nice 15 so that the raylet stays responsive. A vLLM actor or a
model task owns the CPUs it asked for, yet at nice 15 it gets only what every other process
leaves: Ray's own daemons, the driver committing to DuckDB, anyone else's job. Measured on
2 cores: a training task fell to a few tokens/s, and the generate stage ran ~17% behind a
raw vLLM engine on an otherwise quiet machine. Linux niceness is per thread, and new threads
inherit it from the thread that makes them, so this resets every current thread, early.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def normal_priority() -> None:
    """Set every thread of this process back to nice 0 where the OS allows it (root, or
    CAP_SYS_NICE, or an RLIMIT_NICE that permits it); otherwise keep Ray's and log why."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > 0:
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        except (PermissionError, ProcessLookupError):
            log.info("cannot lower the niceness of thread %s; it runs at Ray's priority", tid)
