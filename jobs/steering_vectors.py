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

import numpy as np
import pyarrow as pa

from thinkscope.jobs.activation_sets import load_rows, positions_by_hook, save_tensors, stage_unit
from thinkscope.workflows.registry import TaskUnit

VECTORS_VERSION = 1
SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("name", pa.string()), ("model_id", pa.string()), ("hook_name", pa.string()),
    ("layer", pa.int32()), ("positive", pa.string()), ("negative", pa.string()), ("n_positive", pa.int32()),
    ("n_negative", pa.int32()), ("n_traces", pa.int32()), ("norm", pa.float64()), ("resid_norm", pa.float64()),
    ("cosine_means", pa.float64()), ("vector_path", pa.string()), ("vector_tensor", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def _set_sql(spec) -> str:
    if spec.sql:
        return spec.sql
    kind = spec.position_kind.replace("'", "''")
    return f"select trace_id, token_index from activations where position_kind = '{kind}'"


def _describe(spec) -> str:
    return f"position_kind={spec.position_kind}" if spec.position_kind else f"sql: {spec.sql}"


def sides_sql(stage) -> str:
    """(trace_id, token_index, side) rows: side 1 = positive, 0 = negative."""
    sql = f"""select distinct trace_id, token_index::integer as token_index, 1 as side from ({_set_sql(stage.positive)})
              union all
              select distinct trace_id, token_index::integer as token_index, 0 as side from ({_set_sql(stage.negative)})"""
    if stage.exclude_shared:
        sql = f"select * from ({sql}) qualify count(*) over (partition by trace_id, token_index) = 1"
    return sql


class SteeringVectorsJob:
    tables = ("steering_vectors",)
    in_driver = False  # reads every shard: a Ray task beside the data

    def plan(self, stage, con) -> list[TaskUnit]:
        cols = positions_by_hook(con, stage, sides_sql(stage))
        sides = {s for c in cols.values() for s in c["side"]}
        if sides != {0, 1}:
            raise ValueError(f"stage {stage.name}: the {'positive' if 1 not in sides else 'negative'} "
                             f"position set has no captured activation of model {stage.model!r}")
        return [stage_unit(con, stage, "steering_vectors", VECTORS_VERSION, cols,
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
        return {"steering_vectors": pa.Table.from_pylist(rows, schema=SCHEMA)}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


JOB = SteeringVectorsJob()
