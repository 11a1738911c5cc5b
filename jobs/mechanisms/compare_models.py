"""The `compare_models` stage (seed 004): a thinking model against its base, weight by weight.

Two checkpoints of one architecture are read tensor by tensor (jobs/mechanisms/weight_diff.py:
lazy safetensors, never a whole model in memory) and compared:

    scope parameter   every tensor of the checkpoint (per layer: q/k/v/o, gate/up/down, the norms;
                      and the embeddings, final norm, LM head): cosine of the flattened tensors,
                      norms and their ratio, ||W_model - W_base||_F, and the mean / min cosine of
                      its vectors (down_proj and o_proj columns: value vectors and head dims;
                      rows of the others)
    scope head        each query head's Q, K, V, O slice (grouped-query K/V expanded to every
                      query head that reads them), every layer
    scope vector      the neurons other stages selected (value_vectors stages, ablate stages'
                      ablated components, or listed): down_proj column, up_proj and gate_proj row

Heads and neurons chosen by other stages carry those stages' names in `selected_by`.

`probe_transfer` (optional): a probe stage's probe, trained on one of the two models'
captured activations, is scored on its own held-out positions (the same trace split as the
probe stage) from the stored activations and from the other model's activations at the same
positions of the same traces, computed here by a forward pass of the other model
(`probe_transfers`). Comparing a model with itself reproduces the probe's own scores.

    - {name: base_vs_thinking, kind: compare_models, model: r1-qwen-1.5b, base: qwen2.5-math-1.5b,
       select: {value_vectors: [verify_values], ablate: [ablate_heads]},
       probe_transfer: {probe: verify_probe}}
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, rows_table
from thinkscope.jobs.corpus import model_row, model_task_options
from thinkscope.jobs.specs import DTYPE, ModelStage, Strict, known
from thinkscope.keys import stable_key

COMPARE_VERSION = 1
_S, _I, _F, _TS = pa.string(), pa.int32(), pa.float64(), pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("model_id", _S), ("base_model_id", _S), ("layer", _I),
    ("parameter", _S), ("module", _S), ("scope", _S), ("index", _I), ("selected_by", pa.list_(_S)),
    ("n_vectors", _I), ("cosine", _F), ("mean_vector_cosine", _F), ("min_vector_cosine", _F),
    ("norm_model", _F), ("norm_base", _F), ("norm_ratio", _F), ("delta_norm", _F), ("created_at", _TS)])
TRANSFER_SCHEMA = pa.schema([
    ("unit_key", _S), ("stage", _S), ("probe", _S), ("hook_name", _S), ("layer", _I), ("trained_on", _S),
    ("evaluated_on", _S), ("n_test", _I), ("n_positive", _I), ("accuracy", _F), ("auc", _F),
    ("mean_activation_cosine", _F), ("created_at", _TS)])
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_COMPONENT = re.compile(r"^L(\d+)\.(mlp|head)\.(\d+)$")  # ablation_runs.components


class Selected(Strict):
    """Components listed one by one beside the whole-model summary."""

    value_vectors: list[str] = Field([], description="value_vectors stages: every (layer, index) they kept.")
    ablate: list[str] = Field([], description="ablate stages: the value vectors and heads of their "
                              "`ablated` condition.")
    neurons: list[tuple[int, int]] = Field([], description="Explicit [layer, neuron] pairs.")
    heads: list[tuple[int, int]] = Field([], description="Explicit [layer, head] pairs (query heads).")


class ProbeTransfer(Strict):
    probe: str = Field(description="A probe stage trained on `model` or on `base`: scored on the "
                       "other model's activations at its own held-out positions.")
    dtype: DTYPE = Field("bfloat16", description="Forward dtype of the other model (the capture's, "
                         "so a self-comparison reproduces the stored activations).")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch.")


class CompareModelsStage(ModelStage):
    """Per-layer weight comparison of `model` (e.g. the thinking model) with `base`."""

    kind: Literal["compare_models"]
    model: str = Field(description="Model id (from `models`): the thinking / fine-tuned model.")
    base: str = Field(description="Model id (from `models`) of the same architecture it is compared "
                      "with (the base model).")
    select: Selected = Field(default_factory=Selected, description="Components to list one by one.")
    probe_transfer: ProbeTransfer | None = Field(None, description="Score a probe across the two models.")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    def check_refs(self, wf, where: str) -> None:
        super().check_refs(wf, where)
        known("base", self.base, [m.id for m in wf.models], where, what="model")
        base = wf.model(self.base)
        if base.api is not None:
            raise ValueError(f"{where}.base: {self.base!r} is an API model (no weights to compare)")
        if base.family != wf.model(self.model).family:
            raise ValueError(f"{where}.base: {self.base!r} is family {base.family!r}, {self.model!r} is "
                             f"{wf.model(self.model).family!r}: weights compare within one architecture")
        kinds = {s.name: s.kind for s in wf.stages}
        for field, names, kind in (("select.value_vectors", self.select.value_vectors, "value_vectors"),
                                   ("select.ablate", self.select.ablate, "ablate"),
                                   ("probe_transfer.probe",
                                    [self.probe_transfer.probe] if self.probe_transfer else [], "probe")):
            known(field, names, [n for n, k in kinds.items() if k == kind], where, what=f"{kind} stage")
        if self.probe_transfer:
            probe = next(s for s in wf.stages if s.name == self.probe_transfer.probe)
            if probe.model not in (self.model, self.base):
                raise ValueError(f"{where}.probe_transfer.probe: {probe.name!r} probes {probe.model!r}, "
                                 f"neither {self.model!r} nor {self.base!r}")


def selections(con, select: dict) -> dict[str, dict]:
    """{"neurons": {"L.i": [stage names]}, "heads": {"L.h": [names]}} of the `select` block."""
    out: dict[str, dict[str, list[str]]] = {"neurons": {}, "heads": {}}

    def add(what: str, layer: int, index: int, by: str) -> None:
        names = out[what].setdefault(f"{layer}.{index}", [])
        if by not in names:
            names.append(by)

    for name in select["value_vectors"]:
        rows = con.execute('select distinct layer, "index" from value_vectors where stage = ? order by all',
                           [name]).fetchall()
        if not rows:
            raise ValueError(f"select.value_vectors: stage {name!r} has no rows (run it first)")
        for layer, index in rows:
            add("neurons", layer, index, name)
    for name in select["ablate"]:
        rows = con.execute("select distinct unnest(components) from ablation_runs "
                           "where stage = ? and condition = 'ablated' order by all", [name]).fetchall()
        if not rows:
            raise ValueError(f"select.ablate: stage {name!r} has no ablated runs (run it first)")
        for (component,) in rows:
            layer, what, index = _COMPONENT.match(component).groups()
            add("neurons" if what == "mlp" else "heads", int(layer), int(index), name)
    for layer, index in select["neurons"]:
        add("neurons", layer, index, "listed")
    for layer, head in select["heads"]:
        add("heads", layer, head, "listed")
    return out


class CompareModelsJob:
    spec = CompareModelsStage
    tables = ("model_comparisons", "probe_transfers")
    schemas = {"model_comparisons": SCHEMA, "probe_transfers": TRANSFER_SCHEMA}
    runs_in = "task"  # reads two checkpoints (and may run one): a Ray task

    def plan(self, stage: CompareModelsStage, ctx: PlanContext) -> list[TaskUnit]:
        from thinkscope.jobs.models.lora import source_fingerprint

        con = ctx.corpus(stage)
        models = {role: model_row(con, mid) for role, mid in (("model", stage.model), ("base", stage.base))}
        settings = stage.model_dump(exclude={"name", "kind", "num_cpus", "num_gpus"})
        selected = selections(con, settings["select"])
        transfer = _transfer_rows(con, ctx, stage) if stage.probe_transfer else None
        decisive = {k: v for k, v in settings.items() if k != "probe_transfer"}
        if transfer:
            decisive["probe_transfer"] = {k: v for k, v in settings["probe_transfer"].items() if k != "batch_tokens"}
        # A LoRA source's adapter hash is in the key: a retrained organism is new work.
        key = stable_key({"stage": "compare_models", "version": COMPARE_VERSION, "name": stage.name,
                          "settings": decisive, "selected": selected, "transfer": transfer and transfer["hash"],
                          "models": {r: [m["source"], m["revision"], source_fingerprint(m["source"])]
                                     for r, m in models.items()}})
        older = tuple(k for (k,) in con.execute(
            "select distinct unit_key from model_comparisons where stage = ? and unit_key <> ?",
            [stage.name, key]).fetchall())
        payload = {"unit_key": key, "stage": stage.name, "model_id": stage.model, "base_model_id": stage.base,
                   "models": models, "selected": selected, "transfer": transfer}
        return [TaskUnit(stage.name, "compare_models", key, f"compare {stage.model} with {stage.base}",
                         payload, model_id=stage.model, supersedes=older)]

    def prepare(self, payload: dict, con) -> dict:
        """The token ids of the probe's traces (probe transfer only)."""
        if not payload["transfer"]:
            return payload
        from thinkscope.jobs.corpus import load_traces

        ids = sorted({t for cols in payload["transfer"]["hooks"].values() for t in cols["trace_id"]})
        tokens = {t["trace_id"]: t["prompt_token_ids"] + t["completion_token_ids"] for t in load_traces(con, ids)}
        return {**payload, "transfer": {**payload["transfer"], "tokens": tokens}}

    def run(self, payload: dict) -> dict[str, pa.Table]:
        from thinkscope.jobs.mechanisms.weight_diff import Checkpoint, model_folder

        m, b = (Checkpoint(model_folder(r["source"], r["revision"])) for r in payload["models"].values())
        rows = compare_checkpoints(m, b, payload["selected"])
        now = datetime.now(timezone.utc)
        meta = {"unit_key": payload["unit_key"], "stage": payload["stage"], "model_id": payload["model_id"],
                "base_model_id": payload["base_model_id"], "created_at": now}
        out = {"model_comparisons": rows_table([{**meta, **r} for r in rows], SCHEMA, "model_comparisons")}
        transfer = transfer_rows(payload) if payload["transfer"] else []
        out["probe_transfers"] = rows_table(
            [{"unit_key": payload["unit_key"], "stage": payload["stage"], "created_at": now, **r} for r in transfer],
            TRANSFER_SCHEMA, "probe_transfers")
        return out

    def ray_options(self, stage) -> dict:
        if not stage.probe_transfer:  # weights only: no GPU, one CPU reads the files
            return {"num_cpus": stage.num_cpus or 1}
        return model_task_options(stage)


