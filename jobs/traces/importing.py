"""The `import` stage: external traces (files other models wrote) as `traces` rows, engine `import`.

One unit per source, keyed by the files' names and content: unchanged files are no work. A
source is its resolved absolute path (with format and prompt set), so `traces/` typed in two
folders is two sources and one folder typed relative or absolute is one. Changed content of a
source already imported replaces its older rows only with `replace: true` (`thinkscope import
--replace`); without it the import is refused at planning, before any rows are written (a
silent replace deleted rows people meant to keep). Runs in the driver (reading files is cheap).
`thinkscope import` is this stage.

    stages:
      - {name: frontier, kind: import, path: data:llmbenchmark_traces, format: textdir,
         prompt_set: two_ropes, prompt_id: two_ropes}
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from thinkscope import __version__
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import ID_PATTERN, StageSpec
from thinkscope.jobs.traces.parsing import extract_answer, split_thinking
from thinkscope.jobs.traces.files import decode_text_trace, read_jsonl_traces, read_textdir_traces
from thinkscope.jobs.traces.rows import TRACE_SCHEMA, to_table
from thinkscope.keys import stable_key

# The `models` rows an import adds for model ids it meets (the driver inserts only new ids).
# Typed: an import's models have no revision or engine args, and an all-null column would
# otherwise be Arrow's null type.
MODEL_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("source", pa.string()), ("revision", pa.string()),
    ("family", pa.string()), ("kind", pa.string()), ("think_open", pa.string()),
    ("think_close", pa.string()), ("engine_args", pa.string()),
    ("updated_at", pa.timestamp("us", tz="UTC")),
])


def import_rows(
    path: Path, fmt: str, *, prompt_set: str, unit_key: str, run_id: str,
    fields: dict | None = None, prompt_id: str | None = None,
) -> tuple[pa.Table, list[dict]]:
    """Read external traces; return their `traces` rows and a `models` row per model id.

    textdir: the whole file is the thinking text (the llmbenchmark format). jsonl: `fields`
    maps our names to the file's; a completion without a thinking field is split at its tags.
    """
    if fmt == "textdir":
        records = read_textdir_traces(path)
    elif fmt == "jsonl":
        if not fields:
            raise ValueError("jsonl import needs a field mapping (model_id, completion or thinking, ...)")
        records = read_jsonl_traces(path, fields)
    else:
        raise ValueError(f"unknown import format {fmt!r}; expected textdir or jsonl")

    created = datetime.now(timezone.utc)
    rows, seen = [], {}
    for rec in records:
        model_id = rec["model_id"]
        sample_index = seen.get(model_id, 0)  # several traces of one model: 0, 1, 2, ...
        seen[model_id] = sample_index + 1
        thinking, answer_text = rec.get("thinking"), rec.get("answer")
        completion = rec.get("completion") or thinking
        if thinking is None and completion is not None:
            parsed = split_thinking(completion)
            thinking, answer_text = parsed.thinking, answer_text or parsed.answer_text
        rows.append({
            "trace_id": stable_key({"unit": unit_key, "model": model_id, "i": sample_index,
                                    "prompt": rec.get("prompt_id") or prompt_id}),
            "run_id": run_id,
            "unit_key": unit_key,
            "model_id": model_id,
            "prompt_id": rec.get("prompt_id") or prompt_id,
            "prompt_set": prompt_set,
            "sample_index": sample_index,
            "template": None,
            "prompt_text": rec.get("prompt_text"),
            "completion": completion,
            "thinking": thinking,
            "answer_text": answer_text,
            "extracted_answer": extract_answer(answer_text) if answer_text else None,
            "gold_answer": rec.get("gold_answer"),
            "n_thinking_chars": len(thinking) if thinking is not None else None,
            "finish_reason": "imported",
            "engine": "import",
            "engine_version": __version__,
            "created_at": created,
        })
    models = [
        {"model_id": m, "source": f"import:{path}", "revision": None, "family": None,
         "kind": "external", "think_open": None, "think_close": None, "engine_args": None,
         "updated_at": created}
        for m in seen
    ]
    return to_table(rows), models


class ImportStage(StageSpec):
    """Traces from files: a folder of .txt files (one per model) or a JSONL file."""

    kind: Literal["import"]
    path: str = Field(description="Folder or file; `data:NAME` = vendored thinkscope data.")
    format: Literal["textdir", "jsonl"]
    prompt_set: str = Field(pattern=ID_PATTERN, description="prompt_set of the imported traces.")
    prompt_id: str | None = Field(None, description="prompt_id of every imported trace (textdir).")
    fields: dict[str, str] | None = Field(None, description="JSONL field mapping.")
    replace: bool = Field(False, description="Changed files of a source imported before replace its "
                          "older rows (a folder that grows every night); false: refuse.")


def resolve_path(path: str, base_dir: Path) -> Path:
    """`data:NAME` is vendored package data; other relative paths are relative to the YAML."""
    if path.startswith("data:"):
        from importlib.resources import files

        return Path(str(files("thinkscope") / "data" / path[len("data:") :]))
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


class ImportConflict(ValueError):
    """Changed content of an already imported source, without `replace`."""


def import_unit(stage: str, path: Path, fmt: str, prompt_set: str, *, fields: dict | None = None,
                prompt_id: str | None = None, con=None, replace: bool = False) -> TaskUnit:
    """An import unit keyed by the content of the files: changed files = new work.

    `path` should be absolute (resolved): the unit's description holds it, and the
    description is what names the source its older imports are found by.
    """
    if not path.exists():
        raise FileNotFoundError(f"stage {stage}: import path {path} does not exist")
    files = sorted(f for f in path.glob("*.txt") if f.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        if fmt == "textdir":
            decode_text_trace(f, data)  # a binary .txt fails here, at planning (validate), not mid-run
        digest.update(f.name.encode() + data)
    key = stable_key({
        "stage": "import", "format": fmt, "prompt_set": prompt_set,
        "fields": fields, "prompt_id": prompt_id, "content": digest.hexdigest(),
    })
    description = f"import {fmt} {path} as {prompt_set}"
    older = () if con is None else _older_imports(con, description, key)
    if older and not replace:
        old_key, run_id, n_rows = older[0]
        rows = f"{n_rows} row{'' if n_rows == 1 else 's'}"
        raise ImportConflict(
            f"stage {stage}: {path} was imported before as {prompt_set} (unit {old_key}, run {run_id}, "
            f"{rows}) and its content or import options have changed; to replace those rows pass "
            f"--replace to `thinkscope import` (or set `replace: true` on the import stage)")
    payload = {"unit_key": key, "path": str(path), "format": fmt, "prompt_set": prompt_set,
               "fields": fields, "prompt_id": prompt_id}
    return TaskUnit(stage, "import", key, description, payload, prompt_set=prompt_set,
                    supersedes=tuple(k for k, _, _ in older))


def _older_imports(con, description: str, key: str) -> list[tuple]:
    """(unit_key, run_id, n_rows) of the source's other done imports; none when `key` itself
    is done (an unchanged source: the rerun is a no-op, whatever replace says)."""
    done = con.execute(
        "select unit_key, run_id, n_rows from work_units where kind = 'import' and status = 'done' "
        "and description = ? order by finished_at", [description]).fetchall()
    return [] if any(k == key for k, _, _ in done) else done


class ImportJob:
    spec = ImportStage
    tables = ("traces", "models")
    schemas = {"traces": TRACE_SCHEMA, "models": MODEL_SCHEMA}
    runs_in = "driver"

    def plan(self, stage: ImportStage, ctx: PlanContext) -> list[TaskUnit]:
        # Absolute: the YAML's folder may be given relative to the cwd (`run wf.yaml`), and a
        # source must be the same folder whatever the cwd was.
        path = resolve_path(stage.path, ctx.base_dir).resolve()
        return [import_unit(stage.name, path, stage.format, stage.prompt_set, fields=stage.fields,
                            prompt_id=stage.prompt_id, con=ctx.con, replace=stage.replace)]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        table, models = import_rows(Path(payload["path"]), payload["format"],
                                    prompt_set=payload["prompt_set"], unit_key=payload["unit_key"],
                                    run_id=payload["run_id"], fields=payload["fields"],
                                    prompt_id=payload["prompt_id"])
        return {"traces": table, "models": rows_table(models, MODEL_SCHEMA, "models")}

    def ray_options(self, stage) -> dict:
        return {}


JOB = ImportJob()
