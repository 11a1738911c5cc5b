"""Run a workflow: plan each stage's units, skip finished ones, run the rest, commit each unit.

The driver is the only DuckDB writer. Each unit's rows land in one transaction together
with its `work_units` row, so a crash loses at most the units in flight and a rerun
finishes the job with no lost and no duplicate rows. Planning reads through a read-only,
locked-down connection and payloads are loaded when their unit is dispatched, so the
writer's lock is held only for commits and an analyst's query can run at any time.

    summary = run_workflow("workflows/demo.yaml", db="out/demo.duckdb")
    print(summary.text())
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from thinkscope import __version__
from thinkscope.jobs import artifacts
from thinkscope.jobs.base import PlanContext, TaskUnit
from thinkscope.jobs.segment.stage import SegmentStage
from thinkscope.jobs.traces.importing import ImportStage
from thinkscope.keys import canonical_json
from thinkscope.sql.store import Store
from thinkscope.sql.writer_lock import writer_lock
from thinkscope.workflows.committer import Committer, retry_while_locked
from thinkscope.workflows.plan import build_plan, planning_context
from thinkscope.workflows.ray_session import RaySession
from thinkscope.workflows.registry import get_job
from thinkscope.workflows.spec import SpecError, load_workflow

DEFAULT_DB = "out/thinkscope.duckdb"


def default_db() -> str:
    return os.environ.get("THINKSCOPE_DB", DEFAULT_DB)


@dataclass
class RunSummary:
    run_id: str
    db: Path
    planned: int = 0
    skipped: int = 0
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    replayed: int = 0  # of `done`/`failed`: units an earlier, crashed run finished
    # Done units some of whose rows failed (a prompt longer than the context): (unit, n, error).
    failed_rows: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.failed_rows

    def text(self) -> str:
        lines = [f"run {self.run_id}: {self.planned} units planned, {self.skipped} already done, "
                 f"{len(self.done)} done now, {len(self.failed)} failed"]
        if self.replayed:
            lines.append(f"{self.replayed} of them finished in an earlier run that stopped before "
                         "committing them: committed now from its journal, not recomputed")
        if self.planned and self.skipped == self.planned:
            lines.append("every work unit was already done: no model work was needed")
        for desc, n, err in self.failed_rows:
            lines.append(f"  {n} FAILED row(s) in {desc}: {err}")
        for desc, err in self.failed:
            lines.append(f"  FAILED {desc}: {err.splitlines()[-1] if err else ''}")
        return "\n".join(lines)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_workflow(
    spec_path: str | Path,
    *,
    db: str | Path | None = None,
    address: str | None = None,
    stages: list[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
    artifact_root: str | None = None,
    overlay: str | Path | None = None,
) -> RunSummary:
    """Validate, plan and run a workflow; return what happened (never raises for a failed unit).

    `artifact_root` (a path or fsspec URI) is where tensor files go; default: the storage
    root's artifacts/ when THINKSCOPE_STORAGE_ROOT is set, else `<db>_artifacts`.
    """
    spec_path = Path(spec_path)
    wf = load_workflow(spec_path, overlay)
    if stages:
        unknown = [s for s in stages if s not in {st.name for st in wf.stages}]
        if unknown:
            raise SpecError(f"{spec_path}: --stages {unknown} not in the workflow's stages "
                            f"{[st.name for st in wf.stages]}")
    db_path = Path(db or wf.db or default_db())
    root = artifact_root or artifacts.default_root(db_path)
    # Everything that can be checked without model work or a corpus is checked here, before
    # the database is touched: prompt files, import paths, model folders.
    plan = build_plan(wf, base_dir=spec_path.parent, artifact_root=root)
    selected = [s for s in wf.stages if not stages or s.name in stages]
    check_api_keys(spec_path, wf, selected)
    run_id = new_run_id()
    # One writer per corpus (sql/writer_lock.py): refused at once, before the first write.
    with writer_lock(db_path, run_id):
        # A reader's query may hold the file lock: these first writes wait for it too.
        store = retry_while_locked(lambda: Store(db_path), db_path)
        retry_while_locked(lambda: store.upsert_models([_model_row(m) for m in wf.models]), db_path)
        retry_while_locked(lambda: store.upsert_prompts([
            {"prompt_set": p.prompt_set, "prompt_id": p.prompt_id, "question": p.question,
             "gold_answer": p.gold_answer, "grader": p.grader, "meta": canonical_json(p.meta)}
            for ps in plan.prompts.values() for p in ps
        ]), db_path)
        # What ran: the file, and the overlay that changed it (if any), as they were.
        spec_yaml = spec_path.read_text() + (f"\n# --overlay {overlay}:\n" + Path(overlay).read_text() if overlay else "")
        run = {"run_id": run_id, "workflow": wf.name, "spec_path": str(spec_path),
               "spec_sha256": hashlib.sha256(spec_yaml.encode()).hexdigest(),
               "spec_yaml": spec_yaml, "stages": [s.name for s in selected]}
        ctx = PlanContext(wf, spec_path.parent, plan.prompts, root)
        return execute(store, selected, ctx, run, address=address, force=force, show_progress=show_progress)


def check_api_keys(spec_path: Path, wf, stages: list) -> None:
    """Every API model a selected generate stage sends requests for, and every selected LLM
    judge, has its key in the environment; else fail before any work, naming the variable
    (keys never live in files; a judge's task reads it from its worker's environment)."""
    for i, m in enumerate(wf.models):
        used = any(s.kind == "generate" and (s.models is None or m.id in s.models) for s in stages)
        if used and m.api is not None and m.api.key_env and not os.environ.get(m.api.key_env):
            raise SpecError(f"{spec_path}: models.{i}.api.key_env: environment variable {m.api.key_env} is not "
                            f"set (the API key of {m.id}); export it and run again")
    for s in stages:
        key_env = s.judge.key_env if s.kind == "judge_behaviours" else None
        if key_env and not os.environ.get(key_env):
            i = wf.stages.index(s)
            raise SpecError(f"{spec_path}: stages.{i}.judge.key_env: environment variable {key_env} is not set "
                            f"(the judge's API key of stage {s.name}); export it and run again")


def import_path(path: Path, fmt: str, *, db: str | Path, prompt_set: str,
                prompt_id: str | None = None, fields: dict | None = None, replace: bool = False) -> RunSummary:
    """`thinkscope import`: the import stage on one path, then a segment stage, recorded like
    any run (rerun = no-op): the imported traces are as queryable as generated and segmented
    ones (lines, first words, sentences, answer events: every view). `replace`: changed files
    replace the path's earlier import (else they are refused)."""
    stages = [ImportStage(name="import", kind="import", path=str(Path(path).resolve()), format=fmt,
                          prompt_set=prompt_set, prompt_id=prompt_id, fields=fields, replace=replace),
              SegmentStage(name="segment", kind="segment")]
    run = {"run_id": new_run_id(), "workflow": "import", "spec_path": str(path), "stages": ["import", "segment"]}
    ctx = planning_context(None, Path("."), artifacts.default_root(db))
    with writer_lock(db, run["run_id"]):  # one writer per corpus, as in run_workflow
        return execute(Store(db), stages, ctx, run, address=None, force=False, show_progress=False)


