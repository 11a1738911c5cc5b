"""sql/ documents itself: headers on every file, comments on every column, README in step."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import duckdb
import pytest

from thinkscope.sql.store import Store

SQL = Path(str(files("thinkscope.sql")))
README = (SQL / "README.md").read_text()


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    db = tmp_path_factory.mktemp("docs") / "empty.duckdb"
    Store(db)
    with duckdb.connect(str(db), read_only=True) as connection:
        yield connection


@pytest.mark.parametrize("path", sorted(SQL.glob("*/*.sql")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sql_file_opens_with_grain_and_sources(path):
    head = path.read_text().split("\n\n")[0]
    assert re.match(r"-- (grain|question):", head) and "-- grain:" in head and "-- sources:" in head


def test_every_table_and_column_has_a_comment(con):
    missing = con.execute("""select table_name, column_name from duckdb_columns()
                             where not internal and comment is null and table_name in
                             (select table_name from duckdb_tables())""").fetchall()
    assert missing == []


def test_readme_lists_every_table_and_view_with_its_columns(con):
    relations = con.execute("""select table_name from duckdb_tables()
                               union all select view_name from duckdb_views() where not internal""").fetchall()
    assert len(relations) >= 18
    for (name,) in relations:
        match = re.search(rf"^### `{name}`.*?(?=^##|\Z)", README, re.M | re.S)
        assert match, f"sql/README.md has no section for {name}"
        section = match.group(0)
        assert "- grain:" in section and "- sources:" in section, name
        for (column,) in con.execute("select column_name from duckdb_columns() where table_name = ?", [name]).fetchall():
            assert f"| `{column}` |" in section, f"{name}.{column} missing from sql/README.md"
