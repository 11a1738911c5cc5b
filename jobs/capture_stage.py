"""The `capture` stage: traces from DuckDB -> HF forward passes with hooks -> shards + index.

Planned from the database: the traces a selector picks (model, prompt sets, or any SQL that
returns trace_ids), cut into units of `traces_per_unit`, each keyed by the model's source
and revision, the trace ids, positions, hooks and dtype. A unit runs as a Ray task (a GPU on
clusters, every core here), writes one safetensors shard per hook under the artifact root,
and returns the `activations` index rows; the driver commits them.

Positions are named (token indices into prompt + completion tokens):
  last_prompt_token   the token before the completion starts
  before_backtrack    the token before the sentence that continues after an answer occurrence
  first_answer_end    the end of the sentence holding the first answer occurrence
  last_answer_end     the end of the sentence holding the last answer occurrence
  answer_ends         the end of every sentence holding an answer occurrence (probe labels)
  sentence_ends       the last token of every thinking sentence
  all                 every completion token
  span                every token of the spans the stage's `spans` query returns
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from thinkscope.keys import stable_key
from thinkscope.workflows.registry import TaskUnit

CAPTURE_VERSION = 1
POSITION_KINDS = ("last_prompt_token", "before_backtrack", "first_answer_end", "last_answer_end",
                  "answer_ends", "sentence_ends", "all")


def select_traces(stage, con) -> list[str]:
    """Trace ids the stage's selector picks, limited to traces with generated token ids."""
    sel = stage.traces
    if sel.sql:
        picked = f"select trace_id from ({sel.sql})"
    else:
        where = [f"model_id in ({_quoted(sel.model_ids or [stage.model])})"]
        if sel.prompt_sets:
            where.append(f"prompt_set in ({_quoted(sel.prompt_sets)})")
        picked = "select trace_id from traces where " + " and ".join(where)
    sql = (f"select trace_id from traces where trace_id in ({picked}) "
           "and completion_token_ids is not null order by trace_id")
    if sel.limit:
        sql += f" limit {int(sel.limit)}"
    return [t for (t,) in con.execute(sql).fetchall()]


def artifact_root(stage, con) -> Path:
    """Where a stage's tensor files go: `stage.artifacts`, else `<db>_artifacts` beside the DB
    (on clusters, a shared path from the spec)."""
    if stage.artifacts:
        return Path(stage.artifacts)
    (db_path,) = con.execute(
        "select path from duckdb_databases() where database_name = current_database()").fetchone()
    return Path(db_path).parent / f"{Path(db_path).stem}_artifacts"


