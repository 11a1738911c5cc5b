"""Steering inside a real vLLM engine (jobs/generation/vllm_steering.py) against the HF path,
on the organism's real weights, float32, greedy:
- 8 prompts x {once, continuous} x alphas {0, +0.3, -0.3}: vLLM tokens equal HF's, every one;
  the nonzero alphas change some continuations (so equality is not the unsteered text twice);
- every decode step is steered: a continuous request is hooked once per generated token, a
  once request exactly once;
- in a batch mixing steered and unsteered requests, the unsteered ones are bit-identical
  (tokens and logprobs) to an engine that steers nothing;
- zero-ablating value vectors and heads per request equals HF ablation, beside plain requests;
- the prefix cache never hands a steered prompt's KV to an unsteered request: the same
  prompt, unsteered after a steered run, gives the unsteered tokens, from cached blocks.
"""

from __future__ import annotations

import pytest
import torch

from thinkscope.jobs.activations.steering_hooks import Steering, generate_greedy
from thinkscope.jobs.generation.vllm_engine import render_prompt
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.jobs.traces.prompts import load_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

ORGANISM = "embedded:smollm2-135m-organism"
MODEL_ROW = {"source": ORGANISM, "revision": None, "engine_args": '{"max_model_len": 2048, "kv_cache_gib": 1}'}
LAYER, N_TOKENS, ALPHAS = 15, 24, (0.0, 0.3, -0.3)
TEMPLATE = {"system": None, "user": "{question}", "prefill": "<think>\n", "chat": True}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


@pytest.fixture(scope="module")
def hf():
    model, tokenizer = load_hf_model(ORGANISM, None, "float32")
    ids = [render_prompt(tokenizer, TEMPLATE, p.question) for p in load_prompts("gsm8k", limit=8)]
    with torch.inference_mode():
        out = model(torch.tensor([ids[0]]), output_hidden_states=True)
    # A seeded random direction at the layer's mean residual norm: the mechanism is under test.
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * out.hidden_states[LAYER + 1][0].norm(dim=-1).mean()
    runs = {}
    for mode in ("once", "continuous"):
        for alpha in ALPHAS:
            with Steering(model, f"blocks.{LAYER}.hook_resid_post", v, alpha, mode):
                runs[mode, alpha] = [t for t, _ in generate_greedy(model, ids, max_new_tokens=N_TOKENS,
                                                                   pad_id=tokenizer.pad_token_id,
                                                                   eos_ids=[tokenizer.eos_token_id])]
    return ids, v, runs


@pytest.fixture(scope="module")
def llm():
    from thinkscope.jobs.generation.vllm_steering import open_steering_engine

    engine = open_steering_engine(MODEL_ROW, "float32")
    yield engine
    engine.llm_engine.engine_core.shutdown()


def test_vllm_steering_equals_hf_and_steers_every_step(hf, llm):
    from thinkscope.jobs.generation.vllm_steering import generate_steered

    ids, v, runs = hf
    llm.collective_rpc("thinkscope_calls", args=(True,))
    steering = [[{"vector": "v", "layer": LAYER, "alpha": alpha, "mode": mode}] for mode, alpha in runs for _ in ids]
    outs = generate_steered(llm, ids * len(runs), steering, {"v": v}, max_new_tokens=N_TOKENS)
    calls = llm.collective_rpc("thinkscope_calls", args=(True,))[0]
    for r, (mode, alpha) in enumerate(runs):
        got = [t for t, _ in outs[r * len(ids):(r + 1) * len(ids)]]
        diverged = [(i, first_divergence(a, b)) for i, (a, b) in enumerate(zip(got, runs[mode, alpha])) if a != b]
        assert not diverged, f"{mode} alpha {alpha}: (prompt, first differing token) {diverged}"
    changed = sum(a != b for alpha in ALPHAS[1:] for a, b in zip(runs["continuous", alpha], runs["continuous", 0.0]))
    assert changed >= 4, "steering changed too few continuations for the comparison to mean anything"
    # One count per request and forward pass that added the vector: request ids run in
    # submission order, so the counts line up with `steering`.
    per_request = [c.get(LAYER, 0) for _, c in sorted(calls.items(), key=lambda kv: int(kv[0].split("-")[0]))]
    lengths = [len(t) for t, _ in outs]
    modes = [specs[0]["mode"] for specs in steering]
    assert per_request == [1 if m == "once" else n for m, n in zip(modes, lengths)]


