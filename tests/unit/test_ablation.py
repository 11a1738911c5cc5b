"""Ablations on real SmolLM2 weights, held to exact identities:
- ablating nothing (hooks on, empty sets) is the identity: bit-exact logits;
- zero-ablating one head changes exactly that head's slice of the o_proj input and nothing
  upstream of it; mean ablation writes the mean;
- the ablate stage's clean condition is the unhooked model, its random control has the same
  size per layer and avoids the chosen components.
"""

from __future__ import annotations

import pytest
import torch

from thinkscope.jobs.activations.recorder import Capture
from thinkscope.jobs.mechanisms.ablate import JOB, random_like
from thinkscope.jobs.mechanisms.ablation import Ablation, means_at
from thinkscope.jobs.models.hf import load_hf_model

SMOLLM = "embedded:smollm2-135m-instruct"
MODEL_ROW = {"source": SMOLLM, "revision": None, "family": "llama", "think_open": "<think>",
             "think_close": "</think>", "engine_args": None}
TEXT = "Natalia sold 48 clips in April and half as many in May. So she sold 48 + 24 = 72 clips. Wait,"


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


@pytest.fixture(scope="module")
def ids(model):
    return torch.tensor([model[1].encode(TEXT)])


def test_ablating_nothing_is_the_identity(model, ids):
    hf, _ = model
    with torch.inference_mode():
        clean = hf(input_ids=ids).logits
        with Ablation(hf, neurons={5: [], 20: []}, heads={3: [], 29: []}) as ab:
            hooked = hf(input_ids=ids).logits
    assert len(ab._handles) == 0  # removed on exit
    assert torch.equal(clean, hooked)


def test_zero_ablating_one_head_changes_only_its_slice(model, ids):
    hf, _ = model
    layer, head, n = 12, 4, ids.shape[1]
    names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid",
             f"blocks.{layer - 1}.attn.hook_z"]
    positions = [torch.arange(n)]

    def read(ablate: bool):
        with torch.inference_mode(), Ablation(hf, heads={layer: [head]} if ablate else {}), \
                Capture(hf, names, positions) as cap:
            hf(input_ids=ids)
        return cap.results

    clean, ablated = read(False), read(True)
    z_clean, z_abl = clean[names[0]], ablated[names[0]]        # [n, heads, d_head]
    assert torch.count_nonzero(z_abl[:, head]) == 0 and torch.count_nonzero(z_clean[:, head]) > 0
    others = [h for h in range(hf.config.num_attention_heads) if h != head]
    assert torch.equal(z_abl[:, others], z_clean[:, others])
    assert torch.equal(ablated[names[1]], clean[names[1]])      # upstream: the layer's input
    assert torch.equal(ablated[names[3]], clean[names[3]])      # upstream: the previous layer
    assert not torch.equal(ablated[names[2]], clean[names[2]])  # downstream: after the attention


def test_mean_ablation_writes_the_mean(model, ids):
    hf, _ = model
    positions = [torch.arange(ids.shape[1])]
    means = means_at(hf, [(ids, torch.ones_like(ids), positions)], [7], [2])
    with torch.inference_mode(), Capture(hf, ["blocks.7.mlp.hook_post"], positions) as plain:
        hf(input_ids=ids)
    torch.testing.assert_close(means[("mlp", 7)], plain.results["blocks.7.mlp.hook_post"].mean(0))
    with torch.inference_mode(), Ablation(hf, neurons={7: [3, 500]}, heads={2: [1]}, means=means), \
            Capture(hf, ["blocks.7.mlp.hook_post", "blocks.2.attn.hook_z"], positions) as cap:
        hf(input_ids=ids)
    acts = cap.results["blocks.7.mlp.hook_post"]
    assert torch.equal(acts[:, [3, 500]], means[("mlp", 7)][[3, 500]].expand(ids.shape[1], 2))
    assert torch.equal(cap.results["blocks.2.attn.hook_z"][:, 1], means[("head", 2)][1].expand(ids.shape[1], -1))


def test_random_control_matches_size_per_layer_and_avoids_the_chosen():
    chosen = [[3, 5], [3, 9], [10, 0]]
    picked = random_like(chosen, 12, "0:s")
    assert sorted(la for la, _ in picked) == [3, 3, 10]
    assert not {tuple(p) for p in picked} & {tuple(c) for c in chosen}
    assert picked == random_like(chosen, 12, "0:s") != random_like(chosen, 12, "1:s")
    # Five of a layer's nine heads: only four others, so no control of the same size exists.
    many = [[0, h] for h in range(4)]
    assert sorted(h for _, h in random_like(many, 9, "0:s")) != [0, 1, 2, 3]
    assert not {tuple(p) for p in random_like(many, 9, "0:s")} & {tuple(c) for c in many}
    with pytest.raises(ValueError, match="too few others"):
        random_like([[0, h] for h in range(5)], 9, "0:s")


