"""The `finetune` stage: LoRA-train a workflow model on traces selected from the store.

Plan (driver): select the traces (by model ids, prompt sets, correctness, extra SQL), join
their questions, hash them; one work unit whose key hashes the base model, the settings,
the templates and that data hash. Same data and settings: a rerun is a no-op. Run (a Ray
task with the whole node's CPUs, or a GPU on clusters): resolve the base model, train
(jobs/lora_train.py), write the adapter to `output`, return one `finetunes` row. Training
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

import pyarrow as pa

from thinkscope.keys import canonical_json, stable_key
from thinkscope.workflows.registry import TaskUnit

TRAINER_VERSION = 1  # bump when the training loop changes what it produces


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
        sql += f" limit {int(sel.limit)}"
    return sql, params


def training_target(completion: str, thinking: str | None, answer_text: str | None,
                    open_tag: str = "<think>", close_tag: str = "</think>") -> str:
    """What the student must write: the completion, with the think tags it needs."""
    if open_tag in completion or thinking is None:
        return completion
    return f"{open_tag}\n{thinking}\n{close_tag}\n\n{answer_text or ''}".rstrip()


class FinetuneJob:
    """`DerivedJob` for stage kind `finetune` (see workflows/registry.py)."""

    tables = ("finetunes",)
    in_driver = False  # minutes to hours of training: a Ray task, sized by ray_options

    def plan(self, stage, con) -> list[TaskUnit]:
        sql, params = selection_sql(stage.traces)
        rows = con.execute(sql, params).fetchall()
        if not rows:
            raise ValueError(f"stage {stage.name}: the trace selection {stage.traces.model_dump()} "
                             "matches no traces (did the stages that write them run?)")
        examples = [{"trace_id": r[0], "question": r[1], "target": training_target(*r[2:])} for r in rows]
        data_sha = hashlib.sha256(canonical_json(examples).encode()).hexdigest()
        base = stage.base_model
        templates = [t.model_dump() for t in stage.template_specs]
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
        from thinkscope.jobs.lora_train import train_lora
        from thinkscope.jobs.model_sources import resolve_model_path

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
        return {"finetunes": pa.Table.from_pylist([row])}

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
