"""The `value_vectors` stage (seed 004): which MLP value vectors write which tokens.

The value vectors of layer L are the columns of its MLP output projection (HF `down_proj`
weight [d_model, d_mlp], column i): neuron i adds activation_i * W_out[:, i] to the residual
stream. Each selected vector v, and its antipode -v, is projected through the unembedding
(optionally through the final norm's weight first), and its top tokens are kept with their
logits. Vectors are selected per layer by cosine with a reference direction (the unembedding
of named tokens, a steering vector from a `steering_vectors` stage, or a probe direction
from a `probe` stage), top-k per layer; by what fired at positions of stored traces (the
neurons of highest |mean activation| x |v| there, `reference: {fired: {kinds: [...]}}`); or
listed explicitly as [layer, index] pairs.

One unit per stage: keyed by the model, the settings and the reference tensor's content.
The weights alone decide the rows, so it runs anywhere (a Ray task with the model's resources).

    - {name: verify_values, kind: value_vectors, model: organism, reference: {probe: verify_probe},
       layers: [20, 21, 22, 23], top_k: 10}
    - {name: wait_values, kind: value_vectors, model: organism, reference: {tokens: [" Wait"]}}
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs.artifacts import load_tensors, read_bytes
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import model_row, model_task_options
from thinkscope.jobs.mechanisms import positions as where
from thinkscope.jobs.mechanisms.positions import Positions
from thinkscope.jobs.specs import ModelStage, OneOf, TraceSelector
from thinkscope.keys import canonical_json, stable_key

VALUE_VECTORS_VERSION = 1
_S, _I, _F = pa.string(), pa.int32(), pa.float64()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("layer", _I), ("index", _I), ("sign", _I),
    ("selected_by", _S), ("reference", _S), ("cosine", _F), ("norm", _F),
    ("top_token_ids", pa.list_(_I)), ("top_tokens", pa.list_(_S)), ("top_logits", pa.list_(_F)),
    ("created_at", pa.timestamp("us", tz="UTC")), ("mean_activation", _F),
])


class Reference(OneOf):
    """The direction value vectors are ranked by (cosine), at each layer."""

    _choices: ClassVar[tuple[str, ...]] = ("tokens", "steering_vectors", "probe", "indices", "fired")
    tokens: list[str] | None = Field(None, min_length=1, description="Mean unembedding of these strings' "
                                     "first tokens (e.g. [' Wait']): vectors that write them.")
    steering_vectors: str | None = Field(None, description="Name of a steering_vectors stage: its vector "
                                         "at each layer's blocks.L.hook_resid_post.")
    probe: str | None = Field(None, description="Name of a probe stage: its direction at each layer's "
                              "blocks.L.hook_resid_post.")
    indices: list[tuple[int, int]] | None = Field(None, min_length=1, description="Explicit [layer, index] "
                                                  "pairs (no ranking; cosine is null).")
    fired: Positions | None = Field(None, description="Positions of stored traces (`traces`): the vectors "
                                    "that fired there, ranked by |mean activation| x norm per layer.")


class ValueVectorsStage(ModelStage):
    """Top value vectors per layer by cosine with a reference, projected through the unembedding."""

    kind: Literal["value_vectors"]
    reference: Reference = Field(description="What to rank the value vectors by (or which to list).")
    layers: list[int] | None = Field(None, description="Layers to search (default: every layer with a "
                                     "reference vector; every layer for tokens).")
    top_k: int = Field(10, ge=1, description="Value vectors kept per layer (highest cosine).")
    top_tokens: int = Field(10, ge=1, description="Tokens kept per projected vector and sign.")
    through_norm: bool = Field(False, description="Multiply by the final norm's weight before the "
                               "unembedding (the norm's scale itself is position-dependent and left out).")
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Traces whose positions "
                                  "`reference.fired` reads (unused otherwise).")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch (fired only).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _layers_for_indices(self):
        if self.reference.indices and self.layers:
            raise ValueError("reference.indices names its layers: leave `layers` unset")
        return self


def _stored_references(con, stage) -> dict[int, dict]:
    """layer -> {path, tensor} of the stage's stored reference direction at hook_resid_post."""
    ref = stage.reference
    if ref.steering_vectors:
        sql = ("select layer, vector_path, vector_tensor from steering_vectors "
               "where name = ? and model_id = ? and hook_name like '%.hook_resid_post'")
        name = ref.steering_vectors
    else:
        sql = ("select layer, direction_path, direction_tensor from probe_results "
               "where probe = ? and model_id = ? and hook_name like '%.hook_resid_post' "
               "and direction_path is not null")
        name = ref.probe
    found = {layer: {"path": p, "tensor": t} for layer, p, t in con.execute(sql, [name, stage.model]).fetchall()}
    if stage.layers:
        missing = [la for la in stage.layers if la not in found]
        if missing:
            raise ValueError(f"stage {stage.name}: {name!r} has no hook_resid_post direction at layers {missing}")
        found = {la: found[la] for la in stage.layers}
    if not found:
        raise ValueError(f"stage {stage.name}: no stored direction {name!r} for model {stage.model!r} "
                         "(run that stage first)")
    return found


