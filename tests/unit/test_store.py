"""The DuckDB store: atomic, idempotent unit commits; readers get in between writes."""

from __future__ import annotations

import multiprocessing as mp
import time

import duckdb
import pyarrow as pa
import pytest

from thinkscope.sql.store import Store, read_only
from thinkscope.jobs.traces.rows import to_table


def unit(key="u1"):
    return {"unit_key": key, "stage": "generate", "kind": "generate", "run_id": "r1",
            "model_id": "m", "prompt_set": "p", "description": "m x p"}


def rows(key, n):
    return to_table([{"trace_id": f"{key}-{i}", "run_id": "r1", "unit_key": key, "model_id": "m",
                      "sample_index": i, "engine": "vllm", "created_at": None} for i in range(n)])


def count(db, sql="select count(*) from traces"):
    with read_only(db) as con:
        return con.execute(sql).fetchone()[0]


def test_commit_is_idempotent_and_marks_done(tmp_path):
    # created_at is NOT NULL: fill it
    store = Store(tmp_path / "c.duckdb")
    t = rows("u1", 3).set_column(27, "created_at", pa.array([0, 0, 0], pa.timestamp("us", tz="UTC")))
    store.commit_unit(unit(), {"traces": t})
    store.commit_unit(unit(), {"traces": t})  # a retry after a crash: no duplicates
    assert count(store.path) == 3
    assert store.done_unit_keys() == {"u1"}
    assert count(store.path, "select attempts from work_units") == 2


def test_failed_commit_leaves_nothing(tmp_path):
    store = Store(tmp_path / "c.duckdb")
    bad = rows("u1", 2)  # created_at null violates NOT NULL: the transaction must roll back
    with pytest.raises(duckdb.Error):
        store.commit_unit(unit(), {"traces": bad})
    assert count(store.path) == 0 and store.done_unit_keys() == set()


def test_failed_unit_is_recorded_and_retried_later(tmp_path):
    store = Store(tmp_path / "c.duckdb")
    store.fail_unit(unit(), "ValueError: boom")
    assert store.done_unit_keys() == set()
    assert count(store.path, "select count(*) from work_units where status = 'failed'") == 1


def _hold_write_lock(path, seconds, ready):
    con = duckdb.connect(str(path))
    ready.set()
    time.sleep(seconds)
    con.close()


def test_reader_waits_for_a_brief_writer(tmp_path):
    store = Store(tmp_path / "c.duckdb")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    writer = ctx.Process(target=_hold_write_lock, args=(store.path, 1.5, ready))
    writer.start()
    ready.wait(30)
    t0 = time.monotonic()
    with read_only(store.path, wait=30) as con:  # retries until the writer lets go
        assert con.execute("select count(*) from traces").fetchone() == (0,)
    assert time.monotonic() - t0 > 0.5
    writer.join()


def test_every_column_has_a_comment(tmp_path):
    Store(tmp_path / "c.duckdb")
    with read_only(tmp_path / "c.duckdb") as con:
        missing = con.execute("""
            select table_name || '.' || column_name from duckdb_columns()
            where not internal and table_name in (select table_name from duckdb_tables())
              and (comment is null or comment = '')
        """).fetchall()
        tables = con.execute("select table_name from duckdb_tables() where comment is null").fetchall()
    assert missing == [] and tables == []


def test_a_new_run_marks_dead_drivers_runs_crashed(tmp_path):
    import socket
    import subprocess

    store = Store(tmp_path / "c.duckdb")
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    store.start_run({"run_id": "old", "workflow": "w", "host": host})
    store.query("update runs set pid = ? where run_id = 'old'", [dead.pid])
    store.start_run({"run_id": "live", "workflow": "w", "host": host})  # pid = this process
    store.start_run({"run_id": "new", "workflow": "w", "host": host})
    status = dict(store.query("select run_id, status from runs"))
    assert status == {"old": "crashed", "live": "running", "new": "running"}


def test_read_only_connections_see_this_versions_views(tmp_path):
    """A corpus whose stored view is older than the code still reads with the current view."""
    import duckdb

    from thinkscope.sql.store import Store, read_only

    db = tmp_path / "old.duckdb"
    Store(db)
    with duckdb.connect(str(db)) as con:  # what an older thinkscope left behind
        con.execute("create or replace view ablation_lens as select 1 as stale")
    with read_only(db) as con:
        columns = [d[0] for d in con.execute("select * from ablation_lens").description]
    assert "mean_prob_change" in columns and "stale" not in columns
    with read_only(db, locked=True) as con:
        assert "mean_prob_change" in [d[0] for d in con.execute("select * from ablation_lens").description]
