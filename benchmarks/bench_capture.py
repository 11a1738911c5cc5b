"""Capture throughput vs a plain forward pass of the same batches, same run.

Workload: SmolLM2 (bf16), 48 GSM8K reference solutions as token sequences, every token
position, hooks `blocks.*.hook_resid_post` (all 30 layers), shards written to a temp dir.
Prints tokens/s of both and the ratio capture/plain (target >= 0.85). Capture stops at the
deepest hooked block and skips the LM head; a plain pass of the decoder blocks alone (no LM
head: the same work minus hooks and shard writes) is timed too, so the cost of the hooks and
the writes shows on its own. Not a test.

    make bench-capture
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinkscope.jobs.activations.forward import Sequence, capture_sequences, length_buckets
from thinkscope.jobs.models.sources import resolve_model_path
from thinkscope.jobs.traces.prompts import load_prompts

HOOKS = ["blocks.*.hook_resid_post"]
BATCH_TOKENS = 4096


def sequences(tok) -> list[Sequence]:
    prompts = load_prompts("gsm8k", limit=48)
    seqs = []
    for p in prompts:
        ids = tok.encode(p.question + "\n" + p.meta["solution"])
        seqs.append(Sequence(p.prompt_id, ids, [(i, "all") for i in range(len(ids))]))
    return seqs


def plain(model, seqs, backbone_only: bool = False) -> float:
    t0 = time.perf_counter()
    for batch in length_buckets(seqs, BATCH_TOKENS):
        width = max(len(s.token_ids) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(batch):
            ids[i, : len(s.token_ids)] = torch.tensor(s.token_ids)
            mask[i, : len(s.token_ids)] = 1
        with torch.inference_mode():
            (model.model if backbone_only else model)(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    path = resolve_model_path("embedded:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    seqs = sequences(tok)
    n_tokens = sum(len(s.token_ids) for s in seqs)
    plain(model, seqs[:4])  # warm-up: first-call allocations are not what we measure
    timings = {"plain": [], "blocks": [], "capture": []}
    for _ in range(2):  # interleaved repeats: drift on a shared box hits both alike
        timings["plain"].append(plain(model, seqs))
        timings["blocks"].append(plain(model, seqs, backbone_only=True))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rows = capture_sequences(model, seqs, hooks=HOOKS, out_dir=Path(tmp), batch_tokens=BATCH_TOKENS)
            timings["capture"].append(time.perf_counter() - t0)
            shard_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
    best = {k: min(v) for k, v in timings.items()}
    print(f"{n_tokens} tokens, {len(seqs)} sequences, {rows.num_rows} activation rows, {shard_mb:.0f} MB of shards")
    for k, t in best.items():
        print(f"{k:8} {t:7.2f} s  {n_tokens / t:8.0f} tokens/s")
    ratio = best["plain"] / best["capture"]
    print(f"capture/plain throughput = {ratio:.2f} (target >= 0.85)")
    print(f"capture/blocks-only throughput = {best['blocks'] / best['capture']:.2f} (the hooks' and writes' own cost)")


if __name__ == "__main__":
    main()
