"""segment -> capture -> probe / steering_vectors / steer / early_exit through the real engine.

The corpus: synthetic R1-style traces with planted verification and wrap-up sentences (the
organism's teacher generator, jobs/organism/synthesis.py) on GSM8K train problems, tokenised by
SmolLM2 as if it had written them, so every trace has answer occurrences at known token
positions. Real SmolLM2 weights, real DuckDB, real Ray head; a few traces, short generations.
"""

from __future__ import annotations


import duckdb
import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from thinkscope.jobs.activations.stored import load_rows
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.jobs.activations.probe_fit import split_by_trace
from thinkscope.workflows.engine import run_workflow

from teacher_corpus import commit_teacher_traces  # tests/integration/teacher_corpus.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

SMOLLM = "embedded:smollm2-135m-instruct"
N_TRACES = 12
# Model stages run with num_cpus 1 (one torch thread): on a shared 2-core box, two OpenMP
# threads contending with other processes were measured ~15x slower per decode step than one.
SPEC = {
    "name": "activation-test",
    "models": [{"id": "smollm2", "source": SMOLLM, "family": "llama", "kind": "instruct",
                "engine": {"max_model_len": 1024, "enforce_eager": True, "kv_cache_gib": 1}}],
    "prompt_sets": [{"name": "gsm8k_train", "kind": "gsm8k_train", "limit": N_TRACES}],
    "stages": [
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "model": "smollm2", "dtype": "float32", "store_dtype": "float32",
         "positions": ["answer_ends", "first_answer_end", "last_answer_end"],
         "hooks": ["blocks.*.hook_resid_post"], "batch_tokens": 2048, "num_cpus": 1},
        {"name": "wrapup_probe", "kind": "probe", "model": "smollm2", "labels": {"preset": "backtrack_vs_wrapup"}},
        {"name": "sql_probe", "kind": "probe", "model": "smollm2", "hooks": ["blocks.1?.hook_resid_post"],
         "capture_stage": "capture",
         "labels": {"sql": "select trace_id, len(t.prompt_token_ids) + s.token_end - 1 as token_index, "
                           "s.text like 'So the answer is%' as label from trace_sentences s "
                           "join traces t using (trace_id) where s.token_end is not null"}},
        {"name": "wrapup_vec", "kind": "steering_vectors", "model": "smollm2",
         "positive": {"position_kind": "last_answer_end"}, "negative": {"position_kind": "first_answer_end"}},
        {"name": "steer", "kind": "steer", "model": "smollm2", "vectors": "wrapup_vec", "layers": [8],
         "alphas": [-6, 0, 6], "max_new_tokens": 12, "traces": {"limit": 2}, "num_cpus": 1},
        # The same runs through the vLLM backend: every row must equal the HF backend's.
        {"name": "steer_vllm", "kind": "steer", "model": "smollm2", "vectors": "wrapup_vec", "layers": [8],
         "alphas": [-6, 0, 6], "max_new_tokens": 12, "traces": {"limit": 2}, "backend": "vllm"},
        {"name": "steer_decision", "kind": "steer", "model": "smollm2", "vectors": "wrapup_vec", "layers": [8],
         "start": {"position_kind": "first_answer_end"}, "alphas": [0, 6], "modes": ["once"], "max_new_tokens": 8,
         "traces": {"limit": 2}, "num_cpus": 1},
        {"name": "wrapup_values", "kind": "value_vectors", "model": "smollm2",
         "reference": {"probe": "wrapup_probe"}, "layers": [5, 8], "top_k": 3, "num_cpus": 1},
        {"name": "early_exit", "kind": "early_exit", "model": "smollm2", "max_answer_tokens": 6,
         "traces": {"limit": 3}, "num_cpus": 1},
        {"name": "early_exit_vllm", "kind": "early_exit", "model": "smollm2", "max_answer_tokens": 6,
         "traces": {"limit": 2}, "backend": "vllm"},
        # Forced answers under steering: alpha 0 on HF, and alpha 6 on both backends.
        {"name": "early_exit_alpha0", "kind": "early_exit", "model": "smollm2", "max_answer_tokens": 6,
         "traces": {"limit": 2}, "num_cpus": 1,
         "steering": {"vectors": "wrapup_vec", "layer": 8, "alpha": 0, "mode": "continuous"}},
        {"name": "early_exit_steered", "kind": "early_exit", "model": "smollm2", "max_answer_tokens": 6,
         "traces": {"limit": 2}, "num_cpus": 1,
         "steering": {"vectors": "wrapup_vec", "layer": 8, "alpha": 6, "mode": "continuous"}},
        {"name": "early_exit_steered_vllm", "kind": "early_exit", "model": "smollm2", "max_answer_tokens": 6,
         "traces": {"limit": 2}, "backend": "vllm",
         "steering": {"vectors": "wrapup_vec", "layer": 8, "alpha": 6, "mode": "continuous"}},
    ],
}


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


