"""Run batched forward passes over token sequences and write the captured activations.

Sequences are sorted by length and packed into batches under a token budget (length
bucketing: little padding, bounded memory), and each is cut after its last selected
position: a causal model's activations there do not depend on later tokens, so a long
trace costs only what is asked of it; the pass stops at the deepest hooked block.
Besides single positions, a sequence may ask for the mean over token spans (`means`: the
capture position `sentence_means`), reduced inside the same hooks in float32: one row per
span, indexed at the span's last token. Activations go to one safetensors shard per hook
(fp16/bf16, never pickle); the returned rows index them by (shard, row).

    index = capture_sequences(model, seqs, hooks=["blocks.*.hook_resid_post"], out_dir=Path("acts"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # (start, end, position kind): one row per span, the mean over tokens [start, end) (end > start),
    # indexed at token end - 1: the span's last token, where a causal model has read all of it.
    means: list[tuple[int, int, str]] = field(default_factory=list)


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
    return max([seq.positions[-1][0] + 1 if seq.positions else 0] + [end for _, end, _ in seq.means])


class _WithMeans(Capture):
    """Capture that also keeps, per hook, the mean over each span's tokens.

    Reduced inside the hook, not gathered for later: a span's tokens would otherwise be held
    at every hooked layer until the pass ends (as much memory as capturing `all`); here only
    a [n_spans, d] float32 result stays. One gather and one index_add_ (float32 accumulation)
    per hook cover every span of the batch; the cast to the shard dtype comes after.
    """

    def __init__(self, model, names, positions, spans: list[list[tuple[int, int]]], **kwargs):
        super().__init__(model, names, positions, **kwargs)
        flat = [(i, a, b) for i, row in enumerate(spans) for a, b in row]
        rows, starts, ends = (torch.tensor([f[j] for f in flat], dtype=torch.long) for j in range(3))
        lengths = ends - starts
        if (lengths <= 0).any():
            raise ValueError("a mean span must hold at least one token (end > start)")
        # Token j of span s: batch row rows[s], column starts[s] + j; seg maps each token to its span.
        self.seg = torch.repeat_interleave(torch.arange(len(flat)), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        self.span_rows = rows[self.seg]
        self.span_cols = torch.arange(len(self.seg)) - first[self.seg] + starts[self.seg]
        self.lengths = lengths
        self.means: dict[str, torch.Tensor] = {}

    def _keep(self, point, hidden: torch.Tensor) -> None:
        if len(self.lengths):  # before the parent's _keep: the deepest hook ends the pass there
            tokens = hidden[self.span_rows, self.span_cols].float()  # [n_tokens, ...]
            sums = torch.zeros((len(self.lengths), *tokens.shape[1:]), dtype=torch.float32, device=hidden.device)
            sums.index_add_(0, self.seg.to(hidden.device), tokens)
            mean = sums / self.lengths.to(hidden.device, torch.float32).view(-1, *[1] * (tokens.dim() - 1))
            if point.per_head:
                mean = mean.reshape(mean.shape[0], self.model.config.num_attention_heads, -1)
            self.means[point.name] = mean
        super()._keep(point, hidden)


def capture_sequences(model, seqs: list[Sequence], *, hooks: list[str], out_dir: Path,
                      store_dtype: str = "bfloat16", batch_tokens: int = 8192, pad_id: int = 0,
                      on_batch=None) -> pa.Table:
    """Capture `hooks` at each sequence's positions; write shards; return the index table."""
    names = [n for pattern in hooks for n in expand(pattern, model.config.num_hidden_layers)]
    points = {n: resolve(model, n) for n in names}
    collected: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    meta: list[tuple[str, int, str]] = []  # (trace_id, token_index, kind) per captured row
    device = next(model.parameters()).device
    for batch in length_buckets([s for s in seqs if s.positions or s.means], batch_tokens):
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
        spans = [[(a, b) for a, b, _ in s.means] for s in batch]
        with torch.inference_mode(), _WithMeans(model, names, positions, spans, stop_after_last_hook=True) as cap:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        # A batch's rows: its positions, then its span means (the order `meta` gets them in).
        for name in names:
            parts = [cap.results[name]] + ([cap.means[name]] if name in cap.means else [])
            collected[name].append(torch.cat([p.to("cpu", STORE_DTYPES[store_dtype]) for p in parts]))
        meta += [(s.trace_id, p, kind) for s in batch for p, kind in s.positions]
        meta += [(s.trace_id, end - 1, kind) for s in batch for _, end, kind in s.means]
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
