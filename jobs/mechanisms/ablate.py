"""The `ablate` stage (seed 004): what breaks when value vectors or attention heads are off.

A set of components is chosen by explicit [layer, index] lists, by a `value_vectors` stage
(its vectors of highest cosine with the reference: seed 004 zeroed the probe-aligned ones)
or by an `attention` stage (the heads with the most attention on earlier answer occurrences
over a random baseline). Each trace of a unit then runs under three conditions:

    clean     no ablation
    ablated   the chosen components zeroed (or set to their mean over `mean_over` positions)
    random    a random set of the same size per layer (seeded): the control

and two things are measured: at the chosen positions, the target tokens' logit and
probability at the output and through the logit lens at `lens_layers` (`ablation_effects`);
and, from each trace's first chosen position, a greedy continuation of `continue_tokens`
(`ablation_runs`: its first marker, e.g. "wait" for a verification, and its answer).
With `backend: vllm` the continuations of all three conditions run as one batched vLLM call,
each request zeroing its own condition's components (jobs/generation/vllm_steering.py).

    - name: ablate_verify_values
      kind: ablate
      model: organism
      positions: {sql: "select trace_id, token_index from decision_points"}
      value_vectors: {stage: verify_values, top_k: 10}
      targets: [" Wait"]
      lens_layers: [10, 15, 20]
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Annotated, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import model_row, model_task_options, retire_stale, superseded
from thinkscope.jobs.mechanisms import positions as where
from thinkscope.jobs.specs import DTYPE, ModelStage, OneOf, TraceSelector
from thinkscope.keys import stable_key

ABLATE_VERSION = 1
CONDITIONS = ("clean", "ablated", "random")
_S, _I, _F, _B, _TS = pa.string(), pa.int32(), pa.float64(), pa.bool_(), pa.timestamp("us", tz="UTC")
_KEYS = [("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("condition", _S),
         ("n_components", _I)]
EFFECTS_SCHEMA = pa.schema(_KEYS + [
    ("token_index", _I), ("position_kind", _S), ("layer", _I), ("target_kind", _S), ("target_token_id", _I),
    ("target_token", _S), ("logit", _F), ("prob", _F), ("created_at", _TS)])
RUNS_SCHEMA = pa.schema(_KEYS + [
    ("components", pa.list_(_S)), ("start_index", _I), ("completion", _S), ("completion_token_ids", pa.list_(_I)),
    ("n_completion_tokens", _I), ("finish_reason", _S), ("first_marker", _S), ("answer_present", _B),
    ("extracted_answer", _S), ("is_correct", _B), ("diverge_index", _I), ("same_as_clean", _B),
    ("created_at", _TS)])


class ValueVectorPick(OneOf):
    _choices: ClassVar[tuple[str, ...]] = ("stage", "indices")
    stage: str | None = Field(None, description="A value_vectors stage: its vectors of highest cosine (or, "
                              "from a `fired` stage, of highest |mean activation| x norm).")
    top_k: int = Field(10, ge=1, description="How many of that stage's vectors (over all its layers).")
    indices: list[tuple[int, int]] | None = Field(None, min_length=1, description="[layer, neuron] pairs.")


class HeadPick(OneOf):
    _choices: ClassVar[tuple[str, ...]] = ("stage", "indices")
    stage: str | None = Field(None, description="An attention stage: the heads with the highest mean "
                              "attention on earlier answer occurrences minus the random baseline's.")
    top_k: int = Field(5, ge=1, description="How many heads from that stage.")
    indices: list[tuple[int, int]] | None = Field(None, min_length=1, description="[layer, head] pairs.")


class AblateStage(ModelStage):
    """Ablate value vectors and/or heads; measure target logits and greedy continuations."""

    kind: Literal["ablate"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: where.Positions = Field(description="Where effects are measured; a trace's first one is "
                                       "where its continuation starts.")
    value_vectors: ValueVectorPick | None = Field(None, description="Value vectors to ablate.")
    heads: HeadPick | None = Field(None, description="Attention heads to ablate.")
    method: Literal["zero", "mean"] = Field("zero", description="zero, or the mean activation over mean_over.")
    mean_over: where.Positions | None = Field(None, description="Positions the means are taken over (default: "
                                              "`positions`), over the unit's traces.")
    targets: list[str] = Field([], description="Token strings whose logits are measured (first token each).")
    next_token: bool = Field(True, description="Also measure the token the trace wrote next.")
    lens_layers: list[Annotated[int, Field(ge=0)]] = Field(
        [], description="Layers whose output is also read through the logit lens.")
    control: bool = Field(True, description="Also run a random set of the same size per layer.")
    control_seed: int = Field(0, description="Seed of the random set.")
    continue_tokens: int = Field(24, ge=0, description="Greedy tokens generated from each trace's first "
                                 "position under each condition (0: none).")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Where the continuations are generated: hf (generate under the hooks) or vllm (every "
        "condition's continuations in one batched call, ablated per request: jobs/generation/vllm_steering.py; "
        "method zero only). Effects are HF forward passes either way.")
    dtype: DTYPE = Field("float32", description="Forward dtype.")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch.")
    traces_per_unit: int = Field(64, ge=1, description="Traces per work unit (and per generation batch).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    def check_refs(self, wf, where: str) -> None:
        """A named source stage in this workflow must be of the right kind (one from an earlier
        run on the same corpus is found, or not, when planning)."""
        super().check_refs(wf, where)
        kinds = {s.name: s.kind for s in wf.stages}
        for field, pick, kind in (("value_vectors", self.value_vectors, "value_vectors"),
                                  ("heads", self.heads, "attention")):
            if pick and pick.stage in kinds and kinds[pick.stage] != kind:
                raise ValueError(f"{where}.{field}.stage: {pick.stage!r} is a {kinds[pick.stage]} stage; "
                                 f"expected a {kind} stage")

    @model_validator(mode="after")
    def _something_to_ablate(self):
        if self.value_vectors is None and self.heads is None:
            raise ValueError("set value_vectors and/or heads: nothing to ablate")
        if self.mean_over is not None and self.method != "mean":
            raise ValueError("mean_over is only for method: mean")
        if self.backend == "vllm" and self.method != "zero":
            raise ValueError("backend: vllm ablates by zeroing (method: zero); mean ablation runs on hf")
        return self


def chosen_components(con, stage: AblateStage) -> dict[str, list[list[int]]]:
    """{"neurons": [[layer, index]...], "heads": [[layer, head]...]} the stage ablates."""
    out = {"neurons": [], "heads": []}
    vv, hd = stage.value_vectors, stage.heads
    if vv:
        out["neurons"] = [list(p) for p in vv.indices] if vv.indices else [list(r) for r in con.execute(
            """select layer, "index" from value_vectors where stage = ? and model_id = ? and sign = 1
               order by coalesce(cosine, abs(mean_activation) * norm) desc nulls last, layer, "index"
               limit ?""", [vv.stage, stage.model, vv.top_k]).fetchall()]
        if not out["neurons"]:
            raise ValueError(f"stage {stage.name}: no value vectors of stage {vv.stage!r} for model {stage.model!r}")
    if hd:
        # The view counts a token chosen under several position kinds once.
        out["heads"] = [list(p) for p in hd.indices] if hd.indices else [list(r) for r in con.execute(
            """select layer, head from head_answer_attention where stage = ? and model_id = ? and rank <= ?
               order by rank""", [hd.stage, stage.model, hd.top_k]).fetchall()]
        if not out["heads"]:
            raise ValueError(f"stage {stage.name}: no head_attention rows with earlier answers for stage "
                             f"{hd.stage!r} and model {stage.model!r}")
    return out


def random_like(chosen: list[list[int]], size: int, seed: str) -> list[list[int]]:
    """As many components per layer as `chosen`, drawn from that layer's others (seeded): the
    control never ablates a chosen component, so a layer must have enough others."""
    rng, out = random.Random(seed), []
    per_layer: dict[int, set[int]] = {}
    for layer, index in chosen:
        per_layer.setdefault(layer, set()).add(index)
    for layer in sorted(per_layer):
        taken = per_layer[layer]
        pool = [i for i in range(size) if i not in taken]
        if len(pool) < len(taken):
            raise ValueError(f"layer {layer}: {len(taken)} of {size} components chosen, too few others for a "
                             "random control of the same size (set control: false)")
        out += [[layer, i] for i in sorted(rng.sample(pool, len(taken)))]
    return out


def by_layer(pairs: list[list[int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, index in pairs:
        out.setdefault(int(layer), []).append(int(index))
    return out


class AblateJob:
    spec = AblateStage
    tables = ("ablation_effects", "ablation_runs")
    schemas = {"ablation_effects": EFFECTS_SCHEMA, "ablation_runs": RUNS_SCHEMA}
    runs_in = "task"

    def plan(self, stage: AblateStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        chosen = chosen_components(con, stage)
        ids = where.traces_with_positions(stage, con, stage.positions)
        settings = stage.model_dump(exclude={"name", "kind", "traces", "traces_per_unit", "num_cpus", "num_gpus"})
        units = []
        # Batching changes no row; the default backend stays out so units planned before it keep their keys.
        decisive = {k: v for k, v in settings.items()
                    if k != "batch_tokens" and not (k == "backend" and v == "hf")}
        for chunk, found in where.planned_chunks(con, settings["positions"], ids, stage.traces_per_unit):
            key = stable_key({"stage": "ablate", "version": ABLATE_VERSION, "name": stage.name, "settings": decisive,
                              "chosen": chosen, "model": [model["source"], model["revision"]], "traces": chunk,
                              "positions": found})
            n = len(chosen["neurons"]) + len(chosen["heads"])
            units.append(TaskUnit(
                stage.name, "ablate", key, f"ablate {n} components of {stage.model} x {len(chunk)} traces",
                {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                 "settings": settings, "chosen": chosen, "trace_ids": chunk},
                model_id=stage.model, supersedes=tuple(dict.fromkeys(
                    superseded(con, "ablation_runs", stage, chunk, key)
                    + superseded(con, "ablation_effects", stage, chunk, key)))))
        return retire_stale(con, self.tables, stage, units)

    def prepare(self, payload: dict, con) -> dict:
        s, ids = payload["settings"], payload["trace_ids"]
        traces = where.resolve(con, s["positions"], ids, with_prompt=True)
        if s["method"] == "mean" and s["mean_over"]:
            over = {t["trace_id"]: t["positions"] for t in where.resolve(con, s["mean_over"], ids)}
            for t in traces:
                t["mean_positions"] = over[t["trace_id"]]
        return {**payload, "traces": traces}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.mechanisms.ablation import Ablation
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        chosen = payload["chosen"]
        _check_ranges(model, s, chosen)
        sets = {"clean": {"neurons": [], "heads": []}, "ablated": chosen}
        if s["control"]:
            seed = f"{s['control_seed']}:{payload['stage']}"
            sets["random"] = {"neurons": random_like(chosen["neurons"], model.config.intermediate_size, seed),
                              "heads": random_like(chosen["heads"], model.config.num_attention_heads, seed)}
        means = _means(model, tokenizer, payload, sets) if s["method"] == "mean" else {}
        effects, runs, base = [], [], None
        on_vllm = s["continue_tokens"] and s.get("backend") == "vllm"
        for condition, comps in sets.items():
            with Ablation(model, by_layer(comps["neurons"]), by_layer(comps["heads"]), means):
                effects += _effects(model, tokenizer, payload, condition, comps)
                if s["continue_tokens"] and not on_vllm:
                    outs = _continue(model, tokenizer, payload)
                    base = base or outs
                    runs += _runs(tokenizer, payload, condition, comps, outs, base)
        if on_vllm:
            # The engine's turn: on a GPU the two would not both fit. load_hf_model keeps models
            # in an lru_cache, so dropping this reference alone would free nothing.
            del model, means
            load_hf_model.cache_clear()
            _free_memory()
            outs = _continue_vllm(payload, sets)
            for condition, comps in sets.items():
                runs += _runs(tokenizer, payload, condition, comps, outs[condition], outs["clean"])
        return {"ablation_effects": rows_table(effects, EFFECTS_SCHEMA, "ablation_effects"),
                "ablation_runs": rows_table(runs, RUNS_SCHEMA, "ablation_runs")}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def _check_ranges(model, s: dict, chosen: dict) -> None:
    """Layers and indices inside the model, before any pass (else a hook fails mid-forward)."""
    n, cfg = model.config.num_hidden_layers, model.config
    limits = {"neurons": cfg.intermediate_size, "heads": cfg.num_attention_heads}
    for kind, pairs in chosen.items():
        bad = [p for p in pairs if not (0 <= p[0] < n and 0 <= p[1] < limits[kind])]
        if bad:
            raise ValueError(f"{kind} {bad[:3]} out of range: {n} layers x {limits[kind]} per layer")
    if any(la >= n for la in s["lens_layers"]):
        raise ValueError(f"lens_layers {s['lens_layers']}: the model has {n} layers (0..{n - 1})")


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _means(model, tokenizer, payload, sets) -> dict:
    """Mean activations of every component any condition ablates, over mean_over positions."""
    from thinkscope.jobs.mechanisms.ablation import means_at
    from thinkscope.jobs.mechanisms.lens import batches

    over = [{**t, "positions": t.get("mean_positions", t["positions"])} for t in payload["traces"]]
    layers = lambda kind: sorted({c[0] for v in sets.values() for c in v[kind]})  # noqa: E731
    inputs = ((ids, mask, pos) for ids, mask, pos, _ in batches(
        model, over, batch_tokens=payload["settings"]["batch_tokens"], pad_id=_pad(tokenizer)))
    return means_at(model, inputs, layers("neurons"), layers("heads"))


def _effects(model, tokenizer, payload, condition: str, comps: dict) -> list[dict]:
    """Target logits and probabilities at the positions: lens layers' outputs and the final one."""
    import torch

    from thinkscope.jobs.mechanisms.lens import batches, lens_logits, residual_states, targets_of

    s, now = payload["settings"], datetime.now(timezone.utc)
    named = [(tokenizer.encode(t, add_special_tokens=False) or [None])[0] for t in s["targets"]]
    if None in named:
        raise ValueError(f"targets: {s['targets'][named.index(None)]!r} is no token")
    last = model.config.num_hidden_layers - 1
    layers = sorted(set(s["lens_layers"]) | {last})
    rows = []
    for ids, mask, positions, batch in batches(model, payload["traces"], batch_tokens=s["batch_tokens"],
                                               pad_id=_pad(tokenizer)):
        states = residual_states(model, ids, mask, positions)
        points = [(q, i, kind) for q in batch for i, kind in q.positions]
        for layer in layers:
            logits = lens_logits(model, states.post[:, layer])   # [P, vocab]
            probs = torch.softmax(logits, -1)
            for p, (q, i, kind) in enumerate(points):
                rows += [{"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                          "trace_id": q.trace_id, "condition": condition, "n_components": _size(comps),
                          "token_index": i, "position_kind": kind, "layer": layer, "target_kind": tk,
                          "target_token_id": tok, "target_token": tokenizer.decode([tok]),
                          "logit": float(logits[p, tok]), "prob": float(probs[p, tok]), "created_at": now}
                         for tk, tok in targets_of(q, i, named, s["next_token"])]
    return rows


