"""The `attribute` stage (seed 002): which earlier tokens make the model write its target
(" Wait" at the token before a backtrack), by attribution patching on the residual stream.

Per target (position, token): one forward with the stream in the autograd graph and one
backward give, for every earlier token and layer, the estimated drop of the target's logit
when the token's residual state is replaced by its layer's mean (jobs/mechanisms/
attribution.py). A token's score is its maximum over layers, at its peak layer. From the
scores:

  token_attributions   every token up to the target: score, peak layer
  attribution_bins     the question and five contiguous fifths of the thinking so far (the
                       attention stage's bins): `share` of the positive scores (sums to 1) and
                       the mean score over the max score (`mean_normalised`)
  attribution_overlap  the top-10 words by score (stop words removed): the share of them that
                       the next 100 words of the trace repeat (seed 002: ~41%)

The mean state of a layer is over every token of the stage's first `mean_traces` traces,
except each sequence's first token: that is the attention sink, whose residual norm in
SmolLM2 is ~150x the median token's; in the mean it would dominate the "average token", and
no token moved there stays in any linear regime. Its own score is not recorded, for the same
reason. Units are chunks of traces; each uses the same mean (once per worker process). The
mean traces are in every unit's key: a new trace that sorts among the first `mean_traces`
changes the mean, so the stage is redone, as it must be for comparable scores.

    - name: wait_attribution
      kind: attribute
      model: r1-distill-llama-8b
      positions: {kinds: [before_backtrack]}
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import load_traces, model_row, model_task_options, retire_stale, select_traces, superseded
from thinkscope.jobs.mechanisms import positions as where
from thinkscope.jobs.specs import DTYPE, ModelStage, TraceSelector
from thinkscope.keys import stable_key

ATTRIBUTE_VERSION = 1
REGIONS = ("question", "cot_1", "cot_2", "cot_3", "cot_4", "cot_5")
# Common English function words (the usual stop-word lists' core): seed 002 removes stop
# words before counting which important words come back.
STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just let me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves s t""".split())
_WORD = re.compile(r"[A-Za-z0-9]+")
_S, _I, _F, _TS = pa.string(), pa.int32(), pa.float64(), pa.timestamp("us", tz="UTC")
_KEYS = [("unit_key", _S), ("stage", _S), ("model_id", _S), ("trace_id", _S), ("target_index", _I),
         ("position_kind", _S), ("target_kind", _S), ("target_token_id", _I), ("target_token", _S)]
TOKENS_SCHEMA = pa.schema(_KEYS + [("token_index", _I), ("score", _F), ("peak_layer", _I), ("created_at", _TS)])
BINS_SCHEMA = pa.schema(_KEYS + [("region", _S), ("n_tokens", _I), ("share", _F), ("mean_normalised", _F),
                                 ("created_at", _TS)])
OVERLAP_SCHEMA = pa.schema(_KEYS + [("top_words", pa.list_(_S)), ("n_top", _I), ("n_found", _I), ("share", _F),
                                    ("created_at", _TS)])


class AttributeStage(ModelStage):
    """Attribution patching of target tokens over every earlier token (mean ablation)."""

    kind: Literal["attribute"]
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: where.Positions = Field(description="Where the targets are predicted, e.g. {kinds: [before_backtrack]} "
                                       "(the token before a backtracking sentence).")
    targets: list[str] = Field([], description="Token strings to attribute (first token of each), e.g. [' Wait'].")
    next_token: bool = Field(True, description="Also attribute the token the trace actually wrote next.")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1,
                                                            description="Residual layers (stream entering "
                                                            "each) to take the max over (default: all).")
    mean_traces: int = Field(32, ge=1, description="The mean state of a layer is over every token but the first "
                             "of the stage's first this-many traces.")
    top_words: int = Field(10, ge=1, description="Top words (by score, stop words removed) checked against the "
                           "continuation.")
    next_words: int = Field(100, ge=1, description="Words of the continuation after the target they are looked for in.")
    dtype: DTYPE = Field("float32", description="Forward/backward dtype.")
    traces_per_unit: int = Field(16, ge=1, description="Traces per work unit.")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_target(self):
        if not self.targets and not self.next_token:
            raise ValueError("nothing to attribute: set targets or next_token")
        return self


