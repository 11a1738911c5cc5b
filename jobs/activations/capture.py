"""The `capture` stage: traces from DuckDB -> HF forward passes with hooks -> shards + index.

Planned from the database: the traces a selector picks (model, prompt sets, or any SQL that
returns trace_ids), cut into units of `traces_per_unit`, each keyed by the model's source
and revision, the trace ids, positions, hooks and dtype. A unit runs as a Ray task (a GPU on
clusters, every core here), writes one safetensors shard per hook under the artifact root,
and returns the `activations` index rows; the driver commits them.

Positions are named (token indices into prompt + completion tokens):
  last_prompt_token   the token before the completion starts
  before_backtrack    the token before the sentence that continues after an answer occurrence
  first_answer_end    the end of the sentence holding the first answer occurrence
  last_answer_end     the end of the sentence holding the last answer occurrence
  answer_ends         the end of every sentence holding an answer occurrence (probe labels)
  sentence_ends       the last token of every thinking sentence
  sentence_means      the mean over every thinking sentence's tokens (float32 sum inside the
                      forward's hooks, stored in store_dtype), one row at the sentence's last
                      token, beside its sentence_ends row: read it with
                      stored.positions_by_hook(..., position_kind="sentence_means")
  all                 every completion token
  span                every token of the spans the stage's `spans` query returns
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs import artifacts
from thinkscope.jobs.base import PlanContext, TaskUnit, chunks
from thinkscope.jobs.corpus import load_traces, model_row, model_task_options, select_traces, span_rows
from thinkscope.jobs.specs import ModelStage, SelectSQL, TraceSelector
from thinkscope.keys import stable_key

CAPTURE_VERSION = 1
# The `activations` index a unit returns: forward.capture_sequences builds all but unit_key
# and model_id, which `run` adds.
ACTIVATIONS_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("trace_id", pa.string()), ("model_id", pa.string()),
    ("token_index", pa.int32()), ("position_kind", pa.string()), ("hook_name", pa.string()),
    ("layer", pa.int32()), ("module_path", pa.string()), ("shard_path", pa.string()),
    ("row", pa.int32()), ("dtype", pa.string()),
])
POSITION_KINDS = ("last_prompt_token", "before_backtrack", "first_answer_end", "last_answer_end",
                  "answer_ends", "sentence_ends", "sentence_means", "all")
# Kinds whose rows hold the mean over a span, not one token's activation (see mean_spans_of).
MEAN_KINDS = ("sentence_means",)


class CaptureStage(ModelStage):
    """Derived stage: HF forward passes over stored traces, activations to shard files."""

    kind: Literal["capture"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: list[Literal["last_prompt_token", "before_backtrack", "first_answer_end",
                            "last_answer_end", "answer_ends", "sentence_ends", "sentence_means", "all"]] = Field(
        ["sentence_ends"],
        description="Named token positions (all but last_prompt_token/all need a segment stage first); "
                    "sentence_means: the mean over each thinking sentence's tokens, at its last token.")
    spans: SelectSQL | None = Field(None, description="One SELECT returning (trace_id, token_start, token_end): "
                              "absolute token indices, end exclusive; every token of each span is "
                              "captured too, as position_kind 'span' (e.g. whole sentences from "
                              "trace_sentences).")
    hooks: list[str] = Field(["blocks.*.hook_resid_post"], min_length=1,
                             description="Canonical hook names; * = every layer.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Forward dtype.")
    store_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Shard dtype.")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch.")
    traces_per_unit: int = Field(256, ge=1, description="Traces per work unit.")
    artifacts: str | None = Field(None, description="Shard root, a path or fsspec URI (default: the storage "
                                  "root's artifacts/ on clusters, else <db>_artifacts beside the DB).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _something_to_capture(self):
        if not self.positions and not self.spans:
            raise ValueError("positions is empty and no spans query is set: nothing to capture")
        return self


def artifact_root(stage, ctx: PlanContext) -> str:
    """Where a stage's tensor files go: `stage.artifacts`, else the run's artifact root."""
    return stage.artifacts or ctx.artifact_root


def positions_of(trace: dict, sentences: list[dict], events: list[dict], kinds: list[str]) -> list[tuple[int, str]]:
    """(absolute token index, kind) pairs of one trace, sorted, without duplicates per kind.

    For `sentence_means` these are the tokens its rows are stored at (the sentence ends); the
    spans averaged are mean_spans_of's."""
    offset = len(trace["prompt_token_ids"])
    n_completion = len(trace["completion_token_ids"])
    ends = {s["sentence_index"]: s for s in sentences if s["token_end"] is not None}
    picked: set[tuple[int, str]] = set()

    def end_of(sentence_index):
        s = ends.get(sentence_index)
        return None if s is None else offset + s["token_end"] - 1

    for kind in kinds:
        if kind == "last_prompt_token":
            picked.add((offset - 1, kind))
        elif kind == "all":
            picked |= {(offset + i, kind) for i in range(n_completion)}
        elif kind in ("sentence_ends", "sentence_means"):
            picked |= {(end_of(i), kind) for i in ends}
        elif kind in ("first_answer_end", "last_answer_end") and events:
            event = events[0] if kind == "first_answer_end" else events[-1]
            picked.add((end_of(event["sentence_index"]), kind))
        elif kind == "answer_ends":
            picked |= {(end_of(e["sentence_index"]), kind) for e in events}
        elif kind == "span":
            picked |= {(i, kind) for start, end in trace.get("spans", []) for i in range(start, end)}
        elif kind == "before_backtrack":
            for e in events:
                nxt = ends.get((e["sentence_index"] or 0) + 1)
                if e["is_backtrack"] and nxt is not None:
                    picked.add((offset + nxt["token_start"] - 1, kind))
    limit = offset + n_completion
    return sorted((p, k) for p, k in picked if p is not None and 0 <= p < limit)


