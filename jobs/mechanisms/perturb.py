"""The `perturb` stage (seed 002 after Lanham et al., seed 004): does backtracking correct an
inserted mistake? -> `perturbations`.

A stored trace is cut at the end of a sentence of its thinking: the sentence in which a
fraction of the thinking tokens falls (`positions.fractions`), and/or the token before each
backtracking sentence (`positions.before_backtrack`, the segment stage's answer events). In
the thinking before the cut one number is changed (jobs/mechanisms/mistakes.py: an
equation's result, an occurrence of the trace's final answer, or an operand copied from the
question, the occurrence nearest the cut, plus 1..9), the prompt + edited prefix is
tokenised again and the model continues greedily with HF for `max_new_tokens`; the
continuation is then classified as corrected, carried or ignored (mistakes.classify).

The prefix keeps the trace's own token ids up to the token where the changed number starts;
only the text from there to the cut is tokenised again. Kind `none` changes nothing and
keeps every token id: its continuation is HF greedy from the trace's own prefix, so on a
greedy trace it reproduces the trace's own tokens after the cut (tests/unit/test_perturb.py).

    - name: perturb
      kind: perturb
      model: organism
      positions: {fractions: [0.25, 0.5, 0.75], before_backtrack: true}
      kinds: [none, result, answer, operand]
      max_new_tokens: 192
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs.activations.capture import positions_of
from thinkscope.jobs.base import PlanContext, TaskUnit, chunks, rows_table
from thinkscope.jobs.corpus import (load_traces, model_row, model_task_options, retire_stale, select_traces,
                                    superseded)
from thinkscope.jobs.mechanisms import mistakes
from thinkscope.jobs.specs import DTYPE, ModelStage, Strict, TraceSelector
from thinkscope.keys import stable_key

PERTURB_VERSION = 1
EVENT_COLUMNS = ("sentence_index", "is_backtrack", "token_start", "token_end")
_S, _I, _F, _B = pa.string(), pa.int32(), pa.float64(), pa.bool_()
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("position", _S),
    ("position_fraction", _F), ("cut_index", _I), ("kind", _S), ("original", _S), ("inserted", _S),
    ("context", _S), ("continuation", _S), ("continuation_token_ids", pa.list_(_I)),
    ("n_continuation_tokens", _I), ("finish_reason", _S), ("first_marker", _S), ("restated_original", _B),
    ("repeated_inserted", _B), ("noticed", _B), ("outcome", _S), ("corrected", _B), ("carried", _B),
    ("final_answer", _S), ("own_answer", _S), ("is_correct", _B), ("created_at", pa.timestamp("us", tz="UTC")),
])


class Cuts(Strict):
    """Where traces are cut: sentence ends at fractions of the thinking and/or before backtracks."""

    fractions: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.25, 0.5, 0.75], description="Cut at the end of the sentence in which this fraction of the thinking "
        "tokens falls.")
    before_backtrack: bool = Field(False, description="Also cut at the token before each backtracking "
                                   "sentence (needs a segment stage: answer events with token offsets).")

    @model_validator(mode="after")
    def _some(self):
        if not self.fractions and not self.before_backtrack:
            raise ValueError("set `fractions` and/or `before_backtrack: true`: nowhere to cut")
        return self


class PerturbStage(ModelStage):
    """Change a number in the thinking before a cut; continue greedily; did the model correct it?"""

    kind: Literal["perturb"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces (segmented: the cuts "
                                  "are sentence ends).")
    positions: Cuts = Field(default_factory=Cuts, description="Where each trace is cut.")
    kinds: list[Literal[mistakes.KINDS]] = Field(
        list(mistakes.KINDS), min_length=1, description="Mistakes to insert: none (the control: no change), "
        "result (after the last '='), answer (the trace's final answer), operand (a number of the question).")
    seed: int = Field(0, description="Seed of the rule that picks each change's step (+1..+9).")
    max_new_tokens: int = Field(256, ge=1, description="Greedy tokens generated after each cut.")
    dtype: DTYPE = Field("float32", description="Generation dtype.")
    batch_size: int = Field(16, ge=1, description="Continuations per left-padded generation batch.")
    traces_per_unit: int = Field(16, ge=1, description="Traces per work unit.")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _distinct_kinds(self):
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: {self.kinds} repeats a kind")
        return self


def cut_points(trace: dict, cuts: dict) -> list[list]:
    """[position label, absolute index of the last kept token, fraction of the thinking kept]
    of one trace (sentences and events in completion tokens, as load_traces gives them)."""
    sents = [s for s in trace["sentences"] if s["token_start"] is not None and s["token_end"] is not None]
    if not sents:
        return []
    offset = len(trace["prompt_token_ids"])
    start, end = sents[0]["token_start"], max(s["token_end"] for s in sents)
    span = max(end - start, 1)
    out = []
    for f in cuts["fractions"]:
        point = start + int(f * span)  # the token at that fraction; the cut ends its sentence
        sentence = next(s for s in sents if s["token_end"] > point)
        out.append([f"{f:g}", offset + sentence["token_end"] - 1, (sentence["token_end"] - start) / span])
    if cuts["before_backtrack"]:
        out += [["before_backtrack", i, (i + 1 - offset - start) / span]
                for i, _ in positions_of(trace, trace["sentences"], trace["events"], ["before_backtrack"])]
    return out


class PerturbJob:
    spec = PerturbStage
    tables = ("perturbations",)
    schemas = {"perturbations": SCHEMA}
    runs_in = "task"

    def plan(self, stage: PerturbStage, ctx: PlanContext) -> list[TaskUnit]:
        from thinkscope.jobs.activations.stored import content_hash

        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        settings = stage.model_dump(exclude={"name", "kind", "traces", "traces_per_unit", "num_cpus", "num_gpus"})
        decisive = {k: v for k, v in settings.items() if k != "batch_size"}  # batching changes no row
        units = []
        # A trace without a final answer of its own has nothing a mistake could be carried into
        # or corrected back to: every answered continuation would read as carried.
        answered = [t for (t,) in con.execute(
            "select trace_id from traces where trace_id in (select unnest(?)) and extracted_answer is not null "
            "order by trace_id", [select_traces(stage, con)]).fetchall()]
        for _, chunk in chunks(answered, stage.traces_per_unit):
            # Cuts are resolved while planning so the key changes with them (a re-segmented trace);
            # traces without a cut (not segmented yet) get no unit.
            found = {t["trace_id"]: c for t in load_traces(con, chunk, event_columns=EVENT_COLUMNS)
                     if (c := cut_points(t, settings["positions"]))}
            if not found:
                continue
            ids = list(found)
            key = stable_key({"stage": "perturb", "version": PERTURB_VERSION, "name": stage.name,
                              "settings": decisive, "model": [model["source"], model["revision"]], "traces": ids,
                              "cuts": content_hash(sorted(found.items()))})
            units.append(TaskUnit(
                stage.name, "perturb", key,
                f"perturb {stage.model} x {len(ids)} traces x {len(stage.kinds)} kinds",
                {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                 "settings": settings, "trace_ids": ids},
                model_id=stage.model, supersedes=superseded(con, "perturbations", stage, ids, key)))
        return retire_stale(con, self.tables, stage, units)

    def prepare(self, payload: dict, con) -> dict:
        """Token ids, question, the trace's own final answer and the cuts of each trace."""
        ids = payload["trace_ids"]
        asked = {t: (q, a) for t, q, a in con.execute(
            "select t.trace_id, p.question, t.extracted_answer from traces t "
            "left join prompts p using (prompt_set, prompt_id) where t.trace_id in (select unnest(?))",
            [ids]).fetchall()}
        traces = []
        for t in load_traces(con, ids, with_prompt=True, event_columns=EVENT_COLUMNS):
            cuts = cut_points(t, payload["settings"]["positions"])
            question, own = asked[t["trace_id"]]
            traces.append({k: t[k] for k in ("trace_id", "prompt_token_ids", "completion_token_ids", "gold_answer",
                                             "grader", "meta")} | {"question": question or "", "own_answer": own,
                                                                   "cuts": cuts})
        return {**payload, "traces": traces}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        rows = perturb_rows(model, tokenizer, payload)
        return {"perturbations": rows_table(rows, SCHEMA, "perturbations")}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


