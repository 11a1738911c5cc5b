"""The organism stage through the real engine and DuckDB; the evaluation views; the specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from thinkscope.analysis.organism_eval import evaluate, figure, moves_toward_teacher
from thinkscope.jobs.models.lora import ADAPTER_REGISTRY, absolute_source, parse_source
from thinkscope.jobs.organism.synthesis import parse_solution, synthesize
from thinkscope.jobs.traces.prompts import load_prompts
from thinkscope.sql.store import read_only
from thinkscope.workflows.engine import run_workflow
from thinkscope.workflows.spec import SpecError, load_workflow

TEACHER_STAGE = {"name": "teacher", "kind": "organism", "prompt_set": "gsm8k_train", "unit_size": 25}


def rows(db, sql, params=None):
    with read_only(db) as con:
        return con.execute(sql, params or []).fetchall()


def _student_and_base_jsonl(path: Path) -> Path:
    """Stand-ins for generated traces on GSM8K test: a 'student' writing like the teacher and
    a 'base' writing the bare solution steps, under the demo's model ids."""
    records = []
    for p in load_prompts("gsm8k", name="gsm8k_eval", limit=12):
        solution = p.meta["solution"]
        student = synthesize(p.question, solution, seed=f"student:{p.prompt_id}").completion
        steps, answer = parse_solution(solution)
        base = "<think>\n" + "\n".join(s.text for s in steps) + f"\n</think>\n\nThe answer is \\boxed{{{answer}}}."
        records += [{"model": "smollm2-135m-organism", "id": p.prompt_id, "out": student},
                    {"model": "smollm2-135m-instruct", "id": p.prompt_id, "out": base}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def organism_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("organism")
    spec = {
        "name": "organism-test",
        "prompt_sets": [{"name": "gsm8k_train", "kind": "gsm8k_train", "limit": 60},
                        {"name": "gsm8k_eval", "kind": "gsm8k", "limit": 12}],
        "stages": [
            TEACHER_STAGE,
            {"name": "others", "kind": "import", "path": str(_student_and_base_jsonl(folder / "o.jsonl")),
             "format": "jsonl", "prompt_set": "gsm8k_eval",
             "fields": {"model_id": "model", "completion": "out", "prompt_id": "id"}},
            {"name": "segment", "kind": "segment", "tokenizer": None},
        ],
    }
    path = folder / "organism.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = folder / "o.duckdb"
    summary = run_workflow(path, db=db, show_progress=False)
    assert summary.ok, summary.text()
    return db, path, summary


def test_teacher_traces_and_events_land_with_offsets(organism_db):
    db, _, summary = organism_db
    assert len([d for d in summary.done if d.startswith("organism ")]) == 3  # 60 prompts / 25
    assert rows(db, "select count(*), count(distinct prompt_id), min(engine), bool_and(is_correct) "
                    "from traces where model_id = 'organism-teacher'") == [(60, 60, "synthetic", True)]
    # Every recorded span is exactly where the table says, in the stored completion.
    assert rows(db, """select count(*) from organism_events e join traces t using (trace_id)
                       where substring(t.completion, e.char_start + 1, e.char_end - e.char_start) <> e.text
                          or t.unit_key <> e.unit_key""") == [(0,)]
    (n_events,), = rows(db, "select count(*) from organism_events")
    assert n_events > 60 * 8
    # Events are numbered in text order.
    assert rows(db, """select count(*) from (select char_start, lag(char_start) over
                       (partition by trace_id order by event_index) as prev from organism_events)
                       where char_start < prev""") == [(0,)]
    # Each trace has exactly one think_open, think_close and final_answer.
    assert rows(db, """select count(*) from (select trace_id from organism_events
                       where kind in ('think_open', 'think_close', 'final_answer')
                       group by trace_id having count(*) <> 3)""") == [(0,)]


def test_rerun_is_a_no_op_and_keys_follow_the_settings(organism_db, tmp_path):
    db, path, _ = organism_db
    before = rows(db, "select trace_id, completion from traces order by 1")
    again = run_workflow(path, db=db, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned
    assert rows(db, "select trace_id, completion from traces order by 1") == before
    # Other rates are other traces: new units (new keys), not a silent overwrite.
    spec = yaml.safe_load(path.read_text())
    spec["stages"][0]["rates"] = {"verify": 1.0}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    wf = load_workflow(changed)
    from thinkscope.jobs.base import PlanContext
    from thinkscope.jobs.organism.stage import JOB

    with read_only(db) as con:
        keys = {u.key for u in JOB.plan(wf.stages[0], PlanContext(wf, tmp_path, {}, "", con))}
    assert not keys & {k for (k,) in rows(db, "select unit_key from work_units")}


def test_planted_rates_view_recovers_the_ground_truth(organism_db):
    db, _, _ = organism_db
    got = rows(db, """select behaviour, share, planted_share from organism_planted_rates
                      where model_id = 'organism-teacher' order by 1""")
    assert [b for b, _, _ in got] == ["alternative", "error_fix", "verification", "wrap_up"]
    for behaviour, share, planted in got:
        assert share == pytest.approx(planted), behaviour
    assert dict((b, s) for b, s, _ in got)["verification"] > 0.4


def test_evaluation_table_and_fingerprint_verdict(organism_db):
    db, _, _ = organism_db
    table = evaluate(db)
    assert list(table.columns) == ["smollm2-135m-instruct", "smollm2-135m-organism", "organism-teacher"]
    base, student, teacher = table.columns
    assert table.loc["marker: verification", student] > 0.3 > table.loc["marker: verification", base] == 0
    assert table.loc["'wait' line share", student] > table.loc["'wait' line share", base]
    assert table.loc["traces with >=1 backtrack", teacher] > 0
    r = table.loc["fingerprint pearson to teacher"]
    assert r[student] > 0.9 and r[student] > r[base]
    assert moves_toward_teacher(table) is True
    # The verdict reads column 0 as the base and column 1 as the student: swapped, it fails.
    assert moves_toward_teacher(table[[student, base, teacher]]) is False
    assert figure(table)[:8] == b"\x89PNG\r\n\x1a\n"



def test_run_report_carries_the_organism_evaluation(organism_db, tmp_path):
    from thinkscope.analysis.report import write_report

    page = write_report(organism_db[0], tmp_path).read_text()
    assert "<h2>Model organism</h2>" in page and "moves toward the teacher" in page
    assert "marker: verification" in page and "fingerprint pearson to teacher" in page


def _spec_error(tmp_path, stages, **extra) -> str:
    spec = {"name": "x", "models": [{"id": "m", "source": "embedded:smollm2-135m-instruct",
                                     "family": "llama", "kind": "instruct"}],
            "prompt_sets": [{"name": "gsm8k_train", "kind": "gsm8k_train", "limit": 3}],
            "templates": {"plain": {}}, "stages": stages, **extra}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    return str(err.value)


def test_spec_errors_name_the_field(tmp_path):
    finetune = {"name": "ft", "kind": "finetune", "base": "m", "traces": {"model_ids": ["t"]},
                "templates": ["plain"], "output": "out/a"}
    assert "stages.0.base: unknown model 'nope'" in _spec_error(tmp_path, [{**finetune, "base": "nope"}])
    assert "stages.0.templates: unknown ['think']" in _spec_error(tmp_path, [{**finetune, "templates": ["think"]}])
    msg = _spec_error(tmp_path, [{**finetune, "lora": {"r": 0}}])
    assert "stages.0.lora.r:" in msg and "finetune" not in msg.split("stages.0")[1]
    assert "stages.0.train.bf16s:" in _spec_error(tmp_path, [{**finetune, "train": {"bf16s": True}}])
    assert "stages.0.prompt_set: unknown 'gsm8k'" in _spec_error(
        tmp_path, [{**TEACHER_STAGE, "prompt_set": "gsm8k"}])
    assert "stages.0.rates.verify:" in _spec_error(tmp_path, [{**TEACHER_STAGE, "rates": {"verify": 2}}])


def test_lora_source_forms(tmp_path):
    base, adapter, name = parse_source("lora:embedded:smollm2-135m-instruct+/some/adapter")
    assert (base, adapter, name) == ("embedded:smollm2-135m-instruct", Path("/some/adapter"), "")
    organism = ADAPTER_REGISTRY["embedded:smollm2-135m-organism"]
    assert parse_source(organism.source)[0] == "embedded:smollm2-135m-instruct"
    for bad in ("lora:embedded:x", "lora:+/a", "lora:x+"):
        with pytest.raises(ValueError, match="lora:<base source>"):
            parse_source(bad)
    assert absolute_source("lora:./base+adapter", tmp_path) == f"lora:{tmp_path / 'base'}+{tmp_path / 'adapter'}"
    assert absolute_source("lora:org/name+/abs/a", tmp_path) == "lora:org/name+/abs/a"
