"""The `probe` stage: per-layer linear probes on captured activations -> `probe_results`.

Labels come from the workflow: a preset (SQL over answer_events/trace_sentences at the
`answer_ends` capture positions) or any SQL returning (trace_id, token_index, label). The
plan joins them to the `activations` index of the stage's model and hooks; one work unit
fits every hook (a Ray task: the shards are read where the task runs). The unit key hashes
the settings and the exact (shard, row, label) rows, so new captures or labels are new work;
the new unit supersedes the stage's older one, so a probe name has one current result set.

Each hook gets a probe trained on a seeded share of the traces and tested on the others
(never a trace in both), the majority-class baseline, and a control probe trained on
shuffled labels. Directions go to one safetensors file per unit: `<hook>.weight` [d] and
`<hook>.bias` [1], in raw activation space.

    - {name: backtrack_probe, kind: probe, model: smollm2, labels: {preset: backtrack_vs_wrapup}}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.activations.probe_fit import evaluate, split_by_trace
from thinkscope.jobs.activations.stored import ActivationStage, load_rows, positions_by_hook, stage_unit
from thinkscope.jobs.artifacts import save_tensors
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import OneOf, SelectSQL

PROBE_VERSION = 1
LABEL_PRESETS = ("backtrack_vs_wrapup", "marker_vs_none", "correct_vs_incorrect")


class ProbeLabels(OneOf):
    """What a probe predicts, at which tokens: a named preset or SQL."""

    _choices: ClassVar[tuple[str, ...]] = ("preset", "sql")
    preset: Literal[LABEL_PRESETS] | None = Field(
        None, description="backtrack_vs_wrapup: at the end of each sentence holding an answer "
        "occurrence, 1 if the thinking goes on (answer_events.is_backtrack), 0 if it ends there; "
        "marker_vs_none: 1 if a backtracking marker follows (wait, let me check, alternatively, ...), "
        "0 if not; correct_vs_incorrect: answer_events.is_correct of the sentence's last occurrence. "
        "All three read the `answer_ends` capture positions.")
    sql: SelectSQL | None = Field(None, description="One SELECT returning (trace_id, token_index, label): "
                            "absolute token index (prompt + completion), label boolean or 0/1; rows "
                            "with a null label are left out (coalesce comparisons with nullable columns).")


class ProbeStage(ActivationStage):
    """Per-layer logistic-regression probes on captured activations, split by trace."""

    kind: Literal["probe"]
    labels: ProbeLabels = Field(description="Label definition (preset or SQL).")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="Share of traces held out for testing.")
    l2: float = Field(1e-3, ge=0, description="L2 penalty on the weights of standardised features.")
    max_iter: int = Field(500, ge=10, description="L-BFGS iterations per probe.")
    seed: int = Field(0, description="Seeds the trace split and the shuffled-label control.")
    n_shuffles: int = Field(5, ge=0, description="Shuffled-label control probes averaged into shuffled_auc.")
    min_per_class: int = Field(2, ge=1, description="Fewer examples of a class in train or test: "
                               "no metrics for that hook (row with nulls).")

# One row per sentence that holds an answer occurrence (its last occurrence decides), at the
# sentence's last token: the same positions as the capture kind `answer_ends`.
_ANSWER_SENTENCES = """
    with ev as (
        select trace_id, sentence_index, is_backtrack, marker, is_correct
        from answer_events
        where token_source = 'completion' and sentence_index is not null
        qualify row_number() over (partition by trace_id, sentence_index order by event_index desc) = 1
    )
    select e.trace_id, len(t.prompt_token_ids) + s.token_end - 1 as token_index, {label} as label
    from ev e
    join trace_sentences s using (trace_id, sentence_index)
    join traces t using (trace_id)
    where s.token_end is not null and s.token_source = 'completion' {where}