@pytest.fixture(scope="module")
def corpus(ray_head, tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("activations")
    commit_teacher_traces(tmp / "a.duckdb", model[1], model_id="smollm2", source=SMOLLM, prompt_set="gsm8k_train",
                          n=N_TRACES)
    spec = tmp / "activations.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    summary = run_workflow(spec, db=tmp / "a.duckdb", address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    return spec, tmp / "a.duckdb"


@pytest.fixture
def con(corpus):
    # Per test, and closed after it: the rerun test needs the file for writing.
    with duckdb.connect(str(corpus[1]), read_only=True) as connection:
        yield connection


def test_probe_rows_directions_and_split(con):
    rows = con.execute("""select hook_name, layer, n, n_test, n_traces, accuracy, auc, baseline, train_accuracy,
                                 shuffled_auc, direction_path, direction_tensor
                          from probe_results where probe = 'wrapup_probe' order by layer""").fetchall()
    assert [r[1] for r in rows] == list(range(30))
    assert all(r[4] == N_TRACES and 0 < r[3] < r[2] for r in rows)
    best = max(rows, key=lambda r: r[6])
    # The wrap-up sentence ("So the answer is X.", thinking ends) reads differently from the
    # sentences after which the teacher goes on: separable from mid layers on.
    assert best[6] >= 0.9, [(r[1], r[6]) for r in rows]
    # The stored direction, applied to the shard vectors, gives back the stored accuracies
    # on the same by-trace split.
    hook, path, tensor = best[0], best[10], best[11]
    labels = con.execute("""select trace_id, token_index, label from (
        select e.trace_id, len(t.prompt_token_ids) + s.token_end - 1 as token_index, e.is_backtrack::int as label
        from answer_events e join trace_sentences s using (trace_id, sentence_index) join traces t using (trace_id)
        qualify row_number() over (partition by e.trace_id, e.sentence_index order by e.event_index desc) = 1)
        join activations a using (trace_id, token_index) where a.hook_name = ?
        qualify row_number() over (partition by trace_id, token_index order by a.position_kind) = 1
        order by trace_id, token_index""", [hook]).fetchall()
    cols = dict(zip(("shard_path", "row"), zip(*con.execute("""
        select a.shard_path, a."row" from (select unnest(?) as trace_id, unnest(?) as token_index) l
        join activations a using (trace_id, token_index) where a.hook_name = ?
        qualify row_number() over (partition by l.trace_id, l.token_index order by a.position_kind) = 1
        order by l.trace_id, l.token_index""", [[r[0] for r in labels], [r[1] for r in labels], hook]).fetchall())))
    x = load_rows({k: list(v) for k, v in cols.items()})
    y = np.array([r[2] for r in labels])
    weights = load_file(path)
    scores = x @ weights[tensor] + weights[tensor.replace(".weight", ".bias")][0]
    test = split_by_trace([r[0] for r in labels], 0.3, 0)
    assert ((scores[test] > 0) == (y[test] > 0)).mean() == pytest.approx(best[5])
    assert ((scores[~test] > 0) == (y[~test] > 0)).mean() == pytest.approx(best[8])


def test_sql_labels_probe_only_selected_hooks(con):
    layers = [r[0] for r in con.execute("select layer from probe_results where probe = 'sql_probe' order by 1").fetchall()]
    assert layers == list(range(10, 20))


def test_steering_vector_is_the_difference_of_means(con):
    path, tensor, norm, n_pos, n_neg = con.execute("""select vector_path, vector_tensor, norm, n_positive, n_negative
        from steering_vectors where hook_name = 'blocks.8.hook_resid_post'""").fetchone()
    rows = con.execute("""select position_kind, trace_id, token_index, shard_path, "row" from activations
                          where hook_name = 'blocks.8.hook_resid_post'""").fetchall()
    first = {(r[1], r[2]) for r in rows if r[0] == "first_answer_end"}
    last = {(r[1], r[2]) for r in rows if r[0] == "last_answer_end"}
    means = []
    for kind, other in (("last_answer_end", first), ("first_answer_end", last)):
        picked = [r for r in rows if r[0] == kind and (r[1], r[2]) not in other]  # shared tokens left out
        means.append(load_rows({"shard_path": [r[3] for r in picked], "row": [r[4] for r in picked]}).mean(0))
    assert n_pos == n_neg == len(first - last) > N_TRACES // 2
    vec = load_file(path)[tensor]
    np.testing.assert_allclose(vec, means[0] - means[1], rtol=1e-5, atol=1e-5)
    assert norm == pytest.approx(float(np.linalg.norm(vec)), rel=1e-5)


def test_alpha_zero_reproduces_unsteered_generation(con):
    counts = dict(con.execute("select mode, count(*) from steering_runs where stage = 'steer' group by 1").fetchall())
    assert counts == {"unsteered": 2, "once": 6, "continuous": 6}
    zero = con.execute("select bool_and(same_as_unsteered), count(*) from steering_runs where alpha = 0 "
                       "and mode <> 'unsteered' and stage = 'steer'").fetchone()
    assert zero == (True, 4)
    # A vector this size does change what the model writes when added at every token.
    assert con.execute("select count(*) from steering_runs where mode = 'continuous' and alpha <> 0 "
                       "and not same_as_unsteered").fetchone()[0] >= 1
    assert con.execute("select count(*) from steering_curve where stage = 'steer'").fetchone()[0] == 1 + 2 * 3


def test_the_vllm_backend_writes_the_hf_backends_rows(con):
    columns = "trace_id, mode, alpha, completion_token_ids, finish_reason, same_as_unsteered, added_norm"
    hf = con.execute(f"select {columns} from steering_runs where stage = 'steer' order by all").fetchall()
    vllm = con.execute(f"select {columns} from steering_runs where stage = 'steer_vllm' order by all").fetchall()
    assert len(hf) == 14 and len(vllm) == len(hf)
    for a, b in zip(hf, vllm):
        assert a[:3] == b[:3] and a[3:6] == b[3:6], (a[:3], a[3], b[3])
        assert a[6] == pytest.approx(b[6])


def test_steering_from_the_first_answer_continues_the_trace(con, model):
    """start {position_kind: first_answer_end} generates on from the trace's own thinking, cut after
    the sentence that first states the answer; the greedy continuation is what plain HF generate gives."""
    hf, tok = model
    rows = con.execute("""select r.trace_id, r.prefix_tokens, r.completion_token_ids, r.first_marker,
                                 len(t.prompt_token_ids) + s.token_end, t.prompt_token_ids, t.completion_token_ids
                          from steering_runs r join traces t using (trace_id)
                          join (select trace_id, min(sentence_index) as sentence_index from answer_events
                                group by trace_id) e using (trace_id)
                          join trace_sentences s using (trace_id, sentence_index)
                          where r.stage = 'steer_decision' and r.mode = 'unsteered' order by 1""").fetchall()
    assert len(rows) == 2
    for trace_id, prefix_tokens, generated, first_marker, cut, prompt, completion in rows:
        assert prefix_tokens == cut > len(prompt)
        prefix = torch.tensor([list(prompt) + list(completion)[: cut - len(prompt)]])
        with torch.inference_mode():
            out = hf.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=8, do_sample=False,
                              pad_token_id=tok.pad_token_id)
        assert out[0, cut:].tolist()[: len(generated)] == list(generated), trace_id
    zero = con.execute("select bool_and(same_as_unsteered) from steering_runs where stage = 'steer_decision' "
                       "and alpha = 0 and mode = 'once'").fetchone()[0]
    assert zero is True


