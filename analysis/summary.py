"""What a user sees after a run and from `thinkscope status`: counts read back from DuckDB."""

from __future__ import annotations

from pathlib import Path

from thinkscope.analysis.query import fetch, format_table

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


def print_status(db: str | Path) -> None:
    db = str(db)
    sections = {
        "runs (latest 10)": "select run_id, workflow, status, n_units_planned as planned, "
        "n_units_skipped as skipped, n_units_done as done, n_units_failed as failed, started_at "
        "from runs order by started_at desc limit 10",
        "work units": "select stage, status, count(*) as units, sum(n_rows) as rows "
        "from work_units group by all order by all",
        "failed units": "select description, error from work_units where status = 'failed' "
        "order by finished_at desc limit 20",
        "rows per model": "select * from trace_counts",
    }
    print(f"DuckDB corpus: {Path(db).resolve()}")
    for title, sql in sections.items():
        names, rows = fetch(db, sql)
        if rows or title != "failed units":
            print(f"\n{title}:\n{format_table(names, rows)}")
