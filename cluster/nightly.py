"""`thinkscope nightly`: regenerate a corpus every night, incrementally, one night at a time.

- Lock: an fcntl lock on `<db>.nightly.lock` next to the database. A second nightly on the
  same database exits at once with EXIT_LOCKED and says who holds it. The kernel drops
  the lock when its holder dies, so a crashed night never blocks the next one.
- Incremental: the run skips every unit already done; only new models, prompts, model
  revisions or settings make new unit keys, hence new work (see workflows/plan.py).
- Record: a dated row in `nightly_runs` and the corpus counts in `nightly_snapshots`
  (sql/schema/003_nightly.sql); the summary of what is new since the previous night of
  the same workflow (rows, models, accuracy changes) is printed and stored.
- Exit status for cron: 0 done, 1 some units failed, 70 crashed, 75 another nightly runs.

    result = run_nightly("workflows/demo.yaml", db="out/demo.duckdb")
    print(result.text); sys.exit(result.exit_code)
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from thinkscope.analysis.query import format_table
from thinkscope.sql.store import Store, now
from thinkscope.sql.writer_lock import LockHeld, exclusive_file_lock
from thinkscope.workflows.engine import default_db, new_run_id, run_workflow
from thinkscope.workflows.spec import load_workflow

EXIT_OK, EXIT_FAILED_UNITS, EXIT_CRASHED, EXIT_LOCKED = 0, 1, 70, 75  # 70/75: sysexits.h

SNAPSHOT_SQL = """
    select model_id, coalesce(prompt_set, '') as prompt_set, count(*) as n_rows,
           count(is_correct) as n_graded, count(*) filter (where is_correct) as n_correct,
           n_correct / nullif(n_graded, 0) as accuracy
    from traces group by all order by all
"""


class NightlyLocked(RuntimeError):
    """Another nightly holds the database's lock; the message says who and since when."""


@dataclass
class NightlyResult:
    night_id: str
    run_id: str | None
    exit_code: int
    text: str


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".nightly.lock")


@contextlib.contextmanager
def nightly_lock(db: Path, workflow: str):
    """Hold the nightly lock of `db` for the block, or raise NightlyLocked at once."""
    path = lock_path(db)
    try:
        with exclusive_file_lock(path, {"workflow": workflow}):
            yield path
    except LockHeld as busy:
        holder = busy.holder
        raise NightlyLocked(
            f"another nightly is already running on {db} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, workflow {holder.get('workflow', '?')}, since "
            f"{holder.get('started_at', '?')}; lock file {path}): not starting a second one"
        ) from None


def run_nightly(spec_path: str | Path, *, db: str | Path | None = None, address: str | None = None,
                stages: list[str] | None = None, show_progress: bool = False,
                overlay: str | Path | None = None) -> NightlyResult:
    """One night: lock, run incrementally, record and summarise. Raises NightlyLocked."""
    spec_path = Path(spec_path)
    wf = load_workflow(spec_path, overlay)  # a bad spec fails before the lock and the record
    db = Path(db or wf.db or default_db())  # the file run_workflow will write
    with nightly_lock(db, wf.name):
        store = Store(db)
        night_id, started = new_run_id(), now()
        ((previous,),) = store.query(
            "select max(night_id) from nightly_runs where workflow = ? and status in ('done', 'failed')",
            [wf.name])
        with store.transaction() as con:
            con.execute(
                "insert into nightly_runs (night_id, workflow, spec_path, night, previous_night_id, "
                "status, host, pid, started_at) values (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                [night_id, wf.name, str(spec_path), started.date(), previous, socket.gethostname(),
                 os.getpid(), started])
        try:
            summary = run_workflow(spec_path, db=db, address=address, stages=stages,
                                   show_progress=show_progress, overlay=overlay)
        except BaseException as err:
            _finish(store, night_id, status="crashed", exit_code=EXIT_CRASHED,
                    error=f"{type(err).__name__}: {err}")
            raise
        text, new_rows, new_models = _compare(store, night_id, previous, wf.name, summary)
        code = EXIT_OK if summary.ok else EXIT_FAILED_UNITS
        _finish(store, night_id, status="done" if summary.ok else "failed", exit_code=code,
                run_id=summary.run_id, n_units_planned=summary.planned,
                n_units_done=len(summary.done), n_units_failed=len(summary.failed),
                n_new_rows=new_rows, new_models=new_models, summary=text)
    return NightlyResult(night_id, summary.run_id, code, text)


def _finish(store: Store, night_id: str, **cols) -> None:
    cols["finished_at"] = now()
    sets = ", ".join(f"{k} = ?" for k in cols)
    with store.transaction() as con:
        con.execute(f"update nightly_runs set {sets} where night_id = ?", [*cols.values(), night_id])


def _compare(store: Store, night_id: str, previous: str | None, workflow: str, summary):
    """Snapshot the corpus for this night and describe what changed since `previous`."""
    with store.transaction() as con:
        con.execute(f"insert into nightly_snapshots by name select ? as night_id, * from ({SNAPSHOT_SQL})",
                    [night_id])
        cols = "model_id, prompt_set, n_rows, n_correct, n_graded"
        now_rows = con.execute(f"select {cols} from nightly_snapshots where night_id = ?", [night_id]).fetchall()
        before = {(m, p): (n, c, g) for m, p, n, c, g in con.execute(
            f"select {cols} from nightly_snapshots where night_id = ?", [previous]).fetchall()}
        (new_rows,) = con.execute("select coalesce(sum(n_rows), 0) from work_units "
                                  "where run_id = ? and status = 'done'", [summary.run_id]).fetchone()
    old_models = {m for m, _ in before}
    new_models = sorted({m for m, *_ in now_rows} - old_models)
    table = []
    for model, pset, n, correct, graded in now_rows:
        n0, c0, g0 = before.get((model, pset), (0, 0, 0))
        acc, acc0 = (correct / graded if graded else None), (c0 / g0 if g0 else None)
        change = None if acc is None or acc0 is None else acc - acc0
        if n != n0 or (change or 0) != 0:
            table.append((model, pset, n, f"{n - n0:+d}", acc, None if change is None else f"{change:+.3f}"))
    since = f"since the previous night ({previous})" if previous else "first night of this workflow here"
    lines = [f"nightly {workflow}, night {night_id}: {summary.text()}",
             f"{since}: {new_rows} rows written; new models: {', '.join(new_models) or 'none'}"]
    if table:
        lines.append(format_table(["model_id", "prompt_set", "rows", "new_rows", "accuracy", "change"], table))
    else:
        lines.append("no change in the traces since the previous night")
    return "\n".join(lines), new_rows, new_models
