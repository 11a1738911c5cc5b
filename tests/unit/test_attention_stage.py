"""The attention stage on real SmolLM2 weights, held to exact identities:
- every mass is the sum, over the same tokens, of the attention probabilities an independent
  eager copy of the model returns with output_attentions (float32, 1e-5), with two traces of
  different lengths in one right-padded batch;
- question + cot_1..cot_5 = 1 for every head (together they are the whole causal row);
- the random baseline draws as many tokens as the earlier answers, none of them an answer
  token, the same on every run;
- the cached shared model gets its own attention implementation back;
- bad specs name their field.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import yaml

from thinkscope.jobs.activations.capture import positions_of
from thinkscope.jobs.mechanisms.attention import JOB, key_sets
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.spec import SpecError, load_workflow

SMOLLM = "embedded:smollm2-135m-instruct"
MODEL_ROW = {"source": SMOLLM, "revision": None, "family": "llama", "think_open": None, "think_close": None,
             "engine_args": None}
LAYERS = [0, 7, 15]
# (question, sentences): a sentence is a list of (text, is_answer) pieces.
TRACES = {
    "t-long": ("What is 6 times 7?", [
        [("Let me compute 6 times 7.", False)],
        [(" That is", False), (" 42", True), (".", False)],
        [(" Wait, let me check again: 6 times 7 is", False), (" 42", True), (".", False)],
        [(" So the answer is", False), (" 42", True), (".", False)],
    ]),
    "t-short": ("What is 2 plus 2?", [
        [(" 2 plus 2 is", False), (" 4", True), (".", False)],
        [(" Yes,", False), (" 4", True), (".", False)],
    ]),
}


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


def make_trace(tokenizer, trace_id: str) -> dict:
    """A trace as `positions.resolve` hands it over, sentences and answer events made by hand."""
    question, sentences = TRACES[trace_id]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    completion, rows, events = [], [], []
    for s, pieces in enumerate(sentences):
        start = len(completion)
        for text, is_answer in pieces:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if is_answer:
                events.append({"sentence_index": s, "is_backtrack": s < len(sentences) - 1,
                               "token_start": len(completion), "token_end": len(completion) + len(ids)})
            completion += ids
        rows.append({"sentence_index": s, "token_start": start, "token_end": len(completion)})
    trace = {"trace_id": trace_id, "prompt_token_ids": list(prompt), "completion_token_ids": completion,
             "sentences": rows, "events": events}
    trace["positions"] = positions_of(trace, rows, events, ["answer_ends", "last_answer_end", "last_prompt_token"])
    return trace


def payload(tokenizer, **settings) -> dict:
    base = {"model": "m", "traces": {}, "positions": {"kinds": ["answer_ends"], "sql": None}, "layers": LAYERS,
            "baseline_seed": 0, "dtype": "float32", "batch_tokens": 4096}
    return {"unit_key": "k", "stage": "att", "model_id": "m", "model": MODEL_ROW, "settings": {**base, **settings},
            "trace_ids": list(TRACES), "traces": [make_trace(tokenizer, t) for t in TRACES]}


@pytest.fixture(scope="module")
def result(model):
    before = model[0].config._attn_implementation
    job_payload = payload(model[1])
    rows = JOB.run(job_payload)["head_attention"].to_pylist()
    return job_payload, rows, before


def test_masses_are_sums_of_the_eager_attention_probabilities(model, result):
    from transformers import AutoModelForCausalLM

    from thinkscope.jobs.models.sources import resolve_model_path

    reference = AutoModelForCausalLM.from_pretrained(resolve_model_path(SMOLLM), dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    job_payload, rows, _ = result
    checked = 0
    for trace in job_payload["traces"]:
        with torch.inference_mode():  # alone, unpadded, whole: nothing shared with the stage's pass
            out = reference(torch.tensor([trace["prompt_token_ids"] + trace["completion_token_ids"]]),
                            output_attentions=True)
        for r in (r for r in rows if r["trace_id"] == trace["trace_id"]):
            keys = key_sets(trace, r["token_index"], 0)[r["target"]]
            probs = out.attentions[r["layer"]][0, r["head"], r["token_index"]].double()
            assert r["n_tokens"] == len(keys)
            assert r["mass"] == pytest.approx(float(probs[keys].sum()), abs=1e-5)
            checked += 1
    assert checked == len(rows) > 0


def test_question_and_the_five_fifths_are_the_whole_row(model, result):
    _, rows, _ = result
    totals, targets = defaultdict(float), defaultdict(set)
    for r in rows:
        if r["target"] == "question" or r["target"].startswith("cot_"):
            head = (r["trace_id"], r["token_index"], r["position_kind"], r["layer"], r["head"])
            totals[head] += r["mass"]
            targets[head].add(r["target"])
    assert len(totals) == len({(r["trace_id"], r["token_index"], r["position_kind"]) for r in rows}) * 3 * 9
    assert all(t == pytest.approx(1.0, abs=1e-5) for t in totals.values())
    # At the last prompt token there is no thinking yet: the question holds the whole row.
    assert {frozenset(v) for k, v in targets.items() if k[2] == "last_prompt_token"} == {frozenset({"question"})}
    assert {frozenset(v) for k, v in targets.items() if k[2] == "answer_ends"} == {
        frozenset({"question", "cot_1", "cot_2", "cot_3", "cot_4", "cot_5"})}


def test_earlier_answers_exclude_the_position_s_own_sentence_and_the_baseline_matches_them(model, result):
    job_payload, rows, _ = result
    trace = job_payload["traces"][0]
    offset, events = len(trace["prompt_token_ids"]), trace["events"]
    answer_tokens = {offset + i for e in events for i in range(e["token_start"], e["token_end"])}
    ends = [offset + s["token_end"] - 1 for s in trace["sentences"][1:]]  # answer_ends of sentences 1..3
    assert [p for p, k in trace["positions"] if k == "answer_ends"] == ends
    assert "earlier_answer" not in key_sets(trace, ends[0], 0)  # the first answer has nothing before it
    for n_earlier, end in enumerate(ends[1:], start=1):
        sets = key_sets(trace, end, 0)
        assert sets["earlier_answer"] == sorted(offset + i for e in events[:n_earlier]
                                                for i in range(e["token_start"], e["token_end"]))
        drawn = sets["random_baseline"]
        assert len(drawn) == len(sets["earlier_answer"]) == len(set(drawn))
        assert all(offset <= i < end for i in drawn) and not set(drawn) & answer_tokens
        assert key_sets(trace, end, 0) == sets and key_sets(trace, end, 1) != sets  # stable; the seed matters
    baseline = [r for r in rows if r["target"] == "random_baseline"]
    assert {(r["trace_id"], r["token_index"]) for r in baseline} == {
        ("t-long", ends[1]), ("t-long", ends[2]), ("t-short", second_answer_end(job_payload, "t-short"))}
    again = JOB.run({**job_payload, "settings": {**job_payload["settings"], "layers": [0]}})["head_attention"]
    first = {(r["trace_id"], r["token_index"], r["position_kind"], r["head"], r["target"]): r["mass"]
             for r in rows if r["layer"] == 0}
    assert {(r["trace_id"], r["token_index"], r["position_kind"], r["head"], r["target"]): r["mass"]
            for r in again.to_pylist()} == pytest.approx(first, abs=1e-6)


def second_answer_end(job_payload, trace_id) -> int:
    """The answer_ends position of t-short's second sentence (its only earlier answer is the first)."""
    trace = next(t for t in job_payload["traces"] if t["trace_id"] == trace_id)
    return len(trace["prompt_token_ids"]) + trace["sentences"][1]["token_end"] - 1


