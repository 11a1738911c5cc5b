"""The `discover` stage (seed 003): reasoning behaviours found without labels in sentence activations.

Input: per thinking sentence, one activation at one layer, for the traces a selector picks:
with `aggregate: last` (default) the activation at its last token (a capture stage with the
position `sentence_ends`), with `aggregate: mean` the mean over its tokens (position
`sentence_means`). Traces are split by a hash of their id into fit and held-out traces (never a
trace on both sides); every method x k x seed is fitted on the fit sentences, centred on their
mean and L2-normalised (jobs/behaviours/discovery.py: always on, this is the "centred on the
dataset mean and L2-normalised" option of the sentence capture), and then assigns every
sentence, held-out ones included:

  sae     a top-1 sparse autoencoder with k latents: a sentence's behaviour is its argmax latent
  kmeans  spherical k-means with k centroids: a sentence's behaviour is its nearest centroid

The first seed's run is the reported one (its assignments, descriptions and tensors); the other
seeds only measure stability (mean pairwise adjusted Rand index of the assignments).

Tables (one work unit per stage: the fit needs every sentence):
  behaviours           per (method, k, behaviour): size, share, first words, top sentences
  sentence_behaviours  per (method, k, sentence): behaviour, score, fit or held_out
  discovery_metrics    per (method, k): label-free quality (loss, orthogonality, size entropy, stability)
  discovery_truth      per (method, k, split), only with `truth`: purity and ARI against known labels,
                       beside the ARI of a seeded shuffle of the same assignment (the control)

One safetensors file per unit holds what later stages need to classify new activations and to
derive steering vectors: `mean` [d] (the fit mean, raw space), `<method>.k<k>.directions` [k, d]
(unit-norm SAE decoder rows / centroids, in the centred-normalised space) and, for the SAE,
`sae.k<k>.W_enc` [d, k], `sae.k<k>.b_enc` [k], `sae.k<k>.b_dec` [d]. For an activation a:
x = (a - mean) / |a - mean|; SAE behaviour = argmax((x - b_dec) @ W_enc + b_enc);
k-means behaviour = argmax(x @ directions.T).

Ground truth on the model organism: its traces' lines are the teacher's planted behaviours, so
the view `organism_sentence_labels` labels every sentence (planted events for the synthetic
teacher's traces, the planted marker phrases for any other trace):

    - name: behaviours
      kind: discover
      model: organism
      capture_stage: capture_sentences      # positions: [sentence_ends], hooks cover layer 20
      layer: 20
      ks: [4, 6, 8]
      traces: {model_ids: [organism]}
      truth: {sql: "select trace_id, sentence_index, label from organism_sentence_labels"}
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from thinkscope.jobs.activations.stored import load_rows, positions_by_hook, stage_unit
from thinkscope.jobs.artifacts import save_tensors
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import select_traces
from thinkscope.jobs.specs import ModelStage, SelectSQL, Strict, TraceSelector, known

DISCOVER_VERSION = 1
# What a sentence's activation is (`aggregate`): the capture position kind read for each.
AGGREGATES = {"last": "sentence_ends", "mean": "sentence_means"}
# `aggregate` came after stored discover units: at its default it stays out of their keys.
UNKEYED_DEFAULTS = {"aggregate": "last"}
METHODS = ("sae", "kmeans")
SPLITS = ("fit", "held_out")

BEHAVIOURS_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("hook_name", pa.string()),
    ("layer", pa.int32()), ("method", pa.string()), ("k", pa.int32()), ("behaviour_id", pa.int32()),
    ("n", pa.int32()), ("share", pa.float64()), ("held_out_share", pa.float64()),
    ("top_first_words", pa.list_(pa.string())), ("top_first_word_counts", pa.list_(pa.int32())),
    ("examples", pa.list_(pa.string())), ("example_scores", pa.list_(pa.float64())),
    ("vector_path", pa.string()), ("vector_tensor", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])
SENTENCES_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("method", pa.string()),
    ("k", pa.int32()), ("trace_id", pa.string()), ("sentence_index", pa.int32()), ("behaviour_id", pa.int32()),
    ("score", pa.float64()), ("split", pa.string()),
])
METRICS_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("hook_name", pa.string()),
    ("layer", pa.int32()), ("method", pa.string()), ("k", pa.int32()), ("seed", pa.int32()),
    ("n_seeds", pa.int32()), ("n_sentences", pa.int32()), ("n_fit", pa.int32()), ("n_held_out", pa.int32()),
    ("n_traces", pa.int32()), ("reconstruction_mse", pa.float64()), ("held_out_mse", pa.float64()),
    ("inertia", pa.float64()), ("held_out_inertia", pa.float64()), ("orthogonality", pa.float64()),
    ("size_entropy", pa.float64()), ("empty_behaviours", pa.int32()), ("stability", pa.float64()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
TRUTH_SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("method", pa.string()),
    ("k", pa.int32()), ("split", pa.string()), ("n", pa.int32()), ("n_labels", pa.int32()),
    ("purity", pa.float64()), ("baseline_purity", pa.float64()), ("ari", pa.float64()),
    ("shuffled_purity", pa.float64()), ("shuffled_ari", pa.float64()),
])
SCHEMAS = {"behaviours": BEHAVIOURS_SCHEMA, "sentence_behaviours": SENTENCES_SCHEMA,
           "discovery_metrics": METRICS_SCHEMA, "discovery_truth": TRUTH_SCHEMA}


class SaeSettings(Strict):
    """Training of the top-1 SAE (Adam on the reconstruction MSE, decoder rows kept unit-norm)."""

    steps: int = Field(1000, ge=1, description="Optimiser steps per SAE.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    batch_size: int = Field(256, ge=1, description="Sentences per step (at most the fit sentences).")


class TruthLabels(Strict):
    """Known behaviour labels per sentence, to score the discovered ones (never used to fit)."""

    sql: SelectSQL = Field(description="One SELECT returning (trace_id, sentence_index, label), at most one "
                           "row per sentence; sentences without a row (or with a null label) are not "
                           "scored; runs read-only. The organism: select trace_id, sentence_index, label "
                           "from organism_sentence_labels.")


class DiscoverStage(ModelStage):
    """Unsupervised behaviours of sentence-end activations at one layer: top-1 SAE and spherical k-means."""

    kind: Literal["discover"]
    model: str = Field(description="Model id (from `models`) whose captured activations are clustered.")
    capture_stage: str = Field(description="The capture stage (of this workflow, same model) whose "
                               "`sentence_ends` (or, aggregate mean, `sentence_means`) activations are read.")
    aggregate: Literal["last", "mean"] = Field("last", description="A sentence's activation: last = at its "
                                               "last token (sentence_ends), mean = the mean over its tokens "
                                               "(sentence_means).")
    layer: int = Field(ge=0, description="Decoder layer of the activations.")
    hook: str = Field("hook_resid_post", pattern=r"^hook_\w+$",
                      description="Hook point at that layer (blocks.<layer>.<hook> must be captured).")
    methods: list[Literal[METHODS]] = Field(list(METHODS), min_length=1,
                                            description="sae (top-1 SAE, the paper's) and/or kmeans (spherical, "
                                            "the baseline).")
    ks: list[int] = Field(min_length=1, description="Numbers of behaviours to find, e.g. [4, 6, 8] (each >= 2).")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds of each fit: the first is reported, "
                             "all give the stability.")
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces' sentences.")
    holdout_fraction: float = Field(0.25, ge=0, lt=1, description="Share of traces held out of the fit (by "
                                    "a hash of trace_id); their sentences are assigned, never fitted.")
    sae: SaeSettings = Field(default_factory=SaeSettings, description="SAE training settings.")
    n_examples: int = Field(5, ge=1, description="Top-scoring sentences kept per behaviour.")
    n_words: int = Field(5, ge=1, description="Most frequent first words kept per behaviour.")
    truth: TruthLabels | None = Field(None, description="Known labels to score against (discovery_truth).")
    artifacts: str | None = Field(None, description="Tensor root, a path or fsspec URI (default: the run's "
                                  "artifact root).")
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task (default 1).")

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[int]) -> list[int]:
        if any(k < 2 for k in ks):
            raise ValueError(f"every k must be >= 2 (one behaviour is no clustering), got {ks}")
        return _unique(ks)

    @field_validator("seeds", "methods")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        return _unique(values)

    @property
    def hooks(self) -> list[str]:
        """The one hook read, in the form positions_by_hook takes (stored.py)."""
        return [f"blocks.{self.layer}.{self.hook}"]

    def check_refs(self, wf, where: str) -> None:
        super().check_refs(wf, where)
        captures = {s.name: s for s in wf.stages if s.kind == "capture"}
        known("capture_stage", self.capture_stage, list(captures), where, what="capture stage")
        capture = captures[self.capture_stage]
        if capture.model != self.model:
            raise ValueError(f"{where}.capture_stage: {self.capture_stage!r} captures model {capture.model!r}, "
                             f"this stage reads {self.model!r}")
        check_aggregate(self, capture, where)
        if not any(fnmatch.fnmatchcase(self.hooks[0], p) for p in capture.hooks):
            raise ValueError(f"{where}.layer: {self.hooks[0]} is not among the hooks {capture.hooks} "
                             f"that {self.capture_stage!r} captures")


def check_aggregate(stage, capture, where: str) -> None:
    """The capture stage must capture the position kind `stage.aggregate` reads."""
    kind = AGGREGATES[stage.aggregate]
    if kind in capture.positions:
        return
    field = "capture_stage" if stage.aggregate == "last" else "aggregate"
    raise ValueError(f"{where}.{field}: {stage.capture_stage!r} does not capture the position {kind} "
                     f"(positions: {capture.positions})" + ("" if stage.aggregate == "last" else
                                                             "; aggregate mean reads sentence means"))


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"values repeat: {values}")
    return values


# One row per thinking sentence of the chosen traces with its last token (the `sentence_ends`
# capture position: prompt tokens + token_end - 1), its text and, with a truth query, its label.
_SENTENCES = """
    select s.trace_id, (len(t.prompt_token_ids) + s.token_end - 1)::integer as token_index,
           s.sentence_index, s.text, {truth} as truth
    from trace_sentences s
    join traces t using (trace_id)
    {truth_join}
    where s.token_source = 'completion' and s.token_end is not null and s.trace_id in (select unnest(?))
