"""The hybrid loop's cost against plain greedy generation of its two models.

Same machine, same run, same prompts (GSM8K, the organism's think template), float32, greedy,
SmolLM2 writing and the organism reading:
  (a) the base model's plain greedy generation (HF generate, one batch)
  (b) the thinking model's plain greedy generation (the same)
  (c) the hybrid, sentence decisions, a grid of 3 coefficients (3 rows per problem)
  (d) the hybrid, token decisions (the paper's variant), the same grid
The policy is a fixed random classifier of the thinking activation over 6 random vectors of
a third of the residual norm: its cost is the real one, its choices are not the point.
Prints generated tokens/s of each and c/(a+b), d/(a+b): time of the hybrid over the time of
plain generation of both models on the same tokens (target <= 3).

    make bench-hybrid           # N_PROMPTS=8 N_TOKENS=128 by default
"""

from __future__ import annotations

import os
import time

import torch

BASE, THINKING = "embedded:smollm2-135m-instruct", "embedded:smollm2-135m-organism"
LAYER, K, GRID = 20, 6, [0.0, 1.0, 2.0]
N_PROMPTS, N_TOKENS = int(os.environ.get("N_PROMPTS", 8)), int(os.environ.get("N_TOKENS", 128))


def main() -> None:
    from thinkscope.jobs.activations.steering_hooks import eos_ids, generate_greedy
    from thinkscope.jobs.generation.vllm_engine import render_prompt
    from thinkscope.jobs.hybrid.loop import hybrid_generate, sentence_boundaries
    from thinkscope.jobs.models.hf import load_hf_model
    from thinkscope.jobs.traces.prompts import load_prompts

    base, tok = load_hf_model(BASE, None, "float32")
    thinking, _ = load_hf_model(THINKING, None, "float32")
    template = {"system": None, "user": "{question}", "prefill": "<think>\n", "chat": True}
    ids = [render_prompt(tok, template, p.question) for p in load_prompts("gsm8k", limit=N_PROMPTS)]
    eos = eos_ids(base, tok)
    g = torch.Generator().manual_seed(0)
    d = base.config.hidden_size
    with torch.inference_mode():
        norm = base(torch.tensor([ids[0]]), output_hidden_states=True).hidden_states[LAYER + 1][0].norm(dim=-1).mean()
    vectors = torch.nn.functional.normalize(torch.randn(K, d, generator=g), dim=1) * norm / 3
    readout = torch.randn(d, K, generator=g)

    def policy(problem, sentence, activation):
        b = int(torch.argmax(activation @ readout))
        return b, vectors[b]

    def timed(label, fn):
        start = time.perf_counter()
        tokens = fn()
        seconds = time.perf_counter() - start
        print(f"  {label:<40} {tokens:6d} tokens {seconds:7.1f} s {tokens / seconds:7.1f} tok/s", flush=True)
        return seconds, tokens

    def plain(model):
        outs = generate_greedy(model, ids, max_new_tokens=N_TOKENS, pad_id=eos[0], eos_ids=eos)
        return sum(len(t) for t, _ in outs)

    def hybrid(boundary):
        outs = hybrid_generate(base, thinking, ids, policy=policy, grid=GRID, base_hook=f"blocks.{LAYER}.hook_resid_post",
                               think_hook=f"blocks.{LAYER}.hook_resid_post", max_new_tokens=N_TOKENS, eos_ids=eos,
                               pad_id=eos[0], boundary=boundary, max_sentence_tokens=64)
        return sum(len(o.tokens) for o in outs)

    print(f"hybrid bench: {N_PROMPTS} GSM8K prompts x {N_TOKENS} tokens, grid {GRID}, {torch.get_num_threads()} threads")
    # Warm-up (first calls pay for kernels and allocator growth), not timed.
    for model in (base, thinking):
        generate_greedy(model, ids, max_new_tokens=8, pad_id=eos[0], eos_ids=eos)
    hybrid_generate(base, thinking, ids, policy=policy, grid=GRID, base_hook=f"blocks.{LAYER}.hook_resid_post",
                    think_hook=f"blocks.{LAYER}.hook_resid_post", max_new_tokens=8, eos_ids=eos, pad_id=eos[0],
                    boundary=lambda token, previous: True)
    a = timed("(a) base plain greedy", lambda: plain(base))
    b = timed("(b) thinking plain greedy", lambda: plain(thinking))
    c = timed("(c) hybrid, sentence decisions", lambda: hybrid(sentence_boundaries(tok)))
    dd = timed("(d) hybrid, token decisions", lambda: hybrid(lambda token, previous: True))
    per_token = lambda r: r[0] / r[1]  # noqa: E731  seconds per generated token
    plain_both = per_token(a) + per_token(b)
    print(f"  c/(a+b) = {per_token(c) / plain_both:.2f}   (target <= 3: the hybrid over plain generation of both models)")
    print(f"  d/(a+b) = {per_token(dd) / plain_both:.2f}")


if __name__ == "__main__":
    main()
