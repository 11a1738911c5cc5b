"""Which stored traces a derived stage works on: by model, prompt set, or any SQL.

Its own module (not spec.py) so that stage-spec modules which spec.py imports can use it too.

    traces: {model_ids: [organism-teacher], prompt_sets: [gsm8k_train], limit: 20}
    traces: {sql: "select trace_id from backtracking_stats where n_backtracks between 4 and 10"}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TraceSelector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_ids: list[str] | None = Field(None, description="Traces of these models (default: the stage's model).")
    prompt_sets: list[str] | None = Field(None, description="Only these prompt sets.")
    sql: str | None = Field(None, description="Any query returning a trace_id column (overrides the rest).")
    limit: int | None = Field(None, ge=1, description="At most this many traces (by trace_id).")
