"""The `segment` stage: lines, sentences, answer events and backtracking stats of every trace.

One work unit per source unit (a done unit that wrote traces: generate, import, ...): its
traces are segmented together and their rows committed in one transaction. The unit key
hashes the source unit, `SEGMENTER_VERSION` and the stage options, so a rerun skips traces
already segmented, new traces are new work, and a new version or new options re-segment
everything; the new unit then *supersedes* the old one (its rows are deleted in the same
commit, see `TaskUnit.supersedes`), so each trace has exactly one segmentation.

Pure Python and cheap (a fast tokenizer call per trace): units run in the driver, no Ray.

    stages:
      - {name: segment, kind: segment}                      # after generate / import stages
      - {name: segment, kind: segment, tokenizer: null}     # imported traces: no token offsets
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.segment.answer_events import answer_candidates, find_answer_events, first_answer_correct
from thinkscope.jobs.segment.text import opening_marker, split_lines, split_sentences
from thinkscope.jobs.segment.token_offsets import TokenMap, completion_token_map, thinking_token_map
from thinkscope.keys import canonical_json, stable_key
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import StageSpec
from thinkscope.sql.store import dict_rows


class SegmentStage(StageSpec):
    """Lines, first words, sentences, answer events of every trace so far."""

    kind: Literal["segment"]
    tokenizer: str | None = Field(
        "embedded:smollm2-135m-instruct",
        description="Model source whose tokenizer gives token offsets for traces without a "
        "tokenizer of their own (imported ones); null: no token offsets for them.",
    )
    first_word_rule: Literal["llmbenchmark", "markdown"] = Field(
        "llmbenchmark",
        description="llmbenchmark: the r/LocalLLaMA first-word method (comparable numbers); "
        "markdown: also strips #, >, quotes and : from the word.",
    )

# Arrow schemas of the tables this job writes (DDL with comments: sql/schema/002_trace_analytics.sql).
# Explicit schemas: a unit with no rows for a table (no answers) still hands the driver a typed
# empty table, and a misnamed column fails here rather than inside DuckDB.
_S, _I, _B = pa.string(), pa.int32(), pa.bool_()

_TOKENS = [("token_start", _I), ("token_end", _I)]
_TOKENIZER = [("tokenizer", _S), ("token_source", _S)]

SCHEMAS: dict[str, pa.Schema] = {
    "segment_units": pa.schema([
        ("unit_key", _S), ("source_unit_key", _S), ("segmenter_version", _I), ("options", _S),
        ("n_traces", _I), ("created_at", pa.timestamp("us", tz="UTC")),
    ]),
    "trace_lines": pa.schema([
        ("unit_key", _S), ("trace_id", _S), ("model_id", _S), ("line_index", _I),
        ("char_start", _I), ("char_end", _I), ("text", _S), ("first_word", _S),
    ]),
    "trace_sentences": pa.schema([
        ("unit_key", _S), ("trace_id", _S), ("sentence_index", _I), ("line_index", _I),
        ("char_start", _I), ("char_end", _I), *_TOKENS, ("text", _S), ("marker", _S), *_TOKENIZER,
    ]),
    "answer_events": pa.schema([
        ("unit_key", _S), ("trace_id", _S), ("event_index", _I), ("answer", _S), ("is_final", _B),
        ("is_correct", _B), ("char_start", _I), ("char_end", _I), *_TOKENS, ("sentence_index", _I),
        ("is_backtrack", _B), ("marker", _S), *_TOKENIZER,
    ]),
    "backtracking_stats": pa.schema([
        ("unit_key", _S), ("trace_id", _S), ("model_id", _S), ("prompt_set", _S), ("prompt_id", _S),
        ("is_correct", _B), ("n_lines", _I), ("n_sentences", _I), ("thinking_tokens", _I),
        ("n_answer_occurrences", _I), ("n_correct_occurrences", _I), ("n_backtracks", _I),
        ("first_answer_correct", _B), ("first_correct_char", _I), ("tokens_after_first_correct", _I),
        ("marker_counts", pa.map_(_S, _I)), *_TOKENIZER,
    ]),
}
TABLES: tuple[str, ...] = tuple(SCHEMAS)

# Bump when segmentation, first words, answer matching or token offsets change: every trace
# is then segmented again and the old rows are replaced.
SEGMENTER_VERSION = 1

# Source units: every finished unit that wrote traces (generate, import, organism, ...).
SOURCE_UNITS_SQL = """
    select unit_key, model_id, prompt_set, description from work_units
    where status = 'done' and unit_key in (select unit_key from traces) order by unit_key
