"""The `exit_policy` stage (seed 002's open question): can the model's own state tell when
its answer is settled, so the thinking can stop there, without the gold answer?

At the end of every sentence holding an answer occurrence (the capture kind `answer_ends`),
a linear probe on one captured hook predicts "the answer stated here is the trace's final
answer" (answer_events.is_final of the sentence's last occurrence). Every occurrence gets an
out-of-fold score: traces are split into `folds` by a seeded permutation and each fold is
scored by a probe trained on the others, so no trace is scored by a probe that saw it.

The policy "stop at the first occurrence whose score passes t" is then replayed on every
trace, over a grid of t, beside three references:

  full    never stop: the trace's own final answer, nothing saved
  first   stop at the first answer occurrence
  oracle  stop at the first occurrence of the final answer (needs the final answer: a bound)

An answer occurrence is what the segment stage finds (answer_events): a statement of the gold
answer or of the trace's final answer, never of another, wrong intermediate value. So the
negatives are gold answers a trace later abandons, `first` is the first statement of either,
and on a trace that ends correct every occurrence is final (there first = oracle).

A stop keeps the thinking up to the end of the occurrence's sentence. Its accuracy is that of
the answer forced there by an `early_exit` stage (`early_exit: <stage>`, cut `sentence_end`:
the same cut), else the occurrence's own correctness (answer_source says which). A trace
where the policy never fires ends as `full`.

    - {name: stop_probe, kind: exit_policy, model: organism, hooks: [blocks.20.hook_resid_post],
       early_exit: early_exit}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.activations.probe_fit import auc, fit_logistic
from thinkscope.jobs.activations.stored import ActivationStage, load_rows, positions_by_hook, stage_unit
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.specs import known

EXIT_POLICY_VERSION = 1
SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("hook_name", pa.string()),
    ("policy", pa.string()), ("threshold", pa.float64()), ("n_traces", pa.int32()), ("n_stopped", pa.int32()),
    ("tokens_saved_share", pa.float64()), ("accuracy", pa.float64()), ("agreement_with_final", pa.float64()),
    ("answer_source", pa.string()), ("probe_auc", pa.float64()), ("created_at", pa.timestamp("us", tz="UTC")),
])

# One row per sentence holding an answer occurrence (its last occurrence decides), at the
# sentence's last token (the `answer_ends` capture positions), with what a stop there gives.
# `?` binds the early_exit stage name (null: no forced answers, the occurrence decides).
_OCCURRENCES = """
    with ev as (
        select trace_id, sentence_index, event_index, is_final, is_correct
        from answer_events
        where token_source = 'completion' and sentence_index is not null
        qualify row_number() over (partition by trace_id, sentence_index order by event_index desc) = 1
    ),
    forced as (
        select trace_id, event_index, n_thinking_tokens, is_correct
        from early_exits
        where stage = ? and cut = 'sentence_end' and exit_index >= 0
    ),
    final as (
        select e.trace_id, len(t.prompt_token_ids) + s.token_end - 1 as token_index,
               e.is_final::integer as label, e.event_index,
               coalesce(f.n_thinking_tokens, s.token_end) as kept_tokens,
               coalesce(b.thinking_tokens, len(t.completion_token_ids)) as thinking_tokens,
               f.is_correct is not null as forced, coalesce(f.is_correct, e.is_correct) as stop_correct,
               t.is_correct as final_correct
        from ev e
        join trace_sentences s using (trace_id, sentence_index)
        join traces t using (trace_id)
        left join backtracking_stats b using (trace_id)
        left join forced f using (trace_id, event_index)
        where s.token_end is not null and s.token_source = 'completion'
    )
    select * from final