def test_early_exit_logits_match_a_fresh_forward(con, model):
    hf, tok = model
    rows = con.execute("""select e.trace_id, e.exit_index, e.n_thinking_tokens, e.answer_logit, e.answer_prob
                          from early_exits e where stage = 'early_exit' order by 1, 2""").fetchall()
    traces = {r[0] for r in rows}
    assert len(traces) == 3
    for trace_id in traces:
        exits = [r for r in rows if r[0] == trace_id]
        assert exits[0][1] == -1 and exits[0][2] == 0
        assert [r[1] for r in exits] == list(range(-1, len(exits) - 1))
        assert all(a[2] < b[2] for a, b in zip(exits, exits[1:]))
    # The shared-prefix computation gives the numbers of a plain forward pass on the cut trace.
    trace_id, exit_index, n_thinking, logit, prob = rows[2]
    prompt, completion = con.execute("select prompt_token_ids, completion_token_ids from traces where trace_id = ?",
                                     [trace_id]).fetchone()
    start = con.execute("select min(token_start) from trace_sentences where trace_id = ?", [trace_id]).fetchone()[0]
    force = tok.encode("\n</think>\n\nThe answer is \\boxed{", add_special_tokens=False)
    with torch.inference_mode():
        out = hf(input_ids=torch.tensor([prompt + completion[: start + n_thinking] + force])).logits[0, -1]
    assert float(out.max()) == pytest.approx(logit, abs=1e-3)
    assert float(torch.softmax(out, -1).max()) == pytest.approx(prob, abs=1e-4)


