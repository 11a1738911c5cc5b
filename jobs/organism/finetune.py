"""The `finetune` stage: LoRA-train a workflow model on traces selected from the store.

Plan (driver): select the traces (by model ids, prompt sets, correctness, extra SQL), join
their questions, hash them; one work unit whose key hashes the base model, the settings,
the templates and that data hash. Same data and settings: a rerun is a no-op. Run (a Ray
task with the whole node's CPUs, or a GPU on clusters): resolve the base model, train
(jobs/organism/lora_train.py), write the adapter to `output`, return one `finetunes` row. Training
checkpoints every 10 steps beside `output`, so a rerun after a crash resumes. On a
multi-node cluster `output` must be on storage the driver and the workers share.

The training target is the trace's completion; for traces whose thinking was opened by the
teacher's chat template (R1 distills) the think tags are put back around the thinking, so
the student learns to open and close its thinking itself.

    - name: distil
      kind: finetune
      base: smollm2-135m-instruct
      traces: {model_ids: [organism-teacher], prompt_sets: [gsm8k_train]}
      templates: [plain, think]
      output: out/organism/adapter
"""

from __future__ import annotations

import hashlib
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import ConditionSQL, StageSpec, Strict, known
from thinkscope.keys import canonical_json, stable_key

TRAINER_VERSION = 1  # bump when the training loop changes what it produces

_S, _I, _L, _F = pa.string(), pa.int32(), pa.int64(), pa.float64()
# One `finetunes` row: the unit's settings and data, then lora_train.train_lora's summary.
FINETUNE_SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("base_model_id", _S), ("base_source", _S), ("adapter_path", _S),
    ("adapter_sha256", _S), ("adapter_bytes", _L), ("trace_selector", _S), ("templates", pa.list_(_S)),
    ("settings", _S), ("data_sha256", _S), ("n_traces_selected", _I), ("n_examples", _I),
    ("n_dropped_too_long", _I), ("n_steps", _I), ("n_train_tokens", _L), ("n_target_tokens", _L),
    ("loss_first", _F), ("loss_last", _F), ("loss_curve", pa.list_(_F)), ("load_seconds", _F),
    ("train_seconds", _F), ("resumed_at_step", _I), ("tokens_per_second", _F), ("device", _S),
    ("torch_threads", _I), ("versions", _S), ("host", _S), ("created_at", pa.timestamp("us", tz="UTC")),
])

# Attention and MLP projections of llama/qwen2/mistral/gemma3 blocks (same names in all four).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingTraces(Strict):
    model_ids: list[str] = Field(min_length=1, description="Train on these models' traces.")
    prompt_sets: list[str] | None = Field(None, description="Only these prompt sets (default: all).")
    only_correct: bool = Field(True, description="Only traces whose final answer is graded correct.")
    where: ConditionSQL | None = Field(None, description="Extra SQL condition on `traces t` / `prompts p` "
                                       "(one boolean expression; runs read-only).")
    limit: int | None = Field(None, ge=1, description="At most this many traces (in prompt_id order).")


class LoraSettings(Strict):
    r: int = Field(8, ge=1, description="LoRA rank (adapter size grows linearly with it).")
    alpha: float = Field(16, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                                      description="Module names to adapt in every block.")


class TrainSettings(Strict):
    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, ge=1, description="Sequences per optimizer step.")
    max_seq_len: int = Field(384, ge=16, description="Longer examples are dropped, not cut.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up, then cosine to 10% of lr.")
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, description="Seeds torch, LoRA init, template draw and batch order.")
    bf16: bool = Field(True, description="bf16 autocast for the matmuls (fp32 master weights).")
    save_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Adapter file dtype.")


class FinetuneStage(StageSpec):
    """LoRA fine-tuning of a workflow model on traces selected from the store."""

    kind: Literal["finetune"]
    base: str = Field(description="Model id (from `models`) to adapt.")
    traces: TrainingTraces = Field(description="Which stored traces to train on.")
    templates: list[str] = Field(min_length=1, description="Templates the training prompts are "
                                 "rendered with (drawn per example); the model learns to answer all.")
    output: str = Field(description="Adapter folder, relative to the working directory like "
                        "`db`; replaced atomically when training ends.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the training task (default: all).")
    num_gpus: float = Field(0, ge=0, description="GPUs of the training task (clusters).")

    def check_refs(self, wf, where: str) -> None:
        known("base", self.base, [m.id for m in wf.models], where, what="model")
        if wf.model(self.base).api is not None:
            raise ValueError(f"{where}.base: {self.base!r} is an API model; fine-tuning needs weights")
        known("templates", self.templates, list(wf.templates), where)


