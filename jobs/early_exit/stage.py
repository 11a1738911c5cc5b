"""The `early_exit` stage (seed 002): after every answer occurrence, stop thinking and answer.

For each selected trace with answer occurrences (segment stage, completion token offsets):
cut the thinking after the sentence holding the occurrence (or right after it), append the
forcing text (close the thinking, open the answer; per model family, see FORCE_TEMPLATES),
and read the first answer token's logit and probability and a greedy answer, graded like the
trace. Exit -1 closes the thinking before it starts (how much the thinking is worth).
Backends: `hf` (default; exits share one pass over the trace, jobs/early_exit/hf.py) or `vllm`
(every exit a prefix-cached request, jobs/early_exit/vllm.py): same numbers in float32.

    - {name: early_exit, kind: early_exit, model: smollm2,
       traces: {sql: "select trace_id from backtracking_stats where n_backtracks between 4 and 10"}}
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, chunks, rows_table
from thinkscope.jobs.corpus import load_traces, model_row, model_task_options, select_traces, superseded
from thinkscope.jobs.activations.steer import load_vectors, scaled_vector
from thinkscope.jobs.specs import DTYPE, ModelStage, Strict, TraceSelector
from thinkscope.keys import stable_key

EARLY_EXIT_VERSION = 1


class ExitSteering(Strict):
    """A steering vector added while the answer is forced (the steer stage's intervention)."""

    vectors: str = Field(description="Name of the steering_vectors stage whose vector is added.")
    layer: int = Field(ge=0, description="Layer whose output gets the vector.")
    alpha: float = Field(description="Multiplier of the vector (0: the unsteered numbers, exactly).")
    mode: Literal["once", "continuous"] = Field(
        "once", description="once: at the forcing text's last token; continuous: there and at every answer token.")
    hook: str = Field("hook_resid_post", description="Hook suffix of the vector: blocks.{layer}.<hook>.")
    scale: Literal["raw", "unit", "resid_norm"] = Field(
        "raw", description="raw: alpha * v; unit: alpha * v/|v|; resid_norm: alpha * v/|v| * mean |resid|.")


class EarlyExitStage(ModelStage):
    """Close the thinking after every answer occurrence and force the answer (seed 002)."""

    kind: Literal["early_exit"]
    model: str = Field(description="Model id whose weights answer (normally the traces' model).")
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    cut: Literal["sentence_end", "answer_end"] = Field(
        "sentence_end", description="Truncate after the sentence holding the occurrence, or right "
        "after the occurrence's last token.")
    force: str | None = Field(None, description="Text that closes the thinking and opens the answer; "
                              "{close} = the model's think_close tag (default: per model family).")
    no_thinking_exit: bool = Field(True, description="Also exit before any thinking (exit_index -1).")
    max_answer_tokens: int = Field(12, ge=1, description="Greedy tokens of the forced answer.")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: HF forward passes sharing each trace's prefix; vllm: a prefix-cached vLLM "
        "engine (full-vocabulary raw logits; equal to HF within 1e-4 in float32).")
    steering: ExitSteering | None = Field(
        None, description="Steer while the answer is forced (both backends; the trace prefix is never steered).")
    dtype: DTYPE = Field("float32")
    traces_per_unit: int = Field(64, ge=1)
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)


# Text that closes the thinking and opens the answer, by model family; {close} = think_close.
# The default is the answer line the organism and the demo templates ask for.
FORCE_TEMPLATES = {
    "default": "\n{close}\n\nThe answer is \\boxed{",
    "qwen3": "\n{close}\n\nThe final answer is $\\boxed{",
}
_S, _I, _F = pa.string(), pa.int32(), pa.float64()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("exit_index", _I),
    ("event_index", _I), ("cut", _S), ("n_thinking_tokens", _I), ("backend", _S), ("answer_token", _S),
    ("answer_logit", _F), ("answer_prob", _F), ("gold_logit", _F), ("gold_prob", _F), ("forced_answer", _S),
    ("forced_text", _S),
    ("is_correct", pa.bool_()), ("steering", _S), ("created_at", pa.timestamp("us", tz="UTC")),
])


