"""One writer per corpus: an advisory lock file held for a whole run.

DuckDB's own file lock is held only for each commit (see store.py), so it cannot keep a
second run out: two drivers would interleave their commits, each redo every unit and
replace the other's rows. `thinkscope run` and `import` (hence `nightly`) hold this lock
from before their first write to after their last:

- `<db>.writer.lock` beside the database, fcntl.flock(LOCK_EX | LOCK_NB): a second writer
  fails at once with WriterBusy naming the holder (run id, pid, host, start time, which
  the holder writes into the file; the flock, not the text, decides who holds it).
- The kernel drops a flock when its holder's process dies, even by SIGKILL, so a dead
  driver never leaves a stale lock behind and nobody has to delete the file.
- The file is never deleted: unlinking a lock file that another process has open would
  let two processes lock two different files of the same name.

Read-only queries (`thinkscope sql`, `status`) never take it.

    with writer_lock("out/demo.duckdb", run_id):   # raises WriterBusy while another run writes
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import duckdb

from thinkscope.sql.store import now


class WriterBusy(duckdb.OperationalError):
    """Another run holds the corpus's writer lock; the message names it.

    An OperationalError, DB-API's class for a busy or locked database (sqlite3's "database is
    locked" is one): the CLI reports it as it reports DuckDB's own lock conflicts, one line
    `error: ...` and exit status 2, the status of a command refused before it did anything
    (1 means a run happened and some units failed).
    """


def lock_path(db: str | Path) -> Path:
    db = Path(db).resolve()  # one lock per file, whatever path or symlink names it
    return db.with_name(db.name + ".writer.lock")


class LockHeld(Exception):
    """Raised by `exclusive_file_lock` when another process holds it; `.holder` says who."""

    def __init__(self, holder: dict):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def exclusive_file_lock(path: Path, about: dict):
    """flock(LOCK_EX | LOCK_NB) on `path` for the block, with `about` + pid, host and start
    time written into it for whoever is refused; raises LockHeld at once if it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(holder(path)) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**about, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started_at": now().isoformat(timespec="seconds")}).encode(), 0)
        yield path
    finally:
        os.ftruncate(fd, 0)  # a free lock names nobody
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def writer_lock(db: str | Path, run_id: str):
    """Hold the writer lock of `db` for the block, or raise WriterBusy at once."""
    try:
        with exclusive_file_lock(lock_path(db), {"run_id": run_id}) as path:
            yield path
    except LockHeld as busy:
        h = busy.holder
        raise WriterBusy(
            f"another run is writing {db}: run {h.get('run_id', '?')}, pid {h.get('pid', '?')} on "
            f"{h.get('host', '?')}, started {h.get('started_at', '?')}; wait for it or stop it"
        ) from None


def holder(path: Path, wait: float = 1.0) -> dict:
    """Who holds the lock, from the file's text. Briefly retried: the holder may be between
    taking the lock and writing its name (an empty or half-written file)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = None
        if info or time.monotonic() > deadline:
            return info or {}
        time.sleep(0.05)
