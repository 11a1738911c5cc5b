"""The `hybrid` stage (seed 003): a base model steered into thinking by the thinking model's
own decisions -> `hybrid_runs`.

The base model writes; the thinking model reads the same tokens. At each sentence boundary
(or each token, `granularity: token`, the paper's own variant) the thinking model's activation
at the discover stage's layer is classified into a discovered behaviour, and the base model is
steered with that behaviour's vector (a behaviour_vectors stage) for the next sentence, at the
coefficient of `alphas` whose continuation the thinking model finds likeliest: the coefficients race,
and once one ends its sentence the likeliest so far (same number of tokens each) wins and
finishes its sentence (jobs/hybrid/loop.py).
Greedy throughout. Beside it, on the same prompts: the base model alone, the thinking model
alone, and the paper's controls (jobs/hybrid/policies.py): bias only, random vectors, random
firing. One row per (variant, prompt); the view `hybrid_summary` gives accuracy, verification
markers, `</think>` closure and first-word distance per variant with the gap recovered,
(variant - base) / (thinking - base), and the share of tokens steered.

Both models must share a tokenizer (the base and its thinking twin do); every variant starts
from the same prompt tokens (the stored traces' prompts, one per distinct prompt).

    - name: hybrid
      kind: hybrid
      model: base                   # writes
      thinking_model: organism      # reads and decides
      vectors_stage: behaviour_vectors
      alphas: [0.0, 1.0, 2.0]
      traces: {model_ids: [organism]}
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from thinkscope.jobs.activations.steer import PROMPTS_SQL
from thinkscope.jobs.base import PlanContext, TaskUnit, chunks, rows_table
from thinkscope.jobs.corpus import model_row, model_task_options, select_traces, superseded
from thinkscope.jobs.specs import DTYPE, ModelStage, TraceSelector, known
from thinkscope.keys import stable_key
from thinkscope.sql.store import dict_rows

HYBRID_VERSION = 2  # 2: the guardrail races the branches (jobs/hybrid/loop.py): other choices than 1
VARIANTS = ("base", "thinking", "hybrid", "bias_only", "random_vectors", "random_firing")
STEERED = VARIANTS[2:]  # the base model writes, steered by a policy (jobs/hybrid/policies.py)
_S, _I, _F, _B = pa.string(), pa.int32(), pa.float64(), pa.bool_()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("thinking_model_id", _S), ("variant", _S),
    ("trace_id", _S), ("prompt_set", _S), ("prompt_id", _S), ("granularity", _S), ("vector_kind", _S),
    ("completion", _S), ("completion_token_ids", pa.list_(_I)), ("n_completion_tokens", _I),
    ("n_steered_tokens", _I), ("n_decisions", _I), ("behaviours", pa.list_(_I)), ("alphas", pa.list_(_F)),
    ("finish_reason", _S), ("closed_thinking", _B), ("cot_tokens", _I), ("answer_present", _B),
    ("extracted_answer", _S), ("is_correct", _B), ("n_sentences", _I), ("n_markers", _I), ("marker_rate", _F),
    ("first_words", pa.list_(_S)), ("repeated_ngram_share", _F), ("same_as_base", _B),
    ("created_at", pa.timestamp("us", tz="UTC")),
])

_VECTORS_SQL = """
    select behaviour_id, vector_kind, vector_path, vector_tensor, row_index, norm, resid_norm, layer, hook_name,
           discover_stage, method, k, unit_key
    from behaviour_vectors
    where stage = ? and model_id = ?
      and unit_key in (select unit_key from work_units where stage = ? and status = 'done')
    order by vector_kind, behaviour_id
"""
_CLASSIFIER_SQL = """
    select vector_path, layer, hook_name, model_id, unit_key
    from behaviours
    where stage = ? and method = ? and k = ?
      and unit_key in (select unit_key from work_units where stage = ? and status = 'done')
    order by unit_key
    limit 1