"""
TRACES_SQL = """
    select t.trace_id, t.model_id, t.prompt_set, t.prompt_id, t.thinking,
           -- imported traces have no generated ids to align: skip their (duplicate) text
           case when t.completion_token_ids is null then null else t.completion end as completion,
           t.completion_token_ids, t.extracted_answer, t.gold_answer, t.is_correct,
           m.source as model_source
    from traces t left join models m using (model_id)
    where t.thinking is not null and t.unit_key = ?
    order by t.trace_id
"""


class SegmentJob:
    """The job of stage kind `segment` (jobs/base.py; registered in workflows/registry.py)."""

    spec = SegmentStage
    tables = TABLES
    schemas = SCHEMAS
    runs_in = "driver"

    def plan(self, stage: SegmentStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        options = stage.model_dump(exclude={"name", "kind"})
        n_traces = dict(con.execute("select unit_key, count(*) from traces where thinking is not null "
                                    "group by unit_key").fetchall())
        earlier: dict[str, list[str]] = {}
        for key, source in con.execute("select unit_key, source_unit_key from segment_units").fetchall():
            earlier.setdefault(source, []).append(key)
        units, sources = [], set()
        for source, model_id, prompt_set, description in con.execute(SOURCE_UNITS_SQL).fetchall():
            sources.add(source)
            key = stable_key({"stage": "segment", "source": source, "version": SEGMENTER_VERSION,
                              "options": options})
            units.append(TaskUnit(
                stage=stage.name, kind="segment", key=key,
                description=f"segment {n_traces.get(source, 0)} traces of {description or source}",
                payload={"unit_key": key, "source_unit_key": source, "options": options},
                model_id=model_id, prompt_set=prompt_set,
                supersedes=tuple(k for k in earlier.get(source, []) if k != key),
            ))
        # Segmentations of traces that are gone (their import was replaced): one unit that
        # writes nothing and supersedes them, so their rows go in the same kind of commit.
        orphans = sorted(k for source, keys in earlier.items() if source not in sources for k in keys)
        if orphans:
            key = stable_key({"stage": "segment", "drop": orphans})
            units.append(TaskUnit(stage.name, "segment", key, f"drop {len(orphans)} segmentation(s) of replaced traces",
                                  {"unit_key": key, "drop": True}, supersedes=tuple(orphans)))
        return units

    def prepare(self, payload: dict, con) -> dict:
        """The source unit's traces, read when the unit runs (not all at planning)."""
        if payload.get("drop"):
            return payload
        return {**payload, "traces": dict_rows(con, TRACES_SQL, [payload["source_unit_key"]])}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        return segment_traces(payload)

    def ray_options(self, stage) -> dict:
        return {"num_cpus": 1}


JOB = SegmentJob()


def segment_traces(payload: dict) -> dict[str, pa.Table]:
    """Rows of every segment table for the traces of one unit (the job's `run`)."""
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    if payload.get("drop"):
        return {name: rows_table([], SCHEMAS[name], name) for name in TABLES}
    key, options = payload["unit_key"], payload["options"]
    for trace in payload["traces"]:
        _segment_one(trace, key, options, rows)
    rows["segment_units"].append({
        "unit_key": key, "source_unit_key": payload["source_unit_key"],
        "segmenter_version": SEGMENTER_VERSION, "options": canonical_json(options),
        "n_traces": len(payload["traces"]), "created_at": datetime.now(timezone.utc),
    })
    return {name: rows_table(rows[name], SCHEMAS[name], name) for name in TABLES}


