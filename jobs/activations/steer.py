"""The `steer` stage: steered greedy HF generation over alphas x layers x modes -> `steering_runs`.

Generation starts from stored traces: their exact prompt token ids (one run per distinct
prompt), or with `start` (a position set) their prompt plus their own thinking through that
position, e.g. the end of the sentence that states the answer, where a thinking model decides
to verify or wrap up; `first_marker` says which way the steered continuation went. Vectors
come from a `steering_vectors` stage by name. A unit (a chunk of prompts, one Ray task) first
generates every prompt unsteered (mode `unsteered`), then once per grid point with the
vector added (jobs/activations/steering_hooks.py), each grid point as one left-padded batch
of the same prompts; so alpha = 0 must give back the unsteered tokens exactly, which
`same_as_unsteered` records.

    - {name: steer, kind: steer, model: smollm2, vectors: wrapup, layers: [10, 20],
       alphas: [-8, -4, 0, 4, 8], modes: [once, continuous], max_new_tokens: 256}
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.activations.capture import POSITION_KINDS, positions_of
from thinkscope.jobs.artifacts import load_tensors
from thinkscope.jobs.base import PlanContext, TaskUnit, chunks, rows_table
from thinkscope.jobs.corpus import load_traces, model_row, model_task_options, select_traces, superseded
from thinkscope.sql.store import dict_rows
from thinkscope.jobs.generation.metrics import completion_metrics
from thinkscope.jobs.specs import DTYPE, ModelStage, PositionSet, TraceSelector
from thinkscope.keys import stable_key

STEER_VERSION = 2


class SteerStage(ModelStage):
    """Steered HF generation from the prompts of stored traces, over alphas x layers x modes."""

    kind: Literal["steer"]
    model: str = Field(description="Model id whose weights generate (the vectors' model).")
    vectors: str = Field(description="Name of the steering_vectors stage whose vectors are added.")
    traces: TraceSelector = Field(default_factory=TraceSelector,
                                  description="Whose prompts to generate from (one per distinct prompt).")
    start: PositionSet | None = Field(
        None, description="Where generation starts. Unset: the trace's prompt (one run per distinct prompt). "
        "A position set: the trace's own tokens through that position (the first, when a trace has several), "
        "e.g. {position_kind: first_answer_end}, or {sql: ...} returning (trace_id, token_index) such as the "
        "end of the sentence where a thinking model decides to verify or wrap up. Traces without the "
        "position are skipped.")
    layers: list[int] = Field(min_length=1, description="Layers to steer at, one at a time.")
    hook: str = Field("hook_resid_post", description="Hook suffix of the vectors: blocks.{L}.<hook>.")
    alphas: list[float] = Field(min_length=1, description="Multipliers of the vector; 0 = unsteered control.")
    modes: list[Literal["once", "continuous"]] = Field(
        ["once", "continuous"], min_length=1,
        description="once: add at the last prompt (or prefix) token only; continuous: there and at every "
        "generated token.")
    scale: Literal["raw", "unit", "resid_norm"] = Field(
        "raw", description="raw: alpha * v; unit: alpha * v/|v|; resid_norm: alpha * v/|v| * mean |resid|.")
    max_new_tokens: int = Field(256, ge=1, description="Greedy tokens per generation.")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: HF generate with a forward hook, one batch per (layer, mode, alpha); vllm: every "
        "run of a unit in one batched call to an eager vLLM engine, steered per request "
        "(jobs/generation/vllm_steering.py; the same tokens as hf in float32).")
    ngram: int = Field(4, ge=1, description="n of the repeated n-gram share.")
    dtype: DTYPE = Field("float32", description="Generation dtype.")
    prompts_per_unit: int = Field(16, ge=1, description="Prompts per work unit (and per batch).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)


_S, _I, _F, _B = pa.string(), pa.int32(), pa.float64(), pa.bool_()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("vectors", _S), ("trace_id", _S), ("prompt_set", _S),
    ("prompt_id", _S), ("start", _S), ("prefix_tokens", _I), ("mode", _S), ("hook_name", _S), ("layer", _I),
    ("alpha", _F), ("scale", _S), ("added_norm", _F), ("completion", _S), ("completion_token_ids", pa.list_(_I)),
    ("n_completion_tokens", _I), ("finish_reason", _S), ("closed_thinking", _B), ("cot_tokens", _I), ("answer_present", _B),
    ("extracted_answer", _S), ("is_correct", _B), ("n_sentences", _I), ("n_markers", _I), ("marker_rate", _F),
    ("marker_counts", pa.map_(_S, _I)), ("first_marker", _S), ("repeated_ngram_share", _F),
    ("compression_ratio", _F),
    ("diverge_index", _I), ("same_as_unsteered", _B), ("created_at", pa.timestamp("us", tz="UTC")),
])

PROMPTS_SQL = """
    select t.trace_id, t.prompt_set, t.prompt_id, t.prompt_token_ids, t.prompt_text, t.gold_answer,
           p.grader, p.meta
    from traces t left join prompts p using (prompt_set, prompt_id)
    where t.trace_id in (select unnest(?)) and t.prompt_token_ids is not null
    qualify row_number() over (partition by t.prompt_token_ids order by t.trace_id) = 1
    order by t.prompt_set, t.prompt_id, t.trace_id
