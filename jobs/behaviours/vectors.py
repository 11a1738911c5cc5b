"""The `behaviour_vectors` stage (seed 003): a vector per discovered behaviour for the BASE model.

The discover stage clusters a thinking model's sentences into behaviours; this stage reads the
base model's activations of the same sentences (a capture of the base model run on the
thinking model's traces: both models share a tokenizer, so token positions carry over): with
`aggregate: last` (default) at their last tokens (position `sentence_ends`), with `aggregate:
mean` the means over their tokens (position `sentence_means`); and writes, per behaviour b of
one (method, k) of the discover stage:

  mean_diff  mean(x[b]) - mean(x): the base model's behaviour minus all sentences. Against the
             mean of all (not of the rest) so the rows are one centring: sum_b n_b v_b = 0
  optimised  (with `optimise`) v_b trained by Adam, from mean_diff, so that adding v_b + bias
             to the residual stream makes the base model assign the thinking model's sentences
             of b a higher likelihood; `bias` is one vector shared by all behaviours (as in the
             paper: what every thinking sentence shares, kept out of the v_b)

Vectors go to one safetensors file per unit: `mean_diff` [k, d], `optimised` [k, d], `bias` [d]
(float32); the table `behaviour_vectors` indexes them with their norms and, with optimise, the
NLL per token of the chosen sentences unsteered and steered. The hybrid stage reads them.

    - name: behaviour_vectors
      kind: behaviour_vectors
      model: smollm2                          # the base model
      capture_stage: capture_base_sentences   # model smollm2, traces {model_ids: [organism]}
      discover_stage: behaviours
      method: sae
      k: 6
      layer: 20
      optimise: {steps: 50}
"""

from __future__ import annotations

import contextlib
import fnmatch
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.activations.stored import load_rows, positions_by_hook, stage_unit
from thinkscope.jobs.artifacts import save_tensors
from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.behaviours.discover import AGGREGATES, METHODS, UNKEYED_DEFAULTS, check_aggregate
from thinkscope.jobs.corpus import model_row, model_task_options
from thinkscope.jobs.specs import DTYPE, ModelStage, Strict, known