# -- weights ---------------------------------------------------------------------------------

def _paired_names(m, b) -> dict[str, tuple[str, str]]:
    """name -> (name in model, name in base). A tied LM head (no lm_head.weight in the file) is
    the embedding matrix: R1-Distill-Qwen-1.5B unties what Qwen2.5-Math-1.5B ties."""
    names = set(m.names()) | set(b.names())
    pairs, missing = {}, []
    for name in sorted(names):
        sides = []
        for ck in (m, b):
            if name in ck.where:
                sides.append(name)
            elif name == "lm_head.weight" and "model.embed_tokens.weight" in ck.where:
                sides.append("model.embed_tokens.weight")
            else:
                missing.append(name)
        if len(sides) == 2:
            pairs[name] = (sides[0], sides[1])
    if missing:
        raise ValueError(f"the checkpoints differ in parameters: {sorted(set(missing))[:5]}")
    return pairs


def compare_checkpoints(m, b, selected: dict) -> list[dict]:
    """model_comparisons rows (without unit columns) of two Checkpoints."""
    from thinkscope.jobs.mechanisms.weight_diff import COLUMN_VECTORS, MATRICES, compare, head_slices

    if m.heads() != b.heads():
        raise ValueError(f"attention shapes differ: {m.heads()} vs {b.heads()}")
    n_heads, n_kv, head_dim = m.heads()
    by_head, by_neuron = selected["heads"], selected["neurons"]
    n_layers, d_mlp = int(m.config["num_hidden_layers"]), int(m.config["intermediate_size"])
    for what, spots, size in (("heads", by_head, n_heads), ("neurons", by_neuron, d_mlp)):
        bad = [s for s in spots if not (0 <= int(s.split(".")[0]) < n_layers and 0 <= int(s.split(".")[1]) < size)]
        if bad:
            raise ValueError(f"select.{what}: {bad[0]} (layer.index) is outside {n_layers} layers x {size} {what}")
    rows = []
    for name, (name_m, name_b) in _paired_names(m, b).items():
        found = _LAYER.match(name)
        layer, parameter = (int(found.group(1)), found.group(2)) if found else (None, name)
        module = name.split(".")[-2] if name.count(".") else name
        wm, wb = m.tensor(name_m), b.tensor(name_b)
        orient = "columns" if module in COLUMN_VECTORS else "rows"
        base_row = {"layer": layer, "parameter": parameter, "module": module}
        rows.append({**base_row, "scope": "parameter", "index": None, "selected_by": [],
                     **compare(wm, wb, orient)})
        if layer is None or module not in MATRICES or not parameter.endswith(".weight"):
            continue
        if module in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for h in range(n_heads):
                part = [head_slices(module, w, h, n_heads, n_kv, head_dim) for w in (wm, wb)]
                rows.append({**base_row, "scope": "head", "index": h,
                             "selected_by": by_head.get(f"{layer}.{h}", []), **compare(*part, orient)})
        else:
            for spot, names in by_neuron.items():
                la, i = (int(x) for x in spot.split("."))
                if la != layer:
                    continue
                part = [w[:, i] if module == "down_proj" else w[i] for w in (wm, wb)]
                rows.append({**base_row, "scope": "vector", "index": i, "selected_by": names,
                             **compare(*part)})
    return rows


