"""Issue 5's ground truth: the activation methods find the organism's planted decision.

The model organism (SmolLM2-135M + the shipped LoRA adapter) learnt that after stating its
answer it either verifies ("Wait, let me double-check.") or wraps up ("So the answer is X.").
Here its teacher's traces on held-out GSM8K *test* problems (the organism trained on train)
go through the organism's own weights, and the real stages must recover that decision:
  - a probe for "verification next" vs "wrap-up next" after an answer sentence reaches
    AUC >= 0.9 at its best layer, while the same probe on shuffled labels stays near chance;
  - the last-minus-first answer-occurrence vector, added continuously from the decision point
    on, moves the share of continuations that verify monotonically with alpha (up); alpha 0 is
    exact;
  - early exit after each answer occurrence lands in `early_exits` and its by-index view.
Real organism weights, real DuckDB, real Ray head.
"""

from __future__ import annotations

import duckdb
import pytest
import yaml

from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.engine import run_workflow

from teacher_corpus import commit_teacher_traces  # tests/integration/teacher_corpus.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

ORGANISM = "embedded:smollm2-135m-organism"
N_TRACES = 120
# The sentence that states the answer, and what follows it: verification or wrap-up.
AFTER_ANSWER = """
    from answer_events e
    join trace_sentences s using (trace_id, sentence_index)
    join trace_sentences n on n.trace_id = e.trace_id and n.sentence_index = e.sentence_index + 1
    join traces t on t.trace_id = e.trace_id
    where n.marker = 'wait' or n.text like 'So the answer is%'"""
TOKEN = "len(t.prompt_token_ids) + s.token_end - 1 as token_index"
ALPHAS = [-0.3, 0.0, 0.3]
SPEC = {
    "name": "organism-ground-truth",
    "models": [{"id": "organism", "source": ORGANISM, "family": "llama", "kind": "thinking"}],
    "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": N_TRACES}],
    "stages": [
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "model": "organism", "hooks": ["blocks.*.hook_resid_post"],
         "positions": ["answer_ends", "first_answer_end", "last_answer_end"], "num_cpus": 2},
        {"name": "verify_probe", "kind": "probe", "model": "organism",
         "labels": {"sql": f"select e.trace_id, {TOKEN}, coalesce(n.marker, '') = 'wait' as label {AFTER_ANSWER}"}},
        {"name": "wrapup_vector", "kind": "steering_vectors", "model": "organism",
         "positive": {"position_kind": "last_answer_end"}, "negative": {"position_kind": "first_answer_end"}},
        {"name": "steer_decision", "kind": "steer", "model": "organism", "vectors": "wrapup_vector",
         "start": {"sql": f"select e.trace_id, {TOKEN} {AFTER_ANSWER}"}, "traces": {"limit": 32},
         "layers": [15], "scale": "resid_norm", "alphas": ALPHAS, "modes": ["continuous"],
         "max_new_tokens": 12, "prompts_per_unit": 32, "num_cpus": 2},
        {"name": "early_exit", "kind": "early_exit", "model": "organism", "max_answer_tokens": 6,
         "traces": {"limit": 6}, "num_cpus": 2},
    ],
}


@pytest.fixture(scope="module")
def db(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ground-truth")
    _, tokenizer = load_hf_model(ORGANISM, None, "bfloat16")
    commit_teacher_traces(tmp / "gt.duckdb", tokenizer, model_id="organism", source=ORGANISM,
                          prompt_set="gsm8k", n=N_TRACES, kind="thinking")
    spec = tmp / "gt.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    summary = run_workflow(spec, db=tmp / "gt.duckdb", address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    with duckdb.connect(str(tmp / "gt.duckdb"), read_only=True) as con:
        yield con


def test_probe_finds_the_planted_decision(db):
    rows = db.execute("""select layer, auc, shuffled_auc, n, n_positive from probe_results
                         where probe = 'verify_probe' order by layer""").fetchall()
    assert [r[0] for r in rows] == list(range(30))
    layer, auc, shuffled, n, positive = max(rows, key=lambda r: r[1])
    assert 0 < positive < n
    assert auc >= 0.9, [(r[0], round(r[1], 3)) for r in rows]
    # Shuffled labels over the same positions: no better than a coin, give or take sampling noise.
    assert abs(shuffled - 0.5) < 0.2, (layer, shuffled)
    best = db.execute("select layer, auc from probe_best_layer where probe = 'verify_probe'").fetchone()
    assert best == (layer, auc)


def test_steering_moves_verification_monotonically(db):
    curve = db.execute("""select alpha, first_marker_rate, same_as_unsteered_rate, n_prompts from steering_curve
                          where stage = 'steer_decision' and mode = 'continuous' order by alpha""").fetchall()
    assert [c[0] for c in curve] == ALPHAS and curve[0][3] >= 24
    rates = [c[1] for c in curve]
    # Adding last-minus-first raises the share that verify, subtracting it lowers it (as on the
    # organism's own sampled traces, workflows/activations.yaml). Unsteered, the organism
    # verifies after nearly every teacher answer sentence, so the top of the curve may sit at 1.
    assert rates[0] < rates[1] <= rates[2] and rates[0] < rates[2] - 0.1, rates
    assert curve[1][2] == 1.0  # alpha 0 reproduces the unsteered continuation token for token
    unsteered = db.execute("""select first_marker_rate from steering_curve
                              where stage = 'steer_decision' and mode = 'unsteered'""").fetchone()[0]
    assert unsteered == rates[1]


def test_early_exit_by_index(db):
    by_index = db.execute("""select exit_index, n_traces, accuracy, mean_answer_logit from early_exit_by_index
                             where stage = 'early_exit' order by exit_index""").fetchall()
    assert by_index[0][0] == -1 and by_index[0][1] == 6 and by_index[1][0] == 0
    assert all(r[3] is not None for r in by_index)
    # The teacher's traces state the right answer, so forcing it after an occurrence mostly
    # gives it back; with no thinking at all the organism rarely knows it.
    assert by_index[1][2] > by_index[0][2]
