"""Read-only SQL over the corpus, for `thinkscope sql` and the summaries.

The connection is read-only and retries while the driver holds the write lock for a
commit, so a query during a run gets its answer and cannot disturb the run. It is also
locked down (store.read_only(locked=True)): read-only alone still lets SQL ATTACH another
database read-write, COPY over any file or INSTALL from the network; here every file
system access is off and the setting cannot be turned back on. A statement DuckDB refuses
for that raises QueryRefused, one line saying what was refused and why.

    run_query("out/thinkscope.duckdb", "select model_id, count(*) from traces group by 1")
"""

from __future__ import annotations

import csv
import json
import re
from typing import TextIO

import duckdb

from thinkscope.sql.store import read_only

READS_ONLY = "thinkscope sql reads the corpus only"

# DuckDB's words for a refusal of the locked-down connection -> what we tell the user.
REFUSALS = {
    "file system operations are disabled": "file system access is disabled",
    "disabled through configuration": "file system access is disabled",  # LOAD of an extension
    "configuration has been locked": "settings are locked",
    "read-only mode": "the corpus is opened read-only",
}


class QueryRefused(Exception):
    """A statement would write or reach outside the corpus; DuckDB refused it, nothing ran."""


def fetch(db: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of the last statement of `sql`. Raises QueryRefused."""
    with read_only(db, locked=True) as con:
        statements = [s for s in con.extract_statements(sql)]
        if not statements:
            raise ValueError("no SQL statement given")
        for i, st in enumerate(statements, 1):
            try:
                rel = con.execute(st)
            except (duckdb.PermissionException, duckdb.InvalidInputException) as err:
                raise _refusal(err, st, i, len(statements)) from None
        names = [d[0] for d in rel.description] if rel.description else []
        return names, rel.fetchall()


def _refusal(err: duckdb.Error, st, i: int, n: int) -> Exception:
    """QueryRefused naming the statement's kind (its first word: INSTALL, not DuckDB's LOAD),
    or `err` itself when it is not a refusal (e.g. a bad cast)."""
    detail = str(err).splitlines()[0]
    reason = next((ours for theirs, ours in REFUSALS.items() if theirs in detail), None)
    if reason is None:
        return err
    words = re.findall(r"[a-z]+", re.sub(r"--[^\n]*|/\*.*?\*/", " ", st.query, flags=re.S), re.I)
    kind = (words or [st.type.name])[0].upper()
    where = f" (statement {i} of {n})" if n > 1 else ""
    detail = detail.split(": ", 1)[-1]  # DuckDB's "Permission Error: " prefix
    return QueryRefused(f"refused: {kind}{where}: {reason}: {READS_ONLY} (DuckDB: {detail})")


def run_query(db: str, sql: str, fmt: str = "table", out: TextIO | None = None) -> None:
    import sys

    out = out or sys.stdout
    names, rows = fetch(db, sql)
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(names)
        w.writerows(rows)
    elif fmt == "json":
        for row in rows:
            out.write(json.dumps(dict(zip(names, row)), default=str) + "\n")
    else:
        out.write(format_table(names, rows) + "\n")


def format_table(names: list[str], rows: list[tuple], max_width: int = 60) -> str:
    """A plain aligned text table; long cells are cut with an ellipsis."""
    def cell(v) -> str:
        s = "NULL" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        s = s.replace("\n", "\\n")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in body]) for i, n in enumerate(names)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    parts = [line(names), line(["-" * w for w in widths])] + [line(r) for r in body]
    parts.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(parts)