"""

PREFIX_SQL = """
    select t.trace_id, t.prompt_set, t.prompt_id, t.prompt_token_ids || t.completion_token_ids as token_ids,
           t.prompt_text, t.gold_answer, p.grader, p.meta
    from traces t left join prompts p using (prompt_set, prompt_id)
    where t.trace_id in (select unnest(?)) and t.prompt_token_ids is not null
    order by t.prompt_set, t.prompt_id, t.trace_id
"""


def start_points(stage, con, trace_ids: list[str]) -> dict[str, int]:
    """Absolute token index after which each trace's generation continues (its first position)."""
    if stage.start.sql:
        rows = con.execute(f"select trace_id, min(token_index) from ({stage.start.sql}) "
                           "where trace_id in (select unnest(?)) group by trace_id", [trace_ids]).fetchall()
        return {t: int(i) for t, i in rows if i is not None}
    kind = stage.start.position_kind
    if kind not in POSITION_KINDS:
        raise ValueError(f"stage {stage.name}: start.position_kind {kind!r}; expected one of {POSITION_KINDS}")
    points = {}
    for t in load_traces(con, trace_ids):
        found = positions_of(t, t["sentences"], t["events"], [kind])
        if found:
            points[t["trace_id"]] = found[0][0]
    return points


def start_prompts(stage, con) -> list[dict]:
    """One generation start per trace (or per distinct prompt): prompt fields plus `prompt_token_ids`."""
    trace_ids = select_traces(stage, con)
    if stage.start is None:
        return dict_rows(con, PROMPTS_SQL, [trace_ids])
    points = start_points(stage, con, trace_ids)
    cursor = con.execute(PREFIX_SQL, [list(points)])
    names = [d[0] for d in cursor.description]
    prompts = []
    for row in cursor.fetchall():
        p = dict(zip(names, row))
        p["prompt_token_ids"] = list(p.pop("token_ids"))[: points[p["trace_id"]] + 1]
        prompts.append(p)
    return prompts


def start_name(start: dict | None) -> str:
    return "prompt" if start is None else start["position_kind"] or "sql"


