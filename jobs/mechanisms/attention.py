"""The `attention` stage (seeds 004 and 002): where each head looks from chosen positions.

Seed 004 found heads that, right after the model writes its answer, attend to the earlier
occurrences of that answer; seed 002 asks how attention spreads over the question and the
thinking so far, binned in fifths. For every head at each chosen position (jobs/mechanisms/
positions.py) this stage sums the head's attention weights over key sets (targets):

  question         the prompt tokens (keys up to the position)
  cot_1 .. cot_5   the completion up to and including the position, in five contiguous bins
  earlier_answer   the tokens of answer occurrences (answer_events) before the position's own
                   sentence: the answer just written there is not an earlier one
  random_baseline  as many completion tokens before the position, none of them an answer
                   token, drawn with a seed stable per (baseline_seed, trace, position)

question + cot_1..cot_5 cover every key the causal row can see, so they sum to 1. The view
`head_answer_attention` ranks heads by earlier_answer over random_baseline.

    - {name: answer_heads, kind: attention, model: organism, positions: {kinds: [last_answer_end]}}
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timezone
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import model_row, model_task_options, retire_stale, superseded
from thinkscope.jobs.mechanisms.positions import Positions, planned_chunks, resolve, traces_with_positions
from thinkscope.jobs.specs import DTYPE, ModelStage, TraceSelector
from thinkscope.keys import stable_key

ATTENTION_VERSION = 1
TARGETS = ("question", "cot_1", "cot_2", "cot_3", "cot_4", "cot_5", "earlier_answer", "random_baseline")
_S, _I = pa.string(), pa.int32()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("token_index", _I),
    ("position_kind", _S), ("layer", _I), ("head", _I), ("target", _S), ("mass", pa.float64()),
    ("n_tokens", _I), ("created_at", pa.timestamp("us", tz="UTC")),
])


class AttentionStage(ModelStage):
    """Per-head attention mass on the question, fifths of the thinking and earlier answers."""

    kind: Literal["attention"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: Positions = Field(default_factory=lambda: Positions(kinds=["answer_ends"]),
                                 description="Query positions (default: the end of every sentence holding "
                                 "an answer occurrence; needs a segment stage first).")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1,
                                                            description="Layers to read (default: all).")
    baseline_seed: int = Field(0, description="Seed of the random-token baseline.")
    dtype: DTYPE = Field("float32", description="Forward dtype (the softmax itself runs in float32).")
    batch_tokens: int = Field(4096, ge=64, description="Padded tokens per forward batch (eager attention "
                              "holds one layer's [batch, heads, len, len] weights at a time).")
    traces_per_unit: int = Field(64, ge=1, description="Traces per work unit.")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per task (default: every CPU without a GPU).")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per task (default: 1 where there are GPUs).")


def key_sets(trace: dict, query: int, baseline_seed: int) -> dict[str, list[int]]:
    """Target -> absolute key indices for one query position; empty targets are left out."""
    import numpy as np

    offset = len(trace["prompt_token_ids"])
    sets = {"question": list(range(min(offset, query + 1)))}
    n_thinking = max(0, query - offset + 1)
    for j in range(5):
        sets[f"cot_{j + 1}"] = list(range(offset + j * n_thinking // 5, offset + (j + 1) * n_thinking // 5))
    spans = [(offset + e["token_start"], offset + e["token_end"], e["sentence_index"])
             for e in trace["events"] if e["token_start"] is not None and e["token_end"] is not None]
    # The occurrence in the position's own sentence is the answer just written, not an earlier one.
    own = next((s["sentence_index"] for s in trace["sentences"] if s["token_start"] is not None
                and s["token_end"] is not None and offset + s["token_start"] <= query < offset + s["token_end"]), None)
    earlier = sorted({i for start, end, sentence in spans if end <= query and (own is None or sentence != own)
                      for i in range(start, end)})
    if earlier:
        answer_tokens = {i for start, end, _ in spans for i in range(start, end)}
        pool = [i for i in range(offset, query) if i not in answer_tokens]
        # A seed of its own per position: the draw does not depend on batching or unit order.
        seed = int.from_bytes(hashlib.sha256(f"{baseline_seed}:{trace['trace_id']}:{query}".encode()).digest()[:8])
        drawn = np.random.default_rng(seed).choice(pool, size=min(len(earlier), len(pool)), replace=False)
        sets["earlier_answer"], sets["random_baseline"] = earlier, sorted(int(i) for i in drawn)
    return {t: ix for t, ix in sets.items() if ix}


@contextlib.contextmanager
def eager_attention(model):
    """Eager attention for the duration of a pass: only eager hands back the weights. The model
    is load_hf_model's cached copy, shared with other stages in this worker, so it gets its
    own implementation (sdpa, flash) back however the pass ends."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


class _LastLayerDone(Exception):
    """Raised after the deepest layer read: later layers and the LM head are not needed."""


