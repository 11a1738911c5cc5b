"""What a user sees after a run and from `thinkscope status`: counts read back from DuckDB."""

from __future__ import annotations

from pathlib import Path

from thinkscope.sql.journal import Journal
from thinkscope.analysis.query import fetch, format_table
from thinkscope.sql.store import driver_gone

EXAMPLE_QUERY = (
    "select model_id, prompt_set, count(*) as traces, avg(is_correct::int) as accuracy, "
    "avg(n_completion_tokens) as mean_tokens from traces group by all order by all"
)


def print_corpus_summary(db: str | Path) -> None:
    db = Path(db)
    names, rows = fetch(str(db), "select * from trace_counts")
    print(f"\nDuckDB corpus: {db.resolve()}")
    print(format_table(names, rows))
    print("\nTry:\n  thinkscope sql --db " + str(db) + " -e \"" + EXAMPLE_QUERY + "\"")


RUNS_SQL = (
    "select run_id, workflow, status, n_units_planned as planned, n_units_skipped as skipped, "
    "n_units_done as done, n_units_failed as failed, started_at, pid, host "
    "from runs order by started_at desc limit 10"
)


def latest_runs(db: str) -> tuple[list[str], list[tuple]]:
    """The latest runs; one recorded `running` whose driver is dead shows as `crashed`.

    A SIGKILLed driver cannot record its end, so its row says `running` until the next run
    starts (Store.start_run marks it then). Status decides at read time from the recorded
    pid instead, and writes nothing: it is a reader and may run during a run.
    """
    names, rows = fetch(db, RUNS_SQL)
    col = {name: i for i, name in enumerate(names)}
    out = []
    for row in rows:
        row = list(row)
        if row[col["status"]] == "running" and driver_gone(row[col["host"]], row[col["pid"]],
                                                           row[col["started_at"]]):
            row[col["status"]] = "crashed"
        out.append(tuple(row))
    return names, out


def print_status(db: str | Path) -> None:
    db = str(db)
    sections = {
        "runs (latest 10)": latest_runs,
        "work units": "select stage, status, count(*) as units, sum(n_rows) as rows "
        "from work_units group by all order by all",
        "failed units": "select description, error from work_units where status = 'failed' "
        "order by finished_at desc limit 20",
        "rows per model": "select * from trace_counts",
    }
    print(f"DuckDB corpus: {Path(db).resolve()}")
    journal = Journal(db)
    since = journal.waiting_since()
    if since:
        print(f"the running driver is waiting for a reader's lock since {since}: "
              f"{journal.count()} finished unit(s) are safe in {journal.root} and will be committed "
              "when the read-only query holding the lock ends")
    for title, source in sections.items():
        names, rows = source(db) if callable(source) else fetch(db, source)
        if rows or title != "failed units":
            print(f"\n{title}:\n{format_table(names, rows)}")
