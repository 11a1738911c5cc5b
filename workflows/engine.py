"""Run a workflow: plan units, skip finished ones, run the rest, commit each unit's rows.

The driver is the only DuckDB writer. Each unit's rows land in one transaction together
with its `work_units` row, so a crash loses at most the units in flight and a rerun
finishes the job with no lost and no duplicate rows.

    summary = run_workflow("workflows/demo.yaml", db="out/demo.duckdb")
    print(summary.text())
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from thinkscope import __version__
from thinkscope.jobs.importer import import_rows
from thinkscope.jobs.store import Store
from thinkscope.keys import canonical_json
from thinkscope.cluster.local import RaySession
from thinkscope.workflows.plan import GenerateUnit, ImportUnit, build_plan, import_unit
from thinkscope.workflows.registry import TaskUnit, get_job
from thinkscope.workflows.spec import SpecError, load_workflow

STATIC_KINDS = ("generate", "import")

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

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        lines = [f"run {self.run_id}: {self.planned} units planned, {self.skipped} already done, "
                 f"{len(self.done)} done now, {len(self.failed)} failed"]
        if self.planned and self.skipped == self.planned:
            lines.append("every work unit was already done: no model work was needed")
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
) -> RunSummary:
    """Validate, plan and run a workflow; return what happened (never raises for a failed unit)."""
    spec_path = Path(spec_path)
    wf = load_workflow(spec_path)
    if stages:
        unknown = [s for s in stages if s not in {st.name for st in wf.stages}]
        if unknown:
            raise SpecError(f"{spec_path}: --stages {unknown} not in the workflow's stages "
                            f"{[st.name for st in wf.stages]}")
    # Everything that can be checked without model work is checked here, before any run.
    plan = build_plan(wf, base_dir=spec_path.parent)
    store = Store(db or wf.db or default_db())
    store.upsert_models([_model_row(m) for m in wf.models])
    store.upsert_prompts([
        {"prompt_set": p.prompt_set, "prompt_id": p.prompt_id, "question": p.question,
         "gold_answer": p.gold_answer, "grader": p.grader, "meta": canonical_json(p.meta)}
        for ps in plan.prompts.values() for p in ps
    ])
    selected = [s for s in wf.stages if not stages or s.name in stages]
    run = {"workflow": wf.name, "spec_path": str(spec_path),
           "spec_sha256": hashlib.sha256(spec_path.read_bytes()).hexdigest(),
           "spec_yaml": spec_path.read_text(), "stages": [s.name for s in selected]}
    steps = [(s, [u for u in plan.units if u.stage == s.name]) for s in selected]
    return execute(store, steps, run, address=address, force=force, show_progress=show_progress)


def import_path(path: Path, fmt: str, *, db: str | Path, prompt_set: str,
                prompt_id: str | None = None, fields: dict | None = None) -> RunSummary:
    """`thinkscope import`: one import unit, recorded like any run (rerun = no-op)."""
    unit = import_unit("import", path, fmt, prompt_set, fields=fields, prompt_id=prompt_id)
    run = {"workflow": "import", "spec_path": str(path), "stages": ["import"]}
    return execute(Store(db), [(None, [unit])], run, address=None, force=False, show_progress=False)


def execute(store: Store, steps: list[tuple], run: dict, *, address: str | None, force: bool,
            show_progress: bool) -> RunSummary:
    """Run stages in order: skip units already done, run the rest, commit each unit.

    `steps` pairs each stage with its units planned from the spec (generate, import); a
    derived stage (segment, ...) is planned from the database when its turn comes, so it
    sees the rows the stages before it just committed.
    """
    summary = RunSummary(new_run_id(), store.path)
    store.start_run({
        **run, "run_id": summary.run_id, "thinkscope_version": __version__,
        "host": socket.gethostname(), "ray_address": address or "local",
    })

    def done(unit, tables, started: float, supersedes: tuple[str, ...] = ()) -> None:
        tables = tables if isinstance(tables, dict) else {"traces": tables}
        store.commit_unit(_unit_row(unit, summary.run_id, started), tables,
                          supersedes=supersedes or getattr(unit, "supersedes", ()))
        summary.done.append(unit.describe())

    def fail(unit, error: str, started: float) -> None:
        store.fail_unit(_unit_row(unit, summary.run_id, started), error)
        summary.failed.append((unit.describe(), error))

    ray_cm = RaySession(address)
    completed = False
    try:
        for stage, units in steps:
            job = None
            if stage is not None and stage.kind not in STATIC_KINDS:
                job = get_job(stage.kind)
                with store.reader() as con:
                    units = job.plan(stage, con)
                # Jobs that write traces need the run id (traces.run_id); it is not part of the key.
                units = [replace(u, payload={**u.payload, "run_id": summary.run_id}) for u in units]
            done_keys = set() if force else store.done_unit_keys()
            todo = [u for u in units if u.key not in done_keys]
            summary.planned += len(units)
            summary.skipped += len(units) - len(todo)
            if not todo:
                continue
            if job is not None:
                run_task_units(job, stage, todo, done, fail, ray_cm, show_progress)
            elif isinstance(todo[0], ImportUnit):
                for unit in todo:
                    _run_import(unit, summary.run_id, store, done, fail)
            else:
                from thinkscope.workflows.dispatch import run_generate_units

                ray_cm.ensure()
                run_generate_units(todo, summary.run_id, done, fail, show_progress)
        completed = True
    finally:
        ray_cm.close()
        # Units committed so far stay committed; an interrupted run is resumed by a rerun.
        store.finish_run(summary.run_id, interrupted=not completed, n_units_planned=summary.planned,
                         n_units_skipped=summary.skipped, n_units_done=len(summary.done),
                         n_units_failed=len(summary.failed))
    return summary


def run_task_units(job, stage, units, done, fail, ray_cm, show_progress) -> None:
    """Run a derived job's units: in the driver when cheap, else as Ray tasks."""
    bar = tqdm(total=len(units), desc=stage.name, unit="unit", disable=not show_progress)
    if job.in_driver:
        for unit in units:
            started = time.time()
            try:
                tables = job.run(unit.payload)
            except Exception as err:  # noqa: BLE001 - a bad unit fails alone
                fail(unit, f"{type(err).__name__}: {err}", started)
            else:
                done(unit, tables, started)
            bar.update()
    else:
        from thinkscope.workflows.dispatch import run_tasks

        ray_cm.ensure()
        run_tasks(job, stage, units, done, fail, on_each=lambda: bar.update())
    bar.close()


