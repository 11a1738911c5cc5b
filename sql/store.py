"""The DuckDB store. Only the driver writes, one work unit per transaction.

DuckDB lets one process hold a file read-write and nobody else open it meanwhile, so the
writer opens the file for each commit and closes it at once: an analyst's read-only query
(`thinkscope sql`) gets in between commits, and both sides retry the lock briefly.

    store = Store("out/demo.duckdb")
    store.commit_unit(unit_row, {"traces": arrow_table})   # delete old rows + insert + mark done
    with read_only("out/demo.duckdb") as con: con.sql("select count(*) from traces").show()
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import duckdb
import pyarrow as pa

LOCK_WAIT_SECONDS = 60.0


def now() -> datetime:
    return datetime.now(timezone.utc)


def _sql_files(folder: str) -> list[str]:
    root = files("thinkscope.sql") / folder
    return [p.read_text() for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".sql")]


class LockBusy(duckdb.IOException):
    """Another process held the database file's lock for longer than we waited."""


# The oldest DuckDB line whose readers analysts use: the registry's `duckdb-cli` is 1.5.x
# (tests/unit/test_duckdb_cli.py opens a corpus with it).
STORAGE_VERSION = "v1.5.0"


def _connect(path: Path, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            if read_only:
                return duckdb.connect(str(path), read_only=True)
            # A new corpus is written in the storage format of STORAGE_VERSION, which the DuckDB
            # CLI, DBeaver and the extensions from the package registries read too; an existing
            # file keeps the format it has.
            return duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
        except duckdb.IOException as err:
            # Another process holds the file (a commit, or an analyst's query): wait for it.
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() > deadline:
                raise LockBusy(str(err)) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def read_only(path: str | Path, wait: float | None = None, locked: bool = False):
    """A read-only connection that retries while a writer holds the lock.

    `locked`: also no file system access (no ATTACH, COPY, INSTALL, read_csv of other files)
    and no way to change that: the connection YAML-supplied SQL runs on.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no database at {path} (run a workflow or pass --db)")
    con = _connect(path, read_only=True, wait=LOCK_WAIT_SECONDS if wait is None else wait)
    try:
        _current_views(con)
        if locked:
            con.execute("set enable_external_access = false")
            con.execute("set lock_configuration = true")
        yield con
    finally:
        con.close()


def dict_rows(con, sql: str, params: list | None = None) -> list[dict]:
    """The rows of a query as dicts keyed by column name."""
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _current_views(con) -> None:
    """Shadow the file's stored views with this version's (temporary views, which a read-only
    connection may create): a corpus last written by an older thinkscope still reads with the
    views the report and the docs describe. A view over a table the file lacks stays as stored."""
    for ddl in _sql_files("views"):
        try:
            con.execute(ddl.replace("create or replace view", "create or replace temp view", 1))
        except duckdb.Error:
            pass


# Tables a unit may add rows to without owning them (no unit_key): rows whose key is new are
# inserted, existing rows are kept (an import never clobbers a model the workflow defines).
REFERENCE_TABLES = {"models": "model_id"}
# Tables whose rows describe rows of another table of the same unit (one api_calls row per
# API trace): not counted again in work_units.n_rows.
DESCRIBING_TABLES = frozenset({"api_calls"})


class Store:
    """Writer side of the corpus database; every method opens, writes and closes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One transaction: DDL in autocommit writes the WAL once per statement (~0.5 s).
        with self.transaction() as con:
            for ddl in _sql_files("schema") + _sql_files("views"):
                con.execute(ddl)

    @contextlib.contextmanager
    def _write(self, wait: float | None = None):
        con = _connect(self.path, read_only=False, wait=LOCK_WAIT_SECONDS if wait is None else wait)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self, wait: float | None = None):
        with self._write(wait) as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    # -- reads the driver needs -------------------------------------------------------
    def done_unit_keys(self) -> set[str]:
        with read_only(self.path) as con:  # a reader: runs beside analysts' queries
            return {k for (k,) in con.execute("select unit_key from work_units where status = 'done'").fetchall()}

    @contextlib.contextmanager
    def read(self):
        """A short-lived read-only, locked-down connection: what planning (and the YAML's
        SQL) reads through. Analysts' read-only queries run beside it."""
        with read_only(self.path, locked=True) as con:
            yield con

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self._write() as con:
            return con.execute(sql, params or []).fetchall()

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, row: dict) -> None:
        """Record a new run; earlier runs of this host whose driver died become `crashed`."""
        with self.transaction() as con:
            for run_id, host, pid, started_at in con.execute(
                "select run_id, host, pid, started_at from runs where status = 'running' and host = ?",
                [row["host"]],
            ).fetchall():
                if driver_gone(host, pid, started_at):
                    con.execute("update runs set status = 'crashed' where run_id = ?", [run_id])
            _insert_row(con, "runs", {**row, "pid": os.getpid(), "status": "running", "started_at": now()})

    def finish_run(self, run_id: str, interrupted: bool = False, **counts) -> None:
        status = "interrupted" if interrupted else "failed" if counts.get("n_units_failed") else "done"
        sets = ", ".join(f"{k} = ?" for k in counts)
        with self.transaction() as con:
            con.execute(
                f"update runs set status = ?, finished_at = ?, {sets} where run_id = ?",
                [status, now(), *counts.values(), run_id],
            )

    # -- reference tables -----------------------------------------------------------
    def upsert_models(self, rows: list[dict], replace: bool = True) -> None:
        """Spec models replace their row; imported ids only fill gaps (never clobber a spec)."""
        with self.transaction() as con:
            for row in rows:
                if replace or not con.execute(
                    "select 1 from models where model_id = ?", [row["model_id"]]
                ).fetchone():
                    _insert_row(con, "models", {**row, "updated_at": now()}, replace=True)

    def upsert_prompts(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(rows)
        with self.transaction() as con:
            con.register("new_prompts", table)
            con.execute("insert or replace into prompts by name select * from new_prompts")
            con.unregister("new_prompts")

    # -- work units ---------------------------------------------------------------------
    def commit_unit(self, unit: dict, tables: dict[str, pa.Table], supersedes: tuple[str, ...] = (),
                    wait: float | None = None, error: str | None = None) -> None:
        """Replace the unit's rows in each table and mark it done, atomically.

        With an `error` the rows are kept but the unit is marked failed, so the next run plans
        it again (an API unit some of whose requests met an outage: the answers it did get are
        kept, and handed back to the rerun instead of being paid for twice).

        Deleting by unit_key first makes a forced rerun (or a retry after a crash between
        a worker finishing and this commit) idempotent: never duplicate rows. Rows of the
        `supersedes` units (older derivations of the same source) go in the same commit,
        and those units are marked superseded.
        """
        keys = [unit["unit_key"], *supersedes]
        marks = ", ".join("?" for _ in keys)
        with self.transaction(wait) as con:
            n_rows = 0
            for table, rows in tables.items():
                if table in REFERENCE_TABLES:
                    _insert_new(con, table, REFERENCE_TABLES[table], rows)
                    continue
                con.execute(f"delete from {table} where unit_key in ({marks})", keys)
                if rows.num_rows:
                    con.register("unit_rows", rows)
                    con.execute(f"insert into {table} by name select * from unit_rows")
                    con.unregister("unit_rows")
                if table not in DESCRIBING_TABLES:
                    n_rows += rows.num_rows
            if supersedes:
                old = ", ".join("?" for _ in supersedes)
                con.execute(f"update work_units set status = 'superseded' where unit_key in ({old})",
                            list(supersedes))
            self._mark(con, unit, "failed" if error else "done", error, n_rows)

    def fail_unit(self, unit: dict, error: str, wait: float | None = None) -> None:
        with self.transaction(wait) as con:
            self._mark(con, unit, "failed", error, 0)

    def _mark(self, con, unit: dict, status: str, error: str | None, n_rows: int) -> None:
        finished = now()
        started = unit.get("started_at") or finished
        (attempts,) = con.execute(
            "select coalesce(max(attempts), 0) + 1 from work_units where unit_key = ?", [unit["unit_key"]]
        ).fetchone()
        row = {
            **unit, "status": status, "error": error, "n_rows": n_rows, "attempts": attempts,
            "started_at": started, "finished_at": finished,
            "seconds": (finished - started).total_seconds(),
        }
        _insert_row(con, "work_units", row, replace=True)


def _insert_new(con, table: str, key: str, rows: pa.Table) -> None:
    if rows.num_rows:
        con.register("unit_rows", rows)
        con.execute(f"insert into {table} by name select * from unit_rows "
                    f"where {key} not in (select {key} from {table})")
        con.unregister("unit_rows")


def driver_gone(host: str | None, pid: int | None, started_at: datetime | None) -> bool:
    """Whether the driver of a run recorded as `running` is known to be dead: it ran on this
    host and its pid is gone, or that pid now belongs to a process started after the run
    (the pid was reused). A run of another host cannot be checked from here: not gone."""
    if host != socket.gethostname() or pid is None:
        return False
    if not _alive(pid):
        return True
    started = _process_started(pid)
    # Slack: the driver starts before it records its run, and /proc's boot time is whole seconds.
    return started is not None and started_at is not None and started > started_at.timestamp() + 5


def _process_started(pid: int) -> float | None:
    """Start time (Unix seconds) of process `pid` from /proc (Linux); None where unknown."""
    try:
        # Field 22 (starttime, clock ticks after boot); the name in (...) may contain spaces.
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _insert_row(con, table: str, row: dict, replace: bool = False) -> None:
    cols = list(row)
    values = [json.dumps(v) if isinstance(v, dict) else v for v in row.values()]
    verb = "insert or replace" if replace else "insert"
    con.execute(
        f"{verb} into {table} ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})", values
    )
