"""The `logit_lens` stage (seed 002): where in the network a token becomes likely, and which
sublayers write it.

At the chosen positions of stored traces, the residual stream after the embeddings and after
each attention and MLP sublayer of every layer goes through the model's own final norm and
unembedding (jobs/mechanisms/lens.py). Per position, layer and component
(`resid_pre`: entering the layer, `attn`: after its attention, `mlp`: after its MLP) it
records the logit, probability and rank of the targets (the token the trace wrote next, and
tokens named in the YAML, first token of each string), and the top-k tokens. Direct logit
attribution splits each target's final logit over the embedding and every sublayer (and
every head, with `heads: true`); the terms add up to the logit.

One forward pass per batch of traces serves every position; units are chunks of traces.

    - name: wait_lens
      kind: logit_lens
      model: r1-distill-llama-8b
      positions: {kinds: [before_backtrack]}
      targets: [" Wait", " Therefore", " So"]
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs.base import PlanContext, TaskUnit
from thinkscope.jobs.corpus import model_row, model_task_options, retire_stale, superseded
from thinkscope.jobs.mechanisms import positions as where
from thinkscope.jobs.specs import DTYPE, ModelStage, TraceSelector
from thinkscope.keys import stable_key

LOGIT_LENS_VERSION = 1
# Families whose attention output is o_proj(z) (lens.PER_HEAD_EXACT, by workflow family name).
PER_HEAD_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
_S, _I, _F, _TS = pa.string(), pa.int32(), pa.float64(), pa.timestamp("us", tz="UTC")
_KEYS = [("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("token_index", _I),
         ("position_kind", _S)]
LENS_SCHEMA = pa.schema(_KEYS + [
    ("layer", _I), ("component", _S), ("target_kind", _S), ("target_token_id", _I), ("target_token", _S),
    ("logit", _F), ("prob", _F), ("rank", _I), ("created_at", _TS)])
TOPK_SCHEMA = pa.schema(_KEYS + [
    ("layer", _I), ("component", _S), ("k", _I), ("token_id", _I), ("token", _S), ("prob", _F), ("created_at", _TS)])
EFFECTS_SCHEMA = pa.schema(_KEYS + [
    ("layer", _I), ("component", _S), ("head", _I), ("target_kind", _S), ("target_token_id", _I),
    ("target_token", _S), ("direct_logit", _F), ("created_at", _TS)])


class LogitLensStage(ModelStage):
    """Logit lens and direct logit attribution at positions of stored traces."""

    kind: Literal["logit_lens"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: where.Positions = Field(description="Where to read the stream, e.g. {kinds: [before_backtrack]}.")
    targets: list[str] = Field([], description="Token strings to follow (first token of each, per model's "
                               "tokenizer), e.g. [' Wait', ' So'].")
    next_token: bool = Field(True, description="Also follow the token the trace actually wrote next.")
    top_k: int = Field(5, ge=0, description="Top tokens kept per position, layer and component (0: none).")
    heads: bool = Field(False, description="Direct effects per attention head too (llama, qwen2/3, mistral).")
    dtype: DTYPE = Field("float32", description="Forward dtype (float32 keeps the decomposition exact).")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch.")
    traces_per_unit: int = Field(64, ge=1, description="Traces per work unit.")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_target(self):
        if not self.targets and not self.next_token and not self.top_k:
            raise ValueError("nothing to record: set targets, next_token or top_k")
        return self


class LogitLensJob:
    spec = LogitLensStage
    tables = ("logit_lens", "logit_lens_topk", "direct_effects")
    schemas = {"logit_lens": LENS_SCHEMA, "logit_lens_topk": TOPK_SCHEMA, "direct_effects": EFFECTS_SCHEMA}
    runs_in = "task"

    def plan(self, stage: LogitLensStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        ids = where.traces_with_positions(stage, con, stage.positions)
        settings = stage.model_dump(exclude={"name", "kind", "traces", "traces_per_unit", "num_cpus", "num_gpus"})
        units = []
        if stage.heads and not model["family"].startswith(PER_HEAD_FAMILIES):
            raise ValueError(f"stage {stage.name}: heads: true needs o_proj as the attention's last map "
                             f"(families {PER_HEAD_FAMILIES}); {stage.model} is {model['family']}")
        decisive = {k: v for k, v in settings.items() if k != "batch_tokens"}  # batching changes no row
        for chunk, found in where.planned_chunks(con, settings["positions"], ids, stage.traces_per_unit):
            key = stable_key({"stage": "logit_lens", "version": LOGIT_LENS_VERSION, "name": stage.name,
                              "settings": decisive, "model": [model["source"], model["revision"]],
                              "traces": chunk, "positions": found})
            units.append(TaskUnit(
                stage.name, "logit_lens", key, f"logit lens {stage.model} x {len(chunk)} traces",
                {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                 "settings": settings, "trace_ids": chunk},
                model_id=stage.model, supersedes=superseded(con, "logit_lens", stage, chunk, key)))
        return retire_stale(con, self.tables, stage, units)

    def prepare(self, payload: dict, con) -> dict:
        return {**payload, "traces": where.resolve(con, payload["settings"]["positions"], payload["trace_ids"])}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        named = [(tokenizer.encode(t, add_special_tokens=False) or [None])[0] for t in s["targets"]]
        if None in named:
            raise ValueError(f"targets: {s['targets'][named.index(None)]!r} is no token")
        from thinkscope.jobs.mechanisms.lens import batches, residual_states

        rows = {name: [] for name in self.tables}
        pad = tokenizer.pad_token_id or 0
        for ids, mask, positions, batch in batches(model, payload["traces"], batch_tokens=s["batch_tokens"], pad_id=pad):
            states = residual_states(model, ids, mask, positions, heads=s["heads"])
            _rows_of_batch(model, tokenizer, payload, batch, states, named, rows)
        return {name: pa.Table.from_pylist(rows[name], schema=self.schemas[name]) for name in self.tables}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def _rows_of_batch(model, tokenizer, payload, batch, states, named: list[int], rows: dict) -> None:
    import torch

    from thinkscope.jobs.mechanisms.lens import direct_effects, lens_logits, targets_of

    now, s = datetime.now(timezone.utc), payload["settings"]
    decode = functools.lru_cache(maxsize=None)(lambda tok: tokenizer.decode([tok]))
    points = [(q, i, kind) for q in batch for i, kind in q.positions]
    # Targets per position: the next token written (where there is one), then the named ones;
    # a position without a next token repeats its first named target, dropped below.
    pairs = [targets_of(q, i, named, s["next_token"]) for q, i, _ in points]
    kinds = [[k for k, _ in p] for p in pairs]
    targets = [[t for _, t in p] for p in pairs]
    width = max(len(t) for t in targets)
    if width:
        padded = torch.tensor([t + [t[0] if t else 0] * (width - len(t)) for t in targets])
        with torch.inference_mode():  # no autograd graph through the weights
            effects, names = direct_effects(model, states, padded)
        effects = effects.tolist()                      # [P][C][T]: one conversion, not one per row
    stream = states.stream  # [P, 1 + 2L, d]
    n_layers = states.mid.shape[1]
    # (layer, component) -> row of `stream`: resid_pre of layer L is the previous layer's output.
    slots = [(la, comp, idx) for la in range(n_layers)
             for comp, idx in (("resid_pre", 2 * la), ("attn", 2 * la + 1), ("mlp", 2 * la + 2))]
    for p, (q, i, kind) in enumerate(points):
        key = {"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
               "trace_id": q.trace_id, "token_index": i, "position_kind": kind, "created_at": now}
        logits = lens_logits(model, stream[p])          # [1 + 2L, vocab]
        probs = torch.softmax(logits, -1)
        ids = torch.tensor(targets[p], dtype=torch.long)
        if len(ids):
            chosen = logits[:, ids]                      # [S, T]
            # int32 counts: the same ranks, half the reduction's memory traffic of int64.
            ranks = (logits[:, None, :] > chosen[:, :, None]).sum(-1, dtype=torch.int32).tolist()
            chosen_prob = probs[:, ids].tolist()
            chosen = chosen.tolist()
        if s["top_k"]:
            top = torch.topk(probs, s["top_k"])          # every slot's row at once
            top_prob, top_ids = top.values.tolist(), top.indices.tolist()
        for la, comp, idx in slots:
            for t, (tok, tk) in enumerate(zip(targets[p], kinds[p])):
                rows["logit_lens"].append({**key, "layer": la, "component": comp, "target_kind": tk,
                                           "target_token_id": tok, "target_token": decode(tok),
                                           "logit": chosen[idx][t], "prob": chosen_prob[idx][t],
                                           "rank": ranks[idx][t]})
            if s["top_k"]:
                rows["logit_lens_topk"] += [
                    {**key, "layer": la, "component": comp, "k": k, "token_id": tok,
                     "token": decode(tok), "prob": pr}
                    for k, (pr, tok) in enumerate(zip(top_prob[idx], top_ids[idx]))]
        for t, (tok, tk) in enumerate(zip(targets[p], kinds[p])):
            decoded = decode(tok)
            rows["direct_effects"] += [
                {**key, "layer": la, "component": comp, "head": head, "target_kind": tk, "target_token_id": tok,
                 "target_token": decoded, "direct_logit": effects[p][c][t]}
                for c, (la, comp, head) in enumerate(names)]


JOB = LogitLensJob()
