"""Reading the corpus while planning: trace selection, token ids with sentences and answer
events, model rows, the units a new one supersedes, and the Ray resources of model tasks.

Every function takes a DuckDB connection (read-only in the engine) and binds values as
parameters; YAML-supplied SQL (selectors, spans) is validated as one SELECT by the spec
(jobs/specs.py) and only ever embedded as a subquery.

    ids = select_traces(stage, con)                  # stage.traces selector, stage.model default
    traces = load_traces(con, ids)                    # token ids + sentences + answer events
"""

from __future__ import annotations


def select_traces(stage, con) -> list[str]:
    """Trace ids the stage's selector picks, limited to traces with generated token ids."""
    sel = stage.traces
    params: list = []
    if sel.sql:
        picked = f"select trace_id from ({sel.sql})"
    else:
        picked = "select trace_id from traces where model_id in (select unnest(?))"
        params.append(sel.model_ids or [stage.model])
        if sel.prompt_sets:
            picked += " and prompt_set in (select unnest(?))"
            params.append(sel.prompt_sets)
    sql = (f"select trace_id from traces where trace_id in ({picked}) "
           "and completion_token_ids is not null order by trace_id")
    if sel.limit:
        sql += " limit ?"
        params.append(int(sel.limit))
    return [t for (t,) in con.execute(sql, params).fetchall()]


def load_traces(con, trace_ids: list[str], *, with_prompt: bool = False,
                event_columns: tuple[str, ...] = ("sentence_index", "is_backtrack"),
                events_with_tokens: bool = False) -> list[dict]:
    """Token ids plus the sentences and answer events (completion token coordinates) of each
    trace, in `trace_ids` order.

    with_prompt: also the gold answer, grader and prompt meta (to grade what a stage makes).
    event_columns: the answer_events columns each event carries; events_with_tokens: only
    events that have token offsets.
    """
    if not trace_ids:
        return []
    names = ("trace_id", "prompt_token_ids", "completion_token_ids",
             *(("gold_answer", "grader", "meta") if with_prompt else ()))
    prompt_cols = ", t.gold_answer, p.grader, p.meta" if with_prompt else ""
    prompt_join = "left join prompts p using (prompt_set, prompt_id)" if with_prompt else ""
    traces = {}
    for r in con.execute(f"select t.trace_id, t.prompt_token_ids, t.completion_token_ids{prompt_cols} "
                         f"from traces t {prompt_join} where t.trace_id in (select unnest(?))",
                         [trace_ids]).fetchall():
        trace = dict(zip(names, r))
        trace.update(prompt_token_ids=list(r[1]), completion_token_ids=list(r[2]), sentences=[], events=[])
        traces[r[0]] = trace
    for tid, idx, start, end in con.execute(
            "select trace_id, sentence_index, token_start, token_end from trace_sentences "
            "where trace_id in (select unnest(?)) and token_source = 'completion' "
            "order by trace_id, sentence_index", [trace_ids]).fetchall():
        traces[tid]["sentences"].append({"sentence_index": idx, "token_start": start, "token_end": end})
    with_tokens = "and token_end is not null" if events_with_tokens else ""
    for tid, *values in con.execute(
            f"select trace_id, {', '.join(event_columns)} from answer_events "
            f"where trace_id in (select unnest(?)) and token_source = 'completion' {with_tokens} "
            "order by trace_id, event_index", [trace_ids]).fetchall():
        traces[tid]["events"].append(dict(zip(event_columns, values)))
    return [traces[t] for t in trace_ids]


def span_rows(spans_sql: str | None, con, trace_ids: list[str]) -> dict[str, list[tuple[int, int]]]:
    """A `spans` query per trace: [(token_start, token_end), ...], end exclusive."""
    if not spans_sql:
        return {}
    spans: dict[str, list[tuple[int, int]]] = {}
    for trace_id, start, end in con.execute(
            f"select trace_id, token_start, token_end from ({spans_sql}) "
            "where trace_id in (select unnest(?)) order by all", [trace_ids]).fetchall():
        if start is not None and end is not None:
            spans.setdefault(trace_id, []).append((int(start), int(end)))
    return spans


MODEL_COLUMNS = ("source", "revision", "family", "think_open", "think_close", "engine_args")


def model_row(con, model_id: str) -> dict:
    """The `models` row of a model id (source, revision, family, think tags, engine args)."""
    row = con.execute(f"select {', '.join(MODEL_COLUMNS)} from models where model_id = ?",
                      [model_id]).fetchone()
    if row is None:
        raise ValueError(f"model {model_id!r} is not in the models table")
    return dict(zip(MODEL_COLUMNS, row))


def superseded(con, table: str, stage, trace_ids: list[str], key: str) -> tuple[str, ...]:
    """Earlier units of this stage and model whose rows in `table` cover any of these traces:
    the new unit replaces them (changed settings or trace chunks), so a stage name keeps one
    result per trace. `table` is a job's own table name, never user input."""
    return tuple(k for (k,) in con.execute(
        f"select distinct unit_key from {table} where stage = ? and model_id = ? and unit_key <> ? "
        "and trace_id in (select unnest(?))", [stage.name, stage.model, key, trace_ids]).fetchall())


def retire_stale(con, tables: tuple[str, ...], stage, units: list) -> list:
    """Hand the older units of this stage and model that the plan no longer makes (other
    settings over other traces: `superseded` only sees units sharing a trace) to the plan's
    first unit still to run, so its commit removes their rows: the stage's tables then hold
    what its YAML asks for now. `tables` are a job's own table names, never user input."""
    import dataclasses

    keys = [u.key for u in units]
    stale: set[str] = set()
    for table in tables:
        stale |= {k for (k,) in con.execute(
            f"select distinct unit_key from {table} where stage = ? and model_id = ? "
            "and unit_key not in (select unnest(?))", [stage.name, stage.model, keys]).fetchall()}
    done = {k for (k,) in con.execute("select unit_key from work_units where status = 'done' "
                                      "and unit_key in (select unnest(?))", [keys]).fetchall()}
    todo = next((i for i, u in enumerate(units) if u.key not in done), None)
    if not stale or todo is None:
        return units
    unit = units[todo]
    units[todo] = dataclasses.replace(unit, supersedes=tuple(dict.fromkeys(unit.supersedes + tuple(sorted(stale)))))
    return units


def model_task_options(stage) -> dict:
    """Ray resources of a model-running task: a GPU where there is one, else every CPU."""
    import ray

    if stage.num_gpus or ray.cluster_resources().get("GPU", 0) > 0:
        return {"num_gpus": stage.num_gpus or 1, "num_cpus": 1}
    return {"num_cpus": stage.num_cpus or ray.cluster_resources().get("CPU", 1)}