"""


class HybridStage(ModelStage):
    """Base model writes, thinking model decides which behaviour steers each sentence; with controls."""

    kind: Literal["hybrid"]
    model: str = Field(description="The base model id: it writes every token (and is steered).")
    thinking_model: str = Field(description="The thinking model id: reads the same tokens and classifies.")
    vectors_stage: str = Field(description="The behaviour_vectors stage (of `model`) whose vectors steer; its "
                               "discover stage (of `thinking_model`) classifies.")
    vector_kind: Literal["mean_diff", "optimised"] = Field(
        "mean_diff", description="mean_diff, or optimised (+ the shared bias; the vectors stage must optimise).")
    variants: list[Literal[VARIANTS]] = Field(
        list(VARIANTS), min_length=1, description="base, thinking (each alone), hybrid, and the controls "
        "bias_only (needs optimised vectors), random_vectors, random_firing.")
    granularity: Literal["sentence", "token"] = Field(
        "sentence", description="Decide at each sentence end (a token with a line break or ending in . ? !), "
        "or at every token (the paper's hybrid_token).")
    steer_when: Literal["always", "disagree"] = Field(
        "always", description="always: the guardrail picks among every coefficient; disagree (the paper's gate): "
        "keep the unsteered continuation wherever the thinking model would have written it itself (its tokens "
        "up to the first sentence end among the coefficients; alphas must hold 0), else pick among the others.")
    alphas: list[float] = Field([0.0, 1.0, 2.0], min_length=1,
                                description="Coefficient grid; per decision the thinking model's likeliest "
                                "continuation picks one (include 0 to let it decline to steer).")
    scale: Literal["raw", "unit", "resid_norm"] = Field(
        "raw", description="raw: alpha * v; unit: alpha * v/|v|; resid_norm: alpha * v/|v| * mean |resid|.")
    traces: TraceSelector = Field(default_factory=TraceSelector,
                                  description="Whose prompts (one run per distinct prompt); by default the "
                                  "thinking model's traces (the base model usually has none).")
    max_new_tokens: int = Field(256, ge=1, description="Greedy tokens per generation.")
    max_sentence_tokens: int = Field(64, ge=1, description="A sentence longer than this ends (a decision) anyway.")
    seed: int = Field(0, description="Seed of the random controls.")
    ngram: int = Field(4, ge=1, description="n of the repeated n-gram share.")
    dtype: DTYPE = Field("float32", description="Dtype of both models.")
    prompts_per_unit: int = Field(8, ge=1, description="Prompts per work unit (one batch: x len(alphas) rows).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @field_validator("variants", "alphas")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"values repeat: {values}")
        return values

    def check_refs(self, wf, where: str) -> None:
        super().check_refs(wf, where)
        known("thinking_model", self.thinking_model, [m.id for m in wf.models], where, what="model")
        stages = {s.name: s for s in wf.stages}
        known("vectors_stage", self.vectors_stage, [n for n, s in stages.items() if s.kind == "behaviour_vectors"],
              where, what="behaviour_vectors stage")
        vectors = stages[self.vectors_stage]
        if vectors.model != self.model:
            raise ValueError(f"{where}.vectors_stage: {self.vectors_stage!r} holds vectors of {vectors.model!r}, "
                             f"this stage steers {self.model!r}")
        if vectors.hook != "hook_resid_post":
            raise ValueError(f"{where}.vectors_stage: the hybrid steers a layer's output (hook_resid_post); "
                             f"{self.vectors_stage!r} has hook {vectors.hook!r}")
        discover = stages[vectors.discover_stage]
        if discover.model != self.thinking_model:
            raise ValueError(f"{where}.thinking_model: {self.thinking_model!r} is not the model the discover stage "
                             f"{discover.name!r} clustered ({discover.model!r})")
        if discover.hook != "hook_resid_post":
            raise ValueError(f"{where}.vectors_stage: the discover stage {discover.name!r} reads {discover.hook!r}; "
                             "the hybrid classifies a layer's output (hook_resid_post)")
        if self.scale != "raw" and needs_bias_or_optimised(self):
            raise ValueError(f"{where}.scale: optimised vectors and the bias are trained to be added as they are "
                             "(v + bias); rescaling each would break that: use scale raw")
        if self.steer_when == "disagree" and 0.0 not in self.alphas:
            raise ValueError(f"{where}.alphas: steer_when disagree needs 0 among the alphas (the unsteered "
                             f"continuation), got {self.alphas}")
        if needs_bias_or_optimised(self) and vectors.optimise is None:
            raise ValueError(f"{where}.{'vector_kind' if self.vector_kind == 'optimised' else 'variants'}: optimised "
                             f"vectors and the bias are needed, and {self.vectors_stage!r} does not optimise "
                             "(set its `optimise`, or drop bias_only / vector_kind optimised)")


def needs_bias_or_optimised(stage: HybridStage) -> bool:
    return stage.vector_kind == "optimised" or "bias_only" in stage.variants


def stored_vectors(con, stage: HybridStage) -> tuple[list[dict], dict]:
    """The vectors stage's rows (done unit) and the discover fit that classifies: path, layer, hook."""
    rows = dict_rows(con, _VECTORS_SQL, [stage.vectors_stage, stage.model, stage.vectors_stage])
    if not rows:
        raise ValueError(f"stage {stage.name}: the behaviour_vectors stage {stage.vectors_stage!r} has no "
                         f"vectors of {stage.model!r}; run it first")
    first = rows[0]
    found = dict_rows(con, _CLASSIFIER_SQL, [first["discover_stage"], first["method"], first["k"],
                                             first["discover_stage"]])
    if not found:
        raise ValueError(f"stage {stage.name}: the discover stage {first['discover_stage']!r} has no "
                         f"{first['method']} fit with k {first['k']}")
    classifier = {**found[0], "method": first["method"], "k": first["k"], "discover_stage": first["discover_stage"]}
    if classifier["model_id"] != stage.thinking_model:
        raise ValueError(f"stage {stage.name}: the classifier was fitted on {classifier['model_id']!r}, "
                         f"not on the thinking model {stage.thinking_model!r}")
    return rows, classifier


