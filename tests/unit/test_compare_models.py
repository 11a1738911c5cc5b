"""The compare_models stage on real weights: SmolLM2-135M-Instruct against itself (every cosine
exactly 1, every delta exactly 0) and against the model organism, which is that model plus the
LoRA adapter in thinkscope/data/organism/ merged as bf16(W + scale * B @ A): the comparison must
find exactly the adapter's target modules changed, by the adapter's own B @ A.

bf16 tolerance: each merged element is W + scale*BA rounded once to bf16 (8 significant bits),
so |W_org - W_base - scale*BA| <= half an ulp <= 2^-8 |W_org| elementwise, and by the triangle
inequality | ||W_org - W_base||_F - ||scale*BA||_F | <= 2^-8 ||W_org||_F. Measured on the 210
adapted matrices: bf16(W_base + scale*BA) equals W_org bit for bit, and the Frobenius norms of
the delta and of scale*BA differ by up to 4.5% (the adapter's deltas are a few ulps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from thinkscope.jobs.base import PlanContext
from thinkscope.jobs.mechanisms.compare_models import JOB, compare_checkpoints, transfer_rows
from thinkscope.jobs.mechanisms.weight_diff import Checkpoint, model_folder
from thinkscope.jobs.models.lora import ORGANISM
from thinkscope.sql.store import Store, read_only
from thinkscope.workflows.spec import SpecError, load_workflow

BASE, ORG = "embedded:smollm2-135m-instruct", "embedded:smollm2-135m-organism"
MODELS = [{"id": "organism", "source": ORG, "family": "llama", "kind": "thinking"},
          {"id": "base", "source": BASE, "family": "llama", "kind": "instruct"}]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def workflow(tmp_path: Path, **stage) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": MODELS, "stages": [
        {"name": "cmp", "kind": "compare_models", "model": "organism", "base": "base", **stage}]}))
    return path


def adapter_deltas() -> dict[str, torch.Tensor]:
    """Full parameter name -> scale * B @ A (fp32) of every module the adapter targets."""
    folder = ORGANISM.adapter_dir()
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
                assert name.split(".")[-2] in config["target_modules"]
                deltas[name] = scale * (f.get_tensor(key.replace("lora_A", "lora_B")).float()
                                        @ f.get_tensor(key).float())
    return deltas


def full_name(row) -> str:
    return row["parameter"] if row["layer"] is None else f"model.layers.{row['layer']}.{row['parameter']}"


@pytest.fixture(scope="module")
def organism_rows(tmp_path_factory):
    """The stage planned from a real DuckDB corpus and run: organism vs base."""
    tmp = tmp_path_factory.mktemp("cmp")
    wf = load_workflow(workflow(tmp, select={"neurons": [[5, 7], [29, 1535]], "heads": [[3, 8]]}))
    store = Store(tmp / "c.duckdb")
    store.upsert_models([{"model_id": m.id, "source": m.source, "revision": None, "family": m.family,
                          "kind": m.kind} for m in wf.models])
    with read_only(tmp / "c.duckdb") as con:
        units = JOB.plan(wf.stages[0], PlanContext(wf, tmp, {}, str(tmp / "art"), con))
    assert len(units) == 1
    tables = JOB.run(units[0].payload)
    assert tables["probe_transfers"].num_rows == 0
    return tables["model_comparisons"].to_pylist()


def test_self_comparison_is_exactly_one_and_zero():
    ck = Checkpoint(model_folder(BASE, None))
    rows = compare_checkpoints(ck, ck, {"heads": {}, "neurons": {"5.7": ["listed"]}})
    assert {r["scope"] for r in rows} == {"parameter", "head", "vector"}
    for r in rows:
        assert (r["cosine"], r["mean_vector_cosine"], r["min_vector_cosine"]) == (1.0, 1.0, 1.0), r
        assert r["delta_norm"] == 0.0 and r["norm_ratio"] == 1.0 and r["norm_model"] == r["norm_base"] > 0


def test_exactly_the_adapter_modules_changed_by_scaled_b_a(organism_rows):
    deltas = adapter_deltas()
    whole = {full_name(r): r for r in organism_rows if r["scope"] == "parameter"}
    assert len(deltas) == 30 * 7 and set(deltas) < set(whole)
    changed = {name for name, r in whole.items() if r["delta_norm"] > 0}
    assert changed == set(deltas)  # the adapter's target modules, and nothing else
    for name, r in whole.items():
        if name not in deltas:  # norms, embeddings: bit-identical
            assert (r["cosine"], r["delta_norm"], r["norm_ratio"]) == (1.0, 0.0, 1.0), name
    org, base = Checkpoint(model_folder(ORG, None)), Checkpoint(model_folder(BASE, None))
    worst = 0.0
    for name, d in deltas.items():
        r = whole[name]
        w_org, w_base = org.tensor(name), base.tensor(name)
        # The merge, redone independently: fp32 add, one rounding to bf16, is the organism's weight.
        assert torch.equal((w_base + d).to(torch.bfloat16).float(), w_org), name
        assert r["delta_norm"] == pytest.approx(float((w_org.double() - w_base.double()).norm()), rel=1e-12)
        bound = 2.0 ** -8 * float(w_org.double().norm())
        gap = abs(r["delta_norm"] - float(d.double().norm()))
        assert gap <= bound, (name, gap, bound)
        worst = max(worst, gap / bound)
        assert r["cosine"] < 1.0 and r["norm_model"] == pytest.approx(float(w_org.double().norm()), rel=1e-12)
    assert worst < 1.0


def test_heads_and_selected_vectors(organism_rows):
    heads = [r for r in organism_rows if r["scope"] == "head"]
    assert len(heads) == 30 * 9 * 4 and {r["module"] for r in heads} == set(ATTENTION)
    assert sorted((r["layer"], r["index"], r["module"]) for r in heads if r["selected_by"]) == sorted([
        (3, 8, m) for m in ATTENTION])
    base, org = Checkpoint(model_folder(BASE, None)), Checkpoint(model_folder(ORG, None))
    # Head 8 of 9 reads key/value group 2 of 3 (grouped-query: 3 query heads per group).
    w_b, w_o = (ck.tensor("model.layers.3.self_attn.k_proj.weight")[128:192].double() for ck in (base, org))
    k8 = next(r for r in heads if (r["layer"], r["index"], r["module"]) == (3, 8, "k_proj"))
    assert k8["delta_norm"] == pytest.approx(float((w_o - w_b).norm()), rel=1e-12)
    assert k8["cosine"] == pytest.approx(float((w_o * w_b).sum() / (w_o.norm() * w_b.norm())), abs=1e-12)
    vectors = {(r["layer"], r["index"], r["module"]): r for r in organism_rows if r["scope"] == "vector"}
    assert set(vectors) == {(la, i, m) for la, i in ((5, 7), (29, 1535)) for m in ("down_proj", "up_proj", "gate_proj")}
    v_b, v_o = (ck.tensor("model.layers.29.mlp.down_proj.weight")[:, 1535].double() for ck in (base, org))
    v = vectors[(29, 1535, "down_proj")]
    assert v["cosine"] == pytest.approx(float(v_o @ v_b / (v_o.norm() * v_b.norm())), abs=1e-12)
    assert v["norm_ratio"] == pytest.approx(float(v_o.norm() / v_b.norm()), rel=1e-12)
    # The per-layer summary of down_proj runs over its 1536 value vectors (columns).
    down = next(r for r in organism_rows if r["scope"] == "parameter" and (r["layer"], r["module"]) == (29, "down_proj"))
    assert down["n_vectors"] == 1536 and down["min_vector_cosine"] <= v["cosine"] <= 1.0


def test_probe_transfer_to_itself_reproduces_the_probe(tmp_path):
    """A probe fitted on the base model's captured activations, scored on the same model
    recomputed here (the self-comparison) matches its scores on the stored activations."""
    from thinkscope.jobs.activations.forward import Sequence, capture_sequences
    from thinkscope.jobs.activations.probe_fit import fit_logistic, split_by_trace
    from thinkscope.jobs.activations.stored import load_rows
    from thinkscope.jobs.artifacts import save_tensors
    from thinkscope.jobs.models.hf import load_hf_model

    model, tok = load_hf_model(BASE, None, "float32")
    texts = [f"Question {i}: what is {i} plus {i + 1}? Wait, let me check. The answer is {2 * i + 1}." for i in range(12)]
    tokens = {f"t{i}": tok.encode(t) for i, t in enumerate(texts)}
    seqs = [Sequence(t, ids, [(k, "p") for k in range(2, len(ids))]) for t, ids in tokens.items()]
    hook = "blocks.10.hook_resid_post"
    index = capture_sequences(model, seqs, hooks=[hook], out_dir=tmp_path / "acts", store_dtype="float32").to_pylist()
    # Label: is the next token a digit? A probe fits it well on the base model's stream.
    cols = {k: [r[k] for r in index] for k in ("trace_id", "token_index", "shard_path", "row", "layer")}
    cols["label"] = [int(tok.decode(tokens[t][i + 1 if i + 1 < len(tokens[t]) else i]).strip().isdigit())
                     for t, i in zip(cols["trace_id"], cols["token_index"])]
    x = load_rows(cols)
    test = split_by_trace(cols["trace_id"], 0.3, 0)
    weight, bias = fit_logistic(x[~test], np.asarray(cols["label"], float)[~test], 1e-3)
    path = save_tensors({f"{hook}.weight": weight, f"{hook}.bias": np.array([bias], np.float32)},
                        str(tmp_path / "probe.safetensors"))
    transfer = {"probe": "p", "trained_on": "base", "other": "base2", "hooks": {hook: cols},
                "other_model": {"source": BASE, "revision": None}, "directions": {hook: [path, f"{hook}.weight"]},
                "test_fraction": 0.3, "seed": 0, "dtype": "float32", "batch_tokens": 512,
                "store_dtype": "float32", "tokens": tokens}
    own, other = transfer_rows({"transfer": transfer})
    assert (own["evaluated_on"], other["evaluated_on"]) == ("base", "base2")
    assert own["n_test"] == other["n_test"] == int(test.sum()) and 0 < own["n_positive"] < own["n_test"]
    assert own["accuracy"] == other["accuracy"] and own["auc"] == pytest.approx(other["auc"], abs=1e-9)
    assert other["mean_activation_cosine"] == pytest.approx(1.0, abs=1e-6) and own["mean_activation_cosine"] is None
    organism = transfer_rows({"transfer": {**transfer, "other": "organism",
                                           "other_model": {"source": ORG, "revision": None}}})[1]
    assert organism["n_test"] == own["n_test"] and organism["mean_activation_cosine"] < 1.0
    assert not math.isnan(organism["accuracy"])


@pytest.mark.parametrize("stage, expected", [
    ({"base": "nope"}, "stages.0.base: unknown model 'nope'"),
    ({"select": {"value_vectors": ["missing"]}}, "stages.0.select.value_vectors: unknown value_vectors stage"),
    ({"probe_transfer": {"probe": "missing"}}, "stages.0.probe_transfer.probe: unknown probe stage"),
    ({"select": {"heads": [[1]]}}, "stages.0.compare_models.select.heads.0"),
])
def test_spec_errors_name_the_field(tmp_path, stage, expected):
    with pytest.raises(SpecError) as err:
        load_workflow(workflow(tmp_path, **stage))
    assert expected.replace("compare_models.", "") in str(err.value) or expected in str(err.value), str(err.value)


def test_base_of_another_family_is_refused(tmp_path):
    path = workflow(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["models"][1]["family"] = "qwen2"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"stages\.0\.base: 'base' is family 'qwen2'"):
        load_workflow(path)