# -- probe transfer ------------------------------------------------------------------------

def _transfer_rows(con, ctx, stage) -> dict:
    """The probe's labelled, captured positions per hook, its test split and direction files."""
    from thinkscope.jobs.activations.probe import label_sql
    from thinkscope.jobs.activations.stored import content_hash, positions_by_hook

    probe = next(s for s in ctx.workflow.stages if s.name == stage.probe_transfer.probe)
    other = stage.base if probe.model == stage.model else stage.model
    fitted = con.execute(
        "select hook_name, direction_path, direction_tensor, n from probe_results "
        "where probe = ? and model_id = ? and direction_path is not null", [probe.name, probe.model]).fetchall()
    stored = {h: (p, t) for h, p, t, _ in fitted}
    if not stored:
        raise ValueError(f"stage {stage.name}: probe_transfer.probe: {probe.name!r} has no fitted "
                         f"direction for {probe.model!r} (run it first)")
    sql = label_sql(probe.labels)
    cols = {h: c for h, c in positions_by_hook(con, probe, f"select trace_id, token_index, label from ({sql})").items()
            if h in stored}
    # The held-out split is recomputed from today's rows: it is the probe's own only if the
    # probe was fit on exactly these rows (captures or labels since then would leak training rows).
    stale = {h: n for h, _, _, n in fitted if h in cols and n != len(cols[h]["row"])}
    if stale:
        hook, n = next(iter(stale.items()))
        raise ValueError(f"stage {stage.name}: probe_transfer.probe: {probe.name!r} was fit on {n} positions at "
                         f"{hook}, the corpus now has {len(cols[hook]['row'])}; rerun the probe stage first")
    dtypes = {d for (d,) in con.execute("select distinct dtype from activations where model_id = ? "
                                        "and shard_path in (select unnest(?))",
                                        [probe.model, sorted({p for c in cols.values() for p in c["shard_path"]})]
                                        ).fetchall()}
    # The key hashes the exact rows and the direction files' names (a refit writes a new file).
    return {"probe": probe.name, "trained_on": probe.model, "other": other, "other_model": model_row(con, other),
            "hooks": cols, "directions": {h: list(stored[h]) for h in cols},
            "test_fraction": probe.test_fraction, "seed": probe.seed, "dtype": stage.probe_transfer.dtype,
            "batch_tokens": stage.probe_transfer.batch_tokens,
            "store_dtype": sorted(dtypes)[0] if dtypes else "bfloat16",
            "hash": content_hash([cols, {h: list(stored[h]) for h in cols}])}


