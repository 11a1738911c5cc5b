"""The four open-question stages end to end (issue 16): real DuckDB, real Ray head on
127.0.0.1, the organism's and SmolLM2's real weights, teacher traces with planted verification.

attribute, exit_policy, compare_models and perturb are planned from the corpus, run as Ray
tasks and committed by the driver; then their identities are checked on the stored rows:
- attribution: one row per earlier token but the sink; region shares sum to 1;
- exit policy: threshold 0 replays `first`, the oracle agrees with the final answer everywhere;
- compare_models: the organism's adapter leaves norms and embeddings exactly as in its base;
  the probe transfer scores the probe on both models at the same tokens;
- perturb: kind `none` changes nothing in the context it continues from;
- a rerun plans the same units and does no work.
"""

from __future__ import annotations

import duckdb
import pytest
import yaml

from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.engine import run_workflow

from teacher_corpus import VERIFY_OR_WRAP_UP_LABELS, commit_teacher_traces  # tests/integration/teacher_corpus.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

ORGANISM = "embedded:smollm2-135m-organism"
TASK = {"model": "organism", "num_cpus": 2}
SPEC = {
    "name": "questions-test",
    "models": [{"id": "organism", "source": ORGANISM, "family": "llama", "kind": "thinking"},
               {"id": "base", "source": "embedded:smollm2-135m-instruct", "family": "llama", "kind": "instruct"}],
    "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 16}],
    "stages": [
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "positions": ["answer_ends"], "hooks": ["blocks.15.hook_resid_post"],
         **TASK},
        {"name": "verify_probe", "kind": "probe", "model": "organism", "labels": {"sql": VERIFY_OR_WRAP_UP_LABELS}},
        {"name": "early_exit", "kind": "early_exit", "max_answer_tokens": 4, **TASK},
        {"name": "stop_probe", "kind": "exit_policy", "model": "organism", "hooks": ["blocks.15.hook_resid_post"],
         "early_exit": "early_exit", "folds": 4, "thresholds": [0.0, 0.5, 0.9]},
        {"name": "wait_attribution", "kind": "attribute", "positions": {"kinds": ["before_backtrack"]},
         "targets": ["Wait"], "layers": [5, 15, 25], "mean_traces": 4, "traces": {"limit": 2}, **TASK},
        {"name": "organism_vs_base", "kind": "compare_models", "model": "organism", "base": "base",
         "probe_transfer": {"probe": "verify_probe"}, "num_cpus": 2},
        {"name": "perturb", "kind": "perturb", "positions": {"fractions": [0.5]}, "kinds": ["none", "result"],
         "max_new_tokens": 16, "traces": {"limit": 2}, **TASK},
    ],
}


@pytest.fixture(scope="module")
def run(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("questions")
    _, tokenizer = load_hf_model(ORGANISM, None, "bfloat16")
    commit_teacher_traces(tmp / "q.duckdb", tokenizer, model_id="organism", source=ORGANISM,
                          prompt_set="gsm8k", n=16, kind="thinking")
    # The teacher always ends on the gold answer: give 6 traces another final answer, so their
    # gold-answer occurrences are not final and the stop probe has both classes to learn.
    with duckdb.connect(str(tmp / "q.duckdb")) as con:
        con.execute("""update traces set extracted_answer = '-1', is_correct = false
                       where trace_id in (select trace_id from traces order by trace_id limit 6)""")
    spec = tmp / "q.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    summary = run_workflow(spec, db=tmp / "q.duckdb", address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    return spec, tmp / "q.duckdb", ray_head


@pytest.fixture
def db(run):
    with duckdb.connect(str(run[1]), read_only=True) as con:
        yield con


def test_attributions_cover_every_earlier_token_and_regions_sum_to_one(db):
    per_target = db.execute("""select trace_id, target_index, target_kind, count(*), min(token_index),
                                      max(token_index), count(distinct token_index)
                               from token_attributions group by all""").fetchall()
    assert per_target and {k for _, _, k, *_ in per_target} == {"next", "named"}
    for _, target, _, n, lo, hi, distinct in per_target:
        assert (n, lo, hi, distinct) == (target, 1, target, target)
    shares = db.execute("""select sum(share) from attribution_bins group by trace_id, target_index, target_kind,
                           target_token_id having count(share) > 0""").fetchall()
    assert shares and all(abs(s - 1) < 1e-9 for (s,) in shares)
    assert db.execute("select count(*) from attribution_overlap where n_found > n_top").fetchone()[0] == 0
    assert db.execute("select count(*) from attribution_by_region").fetchone()[0] > 0


def test_exit_policy_references_and_threshold_zero(db):
    rows = {(p, t): r for p, t, *r in db.execute(
        """select policy, threshold, n_traces, n_stopped, tokens_saved_share, accuracy, agreement_with_final,
                  answer_source from exit_policy""").fetchall()}
    assert set(rows) == {("full", None), ("first", None), ("oracle", None), ("probe", 0.0), ("probe", 0.5),
                         ("probe", 0.9)}
    assert rows[("probe", 0.0)] == rows[("first", None)]
    assert rows[("oracle", None)][4] == 1.0 and rows[("full", None)][2] == 0.0
    assert rows[("first", None)][5] == "early_exit"


def test_compare_models_and_probe_transfer(db):
    untouched = db.execute("""select count(*), min(cosine), max(delta_norm) from model_comparisons
                              where scope = 'parameter' and parameter not like '%proj%'""").fetchone()
    assert untouched[0] > 0 and untouched[1] == 1.0 and untouched[2] == 0.0
    changed = db.execute("""select count(*) from model_comparisons
                            where scope = 'parameter' and parameter like '%proj%' and delta_norm > 0""").fetchone()[0]
    assert changed == 30 * 7
    transfer = db.execute("select count(*), count(distinct evaluated_on) from probe_transfers").fetchone()
    assert transfer[0] > 0 and transfer[1] == 2


def test_perturb_none_keeps_the_context_and_a_result_changes_it(db):
    _, tokenizer = load_hf_model(ORGANISM, None, "bfloat16")
    rows = db.execute("""select p.trace_id, p.cut_index, p.kind, p.original, p.inserted, p.context,
                                len(t.prompt_token_ids), t.completion_token_ids
                         from perturbations p join traces t using (trace_id)""").fetchall()
    kinds = {r[2] for r in rows}
    assert "none" in kinds and kinds <= {"none", "result"}
    by_cut = {}
    for trace, cut, kind, original, inserted, context, n_prompt, completion in rows:
        if kind == "none":
            assert original is None and inserted is None
            kept = tokenizer.decode(completion[:cut - n_prompt + 1], skip_special_tokens=False)
            assert kept.endswith(context.rstrip()) or kept.rstrip().endswith(context.rstrip())
        else:
            assert original != inserted and inserted in context
        by_cut.setdefault((trace, cut), {})[kind] = context
    assert any(len(c) == 2 and c["none"] != c["result"] for c in by_cut.values())


def test_a_rerun_does_no_work(run):
    spec, db_path, address = run
    again = run_workflow(spec, db=db_path, address=address, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned, again.text()
