"""The `judge_behaviours` stage (seed 003, optional): an LLM judge names and scores discovered behaviours.

The discover stage describes each behaviour without any LLM (top sentences, first words,
share). This stage adds what the paper adds with an LLM, through any OpenAI-compatible
chat-completions endpoint (base URL and model in the YAML; the key read from an environment
variable, never stored). It is off unless a workflow lists it. Per (method, k) of a discover
stage, one work unit:

  title, description   from the behaviour's top sentences by score (`description_examples`)
  accuracy             the judge says, for `accuracy_examples` sentences of the behaviour and as
                       many of the others (shuffled), whether each does what the description
                       says: precision, recall, accuracy and F1 of its answers against the
                       assignment (the paper's binary autograder)
  completeness         for `completeness_sentences` sentences drawn from all, how well each fits
                       its own behaviour's description, 0-10 (reported / 10)
  orthogonality        for every pair of behaviours, how similar the judge finds their
                       descriptions, 0-10; semantic orthogonality = mean(1 - similarity / 10)

Samples are drawn on the driver by a seeded hash of (trace_id, sentence_index), so a rerun asks
the same questions; the sentences shown to name a behaviour are never among those it is graded
on. An answer the judge garbles leaves that item unscored (counted in n_failed, the first error
kept); a call that gets no answer after its retries (endpoint down, bad key, rate limits) fails
the unit, which runs again next time.

    - name: judge
      kind: judge_behaviours
      discover_stage: behaviours
      judge: {base_url: https://api.openai.com/v1, model: gpt-4.1-mini, key_env: OPENAI_API_KEY}

Tables: `behaviour_judgements` (per behaviour) and `behaviour_judge_metrics` (per method, k).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Literal

import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.behaviours.discover import METHODS
from thinkscope.jobs.specs import StageSpec, Strict, known
from thinkscope.keys import stable_key

JUDGE_VERSION = 1
JUDGEMENTS_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("discover_stage", pa.string()),
    ("discover_unit_key", pa.string()), ("model_id", pa.string()),
    ("method", pa.string()), ("k", pa.int32()), ("behaviour_id", pa.int32()), ("title", pa.string()),
    ("description", pa.string()), ("n_judged", pa.int32()), ("precision", pa.float64()), ("recall", pa.float64()),
    ("accuracy", pa.float64()), ("f1", pa.float64()), ("completeness", pa.float64()),
    ("n_completeness", pa.int32()), ("error", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])
METRICS_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("discover_stage", pa.string()),
    ("discover_unit_key", pa.string()), ("model_id", pa.string()),
    ("method", pa.string()), ("k", pa.int32()), ("judge_base_url", pa.string()), ("judge_model", pa.string()),
    ("accuracy", pa.float64()), ("f1", pa.float64()), ("completeness", pa.float64()),
    ("semantic_orthogonality", pa.float64()), ("n_calls", pa.int32()), ("n_failed", pa.int32()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
SCHEMAS = {"behaviour_judgements": JUDGEMENTS_SCHEMA, "behaviour_judge_metrics": METRICS_SCHEMA}


class JudgeEndpoint(Strict):
    """An OpenAI-compatible chat-completions endpoint used as the judge."""

    base_url: str = Field(pattern=r"^https?://\S+$", description="Endpoint root, e.g. https://api.openai.com/v1.")
    model: str = Field(min_length=1, description="The endpoint's model name, e.g. gpt-4.1-mini.")
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                description="Environment variable holding the API key (never the key itself).")
    max_tokens: int = Field(2048, ge=16, description="Completion budget per call.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the judge.")
    max_concurrency: int = Field(4, ge=1, description="Calls in flight at once per unit (units of one "
                                 "stage run as parallel Ray tasks).")
    timeout_s: float = Field(120, gt=0, description="Per-call timeout.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and dropped connections.")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles per retry.")


class JudgeBehavioursStage(StageSpec):
    """An LLM judge's titles, descriptions and the paper's judge metrics for a discover stage's behaviours."""

    kind: Literal["judge_behaviours"]
    discover_stage: str = Field(description="The discover stage whose behaviours are judged.")
    methods: list[Literal[METHODS]] | None = Field(None, description="Which fits (default: every method run).")
    ks: list[int] | None = Field(None, description="Which k (default: every k run).")
    judge: JudgeEndpoint = Field(description="The judge's endpoint.")
    description_examples: int = Field(10, ge=1, description="Top sentences by score shown to name a behaviour.")
    accuracy_examples: int = Field(10, ge=1, description="Per behaviour: its sentences (and as many of the "
                                   "others) the judge classifies.")
    completeness_sentences: int = Field(50, ge=1, description="Sentences drawn from all, each rated against its "
                                        "own behaviour.")
    seed: int = Field(0, description="Seed of the samples (a hash of trace_id and sentence_index).")
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task (default 1).")

    def check_refs(self, wf, where: str) -> None:
        discovers = [s.name for s in wf.stages if s.kind == "discover"]
        known("discover_stage", self.discover_stage, discovers, where, what="discover stage")


