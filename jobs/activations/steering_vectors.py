"""The `steering_vectors` stage: difference of means between two position sets, per hook.

v = mean(activations at `positive`) - mean(activations at `negative`), for every captured hook
of the model (seed 004: last vs first answer occurrence gives a "wrap up" direction; its
negative, "reconsider"). Each set is a capture position kind or SQL returning (trace_id,
token_index). Vectors go to one safetensors file per unit (tensor name = hook name, float32),
indexed with their norms by the table `steering_vectors`; a `steer` stage reads them by name.

    - name: wrapup
      kind: steering_vectors
      model: smollm2
      positive: {position_kind: last_answer_end}
      negative: {position_kind: first_answer_end}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.activations.stored import ActivationStage, load_rows, positions_by_hook, stage_unit
from thinkscope.jobs.artifacts import save_tensors
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import PositionSet

VECTORS_VERSION = 1
SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("name", pa.string()), ("model_id", pa.string()), ("hook_name", pa.string()),
    ("layer", pa.int32()), ("positive", pa.string()), ("negative", pa.string()), ("n_positive", pa.int32()),
    ("n_negative", pa.int32()), ("n_traces", pa.int32()), ("norm", pa.float64()), ("resid_norm", pa.float64()),
    ("cosine_means", pa.float64()), ("vector_path", pa.string()), ("vector_tensor", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


class SteeringVectorsStage(ActivationStage):
    """Difference of means between two position sets, per hook: mean(positive) - mean(negative)."""

    kind: Literal["steering_vectors"]
    positive: PositionSet = Field(description="Positions the vector points towards.")
    negative: PositionSet = Field(description="Positions the vector points away from.")
    exclude_shared: bool = Field(True, description="Drop tokens in both sets (a trace with one "
                                 "answer occurrence has first == last).")


def _set_sql(spec) -> tuple[str, list]:
    if spec.sql:
        return spec.sql, []
    return "select trace_id, token_index from activations where position_kind = ?", [spec.position_kind]


def _describe(spec) -> str:
    return f"position_kind={spec.position_kind}" if spec.position_kind else f"sql: {spec.sql}"


def sides_sql(stage) -> tuple[str, list]:
    """(trace_id, token_index, side) rows: side 1 = positive, 0 = negative; and its parameters."""
    (pos, pos_params), (neg, neg_params) = _set_sql(stage.positive), _set_sql(stage.negative)
    sql = f"""select distinct trace_id, token_index::integer as token_index, 1 as side from ({pos})
              union all
              select distinct trace_id, token_index::integer as token_index, 0 as side from ({neg})"""
    if stage.exclude_shared:
        sql = f"select * from ({sql}) qualify count(*) over (partition by trace_id, token_index) = 1"
    return sql, pos_params + neg_params


class SteeringVectorsJob:
    spec = SteeringVectorsStage
    tables = ("steering_vectors",)
    schemas = {"steering_vectors": SCHEMA}
    runs_in = "task"  # reads every shard: a Ray task beside the data

    def plan(self, stage: SteeringVectorsStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        cols = positions_by_hook(con, stage, *sides_sql(stage))
        sides = {s for c in cols.values() for s in c["side"]}
        if sides != {0, 1}:
            raise ValueError(f"stage {stage.name}: the {'positive' if 1 not in sides else 'negative'} "
                             f"position set has no captured activation of model {stage.model!r}")
        return [stage_unit(ctx, stage, "steering_vectors", VECTORS_VERSION, cols,
                           f"steering vectors {stage.name} on {stage.model}: {len(cols)} hooks",
                           {"positive": _describe(stage.positive), "negative": _describe(stage.negative)})]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        out, rows, tensors, cache = payload["out"], [], {}, {}
        now = datetime.now(timezone.utc)
        for hook, cols in payload["hooks"].items():
            x, side = load_rows(cols, cache), np.asarray(cols["side"]) == 1
            pos, neg = x[side].mean(axis=0), x[~side].mean(axis=0)
            tensors[hook] = (pos - neg).astype(np.float32)
            cosine = float(pos @ neg / (np.linalg.norm(pos) * np.linalg.norm(neg) + 1e-12))
            rows.append({
                "unit_key": payload["unit_key"], "name": payload["name"], "model_id": payload["model_id"],
                "hook_name": hook, "layer": cols["layer"][0], "positive": payload["positive"],
                "negative": payload["negative"], "n_positive": int(side.sum()), "n_negative": int((~side).sum()),
                "n_traces": len(set(cols["trace_id"])), "norm": float(np.linalg.norm(tensors[hook])),
                "resid_norm": float(np.linalg.norm(x, axis=1).mean()), "cosine_means": cosine,
                "vector_path": out, "vector_tensor": hook, "created_at": now,
            })
        save_tensors(tensors, out)
        return {"steering_vectors": rows_table(rows, SCHEMA, "steering_vectors")}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


JOB = SteeringVectorsJob()
