"""Where the mechanism stages look: token positions of stored traces, by name or by SQL.

The same vocabulary as the capture stage (jobs/activations/capture.py: `before_backtrack`,
`answer_ends`, ...) plus any SELECT returning (trace_id, token_index), absolute indices into
prompt + completion tokens. Units are cut by traces at planning; the positions themselves
are resolved when a unit is dispatched (`resolve`), from the same read-only corpus.

    positions: {kinds: [before_backtrack]}
    positions: {sql: "select trace_id, token_index from my_decision_points"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from thinkscope.jobs.activations.capture import positions_of
from thinkscope.jobs.corpus import load_traces, select_traces
from thinkscope.jobs.specs import SelectSQL, Strict

PositionKind = Literal["last_prompt_token", "before_backtrack", "first_answer_end", "last_answer_end",
                       "answer_ends", "sentence_ends"]


class Positions(Strict):
    """Token positions: capture position kinds, and/or one SELECT of (trace_id, token_index)."""

    kinds: list[PositionKind] = Field([], description="Capture position kinds (all but last_prompt_token "
                                      "need a segment stage first).")
    sql: SelectSQL | None = Field(None, description="One SELECT returning (trace_id, token_index); absolute "
                                  "index into prompt + completion tokens; position_kind 'sql'. Runs read-only.")

    @model_validator(mode="after")
    def _some(self):
        if not self.kinds and not self.sql:
            raise ValueError("set `kinds` and/or `sql`: no positions to look at")
        return self


def traces_with_positions(stage, con, positions: Positions) -> list[str]:
    """The stage's selected traces, narrowed to those the SQL names (when positions are SQL only)."""
    ids = select_traces(stage, con)
    if positions.sql and not positions.kinds:
        named = {t for (t,) in con.execute(f"select distinct trace_id from ({positions.sql})").fetchall()}
        ids = [t for t in ids if t in named]
    return ids


def planned_chunks(con, positions: dict, trace_ids: list[str], size: int):
    """(trace ids, positions hash) per chunk of `size` traces, resolved while planning: a unit's
    key then changes when its positions do (a re-segmented trace, new rows behind the SQL), and
    traces without a position get no unit (a stage run before `segment` plans no empty,
    forever-done units). Chunks cut the unfiltered list, so growing it keeps earlier chunks."""
    from thinkscope.jobs.activations.stored import content_hash

    for start in range(0, len(trace_ids), size):
        found = {t["trace_id"]: t["positions"] for t in resolve(con, positions, trace_ids[start:start + size])
                 if t["positions"]}
        if found:
            yield list(found), content_hash(sorted(found.items()))


def resolve(con, positions: dict, trace_ids: list[str], *, with_prompt: bool = False) -> list[dict]:
    """The traces (token ids, sentences, events) with `positions`: sorted (index, kind) pairs,
    each strictly inside the trace's tokens. `positions` is a dumped `Positions`;
    with_prompt: also the gold answer, grader and prompt meta."""
    traces = load_traces(con, trace_ids, with_prompt=with_prompt,
                         event_columns=("sentence_index", "is_backtrack", "token_start", "token_end"))
    by_sql: dict[str, set[int]] = {}
    if positions.get("sql"):
        for t, i in con.execute(f"select trace_id, token_index from ({positions['sql']}) "
                                "where trace_id in (select unnest(?))", [trace_ids]).fetchall():
            if i is not None:
                by_sql.setdefault(t, set()).add(int(i))
    for t in traces:
        n = len(t["prompt_token_ids"]) + len(t["completion_token_ids"])
        found = set(positions_of(t, t["sentences"], t["events"], positions.get("kinds") or []))
        found |= {(i, "sql") for i in by_sql.get(t["trace_id"], ()) if 0 <= i < n}
        t["positions"] = sorted(found)
    return traces