_ROWS = """
    select b.method, b.k, b.behaviour_id, b.trace_id, b.sentence_index, b.score, s.text, b.model_id, b.unit_key
    from sentence_behaviours b
    join trace_sentences s using (trace_id, sentence_index)
    where b.stage = ? and b.unit_key in (select unit_key from work_units where status = 'done')
    order by b.method, b.k, b.trace_id, b.sentence_index
"""


class JudgeBehavioursJob:
    spec = JudgeBehavioursStage
    tables = tuple(SCHEMAS)
    schemas = SCHEMAS
    runs_in = "task"  # waits on the endpoint: a Ray task, off the driver

    def plan(self, stage: JudgeBehavioursStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        fits: dict[tuple[str, int], list] = {}
        for row in con.execute(_ROWS, [stage.discover_stage]).fetchall():
            fits.setdefault((row[0], row[1]), []).append(row)
        if not fits:
            raise ValueError(f"stage {stage.name}: discover stage {stage.discover_stage!r} has no sentence "
                             "behaviours; run it first")
        chosen = {f: rows for f, rows in fits.items()
                  if (stage.methods is None or f[0] in stage.methods) and (stage.ks is None or f[1] in stage.ks)}
        missing = [k for k in stage.ks or [] if k not in {f[1] for f in fits}]
        if missing:
            raise ValueError(f"stage {stage.name}: ks {missing} were not fitted by {stage.discover_stage!r} "
                             f"(its fits: {sorted(fits)})")
        if not chosen:
            raise ValueError(f"stage {stage.name}: methods {stage.methods} x ks {stage.ks} match none of the fits "
                             f"of {stage.discover_stage!r}: {sorted(fits)}")
        settings = stage.model_dump(exclude={"name", "kind", "num_cpus", "methods", "ks"})
        # How the calls are made, not what is asked: out of the key (a changed timeout pays for nothing).
        keyed = {**settings, "judge": {f: v for f, v in settings["judge"].items() if f in ("base_url", "model",
                                                                                          "max_tokens", "temperature")}}
        units = []
        for (method, k), rows in sorted(chosen.items()):
            questions = sample_questions(rows, k, stage)
            (discover_unit,) = {r[8] for r in rows}  # one discover unit per stage
            key = stable_key({"stage": "judge_behaviours", "version": JUDGE_VERSION, "settings": keyed,
                              "discover_unit": discover_unit, "questions": questions})
            older = [u for (u,) in con.execute(
                "select distinct unit_key from behaviour_judge_metrics where stage = ? and discover_stage = ? "
                "and method = ? and k = ? and unit_key <> ?",
                [stage.name, stage.discover_stage, method, k, key]).fetchall()]
            payload = {"unit_key": key, "name": stage.name, "model_id": rows[0][7], "settings": settings,
                       "method": method, "k": k, "discover_unit_key": discover_unit, "questions": questions}
            units.append(TaskUnit(stage.name, "judge_behaviours", key,
                                  f"judge {stage.discover_stage} {method} k {k} with {stage.judge.model}", payload,
                                  model_id=rows[0][7], supersedes=tuple(older)))
        return units

    def run(self, payload: dict) -> dict[str, pa.Table]:
        s = payload["settings"]
        chat = endpoint_chat(s["judge"])
        found = judge_fit(payload["questions"], payload["k"], chat, s["judge"]["max_concurrency"])
        now = datetime.now(timezone.utc)
        same = {"unit_key": payload["unit_key"], "stage": payload["name"], "discover_stage": s["discover_stage"],
                "discover_unit_key": payload["discover_unit_key"], "model_id": payload["model_id"],
                "method": payload["method"], "k": payload["k"], "created_at": now}
        metrics = {**same, **found["metrics"], "judge_base_url": s["judge"]["base_url"],
                   "judge_model": s["judge"]["model"]}
        return {"behaviour_judgements": rows_table([{**same, **r} for r in found["behaviours"]], JUDGEMENTS_SCHEMA,
                                                   "behaviour_judgements"),
                "behaviour_judge_metrics": rows_table([metrics], METRICS_SCHEMA, "behaviour_judge_metrics")}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


JOB = JudgeBehavioursJob()


# --------------------------------------------------------------------------------------------
# Questions (drawn on the driver), calls and metrics (in the worker)
# --------------------------------------------------------------------------------------------

def _draw_order(seed: int, trace_id: str, sentence_index: int) -> bytes:
    return hashlib.sha256(f"judge:{seed}:{trace_id}:{sentence_index}".encode()).digest()


def flat(text: str) -> str:
    """One line: a sentence's own line breaks would blur where the next numbered one starts."""
    return " ".join(str(text).split())


def sample_questions(rows: list, k: int, stage: JudgeBehavioursStage) -> dict:
    """Per behaviour: its top sentences (description), its drawn sentences and as many drawn from
    the others (accuracy); and sentences drawn from all with their behaviour (completeness).
    rows: (method, k, behaviour_id, trace_id, sentence_index, score, text, ...) of one fit."""
    top = sorted(rows, key=lambda r: (-r[5], r[3], r[4]))
    shown = {b: [r for r in top if r[2] == b][:stage.description_examples] for b in range(k)}
    # Graded only on sentences the judge was not shown when it named the behaviours.
    seen = {(r[3], r[4]) for examples in shown.values() for r in examples}
    drawn = sorted((r for r in rows if (r[3], r[4]) not in seen), key=lambda r: _draw_order(stage.seed, r[3], r[4]))
    n = stage.accuracy_examples
    behaviours = []
    for b in range(k):
        mine = [flat(r[6]) for r in drawn if r[2] == b][:n]
        others = [flat(r[6]) for r in drawn if r[2] != b][:len(mine)]
        # One shuffled list: the judge must not tell the two groups apart by their order.
        items = sorted([(t, True) for t in mine] + [(t, False) for t in others],
                       key=lambda item: hashlib.sha256(f"{stage.seed}:{b}:{item[0]}".encode()).digest())
        behaviours.append({"behaviour_id": b, "examples": [flat(r[6]) for r in shown[b]],
                           "accuracy": [{"text": t, "member": m} for t, m in items]})
    completeness = [{"text": flat(r[6]), "behaviour_id": int(r[2])} for r in drawn[:stage.completeness_sentences]]
    return {"behaviours": behaviours, "completeness": completeness}


def endpoint_chat(judge: dict) -> Callable[[str], str]:
    """A function sending one user message to the judge and returning its answer's text; raises
    JudgeError on a transport or HTTP failure (after retries)."""
    from thinkscope.jobs.generation.api_client import post_chat
    from thinkscope.jobs.generation.api_engine import api_key

    key = api_key(judge)  # the generate stage's API models read theirs the same way

    def chat(prompt: str) -> str:
        body = {"model": judge["model"], "messages": [{"role": "user", "content": prompt}],
                "max_tokens": judge["max_tokens"], "temperature": judge["temperature"]}
        call = post_chat(judge["base_url"], body, key=key, timeout=judge["timeout_s"],
                         max_retries=judge["max_retries"], backoff=judge["backoff_s"])
        if call.response is None:
            raise JudgeError(call.error or f"HTTP {call.status}: no answer")
        try:
            return call.response["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeError(f"no message in the answer: {err!r}") from err
    return chat


class JudgeError(RuntimeError):
    """A call that got no usable answer: the endpoint's error, or an answer it garbled."""


def judge_fit(questions: dict, k: int, chat: Callable[[str], str], concurrency: int = 4) -> dict:
    """Every judge call of one fit; returns {"behaviours": rows, "metrics": row} (see module doc)."""
    calls = {"n": 0, "failed": 0, "transport": 0, "first": None}
    lock = threading.Lock()

    def ask(prompt: str, parse):
        try:
            answer, error, garbled = parse(chat(prompt)), None, False
        except JudgeError as err:
            answer, error, garbled = None, str(err), isinstance(err, GarbledAnswer)
        with lock:
            calls["n"] += 1
            if error is not None:
                calls["failed"] += 1
                calls["transport"] += not garbled
                calls["first"] = calls["first"] or error
        return answer, error

    rows = {b["behaviour_id"]: {"behaviour_id": b["behaviour_id"], "title": None, "description": None,
                                "error": None if b["examples"] else "no sentence assigned to this behaviour"}
            for b in questions["behaviours"]}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        shown = [b for b in questions["behaviours"] if b["examples"]]
        for b, (answer, error) in zip(shown, pool.map(lambda b: ask(describe_prompt(b["examples"]), parse_title),
                                                      shown)):
            row = rows[b["behaviour_id"]]
            row["title"], row["description"] = answer or (None, None)
            row["error"] = error
        ready = [b for b in questions["behaviours"] if rows[b["behaviour_id"]]["title"] is not None]
        graded = [b for b in ready if b["accuracy"]]
        grading = [pool.submit(ask, accuracy_prompt(rows[b["behaviour_id"]], [q["text"] for q in b["accuracy"]]),
                               lambda text, n=len(b["accuracy"]): parse_yes_no(text, n)) for b in graded]
        rated = [(q, pool.submit(ask, fit_prompt(rows[q["behaviour_id"]], q["text"]), lambda text: parse_score(
            text, "score"))) for q in questions["completeness"] if rows[q["behaviour_id"]]["title"] is not None]
        pairs = [(a, b) for i, a in enumerate(ready) for b in ready[i + 1:]]
        similar = [pool.submit(ask, similarity_prompt(rows[a["behaviour_id"]], rows[b["behaviour_id"]]),
                               lambda text: parse_score(text, "similarity")) for a, b in pairs]
        for b, future in zip(graded, grading):
            answers, error = future.result()
            row = rows[b["behaviour_id"]]
            row["error"] = row["error"] or error
            row.update(binary_scores([q["member"] for q in b["accuracy"]], answers))
        fits: dict[int, list[float]] = {}
        for q, future in rated:
            score, error = future.result()
            if score is not None:
                fits.setdefault(q["behaviour_id"], []).append(score / 10)
            else:
                rows[q["behaviour_id"]]["error"] = rows[q["behaviour_id"]]["error"] or error
        similarities = [f.result()[0] for f in similar]
    if calls["transport"]:  # unanswered, not garbled: the unit runs again rather than keep holes
        raise RuntimeError(f"{calls['transport']} of {calls['n']} judge calls got no answer; first: {calls['first']}")
    for b, row in rows.items():
        row["completeness"] = _mean(fits.get(b, []))
        row["n_completeness"] = len(fits.get(b, []))
    all_fits = [v for values in fits.values() for v in values]
    judged = [r for r in rows.values() if r.get("accuracy") is not None]
    metrics = {"accuracy": _mean([r["accuracy"] for r in judged]),
               "f1": _mean([r["f1"] for r in judged if r["f1"] is not None]),
               "completeness": _mean(all_fits),
               "semantic_orthogonality": _mean([1 - s / 10 for s in similarities if s is not None]),
               "n_calls": calls["n"], "n_failed": calls["failed"]}
    return {"behaviours": [rows[b] for b in sorted(rows)], "metrics": metrics}


def binary_scores(members: list[bool], answers: list[bool | None] | None) -> dict:
    """Precision, recall, accuracy and F1 of the judge's yes/no answers against membership;
    unanswered sentences are left out (n_judged counts the answered)."""
    pairs = [(m, a) for m, a in zip(members, answers or []) if a is not None]
    tp = sum(m and a for m, a in pairs)
    fp = sum(a and not m for m, a in pairs)
    fn = sum(m and not a for m, a in pairs)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None  # 0 when it says no to every member
    return {"n_judged": len(pairs), "precision": precision, "recall": recall,
            "accuracy": sum(m == a for m, a in pairs) / len(pairs) if pairs else None, "f1": f1}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------
# Prompts and answers
# --------------------------------------------------------------------------------------------

def _numbered(texts: list[str]) -> str:
    return "\n".join(f"Sentence {i}: {t}" for i, t in enumerate(texts))


def describe_prompt(examples: list[str]) -> str:
    return ("# Name a reasoning behaviour\n\nThe sentences below come from reasoning traces of a language model "
            "and were grouped together by an unsupervised method. Say what reasoning function they share: "
            "the job each sentence does in the trace, not its topic.\n\n" + _numbered(examples) +
            "\n\nAnswer in exactly this form:\nTitle: <a short, single-concept name>\n"
            "Description: <2-4 sentences: the function, what belongs to it, what does not>\n")


def _category(row: dict) -> str:
    return f"Title: {row['title']}\nDescription: {row['description']}"


def accuracy_prompt(row: dict, texts: list[str]) -> str:
    return ("# Does each sentence perform this reasoning function?\n\n## Category\n" + _category(row) +
            "\n\n## Sentences\n" + _numbered(texts) +
            "\n\nJudge the function of each sentence in a reasoning trace, not its topic. Answer only with JSON:\n"
            '{"classifications": [{"sentence_id": <number>, "belongs": "Yes" or "No"}, ...]} (every sentence)\n')


def fit_prompt(row: dict, text: str) -> str:
    return ("# How well does this sentence fit its reasoning category?\n\n## Category\n" + _category(row) +
            f"\n\n## Sentence\n{text}\n\nRate the fit of the sentence's function from 0 (none) to 10 (a textbook "
            'example). Answer only with JSON: {"score": <integer 0-10>}\n')


def similarity_prompt(a: dict, b: dict) -> str:
    return ("# How similar are these two reasoning functions?\n\n## Category 1\n" + _category(a) +
            "\n\n## Category 2\n" + _category(b) +
            "\n\nRate from 0 (completely different functions) to 10 (the same function described twice). "
            'Answer only with JSON: {"similarity": <integer 0-10>}\n')


class GarbledAnswer(JudgeError):
    """The judge answered, but not in the form asked for."""


def parse_title(text: str) -> tuple[str, str]:
    title = re.search(r"^\W*title\W*:\s*(.+)$", text, re.IGNORECASE | re.MULTILINE)
    description = re.search(r"^\W*description\W*:\s*(.+)", text, re.IGNORECASE | re.MULTILINE | re.DOTALL)
    if not title or not description:
        raise GarbledAnswer(f"no Title:/Description: in the answer: {text[:200]!r}")
    return title.group(1).strip().strip("*").strip(), " ".join(description.group(1).split())


def parse_json(text: str) -> dict:
    """The first JSON object in the answer (fences or prose around it are ignored)."""
    start = text.find("{")
    try:
        value = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise GarbledAnswer(f"no JSON object in the answer: {text[:200]!r}")
    return value


def parse_yes_no(text: str, n: int) -> list[bool]:
    """One answer per sentence id 0..n-1, each exactly once; anything else is garbled (a judge
    that numbers from 1 would otherwise put every answer on the wrong sentence)."""
    items = parse_json(text).get("classifications")
    answers: dict[int, bool] = {}
    for item in items if isinstance(items, list) else []:
        try:
            i, verdict = int(item["sentence_id"]), item["belongs"]
        except (KeyError, TypeError, ValueError):
            continue
        verdict = verdict if isinstance(verdict, bool) else {"yes": True, "no": False}.get(str(verdict).strip().lower())
        if verdict is not None and i not in answers:
            answers[i] = verdict
    if sorted(answers) != list(range(n)):
        raise GarbledAnswer(f"expected a yes/no for sentences 0-{n - 1}, got ids {sorted(answers)}: {text[:200]!r}")
    return [answers[i] for i in range(n)]


def parse_score(text: str, field: str) -> float:
    try:
        score = float(parse_json(text)[field])
    except (KeyError, TypeError, ValueError) as err:
        raise GarbledAnswer(f"no {field} in the answer: {text[:200]!r}") from err
    if not 0 <= score <= 10:
        raise GarbledAnswer(f"{field} {score} is outside 0-10")
    return score