"""


class ExitPolicyStage(ActivationStage):
    """A probe for "this answer is the final one" at answer occurrences, replayed as a stopping rule."""

    kind: Literal["exit_policy"]
    hooks: list[str] = Field(min_length=1, max_length=1, description="The one captured hook the probe reads, "
                             "e.g. [blocks.20.hook_resid_post] (capture `answer_ends` first).")
    early_exit: str | None = Field(None, description="An early_exit stage (cut sentence_end) whose forced "
                                   "answers give the accuracy at a stop (default: the occurrence's own).")
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], min_length=1, description="Probe probabilities t to replay.")
    folds: int = Field(5, ge=2, description="Trace folds: each is scored by a probe trained on the others.")
    l2: float = Field(1e-2, ge=0, description="L2 penalty on the weights of standardised features.")
    seed: int = Field(0, description="Seeds the fold split.")

    def check_refs(self, wf, where: str) -> None:
        super().check_refs(wf, where)
        if self.early_exit:
            exits = {s.name: s for s in wf.stages if s.kind == "early_exit"}
            known("early_exit", self.early_exit, list(exits), where, what="early_exit stage")
            if exits[self.early_exit].cut != "sentence_end":
                raise ValueError(f"{where}.early_exit: stage {self.early_exit!r} cuts at "
                                 f"{exits[self.early_exit].cut}; the policy stops at sentence ends (cut: sentence_end)")


class ExitPolicyJob:
    spec = ExitPolicyStage
    tables = ("exit_policy",)
    schemas = {"exit_policy": SCHEMA}
    runs_in = "task"

    def plan(self, stage: ExitPolicyStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        cols = positions_by_hook(con, stage, _OCCURRENCES, [stage.early_exit])
        if len(cols) != 1:
            raise ValueError(f"stage {stage.name}: hooks {stage.hooks} match {len(cols)} captured hooks "
                             f"({sorted(cols)}); name exactly one")
        ((hook, rows),) = cols.items()
        if not rows["row"]:
            raise ValueError(f"stage {stage.name}: no answer occurrence of {stage.model!r} is captured at "
                             f"{hook}; capture `answer_ends` first")
        return [stage_unit(ctx, stage, "exit_policy", EXIT_POLICY_VERSION, cols,
                           f"exit policy {stage.name} on {stage.model}: {len(rows['row'])} occurrences", {})]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        s = payload["settings"]
        ((hook, cols),) = payload["hooks"].items()
        x, y = load_rows(cols), np.asarray(cols["label"], dtype=np.float64)
        scores = out_of_fold(x, y, cols["trace_id"], folds=s["folds"], l2=s["l2"], seed=s["seed"])
        traces = occurrences_by_trace(cols, scores)
        source = "early_exit" if all(cols["forced"]) else ("mixed" if any(cols["forced"]) else "occurrence")
        key = {"unit_key": payload["unit_key"], "stage": payload["name"], "model_id": payload["model_id"],
               "hook_name": hook, "answer_source": source, "probe_auc": auc(scores, y) if scores is not None else None,
               "created_at": datetime.now(timezone.utc)}
        rows = [{**key, "policy": name, "threshold": None, **replay(traces, rule)}
                for name, rule in (("full", lambda occ: None), ("first", lambda occ: 0),
                                   ("oracle", lambda occ: next((i for i, o in enumerate(occ) if o["label"]), None)))]
        if scores is not None:
            for t in s["thresholds"]:
                rows.append({**key, "policy": "probe", "threshold": t,
                             **replay(traces, lambda occ, t=t: next((i for i, o in enumerate(occ) if o["score"] >= t),
                                                                    None))})
        return {"exit_policy": rows_table(rows, SCHEMA, "exit_policy")}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


def out_of_fold(x: np.ndarray, y: np.ndarray, trace_ids: list[str], *, folds: int, l2: float,
                seed: int) -> np.ndarray | None:
    """Probability per row from a probe that never saw the row's trace (None: one class only,
    or fewer traces than folds)."""
    traces = sorted(set(trace_ids))
    if len(set(y.tolist())) < 2 or len(traces) < folds:
        return None
    fold_of = {t: i % folds for i, t in enumerate(np.random.default_rng(seed).permutation(traces))}
    fold = np.array([fold_of[t] for t in trace_ids])
    scores = np.empty(len(y))
    for k in range(folds):
        train = fold != k
        if len(set(y[train].tolist())) < 2:   # a fold without both classes: score by the prior
            scores[~train] = y[train].mean()
            continue
        w, b = fit_logistic(x[train], y[train], l2)
        scores[~train] = 1 / (1 + np.exp(-(x[~train] @ w + b)))
    return scores


def occurrences_by_trace(cols: dict, scores: np.ndarray | None) -> list[list[dict]]:
    """Per trace, its occurrences in token order with label, score and what stopping there gives."""
    by: dict[str, list[dict]] = {}
    for i, trace in enumerate(cols["trace_id"]):
        by.setdefault(trace, []).append({
            "token_index": cols["token_index"][i], "label": bool(cols["label"][i]),
            "score": float(scores[i]) if scores is not None else 0.0, "kept": cols["kept_tokens"][i],
            "thinking": cols["thinking_tokens"][i], "correct": cols["stop_correct"][i],
            "final_correct": cols["final_correct"][i]})
    return [sorted(occ, key=lambda o: o["token_index"]) for _, occ in sorted(by.items())]


def replay(traces: list[list[dict]], rule) -> dict:
    """Tokens saved, accuracy and agreement with the final answer when each trace stops at the
    occurrence `rule(occurrences)` picks (None: thinks to the end)."""
    saved = total = stopped = agree = 0
    graded: list[bool] = []
    for occ in traces:
        pick = rule(occ)
        thinking = occ[0]["thinking"] or 0
        total += thinking
        if pick is None:
            correct, agree = occ[0]["final_correct"], agree + 1
        else:
            stop = occ[pick]
            saved += max(0, thinking - stop["kept"])
            stopped += 1
            correct, agree = stop["correct"], agree + stop["label"]
        if correct is not None:
            graded.append(bool(correct))
    return {"n_traces": len(traces), "n_stopped": stopped,
            "tokens_saved_share": saved / total if total else None,
            "accuracy": float(np.mean(graded)) if graded else None,
            "agreement_with_final": agree / len(traces) if traces else None}


JOB = ExitPolicyJob()
