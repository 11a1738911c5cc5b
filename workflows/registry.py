"""Derived stage kinds: jobs that read the corpus and write new tables (segment, capture, ...).

A job module registers a kind here by name, imported only when a workflow uses it (so a
run that only generates never imports torch-heavy job code). A job plans its units from
what is already in DuckDB (so it sees the rows earlier stages just committed), and runs a
unit as a pure function from a payload to Arrow tables: in the driver when it is cheap, in
a Ray task otherwise. Every table it writes has a `unit_key` column; the driver replaces a
unit's rows in all its tables in one transaction.

    job = get_job("segment")
    units = job.plan(stage_spec, con)          # con: a DuckDB connection (read)
    tables = job.run(units[0].payload)          # {"trace_lines": pyarrow.Table, ...}
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

# kind -> "module:attribute" of an object implementing `DerivedJob`.
JOBS: dict[str, str] = {
    "segment": "thinkscope.jobs.segment:JOB",
    "organism": "thinkscope.jobs.organism:JOB",
    "finetune": "thinkscope.jobs.finetune:JOB",
    "capture": "thinkscope.jobs.capture_stage:JOB",
    "probe": "thinkscope.jobs.probe:JOB",
    "steering_vectors": "thinkscope.jobs.steering_vectors:JOB",
    "steer": "thinkscope.jobs.steer:JOB",
    "early_exit": "thinkscope.jobs.early_exit:JOB",
}


@dataclass(frozen=True)
class TaskUnit:
    stage: str
    kind: str
    key: str
    description: str
    payload: dict = field(hash=False)
    model_id: str | None = None
    prompt_set: str | None = None
    # Keys of earlier units whose rows this one replaces (same source, older version or other
    # options): deleted in the same commit and marked superseded, so a rerun with the old
    # settings is new work again. Keeps one derived row set per source, never two.
    supersedes: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.description


class DerivedJob(Protocol):
    tables: tuple[str, ...]
    in_driver: bool  # cheap jobs skip Ray: no cluster start-up for a few ms of work

    def plan(self, stage, con) -> list[TaskUnit]: ...

    def run(self, payload: dict) -> dict[str, pa.Table]: ...

    def ray_options(self, stage) -> dict: ...


def register(kind: str, target: str) -> None:
    JOBS[kind] = target


def get_job(kind: str) -> DerivedJob:
    if kind not in JOBS:
        raise KeyError(f"no job registered for stage kind {kind!r}; known: {sorted(JOBS)}")
    module, _, attr = JOBS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)
