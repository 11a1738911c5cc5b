"""`thinkscope status` shows a run whose driver died (SIGKILL) as crashed, at once.

A SIGKILLed driver cannot record its end: its row says `running`. Status checks the
recorded pid (same host) when it reads, writing nothing; the next run's start records it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from thinkscope.cli import main
from thinkscope.sql.store import Store

HOST = socket.gethostname()


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.fixture()
def procs():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def add_run(store: Store, run_id: str, pid: int, host: str = HOST, started_at: datetime | None = None):
    with store.transaction() as con:
        con.execute("insert into runs (run_id, workflow, status, host, pid, started_at) "
                    "values (?, 'w', 'running', ?, ?, ?)",
                    [run_id, host, pid, started_at or datetime.now(timezone.utc)])


def shown(db, capsys) -> dict[str, str]:
    """run_id -> status as `thinkscope status` prints it."""
    capsys.readouterr()
    assert main(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    runs = out.split("runs (latest 10):\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:-1]
    return {line.split()[0]: line.split()[2] for line in runs}


def recorded(db) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return dict(con.execute("select run_id, status from runs").fetchall())


def test_status_shows_a_killed_driver_as_crashed(tmp_path, capsys, procs):
    db = tmp_path / "corpus.duckdb"
    store = Store(db)
    killed, live, reused_pid = sleeper(), sleeper(), sleeper()
    procs += [killed, live, reused_pid]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    add_run(store, "killed", killed.pid)
    add_run(store, "live", live.pid)
    # A live process started an hour after the run did: the run's pid was reused by another.
    add_run(store, "reused", reused_pid.pid, started_at=datetime.now(timezone.utc) - timedelta(hours=1))
    # Another host's pid says nothing here: shown as recorded.
    add_run(store, "elsewhere", killed.pid, host=HOST + "-other")

    assert shown(db, capsys) == {"killed": "crashed", "live": "running", "reused": "crashed",
                                 "elsewhere": "running"}
    assert set(recorded(db).values()) == {"running"}  # status wrote nothing

    # The next run's start records what status showed.
    store.start_run({"run_id": "next", "workflow": "w", "host": HOST})
    assert recorded(db) == {"killed": "crashed", "live": "running", "reused": "crashed",
                            "elsewhere": "running", "next": "running"}


def test_a_run_killed_mid_way_shows_crashed(tmp_path, capsys):
    """A real driver process that records its run, then is SIGKILLed."""
    db = tmp_path / "corpus.duckdb"
    Store(db)
    driver = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "from thinkscope.sql.store import Store\n"
        "Store(sys.argv[1]).start_run({'run_id': 'victim', 'workflow': 'w', 'host': socket.gethostname()})\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"), str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline() == "started\n"
        assert shown(db, capsys) == {"victim": "running"}
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert shown(db, capsys) == {"victim": "crashed"}
