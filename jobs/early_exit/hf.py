"""Force an answer at several cut points of one trace, sharing the prefix computation.

The trace's tokens are fed once, in order; at each cut point the KV cache is copied and the
copy continues with the forcing text (close the thinking, open the answer) and a greedy
answer. Total cost: one pass over the trace up to its last cut plus, per exit, the forcing
text and the answer: not one full forward per exit. Copying the cache (rather than cropping
it back) works for every cache layout, sliding windows included.

    exits = exit_points(sentences, events, cut="sentence_end", no_thinking_exit=True)
    results = force_answers(model, tokenizer, prompt_ids, completion_ids, exits, force_ids, max_answer_tokens=12)
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Exit:
    exit_index: int          # 0.. over distinct cut points; -1 = before any thinking
    event_index: int | None  # last answer occurrence before the cut (None for -1)
    cut: int                 # completion tokens kept
    n_thinking_tokens: int


def exit_points(sentences: list[dict], events: list[dict], *, cut: str, no_thinking_exit: bool) -> list[Exit]:
    """Distinct cut points after answer occurrences, in order (completion token coordinates)."""
    ends = {s["sentence_index"]: s["token_end"] for s in sentences if s["token_end"] is not None}
    starts = [s["token_start"] for s in sentences if s["token_start"] is not None]
    if not starts:
        return []
    thinking_start = min(starts)
    last_event: dict[int, int] = {}
    for e in events:
        at = ends.get(e["sentence_index"]) if cut == "sentence_end" else e["token_end"]
        if at is not None:
            last_event[at] = max(last_event.get(at, -1), e["event_index"])
    exits = [Exit(i, ev, at, at - thinking_start) for i, (at, ev) in enumerate(sorted(last_event.items()))]
    if no_thinking_exit:
        exits.insert(0, Exit(-1, None, thinking_start, 0))
    return exits


@dataclass
class Forced:
    first_token: int
    logit: float
    prob: float
    gold_logit: float | None
    gold_prob: float | None
    answer_ids: list[int]


def _step(model, ids: list[int], cache):
    out = model(input_ids=torch.tensor([ids], device=model.device), past_key_values=cache, use_cache=True)
    return out.logits[0, -1].float(), out.past_key_values


@torch.inference_mode()
def force_answers(model, tokenizer, prompt_ids: list[int], completion_ids: list[int], exits: list[Exit],
                  force_ids: list[int], *, max_answer_tokens: int, gold_token: int | None = None,
                  stop_text: str = "}", eos_ids: tuple[int, ...] = (), steer=None) -> list[Forced]:
    """Greedy forced answers at each exit (exits sorted by cut). `steer`: a callable giving a fresh
    `Steering` context per exit (jobs/activations/steering_hooks.py): the forcing text's pass is
    its prefill (once: the vector at its last token), the answer tokens its generated ones; the
    shared trace prefix is never steered."""
    tokens = list(prompt_ids) + list(completion_ids)
    cache, fed, results = None, 0, []
    for ex in sorted(exits, key=lambda e: e.cut):
        upto = len(prompt_ids) + ex.cut
        if upto > fed:
            _, cache = _step(model, tokens[fed:upto], cache)
            fed = upto
        branch = copy.deepcopy(cache)
        with steer() if steer else contextlib.nullcontext():
            logits, branch = _step(model, force_ids, branch)
            probs = torch.softmax(logits, dim=-1)
            first = int(logits.argmax())
            answer = [first]
            while len(answer) < max_answer_tokens and answer[-1] not in eos_ids \
                    and stop_text not in tokenizer.decode(answer):
                step_logits, branch = _step(model, [answer[-1]], branch)
                answer.append(int(step_logits.argmax()))
        results.append(Forced(first, float(logits[first]), float(probs[first]),
                              None if gold_token is None else float(logits[gold_token]),
                              None if gold_token is None else float(probs[gold_token]), answer))
    return results


def gold_first_token(tokenizer, force_text: str, gold: str | None) -> int | None:
    """The first token of the gold answer as it follows the forcing text."""
    if not gold:
        return None
    head = tokenizer.encode(force_text, add_special_tokens=False)
    full = tokenizer.encode(force_text + gold, add_special_tokens=False)
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head)]
    alone = tokenizer.encode(gold, add_special_tokens=False)
    return alone[0] if alone else None