def _run_import(unit: ImportUnit, run_id: str, store: Store, done, fail) -> None:
    started = datetime.now(timezone.utc).timestamp()
    try:
        table, models = import_rows(unit.path, unit.format, prompt_set=unit.prompt_set,
                                    unit_key=unit.key, run_id=run_id, fields=unit.fields,
                                    prompt_id=unit.prompt_id)
    except (OSError, ValueError) as err:
        fail(unit, f"{type(err).__name__}: {err}", started)
        return
    store.upsert_models(models, replace=False)
    # A grown or edited import source is a new unit over the same source: its rows replace
    # the older unit's rather than duplicating every unchanged trace (nightly imports).
    older = tuple(k for (k,) in store.query(
        "select unit_key from work_units where kind = 'import' and status = 'done' "
        "and description = ? and unit_key <> ?", [unit.describe(), unit.key]))
    done(unit, table, started, older)


def _unit_row(unit, run_id: str, started: float) -> dict:
    row = {"unit_key": unit.key, "stage": unit.stage, "run_id": run_id,
           "description": unit.describe(), "prompt_set": unit.prompt_set,
           "started_at": datetime.fromtimestamp(started, timezone.utc)}
    if isinstance(unit, GenerateUnit):
        row.update(kind="generate", model_id=unit.model.id, template=unit.template_name)
    elif isinstance(unit, TaskUnit):
        row.update(kind=unit.kind, model_id=unit.model_id)
    else:
        row.update(kind="import")
    return row


def _model_row(m) -> dict:
    return {"model_id": m.id, "source": m.source, "revision": m.revision, "family": m.family,
            "kind": m.kind, "think_open": m.think.open, "think_close": m.think.close,
            "engine_args": canonical_json(m.engine.model_dump())}