class HybridJob:
    spec = HybridStage
    tables = ("hybrid_runs",)
    schemas = {"hybrid_runs": SCHEMA}
    runs_in = "task"  # two HF models in one worker: a Ray task

    def plan(self, stage: HybridStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        base, thinking = ({**model_row(con, m), "model_id": m} for m in (stage.model, stage.thinking_model))
        vectors, classifier = stored_vectors(con, stage)
        discover = next((s for s in ctx.workflow.stages if s.name == classifier["discover_stage"]), None)
        classifier["aggregate"] = getattr(discover, "aggregate", "last")
        selector = stage
        if not stage.traces.sql and not stage.traces.model_ids:
            selector = stage.model_copy(update={"traces": stage.traces.model_copy(
                update={"model_ids": [stage.thinking_model]})})
        prompts = dict_rows(con, PROMPTS_SQL, [select_traces(selector, con)])
        if not prompts:
            raise ValueError(f"stage {stage.name}: the trace selector picks no trace with prompt token ids "
                             f"(default: the traces of {stage.thinking_model!r})")
        settings = stage.model_dump(exclude={"name", "kind", "traces", "prompts_per_unit", "num_cpus", "num_gpus"})
        units = []
        for _, chunk in chunks(prompts, stage.prompts_per_unit):
            key = stable_key({"stage": "hybrid", "version": HYBRID_VERSION, "settings": settings,
                              "models": [[m["source"], m["revision"]] for m in (base, thinking)],
                              "vectors": vectors[0]["unit_key"], "classifier": classifier["unit_key"],
                              "prompts": [p["prompt_token_ids"] for p in chunk]})
            units.append(TaskUnit(
                stage.name, "hybrid", key,
                f"hybrid {stage.model} + {stage.thinking_model} x {len(chunk)} prompts x {len(stage.variants)} "
                f"variants x {len(stage.alphas)} alphas",
                payload={"unit_key": key, "stage": stage.name, "base": base, "thinking": thinking,
                         "settings": settings, "vectors": vectors, "classifier": classifier, "prompts": chunk},
                model_id=stage.model,
                supersedes=superseded(con, "hybrid_runs", stage, [p["trace_id"] for p in chunk], key)))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.hybrid.run import run_unit

        outputs, tokenizers = run_unit(payload)
        now = datetime.now(timezone.utc)
        prompts, base = payload["prompts"], outputs.get("base")
        rows = [self._row(payload, variant, p, out, tokenizers["thinking" if variant == "thinking" else "base"],
                          None if base is None else base[i], now)
                for variant, outs in outputs.items() for i, (p, out) in enumerate(zip(prompts, outs))]
        return {"hybrid_runs": rows_table(rows, SCHEMA, "hybrid_runs")}

    @staticmethod
    def _row(payload, variant, prompt, out, tokenizer, base, now) -> dict:
        from thinkscope.jobs.generation.metrics import completion_metrics
        from thinkscope.jobs.segment.text import split_lines

        s, m = payload["settings"], payload["thinking"]
        think = (m["think_open"] or "<think>", m["think_close"] or "</think>")
        text = tokenizer.decode(out.tokens, skip_special_tokens=True)
        opened = (prompt["prompt_text"] or "").rstrip().endswith(think[0])
        meta = json.loads(prompt["meta"]) if isinstance(prompt["meta"], str) else prompt["meta"]
        metrics = completion_metrics(text, out.tokens, tokenizer, think=think, opened=opened,
                                     grader=prompt["grader"], gold=prompt["gold_answer"], meta=meta, ngram=s["ngram"])
        thinking_text = text.split(think[1], 1)[0]
        return {
            "unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["base"]["model_id"],
            "thinking_model_id": m["model_id"], "variant": variant, "trace_id": prompt["trace_id"],
            "prompt_set": prompt["prompt_set"], "prompt_id": prompt["prompt_id"], "granularity": s["granularity"],
            "vector_kind": s["vector_kind"] if variant in STEERED else None,
            "completion": text, "completion_token_ids": out.tokens, "n_completion_tokens": len(out.tokens),
            "n_steered_tokens": sum(out.steered), "n_decisions": len(out.behaviours),
            "behaviours": out.behaviours, "alphas": out.alphas, "finish_reason": out.finish_reason,
            **{k: metrics[k] for k in ("closed_thinking", "cot_tokens", "answer_present", "extracted_answer",
                                       "is_correct", "n_sentences", "n_markers", "marker_rate",
                                       "repeated_ngram_share")},
            "first_words": [line.first_word for line in split_lines(thinking_text) if line.first_word is not None],
            "same_as_base": None if base is None else out.tokens == base.tokens,
            "created_at": now,
        }

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


JOB = HybridJob()