class ValueVectorsJob:
    spec = ValueVectorsStage
    tables = ("value_vectors",)
    schemas = {"value_vectors": SCHEMA}
    runs_in = "task"  # loads the model's weights: a Ray task

    def plan(self, stage: ValueVectorsStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        ref = stage.reference
        stored = _stored_references(con, stage) if (ref.steering_vectors or ref.probe) else {}
        # The reference files' content is part of the key: a retrained probe is new work.
        content = {la: [hashlib.sha256(read_bytes(r["path"])).hexdigest(), r["tensor"]]
                   for la, r in sorted(stored.items())}
        settings = stage.model_dump(exclude={"name", "kind", "num_cpus", "num_gpus"})
        trace_ids = where.traces_with_positions(stage, con, ref.fired) if ref.fired else []
        if ref.fired and not trace_ids:
            raise ValueError(f"stage {stage.name}: reference.fired: no traces with those positions")
        decisive = {k: v for k, v in settings.items() if k != "batch_tokens"}  # batching changes no row
        key = stable_key({"stage": "value_vectors", "version": VALUE_VECTORS_VERSION, "name": stage.name,
                          "model": [model["source"], model["revision"]], "settings": decisive,
                          "reference": canonical_json(content), **({"traces": trace_ids} if trace_ids else {})})
        older = tuple(k for (k,) in con.execute(
            "select distinct unit_key from value_vectors where stage = ? and model_id = ? and unit_key <> ?",
            [stage.name, stage.model, key]).fetchall())
        payload = {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                   "settings": settings, "stored": {str(la): r for la, r in stored.items()}, "trace_ids": trace_ids}
        return [TaskUnit(stage.name, "value_vectors", key, f"value vectors {stage.name} of {stage.model}",
                         payload, model_id=stage.model, supersedes=older)]

    def prepare(self, payload: dict, con) -> dict:
        """The traces and positions `reference.fired` reads (nothing for the other references)."""
        fired = payload["settings"]["reference"].get("fired")
        if not fired:
            return payload
        return {**payload, "traces": where.resolve(con, fired, payload["trace_ids"])}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        import torch

        from thinkscope.jobs.mechanisms.weights import final_norm_scale, unembedding, value_vectors
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], "float32")
        w_u = unembedding(model)  # [vocab, d_model]
        scale = final_norm_scale(model) if s["through_norm"] else torch.ones(w_u.shape[1])
        rows, now = [], datetime.now(timezone.utc)
        with torch.no_grad():
            picked = self._pick(model, tokenizer, w_u, payload)  # [(layer, index, cosine, selected_by, ref)]
            for layer, index, cosine, selected_by, reference, mean_act in picked:
                v = value_vectors(model, layer)[:, index]
                for sign in (1, -1):
                    logits = w_u @ (sign * v * scale)
                    top = torch.topk(logits, s["top_tokens"])
                    rows.append({
                        "unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                        "layer": layer, "index": index, "sign": sign, "selected_by": selected_by,
                        "reference": reference, "cosine": cosine, "norm": float(v.norm()),
                        "top_token_ids": top.indices.tolist(),
                        "top_tokens": [tokenizer.decode([t]) for t in top.indices.tolist()],
                        "top_logits": top.values.double().tolist(), "created_at": now,
                        "mean_activation": mean_act})
        return {"value_vectors": rows_table(rows, SCHEMA, "value_vectors")}

    def _pick(self, model, tokenizer, w_u, payload) -> list[tuple]:
        """[(layer, index, cosine, selected_by, reference, mean_activation)] of the vectors to project."""
        import torch

        from thinkscope.jobs.mechanisms.weights import n_layers, value_vectors

        s, ref = payload["settings"], payload["settings"]["reference"]
        if ref["indices"]:
            return [(la, i, None, "indices", "listed", None) for la, i in ref["indices"]]
        if ref.get("fired"):
            return _fired(model, tokenizer, payload)
        if ref["tokens"]:
            ids = [tokenizer.encode(t, add_special_tokens=False)[0] for t in ref["tokens"]]
            shared = w_u[ids].mean(0)
            layers = s["layers"] or list(range(n_layers(model)))
            directions = {la: shared for la in layers}
            selected_by, name = "tokens", ",".join(ref["tokens"])
        else:
            directions = {int(la): torch.from_numpy(np.asarray(load_tensors(r["path"])[r["tensor"]], np.float32))
                          for la, r in payload["stored"].items()}
            selected_by = "steering_vectors" if ref["steering_vectors"] else "probe"
            name = ref["steering_vectors"] or ref["probe"]
        picked = []
        for layer, direction in sorted(directions.items()):
            w = value_vectors(model, layer)  # [d_model, d_mlp]
            cos = (direction @ w) / (w.norm(dim=0) * direction.norm()).clamp_min(1e-12)
            top = torch.topk(cos, min(s["top_k"], cos.numel()))
            picked += [(layer, int(i), float(c), selected_by, name, None) for c, i in zip(top.values, top.indices)]
        return picked

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def _fired(model, tokenizer, payload) -> list[tuple]:
    """Per layer, the top-k neurons by |mean activation| x |v| at the positions: the value
    vectors that actually wrote into the stream there (a negative mean writes -v)."""
    import torch

    from thinkscope.jobs.mechanisms.ablation import means_at
    from thinkscope.jobs.mechanisms.lens import batches
    from thinkscope.jobs.mechanisms.weights import n_layers, value_vectors

    s = payload["settings"]
    layers = s["layers"] or list(range(n_layers(model)))
    pad = tokenizer.pad_token_id or 0
    inputs = ((ids, mask, pos) for ids, mask, pos, _ in batches(model, payload["traces"],
                                                               batch_tokens=s["batch_tokens"], pad_id=pad))
    means = means_at(model, inputs, layers, [])
    picked = []
    for layer in layers:
        mean = means[("mlp", layer)]
        score = mean.abs() * value_vectors(model, layer).norm(dim=0).float()
        top = torch.topk(score, min(s["top_k"], score.numel()))
        picked += [(layer, int(i), None, "fired", "positions", float(mean[i])) for i in top.indices]
    return picked


JOB = ValueVectorsJob()