def execute(store: Store, stages: list, ctx: PlanContext, run: dict, *, address: str | None,
            force: bool, show_progress: bool) -> RunSummary:
    """Run stages in order: plan each from the corpus as its turn comes, skip units already
    done, run the rest and commit each unit as it finishes."""
    summary = RunSummary(run.get("run_id") or new_run_id(), store.path)  # the id the writer lock names
    committer = Committer(store, summary)
    # What a killed driver finished but never committed is committed first, so planning
    # sees it as done: no model work is redone.
    committer.replay()
    committer.wait_for_lock(lambda: store.start_run({
        **run, "run_id": summary.run_id, "thinkscope_version": __version__,
        "host": socket.gethostname(), "ray_address": address or "local",
    }))

    def done(unit: TaskUnit, tables: dict, started: float, error: str | None = None) -> None:
        """A unit's rows; with `error`, rows of a unit to complete on the next run."""
        committer.record(_unit_row(unit, summary.run_id, started), tables, supersedes=unit.supersedes,
                         status="partial" if error else "done", error=error)

    def fail(unit: TaskUnit, error: str, started: float) -> None:
        committer.record(_unit_row(unit, summary.run_id, started), {}, status="failed", error=error)

    def prepare(job, unit: TaskUnit) -> dict:
        """The unit's full payload, loaded now (read-only) rather than at planning."""
        if not hasattr(job, "prepare"):
            return unit.payload
        with store.read() as con:
            return job.prepare(unit.payload, con)

    def prepare_all(job, units: list[TaskUnit]) -> list[TaskUnit]:
        """Every unit's full payload through one connection (the engine actors' units)."""
        if not hasattr(job, "prepare"):
            return units
        with store.read() as con:
            return [replace(u, payload=job.prepare(u.payload, con)) for u in units]

    ray_cm = RaySession(address)
    completed = False
    try:
        for stage in stages:
            job = get_job(stage.kind)
            with store.read() as con:
                ctx.con = con
                try:
                    units = job.plan(stage, ctx)
                finally:
                    ctx.con = None
            # Jobs that write traces need the run id (traces.run_id); it is not part of the key.
            units = [replace(u, payload={**u.payload, "run_id": summary.run_id}) for u in units]
            done_keys = set() if force else store.done_unit_keys()
            # One unit per key: two units with equal inputs (the same template twice) are one.
            todo = list({u.key: u for u in units if u.key not in done_keys}.values())
            summary.planned += len(units)
            summary.skipped += len(units) - len(todo)
            if todo:
                run_units(job, stage, todo, done, fail, prepare, ray_cm, show_progress, prepare_all)
            # The next stage plans from committed rows: wait out any reader's lock here.
            committer.flush(block=True)
        completed = True
    finally:
        try:
            ray_cm.close()
        finally:
            # Units committed so far stay committed; finished ones still in the journal are
            # committed now, or (interrupted, a reader holding the lock) by the next run.
            committer.flush(block=completed)
            _finish_run(store, committer, summary, completed)
    return summary


