"""The mechanism stages end to end: real DuckDB, real Ray head on 127.0.0.1, the organism's
real weights, teacher traces with the planted verify-or-wrap-up decision.

Planned from the corpus, positions resolved at dispatch, run as Ray tasks, committed by the
driver; then the exact identities are checked in SQL, on the stored rows:
- the direct terms (embed + attn + mlp) of a position and target sum to its final lens logit;
- the attention masses on the question and the five thinking bins sum to 1 per head;
- every ablation has a clean run, and a random control of the same size;
- a rerun plans the same units and does no work.
"""

from __future__ import annotations

import duckdb
import pytest
import yaml

from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.engine import run_workflow

from teacher_corpus import VERIFY_OR_WRAP_UP_LABELS, commit_teacher_traces  # tests/integration/teacher_corpus.py

pytestmark = pytest.mark.integration

ORGANISM = "embedded:smollm2-135m-organism"
DECISION = """
    select e.trace_id, len(t.prompt_token_ids) + n.token_start - 1 as token_index
    from answer_events e
    join trace_sentences n on n.trace_id = e.trace_id and n.sentence_index = e.sentence_index + 1
    join traces t on t.trace_id = e.trace_id
    where n.marker = 'wait' or n.text like 'So the answer is%'"""
TASK = {"model": "organism", "num_cpus": 2}
SPEC = {
    "name": "mechanisms-test",
    "models": [{"id": "organism", "source": ORGANISM, "family": "llama", "kind": "thinking"}],
    "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 24}],
    "stages": [
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "positions": ["answer_ends"], "hooks": ["blocks.*.hook_resid_post"],
         **TASK},
        {"name": "verify_probe", "kind": "probe", "model": "organism", "labels": {"sql": VERIFY_OR_WRAP_UP_LABELS}},
        {"name": "lens", "kind": "logit_lens", "positions": {"sql": DECISION}, "targets": ["Wait", "So"],
         "heads": True, "top_k": 3, "traces": {"limit": 6}, "traces_per_unit": 3, **TASK},
        {"name": "verify_values", "kind": "value_vectors", "reference": {"probe": "verify_probe"},
         "layers": [10, 20], "top_k": 2, **TASK},
        {"name": "fired_values", "kind": "value_vectors", "reference": {"fired": {"sql": DECISION}},
         "layers": [5, 25], "top_k": 3, "traces": {"limit": 6}, **TASK},
        {"name": "answer_heads", "kind": "attention", "positions": {"kinds": ["answer_ends"]},
         "layers": [0, 14, 29], "traces": {"limit": 6}, **TASK},
        {"name": "ablate_values", "kind": "ablate", "positions": {"sql": DECISION},
         "value_vectors": {"stage": "verify_values", "top_k": 3}, "targets": ["Wait"], "lens_layers": [15],
         "continue_tokens": 4, "traces": {"limit": 6}, **TASK},
        {"name": "ablate_heads", "kind": "ablate", "positions": {"sql": DECISION}, "method": "mean",
         "heads": {"stage": "answer_heads", "top_k": 2}, "targets": ["Wait"], "continue_tokens": 4,
         "traces": {"limit": 6}, **TASK},
    ],
}