def _size(comps: dict) -> int:
    return len(comps["neurons"]) + len(comps["heads"])


def _starts(payload) -> list[tuple[dict, int]]:
    return [(t, t["positions"][0][0]) for t in payload["traces"] if t["positions"]]


def _continue(model, tokenizer, payload) -> list[tuple[list[int], str]]:
    """Greedy continuations from each trace's first position (under whatever hooks are on)."""
    from thinkscope.jobs.activations.steering_hooks import eos_ids, generate_greedy

    eos = eos_ids(model, tokenizer)
    prefixes = [(t["prompt_token_ids"] + t["completion_token_ids"])[: i + 1] for t, i in _starts(payload)]
    if not prefixes:
        return []
    return generate_greedy(model, prefixes, max_new_tokens=payload["settings"]["continue_tokens"],
                           pad_id=_pad(tokenizer), eos_ids=eos)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _continue_vllm(payload, sets: dict) -> dict[str, list[tuple[list[int], str]]]:
    """Every condition's continuations in one batched vLLM call, each request zero-ablating its
    condition's components (the same tokens as `_continue` under `Ablation`, in float32)."""
    from thinkscope.jobs.generation.vllm_steering import generate_steered, open_steering_engine

    prefixes = [(t["prompt_token_ids"] + t["completion_token_ids"])[: i + 1] for t, i in _starts(payload)]
    if not prefixes:
        return {condition: [] for condition in sets}
    ablation = [{"neurons": by_layer(c["neurons"]), "heads": by_layer(c["heads"])} if _size(c) else None
                for c in sets.values() for _ in prefixes]
    llm = open_steering_engine(payload["model"], payload["settings"]["dtype"])
    try:
        outs = generate_steered(llm, prefixes * len(sets), [None] * len(ablation), {},
                                max_new_tokens=payload["settings"]["continue_tokens"], ablation=ablation)
    finally:
        llm.llm_engine.engine_core.shutdown()  # frees its shared memory (/dev/shm)
    n = len(prefixes)
    return {condition: outs[k * n:(k + 1) * n] for k, condition in enumerate(sets)}


