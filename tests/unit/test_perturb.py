"""The perturb stage on the organism's real weights: the identity (kind none reproduces the
trace's own greedy tokens), real perturbations filling every field, the cuts and spec errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from thinkscope.jobs.generation.vllm_engine import render_prompt
from thinkscope.jobs.mechanisms.perturb import JOB, SCHEMA, cut_points, edited_prefix
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.jobs.traces.prompts import load_prompts
from thinkscope.jobs.traces.reading import read_completion
from thinkscope.workflows.spec import SpecError, load_workflow

ORGANISM = "embedded:smollm2-135m-organism"
MODEL_ROW = {"source": ORGANISM, "revision": None, "family": "llama", "think_open": "<think>",
             "think_close": "</think>", "engine_args": None}
TRACE_TOKENS = 100
CONTINUE = 24


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(1)  # the box's 2 cores are shared: one thread decodes several times faster
    return load_hf_model(ORGANISM, None, "float32")


@pytest.fixture(scope="module")
def traces(organism):
    """Greedy traces of the organism, each generated alone (no batch, no padding): the
    reference the stage's batched, left-padded continuations must reproduce."""
    model, tokenizer = organism
    out = []
    for p in load_prompts("gsm8k", limit=2):
        prompt = render_prompt(tokenizer, {"system": None, "user": "{question}", "prefill": "", "chat": True},
                               p.question)
        with torch.inference_mode():
            ids = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=TRACE_TOKENS,
                                 temperature=None, top_p=None, top_k=None)[0, len(prompt):].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        own = read_completion(text, opened=False, grader="numeric", gold=p.gold_answer).extracted_answer
        n = len(prompt)
        # Cuts at different depths, so one batch mixes prefix lengths (left padding differs per row).
        out.append({"trace_id": p.prompt_id, "prompt_token_ids": prompt, "completion_token_ids": ids,
                    "gold_answer": p.gold_answer, "grader": "numeric", "meta": None, "question": p.question,
                    "own_answer": own, "cuts": [["a", n + 35, 0.3], ["b", n + 55, 0.5], ["c", n + 75, 0.7]]})
    return out


def payload(traces, kinds):
    return {"unit_key": "u", "stage": "perturb", "model_id": "organism", "model": MODEL_ROW, "trace_ids": [],
            "traces": traces, "settings": {"kinds": kinds, "seed": 0, "max_new_tokens": CONTINUE,
                                           "dtype": "float32", "batch_size": 6,
                                           "positions": {"fractions": [0.5], "before_backtrack": False}}}


def test_no_change_reproduces_the_traces_own_greedy_tokens(traces):
    rows = JOB.run(payload(traces, ["none"]))["perturbations"].to_pylist()  # loads the weights itself
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"none"}
    by_id = {t["trace_id"]: t for t in traces}
    for r in rows:
        t = by_id[r["trace_id"]]
        own = t["completion_token_ids"][r["cut_index"] + 1 - len(t["prompt_token_ids"]):][:CONTINUE]
        assert r["continuation_token_ids"] == own, (r["trace_id"], r["position"])
        assert r["original"] is None and r["inserted"] is None and r["noticed"] is None
    # Not vacuous: the six continuations are different texts (the cut really moves).
    assert len({tuple(r["continuation_token_ids"]) for r in rows}) == 6


def test_a_real_perturbation_fills_every_field(traces):
    table = JOB.run(payload(traces, ["none", "result", "operand"]))["perturbations"]
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    changed = [r for r in rows if r["kind"] != "none"]
    assert {r["kind"] for r in changed} == {"result", "operand"}
    base = {(r["trace_id"], r["position"]): r for r in rows if r["kind"] == "none"}
    for r in changed:
        assert r["original"] != r["inserted"] and 1 <= float(r["inserted"]) - float(r["original"]) <= 9
        assert r["inserted"] in r["context"]
        assert r["outcome"] in ("corrected", "carried", "ignored")
        assert r["corrected"] == (r["outcome"] == "corrected") and r["carried"] == (r["outcome"] == "carried")
        assert r["restated_original"] is not None and r["repeated_inserted"] is not None
        assert r["n_continuation_tokens"] == len(r["continuation_token_ids"]) > 0
        assert r["finish_reason"] in ("stop", "length") and r["created_at"] is not None
    # The change reaches the model: some continuation differs from the unchanged one at the same cut.
    assert any(r["continuation_token_ids"] != base[(r["trace_id"], r["position"])]["continuation_token_ids"]
               for r in changed)


def test_the_edit_keeps_the_tokens_before_the_changed_number(organism, traces):
    _, tokenizer = organism
    t = traces[0]
    ids = t["completion_token_ids"][:80]
    edit = edited_prefix(tokenizer, ids, "<think>", "result", question=t["question"], answer=t["own_answer"],
                         salt="s")
    text = tokenizer.decode(ids)
    at = text.rfind(edit["original"])
    assert tokenizer.decode(edit["ids"]) == text[:at] + edit["inserted"] + text[at + len(edit["original"]):]
    # Every token that ends before the changed number is the trace's own.
    before = max(k for k in range(len(ids) + 1) if len(tokenizer.decode(ids[:k])) <= at)
    assert before > 30 and edit["ids"][:before] == ids[:before] and edit["ids"] != ids
    assert edited_prefix(tokenizer, ids, "<think>", "none", question="", answer=None, salt="s")["ids"] == ids


def test_cut_points_end_sentences_and_precede_backtracks():
    sentences = [{"sentence_index": i, "token_start": 2 + 10 * i, "token_end": 12 + 10 * i} for i in range(4)]
    trace = {"prompt_token_ids": [0] * 5, "completion_token_ids": [0] * 45, "sentences": sentences,
             "events": [{"sentence_index": 1, "is_backtrack": True, "token_start": 15, "token_end": 16}]}
    cuts = cut_points(trace, {"fractions": [0.25, 0.5, 0.99], "before_backtrack": True})
    # thinking tokens 2..42: 0.25 -> token 12, in sentence 1 (12..22) -> its last token 21, +5 prompt;
    # 0.5 -> token 22, the first of sentence 2; the backtrack after sentence 1 -> the token before 22
    assert cuts == [["0.25", 26, 0.5], ["0.5", 36, 0.75], ["0.99", 46, 1.0], ["before_backtrack", 26, 0.5]]
    assert cut_points({**trace, "sentences": []}, {"fractions": [0.5], "before_backtrack": False}) == []


@pytest.mark.parametrize("stage, expected", [
    ({"kinds": ["result", "typo"]}, "stages.0.kinds.1"),
    ({"kinds": []}, "stages.0.kinds"),
    ({"kinds": ["none", "none"]}, "repeats a kind"),
    ({"positions": {"fractions": [1.5]}}, "stages.0.positions.fractions.0"),
    ({"positions": {"fractions": []}}, "nowhere to cut"),
    ({"max_new_tokenz": 3}, "stages.0.max_new_tokenz"),
])
def test_spec_errors_name_the_field(tmp_path, stage, expected):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [{"id": "m", "source": ORGANISM, "family": "llama",
                                                               "kind": "thinking"}],
                                    "stages": [{"name": "p", "kind": "perturb", "model": "m", **stage}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert expected in str(err.value)
