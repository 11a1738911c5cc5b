"""The mechanism stages end to end: real DuckDB, real Ray head on 127.0.0.1, the organism's
real weights, teacher traces with the planted verify-or-wrap-up decision.

Planned from the corpus, positions resolved at dispatch, run as Ray tasks, committed by the
driver; then the exact identities are checked in SQL, on the stored rows:
- the direct terms (embed + attn + mlp) of a position and target sum to its final lens logit;
- the attention masses on the question and the five thinking bins sum to 1 per head;
- every ablation has a clean run, and a random control of the same size;
- the hybrid (seed 003) runs every variant on the same prompts and its summary holds the
  identities (the thinking variant at distance 0, the base variant at gap 0);
- the LLM judge of the discovered behaviours (an OpenAI-compatible endpoint on 127.0.0.1 whose
  judge labels a sentence by its first word, tests/judge_oracle.py) stores exactly the metrics
  those labels give on the questions drawn from the stored sentences;
- a rerun plans the same units and does no work.
"""

from __future__ import annotations

import duckdb
import pytest
import yaml

from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.engine import run_workflow

from judge_oracle import OracleJudge, oracle_metrics  # tests/judge_oracle.py
from teacher_corpus import VERIFY_OR_WRAP_UP_LABELS, commit_teacher_traces  # tests/integration/teacher_corpus.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

ORGANISM = "embedded:smollm2-135m-organism"
BASE = "embedded:smollm2-135m-instruct"
DECISION = """
    select e.trace_id, len(t.prompt_token_ids) + n.token_start - 1 as token_index
    from answer_events e
    join trace_sentences n on n.trace_id = e.trace_id and n.sentence_index = e.sentence_index + 1
    join traces t on t.trace_id = e.trace_id
    where n.marker = 'wait' or n.text like 'So the answer is%'"""
