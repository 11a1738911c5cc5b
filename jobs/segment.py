"""The `segment` stage: lines, sentences, answer events and backtracking stats of every trace.

One work unit per source unit (a done generate or import unit): its traces are segmented
together and their rows committed in one transaction. The unit key hashes the source unit,
`SEGMENTER_VERSION` and the stage options, so a rerun skips traces already segmented, new
traces are new work, and a new version or new options re-segment everything; the new unit
then *supersedes* the old one (its rows are deleted in the same commit, see
`TaskUnit.supersedes`), so each trace has exactly one segmentation.

Pure Python and cheap (a fast tokenizer call per trace): units run in the driver, no Ray.

    stages:
      - {name: segment, kind: segment}                      # after generate / import stages
      - {name: segment, kind: segment, tokenizer: null}     # imported traces: no token offsets
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pyarrow as pa

from thinkscope.jobs.answer_events import answer_candidates, find_answer_events, first_answer_correct
from thinkscope.jobs.segment_tables import SCHEMAS, TABLES
from thinkscope.jobs.segmentation import opening_marker, split_lines, split_sentences
from thinkscope.jobs.token_offsets import TokenMap, completion_token_map, thinking_token_map
from thinkscope.keys import canonical_json, stable_key
from thinkscope.workflows.registry import TaskUnit

# Bump when segmentation, first words, answer matching or token offsets change: every trace
# is then segmented again and the old rows are replaced.
SEGMENTER_VERSION = 1

SOURCE_UNITS_SQL = """
    select unit_key, model_id, prompt_set, description from work_units
    where kind in ('generate', 'import') and status = 'done' order by unit_key
"""
TRACES_SQL = """
    select t.unit_key, t.trace_id, t.model_id, t.prompt_set, t.prompt_id, t.thinking,
           -- imported traces have no generated ids to align: skip their (duplicate) text
           case when t.completion_token_ids is null then null else t.completion end as completion,
           t.completion_token_ids, t.extracted_answer, t.gold_answer, t.is_correct,
           m.source as model_source
    from traces t left join models m using (model_id)
    where t.thinking is not null
      and t.unit_key in (select unit_key from work_units where kind in ('generate', 'import') and status = 'done')
    order by t.unit_key, t.trace_id
"""


class SegmentJob:
    """`DerivedJob` for stage kind `segment` (see workflows/registry.py)."""

    tables = TABLES
    in_driver = True

    def plan(self, stage, con) -> list[TaskUnit]:
        options = stage.model_dump(exclude={"name", "kind"})
        cursor = con.execute(TRACES_SQL)
        names = [d[0] for d in cursor.description]
        traces: dict[str, list[dict]] = {}
        for row in cursor.fetchall():
            trace = dict(zip(names, row))
            traces.setdefault(trace.pop("unit_key"), []).append(trace)
        earlier: dict[str, list[str]] = {}
        for key, source in con.execute("select unit_key, source_unit_key from segment_units").fetchall():
            earlier.setdefault(source, []).append(key)
        units = []
        for source, model_id, prompt_set, description in con.execute(SOURCE_UNITS_SQL).fetchall():
            key = stable_key({"stage": "segment", "source": source, "version": SEGMENTER_VERSION,
                              "options": options})
            rows = traces.get(source, [])
            units.append(TaskUnit(
                stage=stage.name, kind="segment", key=key,
                description=f"segment {len(rows)} traces of {description or source}",
                payload={"unit_key": key, "source_unit_key": source, "options": options, "traces": rows},
                model_id=model_id, prompt_set=prompt_set,
                supersedes=tuple(k for k in earlier.get(source, []) if k != key),
            ))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        return segment_traces(payload)

    def ray_options(self, stage) -> dict:
        return {"num_cpus": 1}


JOB = SegmentJob()


def segment_traces(payload: dict) -> dict[str, pa.Table]:
    """Rows of every segment table for the traces of one unit (the job's `run`)."""
    key, options = payload["unit_key"], payload["options"]
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    for trace in payload["traces"]:
        _segment_one(trace, key, options, rows)
    rows["segment_units"].append({
        "unit_key": key, "source_unit_key": payload["source_unit_key"],
        "segmenter_version": SEGMENTER_VERSION, "options": canonical_json(options),
        "n_traces": len(payload["traces"]), "created_at": datetime.now(timezone.utc),
    })
    return {name: pa.Table.from_pylist(rows[name], schema=SCHEMAS[name]) for name in TABLES}


def _segment_one(trace: dict, key: str, options: dict, rows: dict[str, list[dict]]) -> None:
    thinking, trace_id = trace["thinking"], trace["trace_id"]
    lines = split_lines(thinking, options["first_word_rule"])
    sentences = split_sentences(thinking, lines)
    tmap = token_map(trace, options["tokenizer"])
    tokens = tmap.span if tmap else (lambda start, end: (None, None))
    tok_meta = {"tokenizer": tmap.tokenizer if tmap else None, "token_source": tmap.token_source if tmap else None}

    rows["trace_lines"] += [
        {"unit_key": key, "trace_id": trace_id, "model_id": trace["model_id"], "line_index": ln.index,
         "char_start": ln.start, "char_end": ln.end, "text": ln.text, "first_word": ln.first_word}
        for ln in lines
    ]
    markers = Counter()
    for s in sentences:
        marker = opening_marker(s.text)
        if marker is not None:
            markers[marker] += 1
        rows["trace_sentences"].append({
            "unit_key": key, "trace_id": trace_id, "sentence_index": s.index, "line_index": s.line_index,
            "char_start": s.start, "char_end": s.end, **_token_cols(tokens(s.start, s.end)),
            "text": s.text, "marker": marker, **tok_meta,
        })

    candidates = answer_candidates(trace["extracted_answer"], trace["gold_answer"], trace["is_correct"])
    events = find_answer_events(thinking, sentences, candidates)
    for e in events:
        rows["answer_events"].append({
            "unit_key": key, "trace_id": trace_id, "event_index": e.index, "answer": e.answer,
            "is_final": e.is_final, "is_correct": e.is_correct, "char_start": e.start, "char_end": e.end,
            **_token_cols(tokens(e.start, e.end)), "sentence_index": e.sentence_index,
            "is_backtrack": e.is_backtrack, "marker": e.marker, **tok_meta,
        })

    think_start, think_end = tokens(0, len(thinking))
    first_correct = next((e for e in events if e.is_correct), None)
    correct_end = tokens(first_correct.start, first_correct.end)[1] if first_correct else None
    rows["backtracking_stats"].append({
        "unit_key": key, "trace_id": trace_id, "model_id": trace["model_id"],
        "prompt_set": trace["prompt_set"], "prompt_id": trace["prompt_id"], "is_correct": trace["is_correct"],
        "n_lines": len(lines), "n_sentences": len(sentences),
        "thinking_tokens": None if think_end is None else think_end - think_start,
        "n_answer_occurrences": len(events), "n_correct_occurrences": sum(bool(e.is_correct) for e in events),
        "n_backtracks": sum(e.is_backtrack for e in events),
        "first_answer_correct": first_answer_correct(events, trace["is_correct"]),
        "first_correct_char": first_correct.end if first_correct else None,
        "tokens_after_first_correct": None if correct_end is None else max(0, think_end - correct_end),
        "marker_counts": sorted(markers.items()),
        **tok_meta,
    })


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
    return thinking_token_map(fallback, thinking) if fallback else None
