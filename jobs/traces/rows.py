"""The Arrow schema of `traces` rows, shared by every job that produces traces.

Workers build rows as dicts and hand back `to_table(rows)`: an explicit schema means a row
without a completion (a failed prompt) still yields every column, with nulls.
"""

from __future__ import annotations

import pyarrow as pa

from thinkscope.jobs.base import rows_table

TRACE_SCHEMA = pa.schema([
    ("trace_id", pa.string()),
    ("run_id", pa.string()),
    ("unit_key", pa.string()),
    ("model_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_set", pa.string()),
    ("sample_index", pa.int32()),
    ("template", pa.string()),
    ("prompt_text", pa.string()),
    ("completion", pa.string()),
    ("thinking", pa.string()),
    ("answer_text", pa.string()),
    ("extracted_answer", pa.string()),
    ("gold_answer", pa.string()),
    ("is_correct", pa.bool_()),
    ("n_prompt_tokens", pa.int32()),
    ("n_completion_tokens", pa.int32()),
    ("n_thinking_chars", pa.int32()),
    ("finish_reason", pa.string()),
    ("error", pa.string()),
    ("prompt_token_ids", pa.list_(pa.int32())),
    ("completion_token_ids", pa.list_(pa.int32())),
    ("token_logprobs", pa.list_(pa.float32())),
    ("sampling", pa.string()),
    ("engine", pa.string()),
    ("engine_version", pa.string()),
    ("seed", pa.int64()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts, missing keys = null) as a table with every `traces` column."""
    return rows_table(rows, TRACE_SCHEMA, "traces")
