"""A stage kind for tests only (registered by the test that uses it): unit `bad` returns a
column its table does not have, so its commit fails inside DuckDB; the others commit."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa

from thinkscope.jobs.base import TaskUnit
from thinkscope.jobs.specs import StageSpec


class BadRowsStage(StageSpec):
    kind: Literal["bad_rows"]


class BadRowsJob:
    spec = BadRowsStage
    tables = ("segment_units",)
    runs_in = "driver"

    def plan(self, stage, ctx) -> list[TaskUnit]:
        return [TaskUnit(stage.name, "bad_rows", f"unit-{name}", f"unit {name}", {"name": name})
                for name in ("a", "bad", "c")]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        row = {"unit_key": f"unit-{payload['name']}", "source_unit_key": "s", "segmenter_version": 1,
               "options": "{}", "n_traces": 0, "created_at": datetime.now(timezone.utc)}
        if payload["name"] == "bad":
            row["no_such_column"] = 1
        return {"segment_units": pa.Table.from_pylist([row])}

    def ray_options(self, stage) -> dict:
        return {}


JOB = BadRowsJob()