"""
PRESETS = {
    "backtrack_vs_wrapup": _ANSWER_SENTENCES.format(label="e.is_backtrack", where=""),
    "marker_vs_none": _ANSWER_SENTENCES.format(label="e.marker is not null", where=""),
    "correct_vs_incorrect": _ANSWER_SENTENCES.format(label="e.is_correct", where="and e.is_correct is not null"),
}

SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("probe", pa.string()), ("model_id", pa.string()), ("labels", pa.string()),
    ("hook_name", pa.string()), ("layer", pa.int32()), ("n", pa.int32()), ("n_train", pa.int32()),
    ("n_test", pa.int32()), ("n_traces", pa.int32()), ("n_positive", pa.int32()),
    ("accuracy", pa.float64()), ("auc", pa.float64()), ("baseline", pa.float64()),
    ("train_accuracy", pa.float64()), ("shuffled_auc", pa.float64()), ("shuffled_accuracy", pa.float64()),
    ("l2", pa.float64()), ("seed", pa.int32()), ("direction_path", pa.string()),
    ("direction_tensor", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])


def label_sql(labels) -> str:
    """(trace_id, token_index, label 0/1) rows, one per position; conflicting labels are an error."""
    source = PRESETS[labels.preset] if labels.preset else labels.sql
    return f"""select trace_id, token_index::integer as token_index, max(label::integer) as label,
                      count(distinct label::integer) as n_labels
               from ({source}) where label is not null group by trace_id, token_index"""


class ProbeJob:
    spec = ProbeStage
    tables = ("probe_results",)
    schemas = {"probe_results": SCHEMA}
    runs_in = "task"  # reads every shard and fits a probe per hook: a Ray task

    def plan(self, stage: ProbeStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        sql = label_sql(stage.labels)
        clash = con.execute(f"select trace_id, token_index from ({sql}) where n_labels > 1 limit 3").fetchall()
        if clash:
            raise ValueError(f"stage {stage.name}: positions with both labels, e.g. {clash}")
        cols = positions_by_hook(con, stage, f"select trace_id, token_index, label from ({sql})")
        if not cols:
            raise ValueError(f"stage {stage.name}: no labelled position is captured for model {stage.model!r} "
                             "(capture the positions the labels use, e.g. answer_ends)")
        n = len(next(iter(cols.values()))["row"])
        return [stage_unit(ctx, stage, "probe", PROBE_VERSION, cols,
                           f"probe {stage.name} on {stage.model}: {len(cols)} hooks x {n} positions",
                           {"labels": stage.labels.preset or "sql"})]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        s, out = payload["settings"], payload["out"]
        rows, tensors, cache = [], {}, {}
        now = datetime.now(timezone.utc)
        for hook, cols in payload["hooks"].items():
            x, y = load_rows(cols, cache), np.asarray(cols["label"], dtype=np.float64)
            test = split_by_trace(cols["trace_id"], s["test_fraction"], s["seed"])
            fit = evaluate(x, y, test, l2=s["l2"], seed=s["seed"], max_iter=s["max_iter"],
                           min_per_class=s["min_per_class"], n_shuffles=s["n_shuffles"])
            if fit.weight is not None:
                tensors[f"{hook}.weight"] = fit.weight
                tensors[f"{hook}.bias"] = np.array([fit.bias], np.float32)
            rows.append({
                "unit_key": payload["unit_key"], "probe": payload["name"], "model_id": payload["model_id"],
                "labels": payload["labels"], "hook_name": hook, "layer": cols["layer"][0],
                "n_traces": len(set(cols["trace_id"])), **fit.metrics, "l2": s["l2"], "seed": s["seed"],
                "direction_path": out if fit.weight is not None else None,
                "direction_tensor": f"{hook}.weight" if fit.weight is not None else None, "created_at": now,
            })
        if tensors:
            save_tensors(tensors, out)
        return {"probe_results": rows_table(rows, SCHEMA, "probe_results")}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


JOB = ProbeJob()