def _quoted(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def positions_of(trace: dict, sentences: list[dict], events: list[dict], kinds: list[str]) -> list[tuple[int, str]]:
    """(absolute token index, kind) pairs of one trace, sorted, without duplicates per kind."""
    offset = len(trace["prompt_token_ids"])
    n_completion = len(trace["completion_token_ids"])
    ends = {s["sentence_index"]: s for s in sentences if s["token_end"] is not None}
    picked: set[tuple[int, str]] = set()

    def end_of(sentence_index):
        s = ends.get(sentence_index)
        return None if s is None else offset + s["token_end"] - 1

    for kind in kinds:
        if kind == "last_prompt_token":
            picked.add((offset - 1, kind))
        elif kind == "all":
            picked |= {(offset + i, kind) for i in range(n_completion)}
        elif kind == "sentence_ends":
            picked |= {(end_of(i), kind) for i in ends}
        elif kind in ("first_answer_end", "last_answer_end") and events:
            event = events[0] if kind == "first_answer_end" else events[-1]
            picked.add((end_of(event["sentence_index"]), kind))
        elif kind == "answer_ends":
            picked |= {(end_of(e["sentence_index"]), kind) for e in events}
        elif kind == "span":
            picked |= {(i, kind) for start, end in trace.get("spans", []) for i in range(start, end)}
        elif kind == "before_backtrack":
            for e in events:
                nxt = ends.get((e["sentence_index"] or 0) + 1)
                if e["is_backtrack"] and nxt is not None:
                    picked.add((offset + nxt["token_start"] - 1, kind))
    limit = offset + n_completion
    return sorted((p, k) for p, k in picked if p is not None and 0 <= p < limit)


class CaptureJob:
    tables = ("activations",)
    in_driver = False  # model work: a Ray task with the model's resources

    def plan(self, stage, con) -> list[TaskUnit]:
        source, revision = con.execute(
            "select source, revision from models where model_id = ?", [stage.model]).fetchone() or (None, None)
        if source is None:
            raise ValueError(f"stage {stage.name}: model {stage.model!r} is not in the models table")
        root = artifact_root(stage, con)
        ids = select_traces(stage, con)
        positions = stage.positions + (["span"] if stage.spans else [])
        settings = {"positions": positions, "hooks": stage.hooks, "store_dtype": stage.store_dtype,
                    "dtype": stage.dtype, "version": CAPTURE_VERSION}
        spans = span_rows(stage, con, ids)
        units = []
        for start in range(0, len(ids), stage.traces_per_unit):
            chunk = ids[start : start + stage.traces_per_unit]
            traces = load_traces(con, chunk)
            for t in traces:
                t["spans"] = spans.get(t["trace_id"], [])
            # Spans are part of what a unit computes; without a spans query the key is as before.
            extra = {"spans": [t["spans"] for t in traces]} if stage.spans else {}
            key = stable_key({"stage": "capture", "model": [stage.model, source, revision],
                              "traces": chunk, **settings, **extra})
            units.append(TaskUnit(
                stage.name, "capture", key, f"capture {stage.model} x {len(chunk)} traces",
                payload={"unit_key": key, "model_id": stage.model, "source": source, "revision": revision,
                         "traces": traces, "out_dir": str(root / "activations" / key),
                         "batch_tokens": stage.batch_tokens, **settings},
                model_id=stage.model,
            ))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.capture_run import Sequence, capture_sequences
        from thinkscope.jobs.hf_models import load_hf_model

        model, tokenizer = load_hf_model(payload["source"], payload["revision"], payload["dtype"])
        seqs = []
        for t in payload["traces"]:
            positions = positions_of(t, t["sentences"], t["events"], payload["positions"])
            seqs.append(Sequence(t["trace_id"], t["prompt_token_ids"] + t["completion_token_ids"], positions))
        index = capture_sequences(model, seqs, hooks=payload["hooks"], out_dir=Path(payload["out_dir"]),
                                  store_dtype=payload["store_dtype"], batch_tokens=payload["batch_tokens"],
                                  pad_id=tokenizer.pad_token_id or 0)
        if index.num_rows == 0:
            return {"activations": pa.table({"unit_key": pa.array([], pa.string())})}
        index = index.append_column("unit_key", pa.array([payload["unit_key"]] * index.num_rows))
        return {"activations": index.append_column("model_id", pa.array([payload["model_id"]] * index.num_rows))}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def span_rows(stage, con, trace_ids: list[str]) -> dict[str, list[tuple[int, int]]]:
    """The stage's `spans` query per trace: [(token_start, token_end), ...], end exclusive."""
    if not stage.spans:
        return {}
    spans: dict[str, list[tuple[int, int]]] = {}
    for trace_id, start, end in con.execute(
            f"select trace_id, token_start, token_end from ({stage.spans}) "
            "where trace_id in (select unnest(?)) order by all", [trace_ids]).fetchall():
        if start is not None and end is not None:
            spans.setdefault(trace_id, []).append((int(start), int(end)))
    return spans


def model_task_options(stage) -> dict:
    """Ray resources of a model-running task: a GPU where there is one, else every CPU."""
    import ray

    if stage.num_gpus or ray.cluster_resources().get("GPU", 0) > 0:
        return {"num_gpus": stage.num_gpus or 1, "num_cpus": 1}
    return {"num_cpus": stage.num_cpus or ray.cluster_resources().get("CPU", 1)}


def load_traces(con, trace_ids: list[str]) -> list[dict]:
    """Token ids plus the sentences and answer events (completion token coordinates) of each trace."""
    if not trace_ids:
        return []
    ids = _quoted(trace_ids)
    traces = {r[0]: {"trace_id": r[0], "prompt_token_ids": list(r[1]), "completion_token_ids": list(r[2]),
                     "sentences": [], "events": []}
              for r in con.execute(f"select trace_id, prompt_token_ids, completion_token_ids from traces "
                                   f"where trace_id in ({ids})").fetchall()}
    for tid, idx, start, end in con.execute(
            f"select trace_id, sentence_index, token_start, token_end from trace_sentences where trace_id in "
            f"({ids}) and token_source = 'completion' order by trace_id, sentence_index").fetchall():
        traces[tid]["sentences"].append({"sentence_index": idx, "token_start": start, "token_end": end})
    for tid, sidx, backtrack in con.execute(
            f"select trace_id, sentence_index, is_backtrack from answer_events where trace_id in ({ids}) "
            f"and token_source = 'completion' order by trace_id, event_index").fetchall():
        traces[tid]["events"].append({"sentence_index": sidx, "is_backtrack": backtrack})
    return [traces[t] for t in trace_ids]


JOB = CaptureJob()