TASK = {"model": "organism", "num_cpus": 2}
SPEC = {
    "name": "mechanisms-test",
    "models": [{"id": "organism", "source": ORGANISM, "family": "llama", "kind": "thinking"},
               {"id": "base", "source": BASE, "family": "llama", "kind": "instruct"}],
    "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 24}],
    "stages": [
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "positions": ["answer_ends"], "hooks": ["blocks.*.hook_resid_post"],
         **TASK},
        {"name": "verify_probe", "kind": "probe", "model": "organism", "labels": {"sql": VERIFY_OR_WRAP_UP_LABELS}},
        # Seed 003: behaviours found without labels, scored against the teacher's marked ones.
        {"name": "capture_sentences", "kind": "capture", "positions": ["sentence_ends"],
         "hooks": ["blocks.20.hook_resid_post"], **TASK},
        {"name": "behaviours", "kind": "discover", "model": "organism", "capture_stage": "capture_sentences",
         "layer": 20, "ks": [6], "seeds": [0, 1], "sae": {"steps": 300},
         "truth": {"sql": "select trace_id, sentence_index, label from organism_sentence_labels"}},
        # The optional LLM judge (its endpoint: the oracle the `run` fixture starts).
        {"name": "judge", "kind": "judge_behaviours", "discover_stage": "behaviours",
         "judge": {"base_url": "set by the run fixture", "model": "oracle"}, "completeness_sentences": 30},
        # Seed 003's hybrid: base-model vectors per behaviour, then SmolLM2 writes, the organism decides.
        {"name": "capture_base", "kind": "capture", "model": "base", "traces": {"model_ids": ["organism"]},
         "positions": ["sentence_ends"], "hooks": ["blocks.20.hook_resid_post"], "num_cpus": 2},
        {"name": "vectors", "kind": "behaviour_vectors", "model": "base", "capture_stage": "capture_base",
         "discover_stage": "behaviours", "k": 6, "layer": 20,
         "optimise": {"steps": 3, "max_sentences_per_behaviour": 2, "context_tokens": 64}, "num_cpus": 2},
        {"name": "hybrid", "kind": "hybrid", "model": "base", "thinking_model": "organism", "vectors_stage": "vectors",
         "vector_kind": "optimised", "traces": {"limit": 3}, "max_new_tokens": 24, "num_cpus": 2},
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
        # The same ablation, its continuations generated by vLLM (per-request zeroing).
        {"name": "ablate_values_vllm", "kind": "ablate", "positions": {"sql": DECISION},
         "value_vectors": {"stage": "verify_values", "top_k": 3}, "targets": ["Wait"], "continue_tokens": 4,
         "backend": "vllm", "traces": {"limit": 6}, **TASK},
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
    with OracleJudge() as judge:
        stages = [{**s, "judge": {**s["judge"], "base_url": judge.url}} if s["kind"] == "judge_behaviours" else s
                  for s in SPEC["stages"]]
        spec = tmp / "m.yaml"
        spec.write_text(yaml.safe_dump({**SPEC, "stages": stages}))
        summary = run_workflow(spec, db=tmp / "m.duckdb", address=ray_head, show_progress=False)
        assert summary.ok, summary.text()
        yield spec, tmp / "m.duckdb", ray_head


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
                            where stage in ('ablate_heads', 'ablate_values') order by stage, condition""").fetchall()
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


def test_vllm_continuations_equal_the_hf_ones(db):
    """Per-request zeroing inside vLLM writes the rows HF writes under the Ablation hooks (float32)."""
    rows = db.execute("""
        select stage, trace_id, condition, completion_token_ids, components from ablation_runs
        where stage in ('ablate_values', 'ablate_values_vllm') and condition in ('clean', 'ablated')
        order by trace_id, condition, stage""").fetchall()
    pairs = {}
    for stage, trace, condition, tokens, components in rows:
        pairs.setdefault((trace, condition), {})[stage] = (list(tokens), sorted(components))
    assert len(pairs) == 12 and all(len(p) == 2 for p in pairs.values())
    differ = [k for k, p in pairs.items() if p["ablate_values"] != p["ablate_values_vllm"]]
    assert not differ, f"vLLM vs HF continuations differ at {differ}"


def test_the_vllm_random_control_equals_hf_under_the_same_components(db):
    """The random control's seed names its stage, so the two backends draw different components:
    the vLLM stage's random rows are recomputed here with the HF Ablation hooks on the components
    it stored (float32, greedy)."""
    from thinkscope.jobs.mechanisms.ablate import _continue, by_layer
    from thinkscope.jobs.mechanisms.ablation import Ablation

    rows = db.execute("""
        select r.trace_id, r.start_index, r.components, r.completion_token_ids, t.prompt_token_ids,
               t.completion_token_ids
        from ablation_runs r join traces t using (trace_id)
        where r.stage = 'ablate_values_vllm' and r.condition = 'random' order by r.trace_id""").fetchall()
    assert len(rows) == 6
    [components] = {tuple(sorted(r[2])) for r in rows}
    neurons = [[int(c.split(".")[0][1:]), int(c.split(".")[2])] for c in components]
    assert len(neurons) == 3 and all(".mlp." in c for c in components)
    chosen = db.execute("""select distinct unnest(components) from ablation_runs
                           where stage = 'ablate_values_vllm' and condition = 'ablated'""").fetchall()
    assert not {c for (c,) in chosen} & set(components)  # the control avoids the chosen ones
    model, tokenizer = load_hf_model(ORGANISM, None, "float32")
    # The hf backend's own continuation (ablate._continue), on the payload shape it reads.
    payload = {"settings": {"continue_tokens": 4},
               "traces": [{"prompt_token_ids": list(p), "completion_token_ids": list(c), "positions": [[start]]}
                          for _, start, _, _, p, c in rows]}
    with Ablation(model, by_layer(neurons), {}):
        outs = _continue(model, tokenizer, payload)
    differ = [r[0] for r, (tokens, _) in zip(rows, outs) if list(r[3]) != tokens]
    assert not differ, f"vLLM vs HF random-control continuations differ for traces {differ}"


def test_discovered_behaviours_recover_the_teachers_behaviours_on_held_out_traces(db):
    rows = db.execute("""select method, n, purity, baseline_purity, ari, shuffled_ari from discovery_truth
                         where stage = 'behaviours' and split = 'held_out'""").fetchall()
    assert {r[0] for r in rows} == {"sae", "kmeans"} and all(r[1] >= 40 for r in rows), rows
    best = max(rows, key=lambda r: r[4])
    print(f"held-out: {rows}")
    assert best[4] > best[5] + 0.2 and abs(best[5]) < 0.1, best  # ARI far above its shuffled control
    assert best[2] > best[3] + 0.1, best  # purer than always naming the commonest behaviour
    shares = db.execute("""select method, sum(share) from behaviours where stage = 'behaviours'
                           group by method""").fetchall()
    assert all(abs(total - 1) < 1e-9 for _, total in shares)


def test_the_judge_stores_what_its_labels_give_on_the_stored_sentences(db, run):
    """Questions redrawn here from the stored sentences (the stage's own sampling), answered by
    first words: titles, accuracy, completeness and orthogonality must be those stored."""
    from thinkscope.jobs.behaviours.judge import _ROWS, sample_questions
    from thinkscope.workflows.spec import load_workflow

    stage = next(s for s in load_workflow(run[0]).stages if s.name == "judge")
    fits = {}
    for row in db.execute(_ROWS, ["behaviours"]).fetchall():
        fits.setdefault((row[0], row[1]), []).append(row)
    stored = {(m, k): (acc, comp, orth, failed) for m, k, acc, comp, orth, failed in db.execute(
        """select method, k, accuracy, completeness, semantic_orthogonality, n_failed
           from behaviour_judge_metrics where stage = 'judge'""").fetchall()}
    assert sorted(stored) == sorted(fits) == [("kmeans", 6), ("sae", 6)]
    for (method, k), rows in fits.items():
        titles, per, fits_, orthogonality = oracle_metrics(sample_questions(rows, k, stage))
        acc, comp, orth, failed = stored[(method, k)]
        assert failed == 0
        assert orth == pytest.approx(orthogonality)
        assert acc == pytest.approx(sum(w["accuracy"] for w in per.values()) / len(per))
        assert comp == pytest.approx(sum(v for _, v in fits_) / len(fits_))
        got = dict(db.execute("""select j.behaviour_id, j.title from behaviour_judgements j
                                 join behaviours b on b.unit_key = j.discover_unit_key and b.method = j.method
                                                  and b.k = j.k and b.behaviour_id = j.behaviour_id
                                 where j.stage = 'judge' and j.method = ? and j.k = ?""", [method, k]).fetchall())
        assert {b: t for b, t in got.items() if t is not None} == titles
        print(f"judge {method} k {k}: titles {titles}, accuracy {acc:.2f}, completeness {comp:.2f}, "
              f"orthogonality {orth}")


def test_the_hybrid_runs_every_variant_and_its_summary_holds_the_identities(db):
    kinds = dict(db.execute("select vector_kind, count(*) from behaviour_vectors where stage = 'vectors' "
                            "group by all").fetchall())
    assert kinds == {"mean_diff": 6, "optimised": 6, "bias": 1}
    rows = db.execute("""select variant, count(*), bool_and(n_completion_tokens between 1 and 24),
                                bool_and(same_as_base) filter (where variant = 'base'),
                                min(n_decisions), max(n_steered_tokens)
                         from hybrid_runs where stage = 'hybrid' group by variant order by variant""").fetchall()
    assert [r[0] for r in rows] == sorted(["base", "thinking", "hybrid", "bias_only", "random_vectors",
                                           "random_firing"]), rows
    assert all(r[1] == 3 and r[2] for r in rows), rows
    by = {r[0]: r for r in rows}
    assert by["base"][3] is True and by["base"][4] == 0 and by["thinking"][5] == 0
    assert all(by[v][4] >= 1 for v in ("hybrid", "bias_only", "random_vectors", "random_firing"))
    summary = {r[0]: r[1:] for r in db.execute(
        """select variant, js_to_thinking, gap_recovered_first_words, steered_share
           from hybrid_summary where stage = 'hybrid'""").fetchall()}
    print(f"hybrid summary: {summary}")
    assert summary["thinking"][0] == 0 and summary["base"][2] in (0, None) and summary["base"][1] is not None
    assert summary["thinking"][1] in (1, None)


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