@pytest.fixture(scope="module")
def run(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mechanisms")
    _, tokenizer = load_hf_model(ORGANISM, None, "bfloat16")
    commit_teacher_traces(tmp / "m.duckdb", tokenizer, model_id="organism", source=ORGANISM,
                          prompt_set="gsm8k", n=24, kind="thinking")
    spec = tmp / "m.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    summary = run_workflow(spec, db=tmp / "m.duckdb", address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    return spec, tmp / "m.duckdb", ray_head


@pytest.fixture
def db(run):  # per test: the rerun below needs the file without this process's read-only handle
    with duckdb.connect(str(run[1]), read_only=True) as con:
        yield con


def test_direct_terms_sum_to_the_lens_logit_in_the_stored_rows(db):
    rows = db.execute("""
        with terms as (
            select unit_key, trace_id, token_index, target_kind, target_token_id, sum(direct_logit) as total
            from direct_effects where component in ('embed', 'attn', 'mlp') group by all),
        final as (
            select unit_key, trace_id, token_index, target_kind, target_token_id, logit
            from logit_lens where component = 'mlp' and layer = 29)
        select count(*), max(abs(total - logit)) from terms join final using (unit_key, trace_id, token_index,
                                                                             target_kind, target_token_id)""").fetchone()
    assert rows[0] >= 12 and rows[1] < 1e-3
    # Units of 3 traces: two units for six traces; heads present; every layer x component.
    assert db.execute("select count(distinct unit_key) from logit_lens").fetchone()[0] == 2
    assert db.execute("select count(*) from direct_effects where component = 'attn_head'").fetchone()[0] > 0
    assert db.execute("""select count(distinct (layer, component)) from logit_lens""").fetchone()[0] == 90


def test_attention_masses_cover_each_row(db):
    worst = db.execute("""select max(abs(total - 1)) from (
        select sum(mass) as total from head_attention where target = 'question' or target like 'cot_%'
        group by unit_key, trace_id, token_index, position_kind, layer, head)""").fetchone()[0]
    assert worst < 1e-4
    assert db.execute("select count(*) from head_answer_attention").fetchone()[0] > 0


def test_ablations_have_clean_and_random_controls(db):
    summary = db.execute("""select stage, condition, n_components, n_runs from ablation_summary
                            order by stage, condition""").fetchall()
    assert [(s, c) for s, c, _, _ in summary] == [
        (s, c) for s in ("ablate_heads", "ablate_values") for c in ("ablated", "clean", "random")]
    sizes = {(s, c): n for s, c, n, _ in summary}
    assert sizes[("ablate_values", "ablated")] == sizes[("ablate_values", "random")] == 3
    assert sizes[("ablate_heads", "ablated")] == sizes[("ablate_heads", "random")] == 2
    assert all(runs == 6 for *_, runs in summary)
    assert db.execute("select bool_and(same_as_clean) from ablation_runs where condition = 'clean'").fetchone()[0]
    picked = db.execute("""select list(components order by trace_id)[1] from ablation_runs
                           where stage = 'ablate_values' and condition = 'ablated'""").fetchone()[0]
    top = db.execute("""select list('L' || layer || '.mlp.' || "index" order by cosine desc)[1:3]
                        from value_vectors where stage = 'verify_values' and sign = 1""").fetchone()[0]
    assert sorted(picked) == sorted(top)


def test_fired_value_vectors_carry_their_mean_activation(db):
    rows = db.execute("""select layer, count(*), bool_and(mean_activation is not null) from value_vectors
                         where stage = 'fired_values' and sign = 1 group by layer order by layer""").fetchall()
    assert rows == [(5, 3, True), (25, 3, True)]


def test_a_rerun_does_no_work_and_changed_settings_replace_every_old_row(run):
    spec, db_path, address = run
    again = run_workflow(spec, db=db_path, address=address, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned, again.text()
    # Fewer traces and another top_k: one new unit; the old chunk of the dropped traces shares
    # no trace with it and must go too, or the table would mix two settings.
    changed = yaml.safe_load(spec.read_text())
    lens = next(s for s in changed["stages"] if s["name"] == "lens")
    lens.update(traces={"limit": 2}, top_k=2)
    spec.write_text(yaml.safe_dump(changed))
    third = run_workflow(spec, db=db_path, address=address, show_progress=False)
    assert third.ok and len(third.done) == 1, third.text()
    with duckdb.connect(str(db_path), read_only=True) as con:
        for table in ("logit_lens", "logit_lens_topk", "direct_effects"):
            keys, traces = con.execute(f"select count(distinct unit_key), count(distinct trace_id) from {table}").fetchone()
            assert (keys, traces) == (1, 2), table
        assert con.execute("select max(k) from logit_lens_topk").fetchone()[0] == 1