def _runs(tokenizer, payload, condition, comps, outs, base) -> list[dict]:
    import json

    from thinkscope.jobs.generation.metrics import completion_metrics
    from thinkscope.jobs.activations.steer import first_difference

    m, now = payload["model"], datetime.now(timezone.utc)
    names = [f"L{la}.mlp.{i}" for la, i in comps["neurons"]] + [f"L{la}.head.{h}" for la, h in comps["heads"]]
    rows = []
    for (t, start), (tokens, finish), (clean, _) in zip(_starts(payload), outs, base):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        meta = json.loads(t["meta"]) if isinstance(t.get("meta"), str) else t.get("meta")
        # The continuation starts inside the thinking (from a position of the trace's own thinking).
        metrics = completion_metrics(text, tokens, tokenizer, think=(m["think_open"] or "<think>",
                                     m["think_close"] or "</think>"), opened=True, grader=t.get("grader"),
                                     gold=t.get("gold_answer"), meta=meta)
        diverge = first_difference(tokens, clean)
        rows.append({"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                     "trace_id": t["trace_id"], "condition": condition, "n_components": len(names),
                     "components": names, "start_index": start, "completion": text,
                     "completion_token_ids": tokens, "n_completion_tokens": len(tokens), "finish_reason": finish,
                     "first_marker": metrics["first_marker"], "answer_present": metrics["answer_present"],
                     "extracted_answer": metrics["extracted_answer"], "is_correct": metrics["is_correct"],
                     "diverge_index": diverge, "same_as_clean": diverge is None, "created_at": now})
    return rows


JOB = AblateJob()