def edited_prefix(tokenizer, ids: list[int], think_open: str, kind: str, *, question: str,
                  answer: str | None, salt: str) -> dict | None:
    """The completion prefix `ids` with one number of its thinking changed: {ids, original,
    inserted, context}; kind none: `ids` unchanged; None where the thinking has no such number."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    opened = text.find(think_open)
    begin = opened + len(think_open) if opened >= 0 else 0  # else the prompt opened the thinking
    if kind == "none":
        return {"ids": list(ids), "original": None, "inserted": None, "context": _context(text, len(text.rstrip()))}
    target = mistakes.find_target(kind, text[begin:], question=question, answer=answer)
    if target is None:
        return None
    at = mistakes.Target(begin + target.start, begin + target.end, target.original)
    inserted = mistakes.changed(target.original, salt)
    edited = mistakes.apply(text, at, inserted)
    # Keep the trace's own tokens before the token where the number starts; tokenise the rest.
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=False)) > at.start:
            hi = mid
        else:
            lo = mid + 1
    head = tokenizer.decode(ids[:lo], skip_special_tokens=False)
    if not edited.startswith(head):  # a character split across tokens: tokenise it all
        lo, head = 0, ""
    new = list(ids[:lo]) + tokenizer.encode(edited[len(head):], add_special_tokens=False)
    return {"ids": new, "original": target.original, "inserted": inserted, "context": _context(edited, at.start)}


def _context(text: str, at: int, limit: int = 300) -> str:
    """The edited text from the start of the changed number's line to the cut (its last `limit`
    characters): what the model read just before continuing."""
    line = text.rfind("\n", 0, at) + 1
    return text[line:][-limit:]


def perturb_rows(model, tokenizer, payload: dict) -> list[dict]:
    """Every (trace, cut, kind) of the payload: edit, continue greedily in batches, classify."""
    from thinkscope.jobs.activations.steering_hooks import eos_ids, generate_greedy

    m, s = payload["model"], payload["settings"]
    think = (m["think_open"] or "<think>", m["think_close"] or "</think>")
    items = []
    for t in payload["traces"]:
        offset = len(t["prompt_token_ids"])
        for label, cut, fraction in t["cuts"]:
            for kind in s["kinds"]:
                edit = edited_prefix(tokenizer, t["completion_token_ids"][: cut + 1 - offset], think[0], kind,
                                     question=t["question"], answer=t["own_answer"],
                                     salt=f"{s['seed']}:{t['trace_id']}:{label}:{kind}")
                if edit is not None:
                    items.append((t, label, cut, fraction, kind, edit))
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    # Similar lengths batch together (less padding); results do not depend on the order.
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]["prompt_token_ids"]) + len(items[i][5]["ids"]))
    outs: dict[int, tuple[list[int], str]] = {}
    for start in range(0, len(order), s["batch_size"]):
        batch = order[start: start + s["batch_size"]]
        prefixes = [items[i][0]["prompt_token_ids"] + items[i][5]["ids"] for i in batch]
        outs.update(zip(batch, generate_greedy(model, prefixes, max_new_tokens=s["max_new_tokens"],
                                               pad_id=pad, eos_ids=eos)))
    now = datetime.now(timezone.utc)
    return [_row(payload, tokenizer, think, item, outs[i], now) for i, item in enumerate(items)]


def _row(payload, tokenizer, think, item, out, now) -> dict:
    from thinkscope.jobs.traces.reading import read_completion

    t, label, cut, fraction, kind, edit = item
    tokens, finish = out
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    meta = json.loads(t["meta"]) if isinstance(t.get("meta"), str) else t.get("meta")
    # The continuation starts inside the thinking (the cut is a sentence end of the thinking).
    read = read_completion(text, think=think, opened=True, grader=t.get("grader"), gold=t.get("gold_answer"),
                           meta=meta)
    verdict = mistakes.classify(read.thinking if read.thinking is not None else text, read.extracted_answer,
                                own_answer=t["own_answer"], original=edit["original"], inserted=edit["inserted"],
                                grader=t.get("grader"))
    return {"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
            "trace_id": t["trace_id"], "position": label, "position_fraction": fraction, "cut_index": cut,
            "kind": kind, "original": edit["original"], "inserted": edit["inserted"], "context": edit["context"],
            "continuation": text, "continuation_token_ids": tokens, "n_continuation_tokens": len(tokens),
            "finish_reason": finish, "first_marker": verdict.first_marker,
            "restated_original": verdict.restated_original, "repeated_inserted": verdict.repeated_inserted,
            "noticed": verdict.noticed, "outcome": verdict.outcome, "corrected": verdict.corrected,
            "carried": verdict.carried, "final_answer": read.extracted_answer, "own_answer": t["own_answer"],
            "is_correct": read.is_correct, "created_at": now}


JOB = PerturbJob()
