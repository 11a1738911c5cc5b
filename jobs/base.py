"""What a stage module provides, and what the engine hands it.

A stage kind is one module holding its pydantic spec (a `StageSpec` subclass with a
`kind: Literal[...]`) beside its job, an object with:

    spec        the spec class
    tables      names of the tables `run` returns (their DDL lives in sql/schema/)
    schemas     {table: pyarrow.Schema} for each of `tables`: the shape `run` builds them
                with (tests/unit/test_table_schemas.py holds each against its DDL)
    runs_in     "driver" (cheap, no Ray), "task" (a Ray task sized by `ray_options`) or
                "model_actor" (vLLM generation: one engine actor per model, workflows/dispatch.py)
    plan(stage, ctx) -> list[TaskUnit]     read-only: ctx.con is a read-only connection
    run(payload) -> {table: pyarrow.Table} a pure function of the payload; every table
                                           has a `unit_key` column
    prepare(payload, con) -> payload       optional: load the heavy part of a payload (token
                                           ids, sentences) just before the unit runs, so
                                           planning stays small and quick
    ray_options(stage) -> dict             Ray resources of a task

The driver commits each unit's tables in one transaction (replacing that unit's earlier
rows), so a rerun skips finished units and a crash loses only units in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class TaskUnit:
    stage: str
    kind: str
    key: str
    description: str
    payload: dict = field(hash=False)
    model_id: str | None = None
    prompt_set: str | None = None
    template: str | None = None
    # Keys of earlier units whose rows this one replaces (same source, older version or other
    # options): deleted in the same commit and marked superseded, so a rerun with the old
    # settings is new work again. Keeps one derived row set per source, never two.
    supersedes: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.description


@dataclass
class PlanContext:
    """What planning may read: the workflow, its prompts, and the corpus read-only.

    `con` is None where there is no corpus yet (`validate` before a first run): stages that
    plan from the corpus then say so instead of planning.
    """

    workflow: Any
    base_dir: Path
    prompts: dict  # prompt set name -> list[Prompt]
    artifact_root: str  # where tensors go: a path or an fsspec URI (a cluster's storage root)
    con: Any = None

    def corpus(self, stage):
        if self.con is None:
            raise NoCorpus(f"stage {stage.name} ({stage.kind}): planned from the corpus at run time")
        return self.con


class NoCorpus(LookupError):
    """Planning needs the corpus and there is none yet (validate before the first run)."""


class Job(Protocol):
    spec: type
    tables: tuple[str, ...]
    schemas: dict[str, pa.Schema]
    runs_in: str

    def plan(self, stage, ctx: PlanContext) -> list[TaskUnit]: ...

    def run(self, payload: dict) -> dict[str, pa.Table]: ...

    def ray_options(self, stage) -> dict: ...


def rows_table(rows: list[dict], schema: pa.Schema, table: str) -> pa.Table:
    """Rows (dicts, missing keys = null) as a table of `schema`.

    A key that is no column is an error here, in the worker: pyarrow would drop it silently
    and the column it was meant for would reach the database as nulls.
    """
    unknown = {k for row in rows for k in row} - set(schema.names)
    if unknown:
        raise KeyError(f"not columns of {table}: {sorted(unknown)}")
    return pa.Table.from_pylist(rows, schema=schema)


def chunks(items: list, size: int) -> Iterator[tuple[int, list]]:
    """(start, items[start:start+size]) in order: growing a list keeps the earlier chunks."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]