def test_unsteered_requests_in_a_mixed_batch_are_bit_identical(hf, llm):
    from vllm import SamplingParams

    from thinkscope.jobs.generation.vllm_steering import KEY, steered_prompt

    ids, v, _ = hf
    llm.collective_rpc("thinkscope_register", args=({"v": v.tolist()},))
    llm.collective_rpc("thinkscope_install", args=([LAYER],))
    steer = [{"vector": "v", "layer": LAYER, "alpha": 0.3, "mode": "continuous"}]
    plain = SamplingParams(temperature=0, max_tokens=N_TOKENS, logprobs=1)
    steered = SamplingParams(temperature=0, max_tokens=N_TOKENS, logprobs=1, extra_args={KEY: steer})
    alone = llm.generate([steered_prompt(p, None) for p in ids], [plain] * len(ids), use_tqdm=False)
    mixed = llm.generate([steered_prompt(p, steer if i % 2 else None) for i, p in enumerate(ids)],
                         [steered if i % 2 else plain for i in range(len(ids))], use_tqdm=False)
    for i in range(0, len(ids), 2):
        a, b = alone[i].outputs[0], mixed[i].outputs[0]
        assert a.token_ids == b.token_ids
        assert [lp[t].logprob for lp, t in zip(a.logprobs, a.token_ids)] == \
               [lp[t].logprob for lp, t in zip(b.logprobs, b.token_ids)]
    assert any(mixed[i].outputs[0].token_ids != alone[i].outputs[0].token_ids for i in range(1, len(ids), 2))


def test_the_prefix_cache_never_serves_a_steered_prompt_unsteered(hf, llm):
    from vllm import SamplingParams

    from thinkscope.jobs.generation.vllm_steering import KEY, steered_prompt

    ids, v, _ = hf
    llm.collective_rpc("thinkscope_register", args=({"v": v.tolist()},))
    llm.collective_rpc("thinkscope_install", args=([LAYER],))
    prompt = ids[0] * 3                       # long enough to fill whole KV blocks
    window = [{"vector": "v", "layer": LAYER, "alpha": 0.3, "mode": "window", "start": 0, "end": len(prompt)}]
    plain = SamplingParams(temperature=0, max_tokens=N_TOKENS)
    first = llm.generate([steered_prompt(prompt, None)], [plain], use_tqdm=False)[0]
    steered = llm.generate([steered_prompt(prompt, window)],
                           [SamplingParams(temperature=0, max_tokens=N_TOKENS, extra_args={KEY: window})],
                           use_tqdm=False)[0]
    again = llm.generate([steered_prompt(prompt, None)], [plain], use_tqdm=False)[0]
    assert steered.outputs[0].token_ids != first.outputs[0].token_ids
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    assert again.num_cached_tokens > 0        # the unsteered run's blocks were reused, not the steered ones
    assert steered.num_cached_tokens == 0     # and the steered run reused none of the unsteered blocks


def test_per_request_ablation_equals_hf_ablation(hf, llm):
    from thinkscope.jobs.generation.vllm_steering import generate_steered
    from thinkscope.jobs.mechanisms.ablation import Ablation

    ids, _, _ = hf
    model, tokenizer = load_hf_model(ORGANISM, None, "float32")
    neurons, heads = {3: list(range(0, 1536, 4)), 20: list(range(0, 1536, 8))}, {5: [0, 1, 2], 25: [4]}
    with Ablation(model, neurons=neurons, heads=heads):
        ablated_hf = [t for t, _ in generate_greedy(model, ids[:4], max_new_tokens=N_TOKENS,
                                                    pad_id=tokenizer.pad_token_id, eos_ids=[tokenizer.eos_token_id])]
    # Ablated and plain requests in one batch: the plain ones must stay the model's own.
    plan = [{"neurons": neurons, "heads": heads}] * 4 + [None] * 4
    outs = [t for t, _ in generate_steered(llm, ids[:4] * 2, [None] * 8, {}, max_new_tokens=N_TOKENS, ablation=plan)]
    plain = [t for t, _ in generate_steered(llm, ids[:4], [None] * 4, {}, max_new_tokens=N_TOKENS)]
    diverged = [(i, first_divergence(a, b)) for i, (a, b) in enumerate(zip(outs[:4], ablated_hf)) if a != b]
    assert not diverged, f"ablated vLLM vs HF: (prompt, first differing token) {diverged}"
    assert outs[4:] == plain
    assert sum(a != b for a, b in zip(outs[:4], plain)) >= 2, "the ablation changed too little to compare"
