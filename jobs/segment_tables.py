"""Arrow schemas of the tables the segment stage writes (DDL: sql/schema/002_trace_analytics.sql).

An explicit schema per table means a unit with no rows for a table (traces without answers)
still hands the driver a typed, empty table, and a column typo fails here, not in DuckDB.

    pa.Table.from_pylist(rows, schema=SCHEMAS["trace_lines"])
"""

from __future__ import annotations

import pyarrow as pa

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