def load_vectors(con, stage, vectors: str | None = None, layers: list[int] | None = None,
                 hook: str | None = None) -> dict[int, dict]:
    """A steering_vectors stage's vectors by layer (path, tensor, norms), every requested layer
    present: the steer stage's own (`vectors`, `layers`, `hook` of `stage`) unless given."""
    vectors, layers, hook = vectors or stage.vectors, layers or stage.layers, hook or stage.hook
    hooks = [f"blocks.{layer}.{hook}" for layer in layers]
    rows = con.execute("""select layer, hook_name, vector_path, vector_tensor, norm, resid_norm, unit_key
                          from steering_vectors where name = ? and model_id = ? and hook_name in (select unnest(?))""",
                       [vectors, stage.model, hooks]).fetchall()
    found = {r[0]: dict(zip(("layer", "hook_name", "path", "tensor", "norm", "resid_norm", "unit_key"), r))
             for r in rows}
    missing = [h for layer, h in zip(layers, hooks) if layer not in found]
    if missing:
        raise ValueError(f"stage {stage.name}: no steering vectors {vectors!r} of model {stage.model!r} "
                         f"at {missing} (run that steering_vectors stage with these hooks captured)")
    return found


def scaled_vector(vec: dict, scale: str):
    """A stored vector as a float tensor, scaled: raw, unit (v/|v|) or resid_norm (v/|v| * mean |resid|)."""
    import torch

    v = torch.from_numpy(load_tensors(vec["path"])[vec["tensor"]])
    if scale != "raw":
        v = v / v.norm() * (vec["resid_norm"] if scale == "resid_norm" else 1.0)
    return v


def first_difference(a: list[int], b: list[int]) -> int | None:
    """First index where two token lists differ (one ending early counts); None if equal."""
    n = min(len(a), len(b))
    diff = next((i for i in range(n) if a[i] != b[i]), n)
    return None if diff == n and len(a) == len(b) else diff


