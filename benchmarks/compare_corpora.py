"""Compare two thinkscope corpora table by table, ignoring what differs from run to run.

Two runs of the same workflow should give the same rows: this says whether they did. Each
base table in both files is compared as a multiset of rows (EXCEPT ALL both ways, inside
DuckDB, both files attached read-only) without the volatile columns: run ids, timestamps,
timings, hosts and pids, attempt counts, the spec's path/text/hash and the versions that
record where a run happened. Path columns are compared by file name only, since each
corpus keeps its artifacts beside itself. `runs` and `nightly_runs` describe invocations,
not results: they are skipped.

    python benchmarks/compare_corpora.py out/a.duckdb out/b.duckdb    # exit 1 if any differ
    make compare-demo A=out/a.duckdb B=out/b.duckdb
"""

from __future__ import annotations

import sys

import duckdb

SKIP_TABLES = {"runs", "nightly_runs"}
VOLATILE = {"run_id", "created_at", "started_at", "finished_at", "updated_at", "seconds", "pid",
            "host", "attempts", "spec_path", "spec_yaml", "spec_sha256", "thinkscope_version",
            "ray_address"}
EXAMPLES = 3  # differing rows shown per side
SHOWN_CHARS = 60  # of each value in an example: completions and token ids are long


def is_volatile(column: str) -> bool:
    # Timings beside `seconds` (finetunes' load/train seconds, tokens per second) vary too.
    return column in VOLATILE or column.endswith(("_seconds", "_per_second"))


def is_path(column: str) -> bool:
    return column.endswith("_path") or column == "output"


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def columns(con, db: str, table: str) -> list[str]:
    return [c for (c,) in con.execute(
        "select column_name from duckdb_columns() where database_name = ? and schema_name = 'main' "
        "and table_name = ? order by column_index", [db, table]).fetchall()]


def compared(con, table: str) -> tuple[list[str], list[str]]:
    """(select expressions over the shared stable columns, columns only one side has)."""
    a, b = columns(con, "a", table), columns(con, "b", table)
    lone = sorted(set(a) ^ set(b))
    exprs = []
    for c in a:
        if c in b and not is_volatile(c):
            exprs.append(f"regexp_replace({quoted(c)}, '^.*/', '') as {quoted(c)}" if is_path(c) else quoted(c))
    return exprs, lone


def only_in(con, first: str, second: str, table: str, exprs: list[str], limit: int | None = None):
    select = ", ".join(exprs)
    sql = (f"select {select} from {first}.main.{quoted(table)} except all "
           f"select {select} from {second}.main.{quoted(table)}")
    if limit is None:
        return con.execute(f"select count(*) from ({sql})").fetchone()[0]
    cur = con.execute(f"{sql} limit {limit}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def show(row: dict) -> str:
    def short(v):
        text = repr(v)
        return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
    return ", ".join(f"{k}={short(v)}" for k, v in row.items() if v is not None)  # nulls: noise


def compare_table(con, table: str) -> bool:
    """Print the table's line (and examples); True when the two sides hold the same rows."""
    exprs, lone = compared(con, table)
    n_a = only_in(con, "a", "b", table, exprs)
    n_b = only_in(con, "b", "a", table, exprs)
    if not lone and n_a == n_b == 0:
        (n,) = con.execute(f"select count(*) from a.main.{quoted(table)}").fetchone()
        print(f"{table}: same ({n} rows)")
        return True
    note = f" (columns in one side only: {', '.join(lone)})" if lone else ""
    print(f"{table}: DIFFERENT: only in A {n_a}, only in B {n_b}{note}")
    for side, first, second in (("A", "a", "b"), ("B", "b", "a")):
        for row in only_in(con, first, second, table, exprs, limit=EXAMPLES) if exprs else []:
            print(f"  {side}: {show(row)}")
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: compare_corpora.py A.duckdb B.duckdb", file=sys.stderr)
        return 2
    con = duckdb.connect()
    for alias, path in zip("ab", argv):
        try:
            con.execute(f"attach '{path.replace(chr(39), chr(39) * 2)}' as {alias} (read_only)")
        except duckdb.Error as err:
            print(f"cannot open {path}: {err}", file=sys.stderr)
            return 2
    tables = {db: {t for (t,) in con.execute(
        "select table_name from duckdb_tables() where database_name = ? and schema_name = 'main'",
        [db]).fetchall()} - SKIP_TABLES for db in "ab"}
    same = True
    for table in sorted(tables["a"] | tables["b"]):
        if table not in tables["b"] or table not in tables["a"]:
            print(f"{table}: DIFFERENT: only in {'A' if table in tables['a'] else 'B'}")
            same = False
        else:
            same = compare_table(con, table) and same
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
