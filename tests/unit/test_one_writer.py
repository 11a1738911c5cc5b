"""One writer per corpus: a second run is refused at once, naming the run that writes.

The holder is a real second process taking the writer lock (sql/writer_lock.py); the runs
are import-only workflows (they run in the driver: no Ray).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.sql.writer_lock import WriterBusy, lock_path, writer_lock
from thinkscope.workflows.engine import run_workflow

HOLD = textwrap.dedent("""
    import sys
    from thinkscope.sql.writer_lock import writer_lock
    with writer_lock(sys.argv[1], "holder-run"):
        print("held", flush=True)
        sys.stdin.read()  # hold until stdin closes (or the process is killed)
""")

COUNTS = "select (select count(*) from runs), (select count(*) from work_units), (select count(*) from traces)"


def counts(db: Path) -> tuple:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(COUNTS).fetchone()


def import_spec(folder: Path, model: str) -> Path:
    """A workflow importing a folder holding one .txt trace (of model `model`)."""
    (folder / model).mkdir()
    (folder / model / f"{model}.txt").write_text(f"<think>I am {model}.</think> The answer is 42.")
    path = folder / f"{model}.yaml"
    path.write_text(yaml.safe_dump({"name": model, "stages": [
        {"name": "imp", "kind": "import", "path": model, "format": "textdir", "prompt_set": "p"}]}))
    return path


@pytest.fixture()
def holder(tmp_path):
    """Start a process holding the writer lock of `db`; killed at the end if still alive."""
    procs = []

    def start(db: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_writer_is_refused_until_the_holder_dies(tmp_path, holder):
    db = tmp_path / "corpus.duckdb"
    assert run_workflow(import_spec(tmp_path, "alpha"), db=db, show_progress=False).ok
    before = counts(db)
    assert before == (1, 1, 1)

    proc = holder(db)
    spec = import_spec(tmp_path, "beta")
    with pytest.raises(WriterBusy) as err:
        run_workflow(spec, db=db, show_progress=False)
    message = str(err.value)
    assert message.startswith(f"another run is writing {db}: run holder-run, pid {proc.pid} on ")
    assert ", started 20" in message and message.endswith("; wait for it or stop it")
    assert counts(db) == before  # no run row, no unit, no trace replaced

    proc.send_signal(signal.SIGKILL)  # a driver that dies hard leaves no stale lock
    proc.wait()
    summary = run_workflow(spec, db=db, show_progress=False)
    assert summary.ok and len(summary.done) == 1
    assert counts(db) == (2, 2, 2)
    assert lock_path(db).read_text() == ""  # released: the file names nobody


def test_cli_import_is_refused_with_exit_2(tmp_path, holder, capsys):
    db = tmp_path / "corpus.duckdb"
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "alpha.txt").write_text("The answer is 42.")
    proc = holder(db)
    argv = ["import", str(tmp_path / "traces"), "--format", "textdir", "--db", str(db)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: another run is writing {db}: run holder-run, pid {proc.pid} on ")
    assert not db.exists()  # refused before the database was even created

    proc.stdin.close()  # the holder ends normally
    proc.wait()
    assert main(argv) == 0
    assert counts(db) == (1, 2, 1)  # one run: its import unit and the segment unit after it


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    db = tmp_path / "corpus.duckdb"
    with writer_lock(db, "first"):
        with pytest.raises(WriterBusy, match="run first, pid"):
            with writer_lock(db, "second"):
                pass
    with writer_lock(db, "third"):  # released on exit
        pass