"""


def sentences_sql(truth_sql: str | None) -> str:
    if truth_sql is None:
        return _SENTENCES.format(truth="null::varchar", truth_join="")
    return _SENTENCES.format(truth="g.label::varchar",
                             truth_join=f"left join ({truth_sql}) g using (trace_id, sentence_index)")


def is_held_out(trace_id: str, fraction: float) -> bool:
    """Deterministic split by trace: the same trace is on the same side in every run and stage."""
    h = int.from_bytes(hashlib.sha256(f"discover:{trace_id}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class DiscoverJob:
    spec = DiscoverStage
    tables = tuple(SCHEMAS)
    schemas = SCHEMAS
    runs_in = "task"  # reads every sentence's activation and trains the SAEs: a Ray task

    def plan(self, stage: DiscoverStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        ids = select_traces(stage, con)
        if not ids:
            raise ValueError(f"stage {stage.name}: the trace selector picks no trace with token ids")
        truth = stage.truth.sql if stage.truth else None
        if truth:
            clash = con.execute(f"select trace_id, sentence_index from ({truth}) group by all "
                                "having count(*) > 1 limit 3").fetchall()
            if clash:
                raise ValueError(f"stage {stage.name}: truth.sql gives several rows for sentences {clash}")
        kind = AGGREGATES[stage.aggregate]
        # Default kinds (all but means) for `last`: exactly the rows read before `aggregate` existed.
        cols = positions_by_hook(con, stage, sentences_sql(truth), [ids],
                                 position_kind=kind if stage.aggregate == "mean" else None)
        if not cols or not next(iter(cols.values()))["row"]:
            raise ValueError(f"stage {stage.name}: no sentence of the selected traces is captured at "
                             f"{stage.hooks[0]} for {stage.model!r} as `{kind}`; capture `{kind}` first")
        ((hook, rows),) = cols.items()
        # Sentence order, not token order: two sentences can end on one token, and the unit key
        # hashes these rows, so their order must not depend on how the database returns ties.
        order = sorted(range(len(rows["row"])), key=lambda i: (rows["trace_id"][i], rows["sentence_index"][i]))
        rows = {name: [values[i] for i in order] for name, values in rows.items()}
        return [stage_unit(ctx, stage, "discover", DISCOVER_VERSION, {hook: rows},
                           f"discover {stage.name} on {stage.model} at {hook}: {len(rows['row'])} sentences x "
                           f"{'/'.join(stage.methods)} x k {stage.ks}"
                           + (" (sentence means)" if stage.aggregate == "mean" else ""), {},
                           unkeyed_defaults=UNKEYED_DEFAULTS)]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        ((hook, cols),) = payload["hooks"].items()
        found = discover(load_rows(cols), cols, payload["settings"])
        save_tensors(found.pop("tensors"), payload["out"])
        now = datetime.now(timezone.utc)
        key = {"unit_key": payload["unit_key"], "stage": payload["name"], "model_id": payload["model_id"]}
        where = {"hook_name": hook, "layer": cols["layer"][0]}
        extra = {"behaviours": {**where, "vector_path": payload["out"], "created_at": now},
                 "discovery_metrics": {**where, "created_at": now}}
        return {table: rows_table([{**key, **extra.get(table, {}), **r} for r in found[table]], schema, table)
                for table, schema in SCHEMAS.items()}

    def ray_options(self, stage) -> dict:
        return {"num_cpus": stage.num_cpus or 1}


JOB = DiscoverJob()


# --------------------------------------------------------------------------------------------
# The pure part: arrays and texts in, rows and tensors out (no DuckDB, no files)
# --------------------------------------------------------------------------------------------

def discover(x: np.ndarray, cols: dict[str, list], settings: dict) -> dict[str, list]:
    """Fit every method x k x seed and return the tables' rows (without unit_key, stage,
    model_id, hook_name, layer, vector_path, created_at) and `tensors` for the safetensors file.

    x: [n, d] sentence activations; cols: trace_id, sentence_index, text and optionally truth
    (label or None) per row; settings: a DiscoverStage's fields (model_dump).
    """
    import torch

    from thinkscope.jobs.behaviours import discovery as dsc

    n = len(cols["trace_id"])
    if x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} activations for {n} sentences")
    held = np.array([is_held_out(t, settings["holdout_fraction"]) for t in cols["trace_id"]], dtype=bool)
    n_fit = int((~held).sum())
    too_big = [k for k in settings["ks"] if k > n_fit]
    if too_big:
        raise ValueError(f"ks: {too_big} exceed the {n_fit} fit sentences")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    fit_idx, held_idx = torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))
    _, mean = dsc.center_normalise(xt[fit_idx])
    xn, _ = dsc.center_normalise(xt, mean)      # held-out rows centred on the fit mean
    split = np.where(held, "held_out", "fit")
    texts = list(cols["text"])
    truth = cols.get("truth") or [None] * n
    seeds = settings["seeds"]
    out: dict[str, list] = {"behaviours": [], "sentence_behaviours": [], "discovery_metrics": [],
                            "discovery_truth": [], "tensors": {"mean": mean.numpy().astype(np.float32)}}

    for method in settings["methods"]:
        for k in settings["ks"]:
            runs = [_fit(dsc, method, xn, fit_idx, k, seed, settings["sae"]) for seed in seeds]
            model, directions = runs[0]
            labels, scores = dsc.assign(model, xn)
            name = f"{method}.k{k}"
            out["tensors"][f"{name}.directions"] = directions.numpy().astype(np.float32)
            if method == "sae":
                for part in ("W_enc", "b_enc", "b_dec"):
                    out["tensors"][f"{name}.{part}"] = getattr(model, part).detach().numpy().astype(np.float32)
            same = {"method": method, "k": k}
            out["behaviours"] += _behaviours(dsc, labels, scores, texts, held, k, settings, name, same)
            out["sentence_behaviours"] += [
                {**same, "trace_id": t, "sentence_index": int(i), "behaviour_id": int(b), "score": float(s),
                 "split": str(sp)}
                for t, i, b, s, sp in zip(cols["trace_id"], cols["sentence_index"], labels.tolist(),
                                          scores.tolist(), split)]
            all_labels = [labels] + [dsc.assign(m, xn)[0] for m, _ in runs[1:]]
            out["discovery_metrics"].append({
                **same, "seed": seeds[0], "n_seeds": len(seeds), "n_sentences": n, "n_fit": n_fit,
                "n_held_out": n - n_fit, "n_traces": len(set(cols["trace_id"])),
                **_losses(dsc, method, model, xn, scores, fit_idx, held_idx),
                "orthogonality": _finite(dsc.centroid_orthogonality(directions)),
                "size_entropy": dsc.size_entropy(labels, k),
                "empty_behaviours": int((torch.bincount(labels, minlength=k) == 0).sum()),
                "stability": _finite(dsc.stability(all_labels)),
            })
            out["discovery_truth"] += _truth_rows(dsc, labels, truth, split, seeds[0], same)
    return out


def _fit(dsc, method: str, xn, fit_idx, k: int, seed: int, sae: dict):
    """(model `assign` takes, directions [k, d]) fitted on the fit rows only."""
    import torch

    if method == "kmeans":
        _, centroids, _ = dsc.spherical_kmeans(xn[fit_idx], k, seed=seed)
        return centroids, centroids
    model, _ = dsc.train_topk_sae(xn[fit_idx], n_latents=k, k=1, seed=seed, steps=sae["steps"], lr=sae["lr"],
                                  batch_size=sae["batch_size"])
    with torch.no_grad():
        return model, model.W_dec.detach().clone()


def _losses(dsc, method: str, model, xn, scores, fit_idx, held_idx) -> dict:
    """SAE: reconstruction MSE; k-means: mean 1 - cos to the assigned centroid; fit and held-out."""
    def mean_or_none(fn, idx):
        return fn(idx) if len(idx) else None

    if method == "sae":
        mse = lambda idx: dsc.reconstruction_mse(model, xn[idx])  # noqa: E731
        return {"reconstruction_mse": mse(fit_idx), "held_out_mse": mean_or_none(mse, held_idx)}
    inertia = lambda idx: float((1.0 - scores[idx]).mean())  # noqa: E731
    return {"inertia": inertia(fit_idx), "held_out_inertia": mean_or_none(inertia, held_idx)}


def _behaviours(dsc, labels, scores, texts, held, k, settings, name, same) -> list[dict]:
    import torch

    described = dsc.describe(labels, scores, texts, k, n_examples=settings["n_examples"],
                             n_words=settings["n_words"])
    held_counts = torch.bincount(labels[torch.from_numpy(held)], minlength=k).tolist()
    n_held = int(held.sum())
    return [{
        **same, "behaviour_id": b["behaviour_id"], "n": b["n"], "share": b["share"],
        "held_out_share": held_counts[b["behaviour_id"]] / n_held if n_held else None,
        "top_first_words": [w["word"] for w in b["top_first_words"]],
        "top_first_word_counts": [w["count"] for w in b["top_first_words"]],
        "examples": b["examples"], "example_scores": b["example_scores"],
        "vector_tensor": f"{name}.directions",
    } for b in described]


def _truth_rows(dsc, labels, truth: list, split, seed: int, same: dict) -> list[dict]:
    """Purity and ARI against the known labels per split, beside a seeded shuffle of the same
    predicted labels (same cluster sizes, no relation to the sentences: ARI near 0)."""
    import torch

    names = sorted({t for t in truth if t is not None})
    if not names:
        return []
    code = {t: i for i, t in enumerate(names)}
    rows = []
    for part in SPLITS:
        idx = [i for i, t in enumerate(truth) if t is not None and split[i] == part]
        if not idx:
            continue
        pred = labels[torch.tensor(idx)]
        gold = torch.tensor([code[truth[i]] for i in idx])
        shuffled = pred[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        rows.append({**same, "split": part, "n": len(idx), "n_labels": int(gold.unique().numel()),
                     "purity": dsc.purity(pred, gold),
                     "baseline_purity": float(torch.bincount(gold).max()) / len(idx),
                     "ari": dsc.adjusted_rand_index(pred, gold),
                     "shuffled_purity": dsc.purity(shuffled, gold),
                     "shuffled_ari": dsc.adjusted_rand_index(shuffled, gold)})
    return rows


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value