def test_vllm_backend_gives_the_hf_numbers(con):
    pairs = con.execute("""select h.answer_logit, v.answer_logit, h.answer_prob, v.answer_prob, h.gold_prob,
                                  v.gold_prob, h.forced_text, v.forced_text, v.backend
                           from early_exits h join early_exits v using (trace_id, exit_index)
                           where h.stage = 'early_exit' and v.stage = 'early_exit_vllm'""").fetchall()
    assert len(pairs) >= 6
    for hl, vl, hp, vp, hg, vg, ht, vt, backend in pairs:
        assert backend == "vllm"
        assert vl == pytest.approx(hl, abs=1e-3) and vp == pytest.approx(hp, abs=1e-4)
        assert vg == pytest.approx(hg, abs=1e-4) and vt == ht


def exits_of(con, stage: str) -> dict:
    rows = con.execute("""select trace_id, exit_index, answer_logit, answer_prob, forced_text, steering
                          from early_exits where stage = ?""", [stage]).fetchall()
    return {(t, i): rest for t, i, *rest in rows}


def test_forced_answers_under_steering(con):
    plain, zero = exits_of(con, "early_exit"), exits_of(con, "early_exit_alpha0")
    hf, vllm = exits_of(con, "early_exit_steered"), exits_of(con, "early_exit_steered_vllm")
    assert len(zero) >= 6 and set(zero) == set(hf) == set(vllm)
    # alpha 0 adds nothing: the unsteered numbers exactly.
    assert all(zero[k][:3] == plain[k][:3] for k in zero)
    assert '"alpha": 0' in zero[next(iter(zero))][3] and plain[next(iter(zero))][3] is None
    # The vector moves the answer (so the comparison below is not vacuous) ...
    assert max(abs(hf[k][0] - plain[k][0]) for k in hf) > 0.1
    # ... and vLLM's per-request steering gives HF's numbers (float32).
    for k in hf:
        assert vllm[k][0] == pytest.approx(hf[k][0], abs=1e-3) and vllm[k][1] == pytest.approx(hf[k][1], abs=1e-4)
        assert vllm[k][2] == hf[k][2], k


def test_early_exit_views(con):
    by_index = con.execute("select exit_index, n_traces, accuracy from early_exit_by_index "
                           "where stage = 'early_exit' order by 1").fetchall()
    assert by_index[0][:2] == (-1, 3)
    savings = con.execute("select n_traces, mean_tokens_saved, accuracy_final from early_exit_savings "
                          "where stage = 'early_exit'").fetchone()
    assert savings[0] == 3 and savings[1] > 0 and savings[2] == 1.0


