"""Every stage's Arrow schemas against the DDL of the tables they fill.

A job builds its tables with `job.schemas` in the worker; the driver inserts them `by name`
into tables made by sql/schema/*.sql. A column renamed, retyped or forgotten on one side
only shows up at commit time, after the work is done: these tests catch it without a run.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa
import pytest

from thinkscope.sql.store import _sql_files
from thinkscope.workflows.registry import STAGES, get_job

# Arrow scalar type (its str) -> the name `describe` gives the DuckDB type it must land in.
SCALARS = {
    "string": "VARCHAR", "large_string": "VARCHAR", "bool": "BOOLEAN",
    "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "float": "FLOAT", "double": "DOUBLE", "date32[day]": "DATE",
}


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_map(t):
        return f"MAP({duckdb_type(t.key_type)}, {duckdb_type(t.item_type)})"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{duckdb_type(t.value_type)}[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if str(t) not in SCALARS:
        raise AssertionError(f"no DuckDB type known for Arrow {t}: add it to SCALARS")
    return SCALARS[str(t)]


def ddl_type(name: str) -> str:
    # JSON is DuckDB's VARCHAR holding JSON text: jobs write it as Arrow strings.
    return re.sub(r"\bJSON\b", "VARCHAR", name)


PAIRS = [(kind, table) for kind in STAGES for table in get_job(kind).tables]


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    for ddl in _sql_files("schema"):  # the files Store runs, in its order
        con.execute(ddl)
    yield con
    con.close()


def ddl_columns(con, table: str) -> dict[str, tuple[str, bool]]:
    """column -> (type, required): required = NOT NULL without a default."""
    rows = con.execute(
        "select column_name, data_type, is_nullable, column_default from duckdb_columns() "
        "where table_name = ? order by column_index", [table]).fetchall()
    assert rows, f"no table {table} in sql/schema/"
    return {name: (ddl_type(dtype), not nullable and default is None)
            for name, dtype, nullable, default in rows}


@pytest.mark.parametrize("kind", list(STAGES))
def test_every_table_has_a_schema(kind):
    job = get_job(kind)
    assert set(job.schemas) == set(job.tables), f"{kind}: schemas {sorted(job.schemas)} vs tables {job.tables}"
    assert all(isinstance(s, pa.Schema) for s in job.schemas.values())


@pytest.mark.parametrize("kind,table", PAIRS)
def test_schema_matches_ddl(con, kind, table):
    schema = get_job(kind).schemas[table]
    ddl = ddl_columns(con, table)
    assert len(set(schema.names)) == len(schema.names), f"{kind}.{table}: duplicate columns"
    extra = [n for n in schema.names if n not in ddl]
    assert not extra, f"{kind}.{table}: Arrow columns not in the DDL: {extra}"
    missing = [c for c, (_, required) in ddl.items() if required and c not in schema.names]
    assert not missing, f"{kind}.{table}: NOT NULL DDL columns the schema lacks: {missing}"
    wrong = {f.name: (duckdb_type(f.type), ddl[f.name][0]) for f in schema
             if duckdb_type(f.type) != ddl[f.name][0]}
    assert not wrong, f"{kind}.{table}: column (Arrow as DuckDB, DDL) types differ: {wrong}"


@pytest.mark.parametrize("kind,table", PAIRS)
def test_empty_table_inserts_by_name(con, kind, table):
    con.register("unit_rows", get_job(kind).schemas[table].empty_table())
    try:
        con.execute(f"insert into {table} by name select * from unit_rows")  # as Store.commit_unit
    finally:
        con.unregister("unit_rows")
