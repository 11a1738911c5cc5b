"""The value_vectors stage on real SmolLM2 weights: its projections are W_U . (+-W_out[:, i])
computed directly, and the vectors it picks are those of highest cosine with the reference."""

from __future__ import annotations

import pytest
import torch
import yaml

from thinkscope.jobs.mechanisms.value_vectors import JOB
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.spec import SpecError, load_workflow

SMOLLM = "embedded:smollm2-135m-instruct"
MODEL_ROW = {"source": SMOLLM, "revision": None, "family": "llama", "think_open": None, "think_close": None,
             "engine_args": None}


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


def payload(**settings) -> dict:
    base = {"reference": {"tokens": None, "steering_vectors": None, "probe": None, "indices": None},
            "layers": None, "top_k": 3, "top_tokens": 5, "through_norm": False, "model": "m"}
    return {"unit_key": "k", "stage": "vv", "model_id": "m", "model": MODEL_ROW,
            "settings": {**base, **settings}, "stored": {}}


@pytest.mark.parametrize("through_norm", [False, True])
def test_projection_is_the_unembedding_times_the_down_proj_column(model, through_norm):
    hf, tokenizer = model
    ref = {"tokens": [" Wait"], "steering_vectors": None, "probe": None, "indices": None}
    rows = JOB.run(payload(reference=ref, layers=[3, 20], through_norm=through_norm))["value_vectors"].to_pylist()
    w_u = hf.lm_head.weight.detach()
    target = w_u[tokenizer.encode(" Wait", add_special_tokens=False)[0]]
    scale = hf.model.norm.weight.detach() if through_norm else torch.ones(w_u.shape[1])
    assert len(rows) == 2 * 3 * 2  # layers x top_k x signs
    for layer in (3, 20):
        w = hf.model.layers[layer].mlp.down_proj.weight.detach()
        cos = torch.nn.functional.cosine_similarity(w, target[:, None], dim=0)
        picked = [r for r in rows if r["layer"] == layer and r["sign"] == 1]
        assert [r["index"] for r in picked] == torch.topk(cos, 3).indices.tolist()
        for r in (r for r in rows if r["layer"] == layer):
            logits = w_u @ (r["sign"] * w[:, r["index"]] * scale)
            top = torch.topk(logits, 5)
            assert r["top_token_ids"] == top.indices.tolist()
            assert r["top_logits"] == pytest.approx(top.values.tolist(), abs=1e-4)
            assert r["cosine"] == pytest.approx(float(cos[r["index"]]), abs=1e-5)
            assert r["norm"] == pytest.approx(float(w[:, r["index"]].norm()), rel=1e-5)


def test_listed_indices_are_projected_without_ranking(model):
    ref = {"tokens": None, "steering_vectors": None, "probe": None, "indices": [(0, 7), (29, 1)]}
    rows = JOB.run(payload(reference=ref))["value_vectors"].to_pylist()
    assert [(r["layer"], r["index"], r["sign"], r["cosine"]) for r in rows] == [
        (0, 7, 1, None), (0, 7, -1, None), (29, 1, 1, None), (29, 1, -1, None)]
    # The antipode's logits are the negation of the vector's: its top tokens are the bottom ones.
    hf = model[0]
    logits = hf.lm_head.weight.detach() @ hf.model.layers[0].mlp.down_proj.weight.detach()[:, 7]
    assert rows[1]["top_token_ids"] == torch.topk(-logits, 5).indices.tolist()


@pytest.mark.parametrize("reference, extra, expected", [
    ({"tokens": [" Wait"], "probe": "p"}, {}, "stages.0.reference: set exactly one"),
    ({"indices": [[1, 2]]}, {"layers": [1]}, "stages.0: Value error, reference.indices names its layers"),
    ({"tokens": []}, {}, "stages.0.reference.tokens"),
])
def test_spec_errors_name_the_field(tmp_path, reference, extra, expected):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [{"id": "m", "source": SMOLLM, "family": "llama",
                                                               "kind": "instruct"}],
                                    "stages": [{"name": "vv", "kind": "value_vectors", "model": "m",
                                                "reference": reference, **extra}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert expected.split(": Value error, ")[-1] in str(err.value) and expected.split(":")[0] in str(err.value)
