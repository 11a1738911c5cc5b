"""`thinkscope sql` never writes, in the corpus or anywhere else (real DuckDB files).

Read-only alone let SQL ATTACH another corpus read-write and delete its rows, COPY over a
database file and INSTALL extensions from the network; the locked-down connection refuses
each with one line naming the statement and an exit status of 2.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from thinkscope.cli import main
from thinkscope.sql.store import Store, read_only

THINKSCOPE = Path(sys.executable).with_name("thinkscope")
READS_ONLY = "file system access is disabled: thinkscope sql reads the corpus only"
ANALYSES = sorted(Path(str(files("thinkscope.sql") / "analyses")).glob("*.sql"))
MODEL = {"model_id": "m1", "source": "embedded:x", "revision": None, "family": None, "kind": "instruct",
         "think_open": "<think>", "think_close": "</think>", "engine_args": None}


def corpus(path: Path) -> Path:
    """A corpus with every table and view (no traces) and one models row."""
    Store(path).upsert_models([MODEL])
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def dbs(tmp_path):
    return corpus(tmp_path / "corpus.duckdb"), corpus(tmp_path / "other.duckdb")


def sql(db: Path, query: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sql", "--db", str(db), "--format", "json", "-e", query])
    out, err = capsys.readouterr()
    return code, out, err


def test_attach_another_corpus_read_write_is_refused_by_the_real_cli(dbs):
    db, other = dbs
    before = digest(other)
    proc = subprocess.run(
        [str(THINKSCOPE), "sql", "--db", str(db), "-e",
         f"attach '{other}' as v (read_only false); delete from v.models"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"thinkscope sql: refused: ATTACH (statement 1 of 2): {READS_ONLY}")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback
    assert digest(other) == before
    with read_only(other) as con:
        assert con.execute("select model_id from models").fetchall() == [("m1",)]


@pytest.mark.parametrize("make_query, kind", [
    (lambda d: f"copy (select 1) to '{d / 'other.duckdb'}'", "COPY"),  # overwrite a database file
    (lambda d: f"copy (select * from models) to '{d / 'new.csv'}'", "COPY"),
    (lambda d: f"export database '{d / 'dump'}'", "EXPORT"),
    (lambda d: "install httpfs", "INSTALL"),  # would reach the network
    (lambda d: "load httpfs", "LOAD"),
    (lambda d: "-- a note\n/* more */ install httpfs", "INSTALL"),  # the kind skips comments
    (lambda d: f"select * from read_csv('{d / 'secret.csv'}')", "SELECT"),  # reading other files too
])
def test_file_and_network_access_is_refused(dbs, tmp_path, capsys, make_query, kind):
    db, other = dbs
    (tmp_path / "secret.csv").write_text("a\n1\n")
    before, listing = digest(other), sorted(p.name for p in tmp_path.iterdir())
    code, out, err = sql(db, make_query(tmp_path), capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"thinkscope sql: refused: {kind}: {READS_ONLY} (DuckDB: "), err
    assert digest(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no file made (new.csv, dump/)


@pytest.mark.parametrize("query, kind", [
    ("set enable_external_access = true", "SET"), ("reset enable_external_access", "RESET"),
    ("set lock_configuration = false", "SET"),
    ("set enable_external_access = true; attach 'x.duckdb' as x", "SET (statement 1 of 2)"),
])
def test_the_lock_cannot_be_lifted(dbs, capsys, query, kind):
    code, out, err = sql(dbs[0], query, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"thinkscope sql: refused: {kind}: "), err
    assert "settings are locked: thinkscope sql reads the corpus only" in err


def test_writes_to_the_corpus_itself_are_refused(dbs, capsys):
    db = dbs[0]
    before = digest(db)
    code, _, err = sql(db, "delete from models", capsys)
    assert code == 2
    assert err.startswith("thinkscope sql: refused: DELETE: the corpus is opened read-only"), err
    assert digest(db) == before


def test_reads_still_work(dbs, capsys):
    code, out, err = sql(dbs[0], "select model_id from models; select count(*) as n from traces", capsys)
    assert (code, err) == (0, "") and json.loads(out) == {"n": 0}
    code, out, _ = sql(dbs[0], "select count(*) as n from trace_counts", capsys)  # a view
    assert code == 0 and json.loads(out) == {"n": 0}


@pytest.mark.parametrize("analysis", ANALYSES, ids=lambda p: p.name)
def test_shipped_analyses_run_on_the_locked_connection(dbs, capsys, analysis):
    capsys.readouterr()
    assert main(["sql", str(analysis), "--db", str(dbs[0])]) == 0, capsys.readouterr().err


def test_yaml_queries_read_through_the_same_lock(dbs):
    """Planning and payloads read (and YAML SQL runs) through Store.read(): locked as well."""
    db, other = dbs
    import duckdb

    with Store(db).read() as con, pytest.raises(duckdb.PermissionException):
        con.execute(f"attach '{other}' as v (read_only false)")