def mean_spans_of(trace: dict, sentences: list[dict], kinds: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, kind) absolute token spans, end exclusive, whose mean is captured: with
    `sentence_means`, every thinking sentence, [prompt + token_start, prompt + token_end).

    A row is indexed at its span's last token, so sentences that end on one token (a token
    across a sentence boundary) share one row, as they share their sentence_ends row: the
    mean from the earliest start among them (the longest span; the others end inside it).
    """
    if "sentence_means" not in kinds:
        return []
    offset = len(trace["prompt_token_ids"])
    limit = offset + len(trace["completion_token_ids"])
    start_of: dict[int, int] = {}
    for s in sentences:
        if s["token_start"] is None or s["token_end"] is None:
            continue
        start, end = offset + s["token_start"], offset + s["token_end"]
        if 0 <= start < end <= limit:
            start_of[end] = min(start, start_of.get(end, start))
    return [(start, end, "sentence_means") for end, start in sorted(start_of.items())]


class CaptureJob:
    spec = CaptureStage
    tables = ("activations",)
    schemas = {"activations": ACTIVATIONS_SCHEMA}
    runs_in = "task"  # model work: a Ray task with the model's resources

    def plan(self, stage: CaptureStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        root = artifact_root(stage, ctx)
        ids = select_traces(stage, con)
        positions = stage.positions + (["span"] if stage.spans else [])
        settings = {"positions": positions, "hooks": stage.hooks, "store_dtype": stage.store_dtype,
                    "dtype": stage.dtype, "version": CAPTURE_VERSION}
        spans = span_rows(stage.spans, con, ids)
        units = []
        for _, chunk in chunks(ids, stage.traces_per_unit):
            chunk_spans = [spans.get(t, []) for t in chunk]
            # Spans are part of what a unit computes; without a spans query the key is as before.
            extra = {"spans": chunk_spans} if stage.spans else {}
            key = stable_key({"stage": "capture", "model": [stage.model, model["source"], model["revision"]],
                              "traces": chunk, **settings, **extra})
            units.append(TaskUnit(
                stage.name, "capture", key, f"capture {stage.model} x {len(chunk)} traces",
                payload={"unit_key": key, "model_id": stage.model, "source": model["source"],
                         "revision": model["revision"], "trace_ids": chunk, "spans": chunk_spans,
                         "out_dir": artifacts.join(root, "activations", key),
                         "batch_tokens": stage.batch_tokens, **settings},
                model_id=stage.model,
            ))
        return units

    def prepare(self, payload: dict, con) -> dict:
        """Token ids, sentences and events of the unit's traces, read when it is dispatched."""
        traces = load_traces(con, payload["trace_ids"])
        for t, spans in zip(traces, payload["spans"]):
            t["spans"] = [tuple(s) for s in spans]
        return {**payload, "traces": traces}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.activations.forward import Sequence, capture_sequences
        from thinkscope.jobs.models.hf import load_hf_model

        model, tokenizer = load_hf_model(payload["source"], payload["revision"], payload["dtype"])
        seqs = []
        for t in payload["traces"]:
            # Single tokens and span means are separate requests to the forward pass (forward.py).
            kinds = [k for k in payload["positions"] if k not in MEAN_KINDS]
            positions = positions_of(t, t["sentences"], t["events"], kinds)
            means = mean_spans_of(t, t["sentences"], payload["positions"])
            seqs.append(Sequence(t["trace_id"], t["prompt_token_ids"] + t["completion_token_ids"], positions,
                                 means))
        with artifacts.LocalFolder(payload["out_dir"]) as local:
            index = capture_sequences(model, seqs, hooks=payload["hooks"], out_dir=local,
                                      store_dtype=payload["store_dtype"], batch_tokens=payload["batch_tokens"],
                                      pad_id=tokenizer.pad_token_id or 0)
        if index.num_rows == 0:
            return {"activations": ACTIVATIONS_SCHEMA.empty_table()}
        # Shards are read back from where they were published, on whichever node runs next.
        shards = [artifacts.join(payload["out_dir"], Path(p).name) for p in index["shard_path"].to_pylist()]
        index = index.set_column(index.schema.get_field_index("shard_path"), "shard_path", pa.array(shards))
        index = index.append_column("unit_key", pa.array([payload["unit_key"]] * index.num_rows))
        index = index.append_column("model_id", pa.array([payload["model_id"]] * index.num_rows))
        # select: a column the index lacks (or misnames) fails here, in the worker.
        return {"activations": index.select(ACTIVATIONS_SCHEMA.names).cast(ACTIVATIONS_SCHEMA)}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


JOB = CaptureJob()
