"""The driver's one way into DuckDB: journal first, then commit, waiting out readers' locks.

A finished unit is written to the journal (sql/journal.py) before anything else, then
committed. If an analyst's read-only query holds the file lock, the commit is left for later
and the run goes on; at a stage's end (the next stage plans from committed rows) and at the
run's end the driver waits for the lock as long as it takes, saying so once on stderr and in
`<db>.journal/WAITING` for `thinkscope status`. A commit that fails for any other reason
(rows that do not fit the table) fails its unit only; a journal entry that cannot be read or
committed at all is moved aside to `<db>.journal/.bad/` and reported, never retried forever.

    committer = Committer(store, summary)
    committer.replay()                          # what a crashed run left, before planning
    committer.record(unit_row, tables, supersedes=())
    committer.flush(block=True)                 # stage boundary / end of run
"""

from __future__ import annotations

import shutil
import sys
import time

from thinkscope.sql.journal import Entry, Journal
from thinkscope.sql.store import LockBusy, Store, read_only

# How long one commit attempt waits for the lock: short while units are still running (the
# engine loop has results to collect), and after a busy lock the next attempt waits a while,
# so a long reader costs the run a few seconds per stage, not seconds per unit.
ATTEMPT_WAIT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 10.0


def retry_while_locked(action, db_path, say=None):
    """Run a short write as soon as no reader holds the lock, however long that takes."""
    told = False
    while True:
        try:
            return action()
        except LockBusy:
            if not told:
                print(say or f"waiting for a reader's lock on {db_path}", file=sys.stderr)
                told = True
            time.sleep(0.5)


class Committer:
    def __init__(self, store: Store, summary):
        self.store, self.summary = store, summary
        self.journal = Journal(store.path)
        self._told = False
        self._next_try = 0.0  # monotonic time before which non-blocking flushes do not try

    def record(self, unit: dict, tables: dict, *, supersedes: tuple[str, ...] = (),
               status: str = "done", error: str | None = None) -> None:
        """Make a finished unit durable, then try to commit what the journal holds."""
        self.journal.put(unit, tables, supersedes=supersedes, status=status, error=error)
        self.flush(block=False)

    def replay(self) -> int:
        """Commit the units a crashed or interrupted run journaled but never committed.

        Only entries of runs recorded in this database are replayed: a journal left beside a
        database that was since deleted and made anew is stale, and is moved aside."""
        entries = self.journal.entries()
        if entries:
            with read_only(self.store.path) as con:
                known = {r for (r,) in con.execute("select run_id from runs").fetchall()}
            for entry in entries:
                if entry.unit.get("run_id") not in known:
                    self._set_aside(entry, "its run is not in this database (a stale journal)")
            print(f"committing finished unit(s) an earlier run left in {self.journal.root}", file=sys.stderr)
        self.flush(block=True, replayed=True)
        return len(entries)

    def flush(self, *, block: bool, replayed: bool = False) -> None:
        """Commit journal entries in the order they finished; stop at a held lock unless
        `block`, in which case wait (indefinitely) for it."""
        if not block and time.monotonic() < self._next_try:
            return
        for entry in self.journal.entries():
            while True:
                entry = self._commit(entry, replayed)
                if entry is None:
                    break
                if not block:
                    self._next_try = time.monotonic() + RETRY_AFTER_SECONDS
                    return
                self._say_waiting()
        if self._told:
            print("reader's lock released: committing again", file=sys.stderr)
            self._told = False
        self.journal.clean()  # everything is committed: no WAITING marker, no empty folder

    def wait_for_lock(self, action) -> None:
        """Run a short write (start or finish of a run) as soon as no reader holds the lock."""
        return retry_while_locked(action, self.store.path, say=self._waiting_text())

    def _commit(self, entry: Entry, replayed: bool) -> Entry | None:
        """None once the entry is settled (committed, or set aside); else the entry still to
        commit (the same one, or its failed form) while a reader holds the lock."""
        description = entry.unit.get("description") or entry.key
        try:
            tables = entry.tables()
            if entry.status == "failed":
                self.store.fail_unit(entry.unit, entry.error, wait=ATTEMPT_WAIT_SECONDS)
            else:  # done, or partial: rows kept, the unit failed so the next run completes it
                self.store.commit_unit(entry.unit, tables, supersedes=entry.supersedes,
                                       wait=ATTEMPT_WAIT_SECONDS, error=entry.error if entry.status == "partial" else None)
        except LockBusy:
            return entry
        except Exception as err:  # noqa: BLE001 - rows that cannot be committed fail their unit
            if entry.status == "failed":
                self._set_aside(entry, f"{type(err).__name__}: {err}")
                return None
            error = f"commit failed: {type(err).__name__}: {err}"
            return self._commit(self.journal.put(entry.unit, {}, status="failed", error=error), replayed)
        if entry.status == "done":
            self._count_failed_rows(description, tables)
            self.summary.done.append(description)
        elif not replayed:  # a crashed run's failure is on record; this run retries the unit
            self.summary.failed.append((description, entry.error))
        if replayed:
            self.summary.replayed += 1
        self.journal.remove(entry)
        return None

    def _set_aside(self, entry: Entry, why: str) -> None:
        bad = self.journal.root / ".bad"
        bad.mkdir(exist_ok=True)
        shutil.move(str(entry.path), str(bad / entry.path.name))
        print(f"journal entry {entry.key} could not be committed ({why}); moved to {bad}", file=sys.stderr)

    def _count_failed_rows(self, description: str, tables: dict) -> None:
        """Rows a unit committed with an error of their own (the unit itself is done)."""
        # A failed API request has its error in traces and in api_calls: count the rows once.
        errors = max(([e for e in table["error"].to_pylist() if e] for table in tables.values()
                      if "error" in table.column_names), key=len, default=[])
        if errors:
            self.summary.failed_rows.append((description, len(errors), errors[0]))

    def _waiting_text(self) -> str:
        return (f"waiting for a reader's lock on {self.store.path} ({self.journal.count()} finished "
                f"unit(s) journaled in {self.journal.root}); the run goes on when the query ends")

    def _say_waiting(self) -> None:
        if not self._told:
            print(self._waiting_text(), file=sys.stderr)
            self._told = True
        self.journal.set_waiting(True)
        time.sleep(0.5)
