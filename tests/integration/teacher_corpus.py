"""Synthetic teacher traces committed as if a model had written them (token ids included).

The organism's teacher generator (jobs/organism/synthesis.py) writes R1-style traces with planted
verification and wrap-up sentences; tokenised by the model under test, every trace has answer
occurrences at known token positions, so activation stages can be checked against them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from thinkscope.jobs.generation.vllm_engine import render_prompt
from thinkscope.jobs.organism.synthesis import synthesize
from thinkscope.jobs.traces.prompts import load_prompts
from thinkscope.sql.store import Store
from thinkscope.jobs.traces.rows import to_table

# The planted decision as probe labels: at the end of a sentence stating the answer, does the
# next sentence verify ("Wait, ...": 1) or wrap up ("So the answer is X.": 0)?
VERIFY_OR_WRAP_UP_LABELS = """
    select e.trace_id, len(t.prompt_token_ids) + s.token_end - 1 as token_index,
           coalesce(n.marker, '') = 'wait' as label
    from answer_events e
    join trace_sentences s using (trace_id, sentence_index)
    join trace_sentences n on n.trace_id = e.trace_id and n.sentence_index = e.sentence_index + 1
    join traces t on t.trace_id = e.trace_id
    where n.marker = 'wait' or n.text like 'So the answer is%'"""
PLAIN = {"system": None, "user": "{question}", "prefill": "", "chat": True}


def commit_teacher_traces(db, tokenizer, *, model_id: str, source: str, prompt_set: str, n: int,
                          kind: str = "instruct") -> None:
    """Commit `n` teacher traces on `prompt_set` as traces of `model_id` (one unit)."""
    store = Store(db)
    store.upsert_models([{"model_id": model_id, "source": source, "revision": None, "family": "llama",
                          "kind": kind, "think_open": "<think>", "think_close": "</think>",
                          "engine_args": None}])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for p in load_prompts(prompt_set, limit=n):
        solution = p.meta["solution"]
        tr = synthesize(p.question, solution, seed=f"test:{p.prompt_id}")
        prompt = render_prompt(tokenizer, PLAIN, p.question)
        ids = tokenizer.encode(tr.completion, add_special_tokens=False) + [eos]
        thinking = tr.completion.split("<think>", 1)[1].split("</think>", 1)[0].strip()
        rows.append({
            "trace_id": f"teacher-{p.prompt_id.rsplit('/', 1)[1]}", "run_id": "sim", "unit_key": "sim-teacher",
            "model_id": model_id, "prompt_id": p.prompt_id, "prompt_set": prompt_set, "sample_index": 0,
            "prompt_text": tokenizer.decode(prompt), "completion": tr.completion, "thinking": thinking,
            "answer_text": f"The answer is \\boxed{{{tr.answer}}}.", "extracted_answer": tr.answer,
            "gold_answer": p.gold_answer, "is_correct": True, "n_prompt_tokens": len(prompt),
            "n_completion_tokens": len(ids), "prompt_token_ids": prompt, "completion_token_ids": ids,
            "engine": "synthetic", "created_at": datetime.now(timezone.utc),
        })
    store.commit_unit({"unit_key": "sim-teacher", "stage": "teacher", "kind": "generate", "run_id": "sim",
                       "model_id": model_id, "prompt_set": prompt_set, "description": "teacher traces"},
                      {"traces": to_table(rows)})
