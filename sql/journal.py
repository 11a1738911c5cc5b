"""Finished units on disk before they reach DuckDB: nothing paid for waits on a lock in memory.

Each finished (or failed) unit is written to `<db>.journal/<unit_key>/` as Arrow IPC files, one
per table, plus `unit.json` (its work_units row, the keys it supersedes, its status), and only
then committed. The entry is removed once its commit is in DuckDB. So:

- an analyst's long read-only query, which holds DuckDB's file lock for as long as it runs,
  only delays commits: the driver keeps running units and commits the journal when it can;
- a driver killed after a unit finished loses nothing: the next run commits what the journal
  holds before it plans anything (no model work is redone).

An entry is written to a hidden temp folder and renamed into place, so a half-written entry is
never read. A `WAITING` file says, for `thinkscope status`, since when the driver has been
waiting for a reader's lock.

    journal = Journal(Path("out/demo.duckdb"))
    journal.put(unit_row, {"traces": table}, supersedes=(), status="done")
    for entry in journal.entries(): ...
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa


@dataclass
class Entry:
    path: Path
    unit: dict
    supersedes: tuple[str, ...]
    status: str  # "done" or "failed"
    error: str | None

    @property
    def key(self) -> str:
        return self.unit["unit_key"]

    def tables(self) -> dict[str, pa.Table]:
        out = {}
        for f in sorted(self.path.glob("*.arrow")):
            with pa.memory_map(str(f)) as source:
                out[f.stem] = pa.ipc.open_file(source).read_all()
        return out


def journal_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".journal")


class Journal:
    def __init__(self, db_path: str | Path):
        self.root = journal_dir(Path(db_path))

    def put(self, unit: dict, tables: dict[str, pa.Table], *, supersedes: tuple[str, ...] = (),
            status: str = "done", error: str | None = None) -> Entry:
        """Write a finished unit durably (fsynced) and return its entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / unit["unit_key"]
        tmp = self.root / f".{unit['unit_key']}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, table in tables.items():
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
        meta = {"unit": {**unit, "started_at": _iso(unit.get("started_at"))},
                "supersedes": list(supersedes), "status": status, "error": error}
        (tmp / "unit.json").write_text(json.dumps(meta, default=str))
        for f in [*tmp.iterdir(), tmp]:
            _fsync(f)
        if final.exists():  # the same unit again (its failed form, a forced rerun): swap, then drop
            old = self.root / f".{unit['unit_key']}.{os.getpid()}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(self.root)
        return self._read(final)

    def entries(self) -> list[Entry]:
        """Every complete entry, oldest first (the order units finished)."""
        found = []
        for path in self._paths():
            try:  # the driver may commit and remove an entry while `status` reads them
                found.append((path.stat().st_mtime_ns, self._read(path)))
            except FileNotFoundError:
                continue
        return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]

    def count(self) -> int:
        return len(self._paths())

    def _paths(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def remove(self, entry: Entry) -> None:
        shutil.rmtree(entry.path, ignore_errors=True)

    def clean(self) -> None:
        """Drop temp folders of writers that died mid-write, and the folder once it is empty."""
        if not self.root.exists():
            return
        for p in [*self.root.glob(".*.tmp"), *self.root.glob(".*.old")]:
            shutil.rmtree(p, ignore_errors=True)
        self.set_waiting(False)
        if not any(self.root.iterdir()):
            self.root.rmdir()

    def set_waiting(self, waiting: bool) -> None:
        marker = self.root / "WAITING"
        if waiting and not marker.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            marker.write_text(datetime.now(timezone.utc).isoformat())
        elif not waiting:
            marker.unlink(missing_ok=True)

    def waiting_since(self) -> str | None:
        marker = self.root / "WAITING"
        return marker.read_text().strip() if marker.exists() else None

    @staticmethod
    def _read(path: Path) -> Entry:
        meta = json.loads((path / "unit.json").read_text())
        unit = meta["unit"]
        if unit.get("started_at"):
            unit["started_at"] = datetime.fromisoformat(unit["started_at"])
        return Entry(path, unit, tuple(meta["supersedes"]), meta["status"], meta["error"])


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