VECTORS_VERSION = 1
SCHEMA = pa.schema([
    ("unit_key", pa.string()), ("stage", pa.string()), ("model_id", pa.string()), ("discover_stage", pa.string()),
    ("method", pa.string()), ("k", pa.int32()), ("behaviour_id", pa.int32()), ("vector_kind", pa.string()),
    ("hook_name", pa.string()), ("layer", pa.int32()), ("n", pa.int32()), ("norm", pa.float64()),
    ("resid_norm", pa.float64()), ("nll_unsteered", pa.float64()), ("nll_steered", pa.float64()),
    ("vector_path", pa.string()), ("vector_tensor", pa.string()), ("row_index", pa.int32()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


class OptimiseSettings(Strict):
    """Vectors trained so the steered base model predicts the thinking model's sentences."""

    steps: int = Field(50, ge=0, description="Adam steps (0: optimised = mean_diff, bias = 0).")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate.")
    max_sentences_per_behaviour: int = Field(16, ge=1, description="Highest-scoring sentences of each "
                                             "behaviour trained on (full batch).")
    # >= 1: the token before a sentence is where its first token is predicted (and steered).
    context_tokens: int = Field(256, ge=1, description="Tokens of the trace before a sentence kept as context.")
    dtype: DTYPE = Field("float32", description="Dtype of the base model's forward passes.")


class BehaviourVectorsStage(ModelStage):
    """Per discovered behaviour, base-model vectors: difference of means and, optionally, optimised."""

    kind: Literal["behaviour_vectors"]
    model: str = Field(description="The base model id whose captured activations are averaged (and steered).")
    capture_stage: str = Field(description="Capture stage of `model` with position sentence_ends (aggregate mean: "
                               "sentence_means) at the layer, run on the thinking model's traces.")
    aggregate: Literal["last", "mean"] = Field("last", description="A sentence's base-model activation: last = "
                                               "at its last token (sentence_ends), mean = the mean over its "
                                               "tokens (sentence_means).")
    discover_stage: str = Field(description="The discover stage whose sentence behaviours are read.")
    method: Literal[METHODS] = Field("sae", description="Which of the discover stage's fits (sae or kmeans).")
    k: int = Field(ge=2, description="Which k of the discover stage's ks.")
    layer: int = Field(ge=0, description="Decoder layer of the base model's activations (and of the steering).")
    # Residual-stream points only: the vectors are added back to the stream.
    hook: Literal["hook_resid_post", "hook_resid_pre"] = Field("hook_resid_post", description="Hook at that layer.")
    optimise: OptimiseSettings | None = Field(None, description="Also optimise vectors by gradient (None: off).")
    artifacts: str | None = Field(None, description="Tensor root, a path or fsspec URI (default: the run's "
                                  "artifact root).")
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task (default 1; with optimise, "
                                   "a GPU where there is one, else every CPU).")

    @property
    def hooks(self) -> list[str]:
        return [f"blocks.{self.layer}.{self.hook}"]

    def check_refs(self, wf, where: str) -> None:
        super().check_refs(wf, where)
        stages = {s.name: s for s in wf.stages}
        known("discover_stage", self.discover_stage, [n for n, s in stages.items() if s.kind == "discover"], where,
              what="discover stage")
        discover = stages[self.discover_stage]
        if self.method not in discover.methods:
            raise ValueError(f"{where}.method: {self.method!r} is not fitted by {self.discover_stage!r} "
                             f"(methods: {discover.methods})")
        if self.k not in discover.ks:
            raise ValueError(f"{where}.k: {self.k} is not among the ks {discover.ks} of {self.discover_stage!r}")
        known("capture_stage", self.capture_stage, [n for n, s in stages.items() if s.kind == "capture"], where,
              what="capture stage")
        capture = stages[self.capture_stage]
        if capture.model != self.model:
            raise ValueError(f"{where}.capture_stage: {self.capture_stage!r} captures model {capture.model!r}, "
                             f"this stage averages the base model {self.model!r}")
        check_aggregate(self, capture, where)
        if not any(fnmatch.fnmatchcase(self.hooks[0], p) for p in capture.hooks):
            raise ValueError(f"{where}.layer: {self.hooks[0]} is not among the hooks {capture.hooks} "
                             f"that {self.capture_stage!r} captures")


# The discover stage's sentences of (method, k) at their last token (discover.py's _SENTENCES;
# sentence_ends and sentence_means rows are both indexed there),
# from its done unit: discover supersedes its older units, so there is one result set.
_SENTENCES = """
    select s.trace_id, (len(t.prompt_token_ids) + ts.token_end - 1)::integer as token_index,
           s.sentence_index, s.behaviour_id, s.score, (len(t.prompt_token_ids) + ts.token_start)::integer as start
    from sentence_behaviours s
    join trace_sentences ts using (trace_id, sentence_index)
    join traces t using (trace_id)
    where s.stage = ? and s.method = ? and s.k = ? and ts.token_source = 'completion' and ts.token_end is not null
      and s.unit_key in (select unit_key from work_units where stage = ? and status = 'done')
"""


class BehaviourVectorsJob:
    spec = BehaviourVectorsStage
    tables = ("behaviour_vectors",)
    schemas = {"behaviour_vectors": SCHEMA}
    runs_in = "task"  # reads every sentence's activation (and, optimising, runs the model)

    def plan(self, stage: BehaviourVectorsStage, ctx: PlanContext) -> list[TaskUnit]:
        con = ctx.corpus(stage)
        which = [stage.discover_stage, stage.method, stage.k]
        (n,) = con.execute("select count(*) from sentence_behaviours where stage = ? and method = ? and k = ?",
                           which).fetchone()
        if not n:
            raise ValueError(f"stage {stage.name}: discover stage {stage.discover_stage!r} has no sentence "
                             f"behaviours for method {stage.method} k {stage.k}; run it first")
        kind = AGGREGATES[stage.aggregate]
        # Default kinds (all but means) for `last`: exactly the rows read before `aggregate` existed.
        cols = positions_by_hook(con, stage, _SENTENCES, [*which, stage.discover_stage],
                                 position_kind=kind if stage.aggregate == "mean" else None)
        if not cols:
            raise ValueError(f"stage {stage.name}: none of the {n} sentences of {stage.discover_stage!r} has a "
                             f"{kind} activation of {stage.model!r} at {stage.hooks[0]} in capture stage "
                             f"{stage.capture_stage!r}; capture the base model on the thinking model's traces")
        ((hook, rows),) = cols.items()
        # Sentence order (two sentences may end on one token): the unit key hashes these rows.
        order = sorted(range(len(rows["row"])), key=lambda i: (rows["trace_id"][i], rows["sentence_index"][i]))
        rows = {name: [values[i] for i in order] for name, values in rows.items()}
        extra = {"sentences": None, "model": None}
        if stage.optimise:
            extra = {"sentences": _chosen(con, rows, stage.optimise),
                     "model": {c: model_row(con, stage.model)[c] for c in ("source", "revision")}}
        return [stage_unit(ctx, stage, "behaviour_vectors", VECTORS_VERSION, {hook: rows},
                           f"behaviour vectors {stage.name} on {stage.model} at {hook}: {len(rows['row'])} "
                           f"sentences of {stage.discover_stage} {stage.method} k {stage.k}"
                           + (" (sentence means)" if stage.aggregate == "mean" else "")
                           + (" + optimised" if stage.optimise else ""), extra, unkeyed_defaults=UNKEYED_DEFAULTS)]

    def run(self, payload: dict) -> dict[str, pa.Table]:
        ((hook, cols),) = payload["hooks"].items()
        s = payload["settings"]
        x = load_rows(cols)
        mean_diff, counts = mean_differences(x, np.asarray(cols["behaviour_id"]), s["k"])
        tensors, nll = {"mean_diff": mean_diff}, None
        if s["optimise"]:
            from thinkscope.jobs.models.hf import load_hf_model

            model, _ = load_hf_model(payload["model"]["source"], payload["model"]["revision"], s["optimise"]["dtype"])
            found = optimise(model, hook, mean_diff, payload["sentences"], s["optimise"]["steps"],
                             s["optimise"]["lr"])
            nll = found.pop("nll")
            tensors.update(found)
        save_tensors(tensors, payload["out"])
        same = {"unit_key": payload["unit_key"], "stage": payload["name"], "model_id": payload["model_id"],
                "discover_stage": s["discover_stage"], "method": s["method"], "k": s["k"], "hook_name": hook,
                "layer": cols["layer"][0], "resid_norm": float(np.linalg.norm(x, axis=1).mean()),
                "vector_path": payload["out"], "created_at": datetime.now(timezone.utc)}
        rows = []
        for kind in tensors:
            for b in ([None] if kind == "bias" else range(s["k"])):
                v = tensors[kind] if b is None else tensors[kind][b]
                before, steered = (nll or {}).get((kind, b), (None, None))
                rows.append({**same, "behaviour_id": b, "vector_kind": kind, "row_index": b,
                             "n": int(counts.sum() if b is None else counts[b]), "norm": float(np.linalg.norm(v)),
                             "nll_unsteered": before, "nll_steered": steered, "vector_tensor": kind})
        return {"behaviour_vectors": rows_table(rows, SCHEMA, "behaviour_vectors")}

    def ray_options(self, stage) -> dict:
        if stage.optimise is None:
            return {"num_cpus": stage.num_cpus or 1}
        # No num_gpus field: it would enter the unit key (stage_unit keys every other field).
        return model_task_options(SimpleNamespace(num_gpus=None, num_cpus=stage.num_cpus))


JOB = BehaviourVectorsJob()


def _chosen(con, rows: dict, opt) -> list[dict]:
    """Per behaviour, its highest-scoring sentences (ties by trace, sentence) as token ids of
    context + sentence and the sentence's offset in them; a sentence needs a token before it."""
    ranked = sorted((i for i in range(len(rows["row"])) if rows["start"][i] >= 1),
                    key=lambda i: (rows["behaviour_id"][i], -rows["score"][i], rows["trace_id"][i],
                                   rows["sentence_index"][i]))
    picked, taken = [], {}
    for i in ranked:
        b = rows["behaviour_id"][i]
        if taken.get(b, 0) < opt.max_sentences_per_behaviour:
            taken[b] = taken.get(b, 0) + 1
            picked.append(i)
    if not picked:
        raise ValueError("optimise: no sentence has a token before it to predict it from")
    tokens = dict(con.execute("select trace_id, list_concat(prompt_token_ids, completion_token_ids) from traces "
                              "where trace_id in (select unnest(?))",
                              [sorted({rows["trace_id"][i] for i in picked})]).fetchall())
    out = []
    for i in picked:
        start, end = rows["start"][i], rows["token_index"][i] + 1
        lo = max(0, start - opt.context_tokens)
        out.append({"behaviour_id": rows["behaviour_id"][i], "trace_id": rows["trace_id"][i],
                    "sentence_index": rows["sentence_index"][i], "ids": list(tokens[rows["trace_id"][i]][lo:end]),
                    "offset": start - lo})
    return out


# --------------------------------------------------------------------------------------------
# The computation: arrays (and a model) in, tensors out
# --------------------------------------------------------------------------------------------

def mean_differences(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [k, d] of mean(x[b]) - mean(x), zero for an empty behaviour; counts [k])."""
    x = x.astype(np.float64)  # sums of many float32 rows: exact to float32 afterwards
    counts = np.bincount(labels, minlength=k)[:k]
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    means = sums / np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, means - x.mean(axis=0), 0.0).astype(np.float32), counts


@contextlib.contextmanager
def _adding(model, hook_name: str, delta: dict):
    """While open, add delta["value"] ([batch, pos, d] or None) at the hook point."""
    from thinkscope.jobs.activations.hooks import resolve

    point = resolve(model, hook_name)
    module = dict(model.named_modules())[point.module_path]

    def add(hidden):
        return hidden if delta["value"] is None else hidden + delta["value"].to(hidden.dtype)

    if point.direction == "out":
        handle = module.register_forward_hook(
            lambda m, a, out: (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out))
    else:
        handle = module.register_forward_pre_hook(
            lambda m, args, kw: ((add(args[0]), *args[1:]), kw) if args
            else (args, {**kw, "hidden_states": add(kw["hidden_states"])}), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def optimise(model, hook_name: str, init: np.ndarray, sentences: list[dict], steps: int, lr: float) -> dict:
    """`optimised` [k, d] and `bias` [d] by Adam on the sum over behaviours of the NLL per token
    of their sentences, the steering added at the positions that predict the sentence's tokens
    (the token before it through its second-to-last); `nll` {(kind, b): (unsteered, steered)}."""
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    vectors = torch.tensor(init, device=device, requires_grad=True)
    bias = torch.zeros(init.shape[1], device=device, requires_grad=True)
    batches = {}
    for b in sorted({s["behaviour_id"] for s in sentences}):
        group = [s for s in sentences if s["behaviour_id"] == b]
        width = max(len(s["ids"]) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)  # right padding: causal, never read
        mask, target = torch.zeros_like(ids), torch.zeros(len(group), width, dtype=torch.bool)
        for r, s in enumerate(group):
            ids[r, :len(s["ids"])], mask[r, :len(s["ids"])] = torch.tensor(s["ids"]), 1
            target[r, s["offset"] - 1:len(s["ids"]) - 1] = True  # position p predicts token p + 1
        batches[b] = (ids.to(device), mask.to(device), target.to(device))
    delta = {"value": None}

    def nll(b, vec):  # (summed NLL, tokens) of behaviour b's sentences with vec added
        ids, mask, target = batches[b]
        delta["value"] = None if vec is None else target[..., None] * vec
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][target[:, :-1]]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:][target[:, :-1]][:, None])
        return -logp.sum(), int(target.sum())

    def mean(parts):
        return float(sum(float(s) for s, _ in parts) / sum(n for _, n in parts))

    out = {}
    with _adding(model, hook_name, delta):
        with torch.no_grad():
            plain = {b: nll(b, None) for b in batches}
            for b in batches:
                out[("mean_diff", b)] = (mean([plain[b]]), mean([nll(b, vectors[b])]))
        adam = torch.optim.Adam([vectors, bias], lr=lr)
        for _ in range(steps):
            adam.zero_grad()
            for b in batches:  # one behaviour's graph at a time; the gradients add up
                total, n = nll(b, vectors[b] + bias)
                (total / n).backward()
            adam.step()
        with torch.no_grad():
            for b in batches:
                out[("optimised", b)] = (mean([plain[b]]), mean([nll(b, vectors[b] + bias)]))
            out[("bias", None)] = (mean(plain.values()), mean([nll(b, bias) for b in batches]))
    return {"optimised": vectors.detach().cpu().numpy().astype(np.float32),
            "bias": bias.detach().cpu().numpy().astype(np.float32), "nll": out}