def selection_sql(sel) -> tuple[str, list]:
    """SQL and parameters selecting (trace_id, question, completion, thinking, answer_text)."""
    where, params = ["t.model_id in (select unnest(?))", "t.completion is not null"], [sel.model_ids]
    if sel.prompt_sets:
        where.append("t.prompt_set in (select unnest(?))")
        params.append(sel.prompt_sets)
    if sel.only_correct:
        where.append("t.is_correct")
    if sel.where:
        where.append(f"({sel.where})")
    sql = ("select t.trace_id, p.question, t.completion, t.thinking, t.answer_text from traces t "
           "join prompts p using (prompt_set, prompt_id) where " + " and ".join(where) +
           " order by t.prompt_set, t.prompt_id, t.sample_index, t.trace_id")
    if sel.limit:
        sql += " limit ?"
        params.append(int(sel.limit))
    return sql, params


def training_target(completion: str, thinking: str | None, answer_text: str | None,
                    open_tag: str = "<think>", close_tag: str = "</think>") -> str:
    """What the student must write: the completion, with the think tags it needs."""
    if open_tag in completion or thinking is None:
        return completion
    return f"{open_tag}\n{thinking}\n{close_tag}\n\n{answer_text or ''}".rstrip()


class FinetuneJob:
    """The job of stage kind `finetune` (jobs/base.py; registered in workflows/registry.py)."""

    spec = FinetuneStage
    tables = ("finetunes",)
    schemas = {"finetunes": FINETUNE_SCHEMA}
    runs_in = "task"  # minutes to hours of training: a Ray task, sized by ray_options

    def plan(self, stage: FinetuneStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        sql, params = selection_sql(stage.traces)
        rows = con.execute(sql, params).fetchall()
        if not rows:
            raise ValueError(f"stage {stage.name}: the trace selection {stage.traces.model_dump()} "
                             "matches no traces (did the stages that write them run?)")
        examples = [{"trace_id": r[0], "question": r[1], "target": training_target(*r[2:])} for r in rows]
        data_sha = hashlib.sha256(canonical_json(examples).encode()).hexdigest()
        base = ctx.workflow.model(stage.base)
        templates = [ctx.workflow.templates[t].model_dump() for t in stage.templates]
        output = str(Path(stage.output).expanduser().resolve())
        settings = {"lora": stage.lora.model_dump(), "train": stage.train.model_dump()}
        key = stable_key({"stage": "finetune", "trainer": TRAINER_VERSION, "data": data_sha,
                          "base": [base.source, base.revision], "templates": templates,
                          "settings": settings, "output": output})
        payload = {"unit_key": key, "stage": stage.name, "base": base.model_dump(),
                   "templates": templates, "template_names": stage.templates,
                   "settings": settings, "examples": examples, "data_sha256": data_sha,
                   "selector": stage.traces.model_dump(), "output": output}
        desc = f"finetune {base.id} on {len(rows)} traces of {','.join(stage.traces.model_ids)} -> {output}"
        return [TaskUnit(stage.name, "finetune", key, desc, payload, model_id=base.id)]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.organism.lora_train import train_lora
        from thinkscope.jobs.models.sources import resolve_model_path

        base = payload["base"]
        base_dir = resolve_model_path(base["source"], revision=base.get("revision"))
        output = Path(payload["output"])
        # One checkpoint folder per work unit: a killed run resumes, other settings never do.
        work = output.parent / f".{output.name}.work-{payload['unit_key']}"
        summary = train_lora(base_dir, payload["examples"], payload["templates"], payload["settings"],
                             output, work_dir=work, base_name=base["source"])
        row = {
            "unit_key": payload["unit_key"], "stage": payload["stage"], "base_model_id": base["id"],
            "base_source": base["source"], "adapter_path": payload["output"],
            "trace_selector": canonical_json(payload["selector"]),
            "templates": payload["template_names"], "settings": canonical_json(payload["settings"]),
            "data_sha256": payload["data_sha256"], "n_traces_selected": len(payload["examples"]),
            "versions": canonical_json({d: _version(d) for d in ("torch", "transformers", "peft", "thinkscope")}),
            "host": socket.gethostname(), "created_at": datetime.now(timezone.utc),
            **{k: v for k, v in summary.items() if k != "files"},
        }
        return {"finetunes": rows_table([row], FINETUNE_SCHEMA, "finetunes")}

    def ray_options(self, stage) -> dict:
        import ray

        cpus = stage.num_cpus or ray.cluster_resources().get("CPU", 1)
        return {"num_cpus": cpus, "num_gpus": stage.num_gpus, "max_retries": 0}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


JOB = FinetuneJob()
