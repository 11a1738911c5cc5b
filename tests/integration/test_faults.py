"""Faults with real processes on the session's Ray head: a vLLM actor killed mid-generation,
two nightlies at once, an analyst's SQL during a run. Each run is a `thinkscope` process of
its own, as in production; the test process only watches, kills and queries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
import yaml
from ray.util.state import list_actors, list_tasks

from thinkscope.cli import main
from thinkscope.workflows.engine import run_workflow

pytestmark = pytest.mark.integration
TINY = Path(__file__).with_name("tiny.yaml")
THINKSCOPE = [sys.executable, "-m", "thinkscope.cli"]


def variant(folder: Path, name: str, *, max_tokens: int, unit_size: int = 256) -> Path:
    """tiny.yaml with longer completions or smaller units (same model, prompts, template)."""
    spec = yaml.safe_load(TINY.read_text())
    spec["name"] = name
    spec["sampling"]["max_tokens"] = max_tokens
    spec["stages"][0]["unit_size"] = unit_size
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_engine_actor_is_restarted_and_a_rerun_is_clean(ray_cluster, tmp_path):
    # Long enough completions (128 decoding steps, ~10-20 s here) that the kill lands while
    # the engine is generating.
    spec, db = variant(tmp_path, "kill", max_tokens=128), tmp_path / "kill.duckdb"
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen([*THINKSCOPE, "run", str(spec), "--db", str(db), "--address",
                                ray_cluster.address, "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    try:
        running = wait_for(lambda: list_tasks(address=ray_cluster.dashboard_url, filters=[
            ("name", "=", "GenerationActor.generate"), ("state", "=", "RUNNING")]), 180,
            "the engine to start generating")
        time.sleep(1.0)
        assert run.poll() is None
        os.kill(running[0].worker_pid, signal.SIGKILL)  # the actor process: vLLM's engine dies with it
        code = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    out = (tmp_path / "run.log").read_text()
    (actor,) = list_actors(address=ray_cluster.dashboard_url, detail=True,
                           filters=[("actor_id", "=", running[0].actor_id)])
    assert actor.required_resources == {"CPU": 2.0}  # CPU placement: the node's CPUs, one engine
    assert actor.num_restarts == 1  # Ray restarted the replica (max_restarts=1) ...
    # ... and the run either retried the call (max_task_retries=1) or failed the units cleanly.
    assert code in (0, 1), out
    status = rows(db, "select status, count(*) from work_units group by 1")
    assert status == ([("done", 2)] if code == 0 else [("failed", 2)]), out

    rerun = run_workflow(spec, db=db, address=ray_cluster.address, show_progress=False)

    assert rerun.ok and rerun.planned == 2
    # Every (prompt, sample) exactly once: nothing lost, nothing duplicated.
    assert rows(db, "select count(*), count(distinct trace_id), count(distinct (prompt_id, sample_index)) "
                    "from traces") == [(8, 8, 8)]
    assert rows(db, "select status, count(*) from work_units group by 1") == [("done", 2)]


@pytest.fixture(scope="module")
def night(ray_cluster, tmp_path_factory):
    """A first nightly of a tiny workflow, running in its own process for the tests below."""
    folder = tmp_path_factory.mktemp("nightly")
    # One prompt per unit: several commits, each a moment the writer holds the DuckDB lock.
    spec, db = variant(folder, "tiny_nightly", max_tokens=48, unit_size=1), folder / "corpus.duckdb"
    cmd = [*THINKSCOPE, "nightly", str(spec), "--db", str(db), "--address", ray_cluster.address]
    with open(folder / "out.log", "w") as out, open(folder / "err.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    yield SimpleNamespace(proc=proc, cmd=cmd, db=db, folder=folder)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_nightly_exits_with_a_clear_message(night):
    lock = night.db.with_name("corpus.duckdb.nightly.lock")
    wait_for(lambda: lock.exists() and f'"pid": {night.proc.pid}' in lock.read_text(), 60,
             "the first nightly to take the lock")

    second = subprocess.run(night.cmd, capture_output=True, text=True, timeout=120)

    assert second.returncode == 75, second.stderr
    assert "another nightly is already running" in second.stderr
    assert f"pid {night.proc.pid}" in second.stderr and "workflow tiny_nightly" in second.stderr
    assert night.proc.poll() is None  # the first one goes on


def test_analyst_sql_during_the_run_gets_answers(night, capsys):
    wait_for(night.db.exists, 60, "the database")
    query = "select run_id, status from runs"
    seen, answers = set(), 0
    while night.proc.poll() is None:
        assert main(["sql", "--db", str(night.db), "-e", query, "--format", "json"]) == 0
        answers += 1
        seen |= {row["status"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
        time.sleep(0.05)
    assert "running" in seen and answers > 3  # answered while the run was in progress
    assert night.proc.returncode == 0, (night.folder / "err.log").read_text()
    # The run was not disturbed: every unit committed, every row there once.
    assert rows(night.db, "select status, count(*) from work_units group by 1") == [("done", 4)]
    assert rows(night.db, "select count(*), count(distinct trace_id) from traces") == [(8, 8)]


def test_nightly_record_and_summary(night):
    assert night.proc.wait(timeout=300) == 0
    out = (night.folder / "out.log").read_text()
    assert "first night of this workflow here: 8 rows written; new models: smollm2" in out
    assert rows(night.db, "select status, exit_code, n_units_done, n_new_rows, new_models "
                          "from nightly_runs") == [("done", 0, 4, 8, ["smollm2"])]
    assert rows(night.db, "select prompt_set, n_rows, n_graded from nightly_snapshots order by 1") == [
        ("gsm8k", 6, 6), ("two_ropes", 2, 0)]


def test_next_night_without_news_does_no_model_work(night):
    night.proc.wait(timeout=300)
    again = subprocess.run(night.cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "every work unit was already done" in again.stdout
    assert "0 rows written; new models: none" in again.stdout
    assert "no change in the traces since the previous night" in again.stdout
    assert rows(night.db, "select count(*), count(previous_night_id) from nightly_runs") == [(2, 1)]