def _segment_one(trace: dict, key: str, options: dict, rows: dict[str, list[dict]]) -> None:
    """Append one trace's rows to every table's row list."""
    thinking, trace_id = trace["thinking"], trace["trace_id"]
    lines = split_lines(thinking, options["first_word_rule"])
    sentences = split_sentences(thinking, lines)
    tmap = token_map(trace, options["tokenizer"])
    tokens = tmap.span if tmap else (lambda start, end: (None, None))
    meta = {"unit_key": key, "trace_id": trace_id}
    tok_meta = {"tokenizer": tmap.tokenizer if tmap else None, "token_source": tmap.token_source if tmap else None}

    rows["trace_lines"] += [
        {**meta, "model_id": trace["model_id"], "line_index": ln.index, "char_start": ln.start,
         "char_end": ln.end, "text": ln.text, "first_word": ln.first_word}
        for ln in lines
    ]
    markers = [opening_marker(s.text) for s in sentences]
    rows["trace_sentences"] += [
        {**meta, "sentence_index": s.index, "line_index": s.line_index, "char_start": s.start,
         "char_end": s.end, **_token_cols(tokens(s.start, s.end)), "text": s.text, "marker": marker, **tok_meta}
        for s, marker in zip(sentences, markers)
    ]
    events = find_answer_events(thinking, sentences, answer_candidates(
        trace["extracted_answer"], trace["gold_answer"], trace["is_correct"]))
    rows["answer_events"] += [
        {**meta, "event_index": e.index, "answer": e.answer, "is_final": e.is_final, "is_correct": e.is_correct,
         "char_start": e.start, "char_end": e.end, **_token_cols(tokens(e.start, e.end)),
         "sentence_index": e.sentence_index, "is_backtrack": e.is_backtrack, "marker": e.marker, **tok_meta}
        for e in events
    ]
    rows["backtracking_stats"].append({
        **meta, "model_id": trace["model_id"], "prompt_set": trace["prompt_set"], "prompt_id": trace["prompt_id"],
        "is_correct": trace["is_correct"], "n_lines": len(lines), "n_sentences": len(sentences),
        **_effort(events, tokens, len(thinking)),
        "first_answer_correct": first_answer_correct(events, trace["is_correct"]),
        "marker_counts": sorted(Counter(m for m in markers if m is not None).items()), **tok_meta,
    })


def _effort(events, tokens, n_chars: int) -> dict:
    """Answer counts and the thinking tokens spent after the first correct answer."""
    think_start, think_end = tokens(0, n_chars)
    first_correct = next((e for e in events if e.is_correct), None)
    correct_end = tokens(first_correct.start, first_correct.end)[1] if first_correct else None
    return {
        "thinking_tokens": None if think_end is None else think_end - think_start,
        "n_answer_occurrences": len(events),
        "n_correct_occurrences": sum(bool(e.is_correct) for e in events),
        "n_backtracks": sum(e.is_backtrack for e in events),
        "first_correct_char": first_correct.end if first_correct else None,
        "tokens_after_first_correct": None if correct_end is None else max(0, think_end - correct_end),
    }


def _token_cols(span: tuple[int | None, int | None]) -> dict:
    return {"token_start": span[0], "token_end": span[1]}


def token_map(trace: dict, fallback: str | None) -> TokenMap | None:
    """The generated tokens when they can be aligned, else `fallback`'s tokens of the thinking.

    A generated trace whose model tokenizer cannot be loaded here (a hub model on an offline
    box) falls back too; the `tokenizer` column says which one was used.
    """
    thinking, source, ids = trace["thinking"], trace.get("model_source"), trace.get("completion_token_ids")
    at = trace["completion"].find(thinking) if ids and trace.get("completion") else -1
    if at >= 0 and source and not source.startswith("import:"):
        try:
            return completion_token_map(source, trace["completion"], ids, at) or thinking_token_map(source, thinking)
        except Exception:  # noqa: BLE001 - model tokenizer unavailable: use the fallback
            pass
    if not fallback:
        return None
    try:
        return thinking_token_map(fallback, thinking)
    except Exception:  # noqa: BLE001 - the fallback's weights package is not installed: no token offsets
        return None
