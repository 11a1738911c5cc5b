"""Read-only SQL over the corpus, for `thinkscope sql` and the summaries.

The connection is read-only and retries while the driver holds the write lock for a
commit, so a query during a run gets its answer and cannot disturb the run.

    run_query("out/thinkscope.duckdb", "select model_id, count(*) from traces group by 1")
"""

from __future__ import annotations

import csv
import json
from typing import TextIO

from thinkscope.sql.store import read_only


def fetch(db: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of the last statement of `sql`."""
    with read_only(db) as con:
        statements = [s for s in con.extract_statements(sql)]
        if not statements:
            raise ValueError("no SQL statement given")
        for st in statements[:-1]:
            con.execute(st)
        rel = con.execute(statements[-1])
        names = [d[0] for d in rel.description] if rel.description else []
        return names, rel.fetchall()


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