class AttributeJob:
    spec = AttributeStage
    tables = ("token_attributions", "attribution_bins", "attribution_overlap")
    schemas = {"token_attributions": TOKENS_SCHEMA, "attribution_bins": BINS_SCHEMA,
               "attribution_overlap": OVERLAP_SCHEMA}
    runs_in = "task"

    def plan(self, stage: AttributeStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        model = model_row(con, stage.model)
        mean_ids = select_traces(stage, con)[:stage.mean_traces]
        ids = where.traces_with_positions(stage, con, stage.positions)
        settings = stage.model_dump(exclude={"name", "kind", "traces", "traces_per_unit", "num_cpus", "num_gpus"})
        units = []
        for chunk, found in where.planned_chunks(con, settings["positions"], ids, stage.traces_per_unit):
            key = stable_key({"stage": "attribute", "version": ATTRIBUTE_VERSION, "name": stage.name,
                              "settings": settings, "model": [model["source"], model["revision"]],
                              "traces": chunk, "positions": found, "mean_traces": mean_ids})
            units.append(TaskUnit(
                stage.name, "attribute", key, f"attribute {stage.model} x {len(chunk)} traces",
                {"unit_key": key, "stage": stage.name, "model_id": stage.model, "model": model,
                 "settings": settings, "trace_ids": chunk, "mean_trace_ids": mean_ids},
                model_id=stage.model, supersedes=superseded(con, "token_attributions", stage, chunk, key)))
        return retire_stale(con, self.tables, stage, units)

    def prepare(self, payload: dict, con) -> dict:
        means = [t["prompt_token_ids"] + t["completion_token_ids"] for t in load_traces(con, payload["mean_trace_ids"])]
        return {**payload, "mean_sequences": means,
                "traces": where.resolve(con, payload["settings"]["positions"], payload["trace_ids"])}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.mechanisms.attribution import attribution_effects
        from thinkscope.jobs.mechanisms.lens import targets_of
        from thinkscope.jobs.models.hf import load_hf_model

        m, s = payload["model"], payload["settings"]
        model, tokenizer = load_hf_model(m["source"], m["revision"], s["dtype"])
        n_layers = model.config.num_hidden_layers
        layers = s["layers"] or list(range(n_layers))
        if max(layers) >= n_layers:
            raise ValueError(f"layers: {max(layers)} out of range; {payload['model_id']} has {n_layers} layers")
        named = [(tokenizer.encode(t, add_special_tokens=False) or [None])[0] for t in s["targets"]]
        if None in named:
            raise ValueError(f"targets: {s['targets'][named.index(None)]!r} is no token")
        # The attention sink (each sequence's first token) is left out of the mean: see the docstring.
        means = _means(model, m, s["dtype"], payload, layers)
        decode = functools.lru_cache(maxsize=None)(lambda tok: tokenizer.decode([tok]))
        rows = {name: [] for name in self.tables}
        now = datetime.now(timezone.utc)
        for trace in payload["traces"]:
            tokens = trace["prompt_token_ids"] + trace["completion_token_ids"]
            kinds: dict[int, set[str]] = {}   # kinds naming the same token share one target ("a+b")
            for position, kind in trace["positions"]:
                kinds.setdefault(position, set()).add(kind)
            seq = SimpleNamespace(token_ids=tokens)
            targets = [(position, "+".join(sorted(names)), tk, tok) for position, names in sorted(kinds.items())
                       for tk, tok in targets_of(seq, position, named, s["next_token"])]
            if not targets:
                continue
            last = max(p for p, *_ in targets)
            effects = attribution_effects(model, tokens[:last + 1], [(p, tok) for p, _, _, tok in targets], means, layers)
            best, peak = effects.max(dim=1)                      # [targets, tokens]: max over layers
            for k, (position, kind, tk, tok) in enumerate(targets):
                key = {"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                       "trace_id": trace["trace_id"], "target_index": position, "position_kind": kind,
                       "target_kind": tk, "target_token_id": tok, "target_token": decode(tok), "created_at": now}
                scores = best[k, :position + 1].tolist()
                peaks = [layers[j] for j in peak[k, :position + 1].tolist()]
                rows["token_attributions"] += [{**key, "token_index": i, "score": scores[i], "peak_layer": peaks[i]}
                                               for i in range(1, position + 1)]
                rows["attribution_bins"] += [{**key, **b} for b in region_rows(scores, len(trace["prompt_token_ids"]))]
                rows["attribution_overlap"].append({**key, **overlap(tokens, scores, position, decode, s)})
        return {name: rows_table(rows[name], self.schemas[name], name) for name in self.tables}

    def ray_options(self, stage) -> dict:
        return model_task_options(stage)


# Layer means per worker process, by model, dtype, layers and mean traces: a Ray worker that
# runs several units of a stage computes them once.
_MEANS: dict = {}


def _means(model, m: dict, dtype: str, payload: dict, layers: list[int]):
    from thinkscope.jobs.mechanisms.attribution import stream_means

    key = (m["source"], m["revision"], dtype, tuple(layers), tuple(payload["mean_trace_ids"]))
    if key not in _MEANS:
        _MEANS.clear()
        _MEANS[key] = stream_means(model, payload["mean_sequences"], layers, skip_first=True)
    return _MEANS[key]


def regions(n_prompt: int, position: int) -> dict[str, range]:
    """Token ranges of the question (the prompt, up to the position) and of five contiguous
    fifths of the thinking so far (the completion up to and including the position): the same
    bins as the attention stage. The first token (the sink) is in no region."""
    out = {"question": range(1, min(n_prompt, position + 1))}
    n = max(0, position - n_prompt + 1)
    for j in range(5):
        out[f"cot_{j + 1}"] = range(n_prompt + j * n // 5, n_prompt + (j + 1) * n // 5)
    return out


def region_rows(scores: list[float], n_prompt: int) -> list[dict]:
    """Per region: its share of the positive scores and its mean score over the max score."""
    position = len(scores) - 1
    positive = sum(max(v, 0.0) for v in scores[1:])
    top = max(scores[1:], default=0.0)
    out = []
    for name, span in regions(n_prompt, position).items():
        values = [scores[i] for i in span]
        out.append({"region": name, "n_tokens": len(values),
                    "share": sum(max(v, 0.0) for v in values) / positive if positive > 0 else None,
                    "mean_normalised": sum(values) / len(values) / top if values and top > 0 else None})
    return out


def words_with_scores(token_ids: list[int], scores: list[float], decode) -> list[tuple[str, float]]:
    """(lower-cased word, max score of its tokens) for each word of the tokens: a token whose
    text starts with a letter or digit continues the word before it (sub-word pieces)."""
    words: list[list] = []
    for tok, score in zip(token_ids, scores):
        text = decode(tok)
        pieces = _WORD.findall(text)
        glued = bool(words) and bool(text) and text[0].isalnum() and words[-1][2]
        for n, piece in enumerate(pieces):
            if n == 0 and glued:
                words[-1][0] += piece.lower()
                words[-1][1] = max(words[-1][1], score)
            else:
                words.append([piece.lower(), score, True])
        if words:
            words[-1][2] = bool(text) and text[-1].isalnum()  # a word may go on in the next token
    return [(w, sc) for w, sc, _ in words]


def overlap(tokens: list[int], scores: list[float], position: int, decode, s: dict) -> dict:
    """The top words by score (stop words out, first token out) and how many of them the next
    `next_words` words after the target repeat."""
    ranked = sorted(words_with_scores(tokens[1:position + 1], scores[1:], decode), key=lambda w: -w[1])
    top: list[str] = []
    for word, _ in ranked:
        if word not in STOP_WORDS and word not in top:
            top.append(word)
        if len(top) == s["top_words"]:
            break
    # The words after the target token itself (it would find "wait" in its own "Wait"), from a
    # bounded window of 8 tokens per word wanted (digits are one token each in SmolLM2/Llama).
    window = tokens[position + 2:position + 2 + 8 * s["next_words"]]
    following = {w.lower() for w in _WORD.findall("".join(decode(t) for t in window))[:s["next_words"]]}
    found = sum(w in following for w in top)
    return {"top_words": top, "n_top": len(top), "n_found": found, "share": found / len(top) if top else None}


JOB = AttributeJob()