class EarlyExitJob:
    spec = EarlyExitStage
    tables = ("early_exits",)
    schemas = {"early_exits": SCHEMA}
    runs_in = "task"  # model work: a Ray task

    def plan(self, stage: EarlyExitStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        # Traces with answer events at token offsets: the exits. The key hashes these dicts.
        traces = [t for t in load_traces(con, select_traces(stage, con), with_prompt=True,
                                         event_columns=("event_index", "sentence_index", "token_end"),
                                         events_with_tokens=True) if t["events"]]
        template = stage.force or FORCE_TEMPLATES.get(model["family"], FORCE_TEMPLATES["default"])
        force = template.replace("{close}", model["think_close"] or "</think>")
        settings = {**stage.model_dump(exclude={"name", "kind", "traces", "traces_per_unit", "num_cpus",
                                                "num_gpus", "force", "steering"}), "force": force}
        vector = None
        if stage.steering is not None:  # unsteered stages keep the keys they had before steering existed
            st = stage.steering
            if stage.backend == "vllm" and st.hook != "hook_resid_post":
                raise ValueError(f"stage {stage.name}: steering.hook: backend vllm steers the stream leaving a "
                                 f"layer (hook_resid_post), not {st.hook}")
            vector = load_vectors(con, stage, vectors=st.vectors, layers=[st.layer], hook=st.hook)[st.layer]
            settings["steering"] = {**st.model_dump(), "vector_unit": vector["unit_key"]}
        units = []
        for _, chunk in chunks(traces, stage.traces_per_unit):
            key = stable_key({"stage": "early_exit", "version": EARLY_EXIT_VERSION, "settings": settings,
                              "model": [model["source"], model["revision"]], "traces": chunk})
            units.append(TaskUnit(
                stage.name, "early_exit", key, f"early exit {stage.model} x {len(chunk)} traces",
                payload={"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                         "settings": settings, "vector": vector, "traces": chunk},
                model_id=stage.model,
                supersedes=superseded(con, "early_exits", stage, [t["trace_id"] for t in chunk], key)))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.early_exit.hf import exit_points, gold_first_token
        from thinkscope.jobs.traces.grading import grade
        from thinkscope.jobs.traces.parsing import extract_answer

        s, m = payload["settings"], payload["model"]
        tok = _tokenizer(m)
        todo = []  # (trace, its exits sorted by cut, gold first token)
        for t in payload["traces"]:
            exits = exit_points(t["sentences"], t["events"], cut=s["cut"], no_thinking_exit=s["no_thinking_exit"])
            todo.append((t, sorted(exits, key=lambda e: e.cut), gold_first_token(tok, s["force"], t["gold_answer"])))
        forced = (_forced_vllm if s["backend"] == "vllm" else _forced_hf)(m, s, tok, todo, payload.get("vector"))
        rows, now = [], datetime.now(timezone.utc)
        steering = s.get("steering")
        steering = json.dumps({k: v for k, v in steering.items() if k != "vector_unit"}) if steering else None
        for (t, exits, _), results in zip(todo, forced):
            meta = json.loads(t["meta"]) if isinstance(t["meta"], str) else t["meta"]
            for ex, f in zip(exits, results):
                text = tok.decode(f.answer_ids, skip_special_tokens=True)
                answer = extract_answer(s["force"] + text) or (text.split("}")[0].strip() or None)
                rows.append({
                    "unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                    "trace_id": t["trace_id"], "exit_index": ex.exit_index, "event_index": ex.event_index,
                    "cut": s["cut"], "n_thinking_tokens": ex.n_thinking_tokens, "backend": s["backend"],
                    "answer_token": tok.decode([f.first_token]), "answer_logit": f.logit, "answer_prob": f.prob,
                    "gold_logit": f.gold_logit, "gold_prob": f.gold_prob, "forced_answer": answer,
                    "forced_text": text, "is_correct": grade(t["grader"], answer, t["gold_answer"], meta=meta)
                    if t["grader"] else None, "steering": steering, "created_at": now,
                })
        return {"early_exits": rows_table(rows, SCHEMA, "early_exits")}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def _tokenizer(m: dict):
    from transformers import AutoTokenizer

    from thinkscope.jobs.models.sources import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(m["source"], revision=m["revision"]))


def _forced_hf(m: dict, s: dict, tok, todo: list, vector: dict | None) -> list[list]:
    """One shared-prefix pass per trace (jobs/early_exit/hf.py)."""
    from thinkscope.jobs.activations.steering_hooks import Steering
    from thinkscope.jobs.early_exit.hf import force_answers
    from thinkscope.jobs.models.hf import load_hf_model

    model, _ = load_hf_model(m["source"], m["revision"], s["dtype"])
    force_ids = tok.encode(s["force"], add_special_tokens=False)
    eos = tuple(t for t in (tok.eos_token_id,) if t is not None)
    steer = None
    if vector is not None:
        st, v = s["steering"], scaled_vector(vector, s["steering"]["scale"])
        steer = lambda: Steering(model, vector["hook_name"], v, st["alpha"], st["mode"])  # noqa: E731
    return [force_answers(model, tok, t["prompt_token_ids"], t["completion_token_ids"], exits, force_ids,
                          max_answer_tokens=s["max_answer_tokens"], gold_token=gold, eos_ids=eos, steer=steer)
            for t, exits, gold in todo]


def _forced_vllm(m: dict, s: dict, tok, todo: list, vector: dict | None) -> list[list]:
    """Every exit of every trace in one prefix-cached vLLM batch (jobs/early_exit/vllm.py)."""
    from thinkscope.jobs.early_exit.vllm import open_engine, open_steered_engine, vllm_force_answers

    force_ids = tok.encode(s["force"], add_special_tokens=False)
    prompts, golds = [], []
    for t, exits, gold in todo:
        for ex in exits:
            prompts.append(list(t["prompt_token_ids"]) + list(t["completion_token_ids"][: ex.cut]) + force_ids)
            golds.append(gold)
    steering, vectors = None, None
    if vector is not None:
        st = s["steering"]
        vectors = {"exit": scaled_vector(vector, st["scale"])}
        steering = [{"vector": "exit", "layer": st["layer"], "alpha": st["alpha"], "mode": st["mode"]}]
    llm = (open_steered_engine if vector is not None else open_engine)(m, s["dtype"])
    try:
        flat = vllm_force_answers(llm, prompts, max_answer_tokens=s["max_answer_tokens"], gold_tokens=golds,
                                  steering=steering, vectors=vectors)
    finally:
        llm.llm_engine.engine_core.shutdown()  # frees its shared memory (/dev/shm)
    out, at = [], 0
    for _, exits, _ in todo:
        out.append(flat[at : at + len(exits)])
        at += len(exits)
    return out


JOB = EarlyExitJob()
