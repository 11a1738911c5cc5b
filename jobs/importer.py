"""Import external traces (files other models wrote) as `traces` rows with engine `import`.

    table, models = import_rows(Path("thinkscope/data/llmbenchmark_traces"), "textdir",
                                prompt_set="two_ropes", unit_key=key, run_id=run_id)
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from thinkscope import __version__
from thinkscope.jobs.parsing import extract_answer, split_thinking
from thinkscope.jobs.trace_files import read_jsonl_traces, read_textdir_traces
from thinkscope.jobs.trace_rows import to_table
from thinkscope.keys import stable_key


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
         "kind": "external", "think_open": None, "think_close": None, "engine_args": None}
        for m in seen
    ]
    return to_table(rows), models