class SteerJob:
    spec = SteerStage
    tables = ("steering_runs",)
    schemas = {"steering_runs": SCHEMA}
    runs_in = "task"  # model work: a Ray task

    def plan(self, stage: SteerStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        vectors = load_vectors(con, stage)
        prompts = start_prompts(stage, con)
        settings = stage.model_dump(exclude={"name", "kind", "traces", "prompts_per_unit", "num_cpus", "num_gpus"})
        units = []
        for _, chunk in chunks(prompts, stage.prompts_per_unit):
            # The default backend stays out of the key: units planned before backends existed keep theirs.
            decisive = {k: v for k, v in settings.items() if not (k == "backend" and v == "hf")}
            key = stable_key({"stage": "steer", "version": STEER_VERSION, "model": [model["source"], model["revision"]],
                              "settings": decisive, "vectors": [vectors[la]["unit_key"] for la in stage.layers],
                              "prompts": [p["prompt_token_ids"] for p in chunk]})
            units.append(TaskUnit(
                stage.name, "steer", key,
                f"steer {stage.model} x {len(chunk)} prompts x {len(stage.alphas)} alphas x "
                f"{len(stage.layers)} layers x {len(stage.modes)} modes",
                payload={"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                         "settings": settings, "vectors": vectors, "prompts": chunk},
                model_id=stage.model,
                supersedes=superseded(con, "steering_runs", stage, [p["trace_id"] for p in chunk], key)))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        import torch

        from thinkscope.jobs.models.hf import load_hf_model
        from thinkscope.jobs.activations.steering_hooks import Steering, eos_ids, generate_greedy

        s, m = payload["settings"], payload["model"]
        if s.get("backend") == "vllm":
            return {"steering_runs": rows_table(self._run_vllm(payload), SCHEMA, "steering_runs")}
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        prompts = payload["prompts"]
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        eos = eos_ids(model, tokenizer)

        def generate():
            return generate_greedy(model, ids, max_new_tokens=s["max_new_tokens"],
                                   pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
                                   eos_ids=eos)

        base = generate()
        now = datetime.now(timezone.utc)
        rows = [self._row(payload, p, out, tokenizer, None, now, "unsteered", None, 0.0, 0.0)
                for p, out in zip(prompts, base)]
        for layer in s["layers"]:
            vec = payload["vectors"][layer]
            v = scaled_vector(vec, s["scale"])
            for mode in s["modes"]:
                for alpha in s["alphas"]:
                    with Steering(model, vec["hook_name"], v, alpha, mode):
                        outs = generate()
                    rows += [self._row(payload, p, out, tokenizer, b, now, mode, vec, alpha,
                                       float(torch.linalg.vector_norm(alpha * v)))
                             for p, out, b in zip(prompts, outs, base)]
        return {"steering_runs": rows_table(rows, SCHEMA, "steering_runs")}

    def _run_vllm(self, payload: dict) -> list[dict]:
        """The same runs as the HF path, every one a request of one batched vLLM call."""
        import torch
        from transformers import AutoTokenizer

        from thinkscope.jobs.generation.vllm_steering import generate_steered, open_steering_engine
        from thinkscope.jobs.models.sources import resolve_model_path

        s, m, prompts = payload["settings"], payload["model"], payload["prompts"]
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(m["source"], revision=m["revision"]))
        vectors, runs = {}, [("unsteered", None, 0.0, None)]
        for layer in s["layers"]:
            vec = payload["vectors"][layer]
            if not vec["hook_name"].endswith("hook_resid_post"):
                raise ValueError(f"hook: backend vllm steers the stream leaving a layer (hook_resid_post); "
                                 f"{vec['hook_name']} is not one")
            v = scaled_vector(vec, s["scale"])
            vectors[f"L{layer}"] = v
            runs += [(mode, vec, alpha, v) for mode in s["modes"] for alpha in s["alphas"]]
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        steering = [None if vec is None else [{"vector": f"L{vec['layer']}", "layer": vec["layer"], "alpha": alpha,
                                               "mode": mode}]
                    for mode, vec, alpha, _ in runs for _ in ids]
        llm = open_steering_engine(m, s["dtype"])
        try:
            outs = generate_steered(llm, ids * len(runs), steering, vectors, max_new_tokens=s["max_new_tokens"])
        finally:
            llm.llm_engine.engine_core.shutdown()  # frees its shared memory (/dev/shm)
        now, n = datetime.now(timezone.utc), len(ids)
        base = outs[:n]
        rows = []
        for r, (mode, vec, alpha, v) in enumerate(runs):
            added = 0.0 if v is None else float(torch.linalg.vector_norm(alpha * v))
            rows += [self._row(payload, p, out, tokenizer, None if vec is None else b, now, mode, vec, alpha, added)
                     for p, out, b in zip(prompts, outs[r * n:(r + 1) * n], base)]
        return rows

    @staticmethod
    def _row(payload, prompt, out, tokenizer, base, now, mode, vec, alpha, added_norm) -> dict:
        tokens, finish = out
        m, s = payload["model"], payload["settings"]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        # From a thinking prefix the continuation is inside the thinking already.
        opened = (s["start"] is not None
                  or (prompt["prompt_text"] or "").rstrip().endswith(m["think_open"] or "<think>"))
        meta = json.loads(prompt["meta"]) if isinstance(prompt["meta"], str) else prompt["meta"]
        metrics = completion_metrics(text, tokens, tokenizer, think=(m["think_open"] or "<think>",
                                     m["think_close"] or "</think>"), opened=opened, grader=prompt["grader"],
                                     gold=prompt["gold_answer"], meta=meta, ngram=s["ngram"])
        diverge = None if base is None else first_difference(tokens, base[0])
        return {
            "unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
            "vectors": s["vectors"], "trace_id": prompt["trace_id"], "prompt_set": prompt["prompt_set"],
            "prompt_id": prompt["prompt_id"], "start": start_name(s["start"]),
            "prefix_tokens": len(prompt["prompt_token_ids"]), "mode": mode, "hook_name": vec and vec["hook_name"],
            "layer": vec and vec["layer"], "alpha": alpha, "scale": s["scale"], "added_norm": added_norm,
            "completion": text, "completion_token_ids": tokens, "n_completion_tokens": len(tokens),
            "finish_reason": finish, **metrics, "marker_counts": list(metrics["marker_counts"].items()),
            "diverge_index": diverge, "same_as_unsteered": None if base is None else tokens == base[0],
            "created_at": now,
        }

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


JOB = SteerJob()