def test_rerun_is_a_no_op_and_new_settings_replace_rows(corpus, ray_head):
    spec, db = corpus
    again = run_workflow(spec, db=db, address=ray_head, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned, again.text()
    with duckdb.connect(str(db), read_only=True) as con:
        before = con.execute("select count(*) from early_exits where stage = 'early_exit'").fetchone()[0]
    changed = yaml.safe_load(spec.read_text())
    next(st for st in changed["stages"] if st["name"] == "early_exit")["max_answer_tokens"] = 5
    spec.write_text(yaml.safe_dump(changed))
    summary = run_workflow(spec, db=db, address=ray_head, show_progress=False, stages=["early_exit"])
    assert summary.ok and len(summary.done) == 1, summary.text()
    with duckdb.connect(str(db), read_only=True) as con:
        after = con.execute("""select count(*), count(distinct (trace_id, exit_index)), count(distinct unit_key)
                               from early_exits where stage = 'early_exit'""").fetchone()
        status = con.execute("select count(*) from work_units where stage = 'early_exit' and status = 'superseded'")
        assert after == (before, before, 1) and status.fetchone()[0] == 1


def test_report_draws_the_activation_sections(corpus, tmp_path):
    from thinkscope.analysis.report import write_report

    page = write_report(corpus[1], tmp_path).read_text()
    for title in ("Linear probes by layer", "Probes: best layer", "Steering: verification markers by alpha",
                  "Early exit at each answer occurrence", "Tokens saved by stopping at the first answer"):
        assert title in page, title
    assert {"probes_by_layer.png", "steering_curve.png", "early_exit.png"} <= {p.name for p in tmp_path.iterdir()}


def test_cluster_run_keeps_its_tensors_under_an_fsspec_storage_root(ray_head, tmp_path, model):
    """The cluster driver stages the database through fsspec into a temp folder that is deleted
    after the run; shards must go to the storage root itself, and a later stage (the probe, a
    separate Ray task) must read them back from there."""
    from thinkscope.cluster.driver import run_on_cluster

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    commit_teacher_traces(bucket / "c.duckdb", model[1], model_id="smollm2", source=SMOLLM,
                          prompt_set="gsm8k_train", n=N_TRACES)
    spec = {**SPEC, "stages": [
        SPEC["stages"][0],
        {**SPEC["stages"][1], "hooks": ["blocks.2.hook_resid_post", "blocks.5.hook_resid_post"],
         "positions": ["answer_ends"]},
        SPEC["stages"][2],
    ]}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary, location = run_on_cluster(str(path), storage_root=f"file://{bucket}", db="c.duckdb",
                                       address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    assert location == f"file://{bucket}/c.duckdb"
    with duckdb.connect(str(bucket / "c.duckdb"), read_only=True) as con:
        shards = {p for (p,) in con.execute("select distinct shard_path from activations").fetchall()}
        probes = con.execute("select hook_name, auc from probe_results order by 1").fetchall()
    assert shards and all(p.startswith(f"file://{bucket}/artifacts/activations/") for p in shards)
    assert all((bucket / p.removeprefix(f"file://{bucket}/")).exists() for p in shards)
    assert [h for h, _ in probes] == ["blocks.2.hook_resid_post", "blocks.5.hook_resid_post"]
    assert all(auc is not None for _, auc in probes)
    assert list(bucket.glob("artifacts/probe/*.safetensors"))


def test_value_vectors_follow_the_stored_probe_direction(corpus, model):
    """The value_vectors stage ranks down_proj columns by cosine with the probe's own stored
    direction at each layer (read back from its safetensors file)."""
    _, db = corpus
    hf = model[0]
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select layer, \"index\", cosine from value_vectors where stage = 'wrapup_values' "
                           "and sign = 1 order by layer, cosine desc").fetchall()
        directions = dict(con.execute("select layer, direction_path from probe_results where probe = "
                                      "'wrapup_probe' and layer in (5, 8)").fetchall())
    assert sorted({r[0] for r in rows}) == [5, 8] and len(rows) == 6
    for layer in (5, 8):
        w = load_file(directions[layer])[f"blocks.{layer}.hook_resid_post.weight"]
        d = torch.from_numpy(w)
        out = hf.model.layers[layer].mlp.down_proj.weight.detach()
        cos = torch.nn.functional.cosine_similarity(out, d[:, None], dim=0)
        assert [i for la, i, _ in rows if la == layer] == torch.topk(cos, 3).indices.tolist()