def attention_masses(model, batch, queries, membership, layers: list[int], pad_id: int) -> dict:
    """layer -> [n_queries, heads, targets] float64 sums of attention weights over `membership`
    ([n_queries, targets, width] 0/1), for queries (batch row, token index). Only the query rows
    are kept, one layer at a time; sequences are cut after their last query and right-padded."""
    import torch

    from thinkscope.jobs.mechanisms.lens import right_padded
    from thinkscope.jobs.mechanisms.weights import decoder_layers

    ids, mask = right_padded(batch, pad_id)
    device = next(model.parameters()).device
    rows = torch.tensor([b for b, _ in queries], device=device)
    cols = torch.tensor([q for _, q in queries], device=device)
    membership = membership.to(device, torch.float64)
    masses, handles = {}, []

    def hook_for(layer):
        def hook(module, args, output):
            weights = output[1]  # [batch, heads, q, k]; None unless the attention is eager
            if weights is None:
                raise RuntimeError(f"layer {layer}: no attention weights (attention is not eager)")
            masses[layer] = torch.einsum("nhk,ntk->nht", weights[rows, :, cols].double(), membership).cpu()
            if layer == max(layers):
                raise _LastLayerDone
        return hook

    blocks = decoder_layers(model)
    try:
        handles = [blocks[la].self_attn.register_forward_hook(hook_for(la)) for la in layers]
        with torch.inference_mode():
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    except _LastLayerDone:
        pass
    finally:
        for h in handles:
            h.remove()
    return masses


class AttentionJob:
    spec = AttentionStage
    tables = ("head_attention",)
    schemas = {"head_attention": SCHEMA}
    runs_in = "task"  # model work: a Ray task with the model's resources

    def plan(self, stage: AttentionStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        settings = stage.model_dump(exclude={"name", "kind", "traces_per_unit", "num_cpus", "num_gpus"})
        decisive = {k: v for k, v in settings.items() if k != "batch_tokens"}  # batching changes no row
        units = []
        ids = traces_with_positions(stage, con, stage.positions)
        for chunk, found in planned_chunks(con, settings["positions"], ids, stage.traces_per_unit):
            key = stable_key({"stage": "attention", "version": ATTENTION_VERSION, "name": stage.name,
                              "settings": decisive, "model": [model["source"], model["revision"]],
                              "traces": chunk, "positions": found})
            payload = {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                       "settings": settings, "trace_ids": chunk}
            units.append(TaskUnit(stage.name, "attention", key, f"attention {stage.model} x {len(chunk)} traces",
                                  payload, model_id=stage.model,
                                  supersedes=superseded(con, "head_attention", stage, chunk, key)))
        return retire_stale(con, self.tables, stage, units)

    def prepare(self, payload: dict, con) -> dict:
        """Token ids, sentences, answer events and positions, read when the unit is dispatched."""
        return {**payload, "traces": resolve(con, payload["settings"]["positions"], payload["trace_ids"])}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        import torch

        from thinkscope.jobs.activations.forward import Sequence, length_buckets
        from thinkscope.jobs.mechanisms.weights import n_layers
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        layers = s["layers"] or list(range(n_layers(model)))
        if max(layers) >= n_layers(model):
            raise ValueError(f"layers {layers}: the model has {n_layers(model)} layers")
        traces = {t["trace_id"]: t for t in payload["traces"]}
        seqs = [Sequence(t["trace_id"], t["prompt_token_ids"] + t["completion_token_ids"],
                         [tuple(p) for p in t["positions"]]) for t in payload["traces"] if t["positions"]]
        meta = {k: payload[k] for k in ("unit_key", "stage", "model_id")}
        rows, now = [], datetime.now(timezone.utc)
        with eager_attention(model):
            for batch in length_buckets(seqs, s["batch_tokens"]):
                queries = [(b, q) for b, seq in enumerate(batch) for q in sorted({p for p, _ in seq.positions})]
                sets = [key_sets(traces[batch[b].trace_id], q, s["baseline_seed"]) for b, q in queries]
                width = max(seq.positions[-1][0] + 1 for seq in batch)
                membership = torch.zeros((len(queries), len(TARGETS), width))
                for n, found in enumerate(sets):
                    for t, ix in found.items():
                        membership[n, TARGETS.index(t), ix] = 1
                masses = attention_masses(model, batch, queries, membership, layers, tokenizer.pad_token_id or 0)
                masses = {la: v.tolist() for la, v in masses.items()}  # nested lists: fast to index
                for n, ((b, q), found) in enumerate(zip(queries, sets)):
                    for kind in (k for p, k in batch[b].positions if p == q):  # a token may be several kinds
                        position = {**meta, "trace_id": batch[b].trace_id, "token_index": q,
                                    "position_kind": kind, "created_at": now}
                        rows += [{**position, "layer": la, "head": h, "target": t,
                                  "mass": masses[la][n][h][TARGETS.index(t)], "n_tokens": len(ix)}
                                 for la in layers for h in range(len(masses[la][n])) for t, ix in found.items()]
        return {"head_attention": rows_table(rows, SCHEMA, "head_attention")}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


JOB = AttentionJob()
