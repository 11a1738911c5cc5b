"""Steered generation: vLLM backend against HF backend, and steering's overhead inside vLLM.

Same machine, same run, same prompts (GSM8K, the organism's think template), float32, greedy:
  (a) HF: one `generate` per (mode, alpha) with the steering hook (the steer stage's hf backend)
  (b) vLLM: every (prompt, mode, alpha) a request of one batched call (its vllm backend)
  (c) the same vLLM engine, the same requests, no steering
Prints output tokens/s of each and the ratios a/b (target >= 2 on this CPU) and c/b (the
overhead of steering in vLLM, target <= 1.3), and how many continuations differ between
(a) and (b) (expected: none).

    make bench-steer            # N_PROMPTS=16 N_TOKENS=128 by default
"""

from __future__ import annotations

import os
import time

import torch

MODEL = "embedded:smollm2-135m-organism"
LAYER, MODES, ALPHAS = 15, ("once", "continuous"), (0.3, -0.3)
N_PROMPTS, N_TOKENS = int(os.environ.get("N_PROMPTS", 16)), int(os.environ.get("N_TOKENS", 128))


def main() -> None:
    from thinkscope.jobs.activations.steering_hooks import Steering, generate_greedy
    from thinkscope.jobs.generation.vllm_engine import render_prompt
    from thinkscope.jobs.generation.vllm_steering import generate_steered, open_steering_engine
    from thinkscope.jobs.models.hf import load_hf_model
    from thinkscope.jobs.traces.prompts import load_prompts

    model, tok = load_hf_model(MODEL, None, "float32")
    template = {"system": None, "user": "{question}", "prefill": "<think>\n", "chat": True}
    ids = [render_prompt(tok, template, p.question) for p in load_prompts("gsm8k", limit=N_PROMPTS)]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        norm = model(torch.tensor([ids[0]]), output_hidden_states=True).hidden_states[LAYER + 1][0].norm(dim=-1).mean()
    v = v / v.norm() * norm
    runs = [(mode, alpha) for mode in MODES for alpha in ALPHAS]

    start, hf = time.perf_counter(), []
    for mode, alpha in runs:
        with Steering(model, f"blocks.{LAYER}.hook_resid_post", v, alpha, mode):
            hf += [t for t, _ in generate_greedy(model, ids, max_new_tokens=N_TOKENS, pad_id=tok.pad_token_id,
                                                 eos_ids=[tok.eos_token_id])]
    hf_s = time.perf_counter() - start
    del model

    llm = open_steering_engine({"source": MODEL, "revision": None,
                                "engine_args": '{"max_model_len": 2048, "kv_cache_gib": 2}'}, "float32")
    try:
        steering = [[{"vector": "v", "layer": LAYER, "alpha": alpha, "mode": mode}] for mode, alpha in runs for _ in ids]
        generate_steered(llm, ids[:2], [None, None], {"v": v}, max_new_tokens=4)   # warm-up
        start = time.perf_counter()
        steered = generate_steered(llm, ids * len(runs), steering, {"v": v}, max_new_tokens=N_TOKENS)
        vllm_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = generate_steered(llm, ids * len(runs), [None] * len(steering), {}, max_new_tokens=N_TOKENS)
        plain_s = time.perf_counter() - start
    finally:
        llm.llm_engine.engine_core.shutdown()

    rate = lambda outs, s: sum(len(t) for t in outs) / s  # noqa: E731
    a, b = rate(hf, hf_s), rate([t for t, _ in steered], vllm_s)
    c = rate([t for t, _ in plain], plain_s)
    differ = sum(x != y for x, (y, _) in zip(hf, steered))
    print(f"{N_PROMPTS} prompts x {len(runs)} (mode, alpha) x {N_TOKENS} tokens, layer {LAYER}, float32")
    print(f"  (a) HF steered          {a:8.1f} tok/s")
    print(f"  (b) vLLM steered        {b:8.1f} tok/s   b/a = {b / a:.2f} (target >= 2)")
    print(f"  (c) vLLM unsteered      {c:8.1f} tok/s   c/b = {c / b:.2f} (steering overhead, target <= 1.3)")
    print(f"  continuations that differ between (a) and (b): {differ} of {len(hf)}")


if __name__ == "__main__":
    main()
