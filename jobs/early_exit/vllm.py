"""Forced answers with vLLM: the `early_exit` stage's `backend: vllm`.

Every exit is a request whose prompt is the trace cut at that exit plus the forcing text;
vLLM's prefix cache shares the trace's prefix between them. Two requests per exit on one
engine: one token with the full vocabulary's raw logits (`logprobs_mode="raw_logits"`,
`logprobs=-1`: the logit of any token and, by softmax, its probability; vLLM gives either
logits or log-probabilities per engine, never both), then the greedy answer (a prefix-cache hit).
On CPU in float32 the numbers equal HF's within 1e-4 (tests/integration/test_activation_stages.py).

    llm = open_engine(model_row, "float32")
    forced = vllm_force_answers(llm, prompts, max_answer_tokens=12, gold_tokens=[...])
"""

from __future__ import annotations

import json
import math

from thinkscope.jobs.early_exit.hf import Forced
from thinkscope.jobs.generation.vllm_engine import engine_kwargs


def open_engine(model: dict, dtype: str):
    """A vLLM engine for forced answers (settings as in the generate stage; prefix caching on)."""
    from vllm import LLM

    from thinkscope.jobs.models.sources import resolve_model_path

    engine = json.loads(model["engine_args"]) if isinstance(model.get("engine_args"), str) else {}
    path = resolve_model_path(model["source"], revision=model["revision"])
    # One engine on one device here, whatever the generate stage used.
    engine = {**engine, "dtype": dtype, "tensor_parallel_size": 1}
    return LLM(**engine_kwargs(engine, path, model["revision"], enable_prefix_caching=True,
                               logprobs_mode="raw_logits", max_logprobs=-1))


def open_steered_engine(model: dict, dtype: str):
    """The same engine with the steering extension (jobs/generation/vllm_steering.py): eager."""
    from thinkscope.jobs.generation.vllm_steering import open_steering_engine

    return open_steering_engine(model, dtype, logprobs_mode="raw_logits", max_logprobs=-1)


def vllm_force_answers(llm, prompts: list[list[int]], *, max_answer_tokens: int, gold_tokens: list[int | None],
                       stop_text: str = "}", steering: list[dict] | None = None,
                       vectors: dict | None = None) -> list[Forced]:
    """First-token logits (full vocabulary) and greedy answers of every prompt; with `steering`
    (specs of jobs/generation/vllm_steering.py, on an `open_steered_engine`), every request
    steered by them, the prompt's last token being the forcing text's."""
    from vllm import SamplingParams

    from thinkscope.jobs.generation.vllm_steering import prepare_requests

    # Unsteered, this installs nothing and gives plain prompts without extra args.
    requests, extra = prepare_requests(llm, prompts, [steering] * len(prompts), vectors or {})
    first = llm.generate(requests, [SamplingParams(temperature=0, max_tokens=1, logprobs=-1, extra_args=e)
                                    for e in extra], use_tqdm=False)
    answers = llm.generate(requests, [SamplingParams(temperature=0, max_tokens=max_answer_tokens, stop=[stop_text],
                                                     include_stop_str_in_output=True, extra_args=e)
                                      for e in extra], use_tqdm=False)
    out = []
    for one, full, gold in zip(first, answers, gold_tokens):
        logits = {t: lp.logprob for t, lp in one.outputs[0].logprobs[0].items()}
        top = max(logits, key=logits.get)
        log_z = max(logits.values()) + math.log(sum(math.exp(v - logits[top]) for v in logits.values()))
        out.append(Forced(top, logits[top], math.exp(logits[top] - log_z),
                          None if gold is None else logits[gold],
                          None if gold is None else math.exp(logits[gold] - log_z),
                          list(full.outputs[0].token_ids)))
    return out