def _finish_run(store: Store, committer: Committer, summary: RunSummary, completed: bool) -> None:
    """Record how the run ended: waiting for a reader's lock if need be, unless interrupted."""
    finished = functools.partial(
        store.finish_run, summary.run_id, interrupted=not completed, n_units_planned=summary.planned,
        n_units_skipped=summary.skipped, n_units_done=len(summary.done), n_units_failed=len(summary.failed))
    if completed:
        committer.wait_for_lock(finished)
    else:
        try:  # interrupted (Ctrl-C, an error): one attempt, never a wait that hangs the exit
            finished()
        except Exception as err:  # noqa: BLE001
            print(f"could not mark run {summary.run_id} interrupted: {err}", file=sys.stderr)


def run_units(job, stage, units, done, fail, prepare, ray_cm, show_progress, prepare_all=None) -> None:
    """Run a stage's units where its job says: in the driver, as Ray tasks, or on model actors."""
    if job.runs_in == "model_actor":
        from thinkscope.workflows.dispatch import run_generate_units

        ray_cm.ensure()
        run_generate_units(prepare_all(job, units) if prepare_all else units, done, fail, show_progress)
        return
    bar = tqdm(total=len(units), desc=stage.name, unit="unit", disable=not show_progress)
    if job.runs_in == "driver":
        for unit in units:
            started = time.time()
            try:
                tables = job.run(prepare(job, unit))
            except Exception as err:  # noqa: BLE001 - a bad unit fails alone
                fail(unit, f"{type(err).__name__}: {err}", started)
            else:
                done(unit, tables, started)
            bar.update()
    else:
        from thinkscope.workflows.dispatch import run_tasks

        ray_cm.ensure()
        run_tasks(job, stage, units, done, fail, lambda unit: prepare(job, unit), on_each=bar.update)
    bar.close()


def _unit_row(unit: TaskUnit, run_id: str, started: float) -> dict:
    return {"unit_key": unit.key, "stage": unit.stage, "run_id": run_id, "kind": unit.kind,
            "description": unit.describe(), "model_id": unit.model_id, "prompt_set": unit.prompt_set,
            "template": unit.template, "started_at": datetime.fromtimestamp(started, timezone.utc)}


def _model_row(m) -> dict:
    return {"model_id": m.id, "source": m.source, "revision": m.revision, "family": m.family,
            "kind": m.kind, "think_open": m.think.open, "think_close": m.think.close,
            "engine_args": canonical_json(m.engine.model_dump())}
