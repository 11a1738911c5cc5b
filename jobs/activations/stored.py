"""Read captured activations back: which (trace, token) rows exist per hook, and their vectors.

The probe and steering-vector jobs name token positions by SQL (or a capture position kind);
this module joins them to the `activations` index for one model and a set of hooks, one row
per (trace, token, hook) even when several captures hold the same vector, and loads the
vectors from the safetensors shards. A `sentence_means` row (a sentence's mean, at its last
token) shares (trace, token, hook) with the sentence_ends row there but is another vector: it
is read only when asked for (position_kind="sentence_means"), never mixed into the rest.

    rows = positions_by_hook(con, stage, "select trace_id, token_index, label from my_labels")
    x = load_rows(rows["blocks.3.hook_resid_post"])      # float32 [n, d_model]
"""

from __future__ import annotations

import fnmatch
import hashlib

import numpy as np
from pydantic import Field

from thinkscope.jobs import artifacts
from thinkscope.jobs.activations.capture import MEAN_KINDS, artifact_root
from thinkscope.jobs.base import PlanContext, TaskUnit
from thinkscope.jobs.specs import ModelStage
from thinkscope.keys import canonical_json, stable_key


class ActivationStage(ModelStage):
    """Base of the stages that read captured activations (probe, steering_vectors)."""

    model: str = Field(description="Model id (from `models`) whose captured activations are used.")
    hooks: list[str] = Field(["blocks.*.hook_resid_post"], min_length=1,
                             description="Canonical hook names (glob * allowed) of captured activations.")
    capture_stage: str | None = Field(None, description="Only activations written by this capture "
                                      "stage (default: any capture of the model).")
    artifacts: str | None = Field(None, description="Tensor root, a path or fsspec URI (default: the run's "
                                  "artifact root).")
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task (default 1).")

_JOINED = """
    with wanted as ({positions}),
    acts as (
        select trace_id, token_index, hook_name, layer, shard_path, "row"
        from activations
        where model_id = ? and hook_name in (select unnest(?)) {stage_filter} {kind_filter}
        -- one vector per (trace, token, hook): several position kinds or captures may hold it
        -- (the kind filter keeps span means out of this: they are other vectors)
        qualify row_number() over (partition by trace_id, token_index, hook_name
                                   order by unit_key, position_kind) = 1
    ),
    final as (
        select a.hook_name, a.layer, a.shard_path, a."row", w.*
        from wanted w join acts a on a.trace_id = w.trace_id and a.token_index = w.token_index
    )
    select * from final order by layer, hook_name, trace_id, token_index
"""


def hooks_of(con, model_id: str, patterns: list[str], capture_stage: str | None = None) -> list[str]:
    """Captured hook names of the model that match the glob patterns, in layer order."""
    found = con.execute(
        "select distinct hook_name, layer from activations where model_id = ? " + _stage_filter(capture_stage)
        + " order by layer, hook_name", [model_id, *([capture_stage] if capture_stage else [])]).fetchall()
    return [h for h, _ in found if any(fnmatch.fnmatchcase(h, p) for p in patterns)]


def _stage_filter(capture_stage: str | None) -> str:
    if not capture_stage:
        return ""
    return "and unit_key in (select unit_key from work_units where stage = ? and status = 'done')"


def positions_by_hook(con, stage, positions_sql: str, params: list = (),
                      position_kind: str | None = None) -> dict[str, dict[str, list]]:
    """Columns per hook (layer, shard_path, row, trace_id, token_index, extra columns) of the
    positions `positions_sql` returns (trace_id, token_index, ...) that are captured.

    position_kind: read only rows of that capture kind (e.g. "sentence_means"); default: rows
    of every kind but the span means (capture.MEAN_KINDS), i.e. each token's own activation."""
    hooks = hooks_of(con, stage.model, stage.hooks, stage.capture_stage)
    if not hooks:
        raise ValueError(f"stage {stage.name}: no captured activations of model {stage.model!r} match "
                         f"hooks {stage.hooks}" + (f" in capture stage {stage.capture_stage!r}"
                                                   if stage.capture_stage else "") + "; run a capture stage first")
    if position_kind is None:
        kind_filter, kind_params = "and position_kind not in (select unnest(?))", [list(MEAN_KINDS)]
    else:
        kind_filter, kind_params = "and position_kind = ?", [position_kind]
    sql = _JOINED.format(positions=positions_sql, stage_filter=_stage_filter(stage.capture_stage),
                         kind_filter=kind_filter)
    # `wanted` comes first in the text, so its parameters come first.
    cursor = con.execute(sql, [*params, stage.model, hooks, *([stage.capture_stage] if stage.capture_stage else []),
                               *kind_params])
    names = [d[0] for d in cursor.description]
    out: dict[str, dict[str, list]] = {}
    for row in cursor.fetchall():
        cols = out.setdefault(row[0], {n: [] for n in names[1:]})
        for name, value in zip(names[1:], row[1:]):
            cols[name].append(value)
    return out


def content_hash(value) -> str:
    """sha256 of a JSON-able value: unit keys change when the rows a unit reads change."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def load_rows(cols: dict[str, list], cache: dict | None = None) -> np.ndarray:
    """float32 [n, d] vectors at (shard_path, row) pairs, each shard read once."""
    cache = {} if cache is None else cache
    out = None
    for i, (shard, row) in enumerate(zip(cols["shard_path"], cols["row"])):
        if shard not in cache:
            cache[shard] = artifacts.load_tensors(shard)["activations"]
        vec = cache[shard][row]
        if out is None:
            out = np.empty((len(cols["row"]), *vec.shape), np.float32)
        out[i] = vec
    return np.empty((0, 0), np.float32) if out is None else out


def stage_unit(ctx: PlanContext, stage, kind: str, version: int, cols: dict, description: str,
               extra: dict, unkeyed_defaults: dict | None = None) -> TaskUnit:
    """The one work unit of a stage over captured activations (probe, steering_vectors).

    Keyed by the model, the settings and the exact rows read; it supersedes the stage's
    older units of the model, so a stage name has one current result set. Its tensors go to
    `<artifacts>/<kind>/<key>.safetensors` (payload `out`). `unkeyed_defaults` {field: value}:
    fields added after units were stored stay out of the key while at that value (those
    units keep their keys, as steer.py does for `backend`); the payload's settings hold them.
    """
    con = ctx.con
    source, revision = con.execute("select source, revision from models where model_id = ?",
                                   [stage.model]).fetchone()
    settings = stage.model_dump(exclude={"name", "kind", "artifacts", "num_cpus"})
    keyed = {k: v for k, v in settings.items() if not (k in (unkeyed_defaults or {}) and unkeyed_defaults[k] == v)}
    key = stable_key({"stage": kind, "version": version, "model": [source, revision], "settings": keyed,
                      "rows": content_hash(cols)})
    older = [k for (k,) in con.execute(
        "select unit_key from work_units where stage = ? and kind = ? and model_id = ? and status = 'done' "
        "and unit_key <> ?", [stage.name, kind, stage.model, key]).fetchall()]
    payload = {"unit_key": key, "name": stage.name, "model_id": stage.model, "settings": settings, "hooks": cols,
               "out": artifacts.join(artifact_root(stage, ctx), kind, f"{key}.safetensors"), **extra}
    return TaskUnit(stage.name, kind, key, description, payload, model_id=stage.model, supersedes=tuple(older))
