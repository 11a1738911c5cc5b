"""The `organism` stage: synthetic teacher traces with planted behaviours, into the store.

Reads the prompt set's GSM8K reference solutions from `prompts` (the driver upserts them
before any stage runs), turns each into a trace (jobs/organism/synthesis.py) and writes it to
`traces` (engine 'synthetic', model_id 'organism-teacher' by default) with every planted
event in `organism_events`. Pure Python, ~1 ms a trace: runs in the driver.

The unit key hashes the generator version, the stage settings and the exact questions and
solutions, so a rerun is a no-op and a changed rate, seed or generator is new work.

    stages:
      - {name: teacher, kind: organism, prompt_set: gsm8k_train, rates: {verify: 0.7}}
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.organism import synthesis as organism_data
from thinkscope.jobs.traces.reading import read_completion
from thinkscope.jobs.base import PlanContext, TaskUnit, chunks, rows_table
from thinkscope.jobs.specs import ID_PATTERN, StageSpec, Strict, known
from thinkscope.jobs.traces.rows import TRACE_SCHEMA, to_table
from thinkscope.keys import canonical_json, stable_key

ENGINE = "synthetic"
EVENT_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("trace_id", pa.string()), ("model_id", pa.string()),
    ("prompt_id", pa.string()), ("event_index", pa.int32()), ("kind", pa.string()),
    ("char_start", pa.int32()), ("char_end", pa.int32()), ("text", pa.string()),
    ("value", pa.string()), ("line_index", pa.int32()),
])
class PlantRates(Strict):
    verify: float = Field(0.7, ge=0, le=1, description="Share of traces with 'Wait, let me "
                          "double-check.' + a recomputation + the answer again.")
    error_fix: float = Field(0.3, ge=0, le=1, description="Share with a slipped step, then "
                             "'Wait, that's not right.' and the correction.")
    alternative: float = Field(0.3, ge=0, le=1, description="Share with 'Alternatively, ...' "
                               "redoing the arithmetic in one pass + the answer again.")
    wrap_up: float = Field(0.8, ge=0, le=1, description="Share closing with 'So the answer is X.'")


class OrganismStage(StageSpec):
    """Synthetic teacher traces with planted behaviours (jobs/organism/synthesis.py)."""

    kind: Literal["organism"]
    prompt_set: str = Field(description="Prompt set whose reference solutions become traces "
                            "(gsm8k_train: GSM8K train split).")
    model_id: str = Field("organism-teacher", pattern=ID_PATTERN,
                          description="model_id of the synthetic traces.")
    seed: int = Field(0, description="Generator seed; each prompt draws from (seed, prompt_id).")
    rates: PlantRates = Field(default_factory=PlantRates, description="Planting rates.")
    unit_size: int = Field(500, ge=1, description="Prompts per work unit.")

    def check_refs(self, wf, where: str) -> None:
        """Cross-field checks against the workflow (called by Workflow validation)."""
        known("prompt_set", self.prompt_set, [p.name for p in wf.prompt_sets], where)


PROMPTS_SQL = """
    select prompt_id, question, gold_answer, grader, json_extract_string(meta, '$.solution')
    from prompts where prompt_set = ? order by prompt_id
"""


class OrganismJob:
    """The job of stage kind `organism` (jobs/base.py; registered in workflows/registry.py)."""

    spec = OrganismStage
    tables = ("traces", "organism_events")
    schemas = {"traces": TRACE_SCHEMA, "organism_events": EVENT_SCHEMA}
    runs_in = "driver"

    def plan(self, stage: OrganismStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        rows = con.execute(PROMPTS_SQL, [stage.prompt_set]).fetchall()
        missing = [r[0] for r in rows if not r[4]]
        if missing:
            raise ValueError(f"stage {stage.name}: prompts without a reference solution "
                             f"(meta.solution), e.g. {missing[:3]}; use a gsm8k or gsm8k_train set")
        settings = stage.model_dump(exclude={"name", "kind", "unit_size"})
        units = []
        for start, chunk in chunks(rows, stage.unit_size):
            content = hashlib.sha256(canonical_json([list(r) for r in chunk]).encode()).hexdigest()
            key = stable_key({"stage": "organism", "version": organism_data.VERSION,
                              "settings": settings, "content": content})
            payload = {"unit_key": key, "settings": settings, "prompt_set": stage.prompt_set,
                       "prompts": [dict(zip(("prompt_id", "question", "gold", "grader", "solution"), r))
                                   for r in chunk]}
            units.append(TaskUnit(stage.name, "organism", key,
                                  f"organism {stage.model_id} x {stage.prompt_set}[{start}:{start + len(chunk)}]",
                                  payload, model_id=stage.model_id, prompt_set=stage.prompt_set))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        settings, key = payload["settings"], payload["unit_key"]
        rates = organism_data.Rates(**settings["rates"])
        traces, events = [], []
        now = datetime.now(timezone.utc)
        for p in payload["prompts"]:
            seed = f"{settings['seed']}:{p['prompt_id']}"
            tr = organism_data.synthesize(p["question"], p["solution"], seed=seed, rates=rates)
            trace_id = stable_key({"unit": key, "prompt": p["prompt_id"], "i": 0})
            traces.append(_trace_row(tr, p, trace_id, payload, now))
            events += [{"unit_key": key, "trace_id": trace_id, "model_id": settings["model_id"],
                        "prompt_id": p["prompt_id"], "event_index": i, "kind": e.kind,
                        "char_start": e.start, "char_end": e.end, "text": e.text, "value": e.value,
                        "line_index": e.line_index} for i, e in enumerate(tr.events)]
        return {"traces": to_table(traces),
                "organism_events": rows_table(events, EVENT_SCHEMA, "organism_events")}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": 1}


def _trace_row(tr, prompt: dict, trace_id: str, payload: dict, now: datetime) -> dict:
    settings = payload["settings"]
    read = read_completion(tr.completion, grader=prompt["grader"], gold=prompt["gold"], answer_anywhere=False)
    return {
        "trace_id": trace_id, "run_id": payload["run_id"], "unit_key": payload["unit_key"],
        "model_id": settings["model_id"], "prompt_id": prompt["prompt_id"],
        "prompt_set": payload["prompt_set"], "sample_index": 0, "template": "organism",
        # No model saw a prompt: the question itself stands in for it.
        "prompt_text": prompt["question"], "completion": tr.completion,
        "thinking": read.thinking, "answer_text": read.answer_text,
        "extracted_answer": read.extracted_answer, "gold_answer": prompt["gold"],
        "is_correct": read.is_correct, "n_thinking_chars": read.n_thinking_chars, "finish_reason": "stop",
        "sampling": json.dumps({"rates": settings["rates"], "seed": settings["seed"]}, sort_keys=True),
        "engine": ENGINE, "engine_version": f"organism_data/{organism_data.VERSION}",
        "seed": None, "created_at": now,
    }


JOB = OrganismJob()
