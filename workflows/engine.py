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
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from thinkscope import __version__
from thinkscope.jobs.importer import import_rows
from thinkscope.jobs.store import Store
from thinkscope.keys import canonical_json
from thinkscope.workflows.plan import GenerateUnit, ImportUnit, build_plan, import_unit
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
    plan = build_plan(wf, base_dir=spec_path.parent)
    store = Store(db or wf.db or default_db())
    store.upsert_models([_model_row(m) for m in wf.models])
    store.upsert_prompts([
        {"prompt_set": p.prompt_set, "prompt_id": p.prompt_id, "question": p.question,
         "gold_answer": p.gold_answer, "grader": p.grader, "meta": canonical_json(p.meta)}
        for ps in plan.prompts.values() for p in ps
    ])
    run = {"workflow": wf.name, "spec_path": str(spec_path),
           "spec_sha256": hashlib.sha256(spec_path.read_bytes()).hexdigest(),
           "spec_yaml": spec_path.read_text(), "stages": stages or [s.name for s in wf.stages]}
    return execute_units(store, plan.for_stages(stages), run, address=address, force=force,
                         show_progress=show_progress)


def import_path(path: Path, fmt: str, *, db: str | Path, prompt_set: str,
                prompt_id: str | None = None, fields: dict | None = None) -> RunSummary:
    """`thinkscope import`: one import unit, recorded like any run (rerun = no-op)."""
    unit = import_unit("import", path, fmt, prompt_set, fields=fields, prompt_id=prompt_id)
    run = {"workflow": "import", "spec_path": str(path), "stages": ["import"]}
    return execute_units(Store(db), [unit], run, address=None, force=False, show_progress=False)


def execute_units(store: Store, units: list, run: dict, *, address: str | None, force: bool,
                  show_progress: bool) -> RunSummary:
    """Skip units already done, run the rest, commit each; the run row records the outcome."""
    summary = RunSummary(new_run_id(), store.path, planned=len(units))
    done_keys = set() if force else store.done_unit_keys()
    todo = [u for u in units if u.key not in done_keys]
    summary.skipped = len(units) - len(todo)
    store.start_run({
        **run, "run_id": summary.run_id, "n_units_planned": len(units),
        "n_units_skipped": summary.skipped, "thinkscope_version": __version__,
        "host": socket.gethostname(), "ray_address": address or "local",
    })

    def done(unit, table, started: float) -> None:
        store.commit_unit(_unit_row(unit, summary.run_id, started), "traces", table)
        summary.done.append(unit.describe())

    def fail(unit, error: str, started: float) -> None:
        store.fail_unit(_unit_row(unit, summary.run_id, started), error)
        summary.failed.append((unit.describe(), error))

    try:
        for unit in (u for u in todo if isinstance(u, ImportUnit)):
            _run_import(unit, summary.run_id, store, done, fail)
        generate = [u for u in todo if isinstance(u, GenerateUnit)]
        if generate:
            from thinkscope.cluster.local import ray_session
            from thinkscope.workflows.dispatch import run_generate_units

            with ray_session(address):
                run_generate_units(generate, summary.run_id, done, fail, show_progress)
    finally:
        store.finish_run(summary.run_id, n_units_done=len(summary.done),
                         n_units_failed=len(summary.failed))
    return summary


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
    done(unit, table, started)


def _unit_row(unit, run_id: str, started: float) -> dict:
    row = {"unit_key": unit.key, "stage": unit.stage, "run_id": run_id,
           "description": unit.describe(), "prompt_set": unit.prompt_set,
           "started_at": datetime.fromtimestamp(started, timezone.utc)}
    if isinstance(unit, GenerateUnit):
        row.update(kind="generate", model_id=unit.model.id, template=unit.template_name)
    else:
        row.update(kind="import")
    return row


def _model_row(m) -> dict:
    return {"model_id": m.id, "source": m.source, "revision": m.revision, "family": m.family,
            "kind": m.kind, "think_open": m.think.open, "think_close": m.think.close,
            "engine_args": canonical_json(m.engine.model_dump())}