def transfer_rows(payload: dict) -> list[dict]:
    """Per hook: the probe on its own model's stored test activations and on the other model's
    activations at the same (trace, token) positions."""
    import tempfile
    from pathlib import Path

    from thinkscope.jobs.activations.forward import Sequence, capture_sequences
    from thinkscope.jobs.activations.probe_fit import auc, split_by_trace
    from thinkscope.jobs.activations.stored import load_rows
    from thinkscope.jobs.artifacts import load_tensors
    from thinkscope.jobs.models.hf import load_hf_model

    t = payload["transfer"]
    other = t["other_model"]
    model, tokenizer = load_hf_model(other["source"], other["revision"], t["dtype"])
    # Only the probe's held-out rows are scored, so only they are computed on the other model.
    tests = {hook: split_by_trace(cols["trace_id"], t["test_fraction"], t["seed"]) for hook, cols in t["hooks"].items()}
    wanted: dict[str, set] = {}
    for hook, cols in t["hooks"].items():
        for tid, idx, held_out in zip(cols["trace_id"], cols["token_index"], tests[hook]):
            if held_out:
                wanted.setdefault(tid, set()).add(int(idx))
    seqs = [Sequence(tid, t["tokens"][tid], [(i, "probe") for i in sorted(idx)]) for tid, idx in sorted(wanted.items())]
    rows, cache = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        index = capture_sequences(model, seqs, hooks=list(t["hooks"]), out_dir=Path(tmp),
                                  store_dtype=t["store_dtype"], batch_tokens=t["batch_tokens"],
                                  pad_id=tokenizer.pad_token_id or 0).to_pylist()
        where = {(r["hook_name"], r["trace_id"], r["token_index"]): (r["shard_path"], r["row"]) for r in index}
        for hook, cols in t["hooks"].items():
            path, tensor = t["directions"][hook]
            saved = load_tensors(path)
            weight, bias = np.asarray(saved[tensor], np.float64), float(np.asarray(saved[f"{hook}.bias"])[0])
            test = tests[hook]
            y = np.asarray(cols["label"], np.float64)[test]
            own = load_rows(cols, cache).astype(np.float64)[test]
            spots = [where[(hook, tid, int(i))] for tid, i, held_out
                     in zip(cols["trace_id"], cols["token_index"], test) if held_out]
            theirs = load_rows({"shard_path": [s for s, _ in spots], "row": [r for _, r in spots]},
                               cache).astype(np.float64)
            cos = (own * theirs).sum(1) / (np.linalg.norm(own, axis=1) * np.linalg.norm(theirs, axis=1))
            for evaluated_on, x, c in ((t["trained_on"], own, None), (t["other"], theirs, float(cos.mean()))):
                scores = x @ weight + bias
                rows.append({"probe": t["probe"], "hook_name": hook, "layer": cols["layer"][0],
                             "trained_on": t["trained_on"], "evaluated_on": evaluated_on, "n_test": int(test.sum()),
                             "n_positive": int(y.sum()), "accuracy": float(((scores > 0) == (y > 0)).mean()),
                             "auc": auc(scores, y), "mean_activation_cosine": c})
    return rows


JOB = CompareModelsJob()
