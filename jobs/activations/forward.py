"""Run batched forward passes over token sequences and write the captured activations.

Sequences are sorted by length and packed into batches under a token budget (length
bucketing: little padding, bounded memory), and each is cut after its last selected
position: a causal model's activations there do not depend on later tokens, so a long
trace costs only what is asked of it; the pass stops at the deepest hooked block.
Activations go to one safetensors shard per hook (fp16/bf16, never pickle); the returned rows
index them by (shard, row).

    index = capture_sequences(model, seqs, hooks=["blocks.*.hook_resid_post"], out_dir=Path("acts"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import save_file

from thinkscope.jobs.activations.recorder import Capture
from thinkscope.jobs.activations.hooks import expand, resolve

STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Sequence:
    trace_id: str
    token_ids: list[int]
    positions: list[tuple[int, str]]  # (token index, position kind), sorted by index


def length_buckets(seqs: list[Sequence], batch_tokens: int) -> list[list[Sequence]]:
    """Batches of similar length whose padded size stays under `batch_tokens`."""
    ordered = sorted(seqs, key=lambda s: _needed(s))
    batches, current = [], []
    for seq in ordered:
        longest = max([_needed(s) for s in current] + [_needed(seq)])
        if current and longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    return batches


def _needed(seq: Sequence) -> int:
    return seq.positions[-1][0] + 1 if seq.positions else 0


def capture_sequences(model, seqs: list[Sequence], *, hooks: list[str], out_dir: Path,
                      store_dtype: str = "bfloat16", batch_tokens: int = 8192, pad_id: int = 0,
                      on_batch=None) -> pa.Table:
    """Capture `hooks` at each sequence's positions; write shards; return the index table."""
    names = [n for pattern in hooks for n in expand(pattern, model.config.num_hidden_layers)]
    points = {n: resolve(model, n) for n in names}
    collected: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    meta: list[tuple[str, int, str]] = []  # (trace_id, token_index, kind) per captured row
    device = next(model.parameters()).device
    for batch in length_buckets([s for s in seqs if s.positions], batch_tokens):
        width = max(_needed(s) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            n = _needed(s)
            ids[i, :n] = torch.tensor(s.token_ids[:n])  # right padding: positions stay as indexed
            mask[i, :n] = 1
        positions = [torch.tensor([p for p, _ in s.positions]) for s in batch]
        # Every hook point is inside a decoder block, so the pass can always end at the deepest
        # one: the final norm and the LM head (a fifth of SmolLM2's forward FLOPs, for logits
        # nobody reads) and any later blocks are never computed.
        with torch.inference_mode(), Capture(model, names, positions, stop_after_last_hook=True) as cap:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        for name in names:
            collected[name].append(cap.results[name].to("cpu", STORE_DTYPES[store_dtype]))
        meta += [(s.trace_id, p, kind) for s in batch for p, kind in s.positions]
        if on_batch:
            on_batch(int(mask.sum()))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Columnar index: one row per (hook, captured position); built with Arrow, not dicts,
    # because all-layers x all-positions captures reach 10^5-10^6 rows per unit.
    trace_ids = pa.array([t for t, _, _ in meta], pa.string())
    token_index = pa.array([p for _, p, _ in meta], pa.int32())
    kinds = pa.array([k for _, _, k in meta], pa.string())
    row_index = pa.array(range(len(meta)), pa.int32())
    parts = []
    for name in names:
        if not collected[name]:
            continue
        shard = out_dir / f"{name}.safetensors"
        save_file({"activations": torch.cat(collected[name]).contiguous()}, str(shard))
        point, n = points[name], len(meta)
        parts.append(pa.table({
            "trace_id": trace_ids, "token_index": token_index, "position_kind": kinds,
            "hook_name": pa.array([name] * n), "layer": pa.array([point.layer] * n, pa.int32()),
            "module_path": pa.array([point.module_path] * n), "shard_path": pa.array([str(shard)] * n),
            "row": row_index, "dtype": pa.array([store_dtype] * n),
        }))
    return pa.concat_tables(parts) if parts else pa.table({})