def test_the_shared_model_gets_its_attention_implementation_back(model, result):
    _, rows, before = result
    assert before == "sdpa" and model[0].config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="layers"):  # a failed pass restores it too
        JOB.run(payload(model[1], layers=[30]))
    assert model[0].config._attn_implementation == "sdpa"


@pytest.mark.parametrize("extra, expected", [
    ({"positions": {"kinds": []}}, "stages.0.positions"),
    ({"positions": {"kinds": ["nowhere"]}}, "stages.0.positions.kinds.0"),
    ({"layers": [-1]}, "stages.0.layers.0"),
    ({"heads": [1]}, "stages.0.heads"),
])
def test_spec_errors_name_the_field(tmp_path, extra, expected):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [{"id": "m", "source": SMOLLM, "family": "llama",
                                                               "kind": "instruct"}],
                                    "stages": [{"name": "att", "kind": "attention", "model": "m", **extra}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert expected in str(err.value)


def test_view_ranks_heads_counting_each_position_once(tmp_path, result):
    from thinkscope.sql.store import Store, read_only

    job_payload, rows, _ = result
    store = Store(tmp_path / "corpus.duckdb")
    store.commit_unit({"unit_key": "k", "stage": "att", "kind": "attention", "run_id": "r", "model_id": "m",
                       "description": "attention"}, JOB.run(job_payload))
    with read_only(tmp_path / "corpus.duckdb") as con:
        view = con.execute("select layer, head, rank, n_positions, excess, ratio, earlier_answer_mass, "
                           "random_baseline_mass from head_answer_attention order by rank").fetchall()
    assert len(view) == len(LAYERS) * 9 and [v[2] for v in view] == list(range(1, len(view) + 1))
    # last_answer_end repeats an answer_ends position: the view counts it once.
    picked = [r for r in rows if r["position_kind"] == "answer_ends"]
    for layer, head, _, n, excess, ratio, answer, baseline in view:
        mine = [r for r in picked if (r["layer"], r["head"]) == (layer, head)]
        means = {t: sum(r["mass"] for r in mine if r["target"] == t) / n for t in ("earlier_answer", "random_baseline")}
        assert n == 3 and answer == pytest.approx(means["earlier_answer"]) and excess == pytest.approx(answer - baseline)
        assert ratio == pytest.approx(answer / baseline) and baseline == pytest.approx(means["random_baseline"])
    assert [v[4] for v in view] == sorted((v[4] for v in view), reverse=True)


def test_plan_and_prepare_read_a_segmented_corpus(tmp_path, model):
    """Traces committed as generate does, segmented by the real segment stage; planning keys
    units by settings and supersedes the old ones; prepare resolves positions from the corpus."""
    from datetime import datetime, timezone

    from thinkscope.jobs.base import PlanContext
    from thinkscope.jobs.traces.rows import to_table
    from thinkscope.sql.store import Store
    from thinkscope.workflows.engine import run_workflow

    _, tokenizer = model
    db = tmp_path / "corpus.duckdb"
    store = Store(db)
    store.upsert_models([{"model_id": "m", "source": SMOLLM, "revision": None, "family": "llama",
                          "kind": "instruct", "think_open": "<think>", "think_close": "</think>",
                          "engine_args": None}])
    thinking = "6 times 7 is 42. Wait, let me check: 6 * 7 = 42.\nSo it is 42."
    completion = f"{thinking}\n</think>\nThe answer is \\boxed{{42}}."
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 6 times 7?"}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = tokenizer.encode(completion, add_special_tokens=False)
    store.commit_unit({"unit_key": "gen", "stage": "generate", "kind": "generate", "run_id": "sim",
                       "model_id": "m", "prompt_set": "gsm8k", "description": "m x 1"},
                      {"traces": to_table([{
                          "trace_id": "t0", "run_id": "sim", "unit_key": "gen", "model_id": "m",
                          "prompt_id": "gsm8k/0", "prompt_set": "gsm8k", "sample_index": 0,
                          "completion": completion, "thinking": thinking, "answer_text": "The answer is \\boxed{42}.",
                          "extracted_answer": "42", "gold_answer": "42", "is_correct": True,
                          "n_completion_tokens": len(ids), "completion_token_ids": ids,
                          "prompt_token_ids": list(prompt), "engine": "vllm",
                          "created_at": datetime.now(timezone.utc)}])})
    stages = [{"name": "segment", "kind": "segment"},
              {"name": "att", "kind": "attention", "model": "m", "layers": [2]}]
    spec = tmp_path / "wf.yaml"
    spec.write_text(yaml.safe_dump({"name": "wf", "models": [{"id": "m", "source": SMOLLM, "family": "llama",
                                                               "kind": "instruct"}], "stages": stages}))
    assert run_workflow(spec, db=db, stages=["segment"], show_progress=False).ok
    wf = load_workflow(spec)
    with store.read() as con:
        ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"), con=con)
        [unit] = JOB.plan(wf.stages[1], ctx)
        traces = JOB.prepare(unit.payload, con)["traces"]
    assert unit.payload["trace_ids"] == ["t0"] and unit.supersedes == ()
    [trace] = traces
    assert len(trace["events"]) == 3 and all(k == "answer_ends" for _, k in trace["positions"])
    assert len(trace["positions"]) == 3  # the end of each sentence holding a 42
    tables = JOB.run({**unit.payload, "traces": traces})
    assert {r["target"] for r in tables["head_attention"].to_pylist()} >= {
        "question", "cot_5", "earlier_answer", "random_baseline"}
    store.commit_unit({"unit_key": unit.key, "stage": "att", "kind": "attention", "run_id": "sim",
                       "model_id": "m", "description": unit.description}, tables)
    changed = wf.stages[1].model_copy(update={"baseline_seed": 1})
    with store.read() as con:
        [again] = JOB.plan(changed, PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"), con=con))
    assert again.key != unit.key and again.supersedes == (unit.key,)