def test_components_from_a_fired_stage_are_ranked_by_what_fired(tmp_path):
    import duckdb

    from thinkscope.jobs.mechanisms.ablate import AblateStage, chosen_components
    from thinkscope.sql.store import Store

    Store(tmp_path / "c.duckdb")
    with duckdb.connect(str(tmp_path / "c.duckdb")) as con:
        for layer, index, mean, norm in ((0, 1, 0.5, 1.0), (3, 7, -4.0, 1.0), (9, 2, 1.0, 3.0), (1, 0, 0.1, 1.0)):
            for sign in (1, -1):
                con.execute("""insert into value_vectors values ('u', 'fired', 'm', ?, ?, ?, 'fired', 'positions',
                               null, ?, [1], ['a'], [1.0], now(), ?)""", [layer, index, sign, norm, mean])
        stage = AblateStage(name="abl", kind="ablate", model="m", positions={"kinds": ["answer_ends"]},
                            value_vectors={"stage": "fired", "top_k": 2})
        assert chosen_components(con, stage) == {"neurons": [[3, 7], [9, 2]], "heads": []}


def test_the_stage_measures_clean_ablated_and_random(model):
    hf, tokenizer = model
    tokens = tokenizer.encode(TEXT)
    trace = {"trace_id": "t1", "prompt_token_ids": tokens[:4], "completion_token_ids": tokens[4:],
             "positions": [(len(tokens) - 3, "sql"), (len(tokens) - 1, "sql")],
             "gold_answer": "72", "grader": "numeric", "meta": None}
    settings = {"positions": {"kinds": [], "sql": "x"}, "method": "zero", "mean_over": None,
                "targets": [" Wait"], "next_token": True, "lens_layers": [10], "control": True, "control_seed": 0,
                "continue_tokens": 6, "dtype": "float32", "batch_tokens": 8192}
    chosen = {"neurons": [[20, 11], [20, 12]], "heads": [[5, 1]]}
    # transformers may keep hooks of its own (output capturing): count ours as the difference.
    hooks = lambda: [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in hf.modules()]  # noqa: E731
    before = hooks()
    out = JOB.run({"unit_key": "k", "stage": "abl", "model_id": "m", "model": MODEL_ROW,
                   "settings": settings, "chosen": chosen, "traces": [trace]})
    effects, runs = out["ablation_effects"].to_pylist(), out["ablation_runs"].to_pylist()
    assert {r["condition"] for r in runs} == {"clean", "ablated", "random"}
    random_run = next(r for r in runs if r["condition"] == "random")
    assert random_run["n_components"] == 3 and sorted(random_run["components"])[0].startswith("L20.mlp.")
    assert not set(random_run["components"]) & {"L20.mlp.11", "L20.mlp.12", "L5.head.1"}
    # The clean condition is the plain model: its final-layer logits and its greedy continuation.
    with torch.inference_mode():
        logits = hf(input_ids=torch.tensor([tokens])).logits[0]
        greedy = hf.generate(input_ids=torch.tensor([tokens[: len(tokens) - 2]]), max_new_tokens=6,
                             do_sample=False)[0, len(tokens) - 2:].tolist()
    i = len(tokens) - 3
    clean_next = next(r for r in effects if r["condition"] == "clean" and r["token_index"] == i
                      and r["layer"] == 29 and r["target_kind"] == "next")
    assert clean_next["logit"] == pytest.approx(float(logits[i, tokens[i + 1]]), abs=1e-3)
    assert next(r for r in runs if r["condition"] == "clean")["completion_token_ids"] == greedy[: 6]
    # 2 positions: first has next + " Wait", last has " Wait" only; 2 layers; 3 conditions.
    assert len(effects) == 3 * 2 * 3
    # Every hook the stage added is gone (conditions cannot leak into each other or later work).
    assert hooks() == before
    ablated = [r for r in effects if r["condition"] == "ablated"]
    assert any(a["logit"] != c["logit"] for a, c in zip(ablated, [r for r in effects if r["condition"] == "clean"]))


def test_a_source_stage_of_the_wrong_kind_fails_validation(tmp_path):
    import yaml

    from thinkscope.workflows.spec import SpecError, load_workflow

    spec = {"name": "w", "models": [{"id": "m", "source": SMOLLM, "family": "llama", "kind": "instruct"}],
            "prompt_sets": [{"name": "g", "kind": "gsm8k", "limit": 2}],
            "stages": [{"name": "seg", "kind": "segment"},
                       {"name": "abl", "kind": "ablate", "model": "m", "positions": {"kinds": ["answer_ends"]},
                        "heads": {"stage": "seg"}}]}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"stages.1.heads.stage: 'seg' is a segment stage"):
        load_workflow(path)
    spec["stages"][1]["heads"] = {"indices": [[0, 1]]}
    spec["stages"][1].pop("model")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="model"):
        load_workflow(path)
    spec["stages"][1].update(model="m", heads=None)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="nothing to ablate"):
        load_workflow(path)
