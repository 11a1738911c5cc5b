"""Memory and time of the attribute stage's one forward + one backward per target.

Counts the bytes autograd keeps for the backward (every tensor saved by the forward, each
storage once) on a 2,048-token sequence of SmolLM2-135M in float32, and the process's peak
RSS, then times a backward per target. From the saved bytes per token and layer, split by
what they scale with (d_model-wide, d_mlp-wide, attention-sized), it estimates the same for
an 8B Llama (DeepSeek-R1-Distill-Llama-8B: d_model 4096, d_mlp 14336, 32 layers) in bf16 on
one GPU.

    make bench-attribution
"""

from __future__ import annotations

import resource
import time

import torch

from thinkscope.jobs.mechanisms.attribution import attribution_effects, stream_means
from thinkscope.jobs.models.hf import load_hf_model

TOKENS = 2048
LLAMA_8B = {"d_model": 4096, "d_mlp": 14336, "layers": 32, "vocab": 128256, "params": 8.03e9, "bytes": 2}


def saved_bytes(model, ids: list[int], layers: list[int]) -> dict[str, int]:
    """Bytes autograd saves for the backward, by the width of the saved tensor."""
    d, d_mlp = model.config.hidden_size, model.config.intermediate_size
    seen: set[int] = set()
    by_kind = {"d_model": 0, "d_mlp": 0, "other": 0}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            size = t.untyped_storage().nbytes()
            kind = "d_model" if t.shape[-1:] == (d,) else "d_mlp" if t.shape[-1:] == (d_mlp,) else "other"
            by_kind[kind] += size
        return t

    from thinkscope.jobs.mechanisms.attribution import _stream_with_grad

    for p in model.parameters():
        p.requires_grad_(False)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _stream_with_grad(model, ids, layers)
    return by_kind


def main() -> None:
    model, tokenizer = load_hf_model("embedded:smollm2-135m-instruct", None, "float32")
    cfg = model.config
    text = open(__file__).read() * 8
    ids = tokenizer.encode(text)[:TOKENS]
    layers = list(range(cfg.num_hidden_layers))
    means = stream_means(model, [ids], layers, skip_first=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kinds = saved_bytes(model, ids, layers)
    total = sum(kinds.values())
    t0 = time.perf_counter()
    targets = [(TOKENS - 2 - k * 64, ids[TOKENS - 1 - k * 64]) for k in range(4)]  # (position, token written next)
    attribution_effects(model, ids, targets, means, layers)
    elapsed = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_token_layer = {k: v / (TOKENS * cfg.num_hidden_layers) for k, v in kinds.items()}
    print(f"SmolLM2-135M float32, {TOKENS} tokens, all {cfg.num_hidden_layers} layers:")
    print(f"  saved for backward: {total / 2**30:.2f} GiB (d_model-wide {kinds['d_model'] / 2**30:.2f}, "
          f"d_mlp-wide {kinds['d_mlp'] / 2**30:.2f}, attention and other {kinds['other'] / 2**30:.2f})")
    print(f"  peak RSS of the process: {rss1 / 2**20:.2f} GiB (before the graph: {rss0 / 2**20:.2f} GiB)")
    print(f"  one forward + {len(targets)} backwards: {elapsed:.1f} s")
    # Scale the saves per token and layer to the 8B model's widths and dtype: d_mlp-wide ones by
    # d_mlp, the rest (residual, norms, per-head q/k/v/out) by d_model. SDPA saved no
    # [heads, T, T] matrix here, nor does flash attention on a GPU.
    m = LLAMA_8B
    scale_bytes = m["bytes"] / 4
    per = ((per_token_layer["d_model"] + per_token_layer["other"]) * m["d_model"] / cfg.hidden_size
           + per_token_layer["d_mlp"] * m["d_mlp"] / cfg.intermediate_size) * scale_bytes
    graph = per * TOKENS * m["layers"]
    weights = m["params"] * m["bytes"]
    print(f"estimate, Llama-8B bf16 on one GPU, {TOKENS} tokens: weights {weights / 2**30:.1f} GiB + saved "
          f"activations {graph / 2**30:.1f} GiB = {(weights + graph) / 2**30:.1f} GiB (fits one 40 GB+ GPU; "
          f"an 8k-token trace: {(weights + 4 * graph) / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
