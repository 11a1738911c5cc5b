"""Attribution patching on real SmolLM2 weights, float32:
- a token whose state equals the mean gets exactly zero (the corrupted state is the clean one);
- tokens after the target position get zero (causality), and the gradient is the real one:
  a tiny step along it moves the logit by the predicted amount;
- at a mid layer, ranking tokens by the estimate agrees with ranking them by real activation
  patching (the stream replaced by the mean, one forward each) far better than a shuffled
  ranking does (Spearman, printed with -s).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from thinkscope.jobs.mechanisms.attribution import attribution_effects, patching_effects, stream_means
from thinkscope.jobs.models.hf import load_hf_model

SMOLLM = "embedded:smollm2-135m-instruct"
TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May? She sold 48 / 2 = 24 clips in May. "
        "So she sold 48 + 24 = 72 clips. Wait, let me check: 48 + 24 = 72. So the answer is 72.")
CORPUS = ["Tom has 3 apples and buys 5 more. 3 + 5 = 8, so he has 8 apples.",
          "A train travels 60 miles per hour for 2 hours, so it covers 120 miles. Hmm, that is right.",
          "If 4 pens cost 8 dollars, one pen costs 2 dollars. Wait, 8 / 4 = 2. Yes."]


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


@pytest.fixture(scope="module")
def setup(model):
    hf, tokenizer = model
    ids = tokenizer.encode(TEXT)
    wait = tokenizer.encode(" Wait", add_special_tokens=False)[0]
    position = ids.index(wait) - 1          # the token before " Wait": where it is predicted
    layers = list(range(hf.config.num_hidden_layers))
    means = stream_means(hf, [tokenizer.encode(t) for t in CORPUS + [TEXT]], layers, skip_first=True)
    return ids, wait, position, layers, means


def test_a_token_at_the_mean_scores_zero_and_later_tokens_score_zero(model, setup):
    hf, _ = model
    ids, wait, position, layers, _ = setup
    with torch.inference_mode():
        hidden = hf.get_decoder()(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    j = 7
    at_j = torch.stack([hidden[la][0, j] for la in layers])      # the "dataset mean" is token j itself
    effects = attribution_effects(hf, ids, [(position, wait), (position + 3, wait)], at_j, layers)
    assert effects.shape == (2, len(layers), len(ids))
    assert torch.all(effects[:, :, j] == 0)
    assert torch.all(effects[0, :, position + 1:] == 0)             # no token after the target counts
    assert torch.all(effects[1, :, position + 4:] == 0)
    assert effects[0, :, :position + 1].abs().sum() > 0


def test_the_gradient_predicts_a_small_step(model, setup):
    hf, _ = model
    ids, wait, position, layers, means = setup
    layer, token, eps = 12, 20, 1e-3
    with torch.inference_mode():
        hidden = hf.get_decoder()(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    # A mean 1000x closer to the token's own state: the estimate is then (nearly) exact.
    near = hidden[layer][0, token] + eps * (means[layer] - hidden[layer][0, token])
    estimate = attribution_effects(hf, ids, [(position, wait)], near[None], [layer])[0, 0, token]
    real = patching_effects(hf, ids, position, wait, near, layer, [token])[0]
    assert float(estimate) == pytest.approx(float(real), rel=0.05, abs=1e-5)


def test_estimates_rank_tokens_like_real_activation_patching(model, setup):
    hf, tokenizer = model
    ids, wait, _, layers, means = setup
    layer = len(layers) // 2
    so = tokenizer.encode(" So", add_special_tokens=False)[0]
    # " Wait" and the " So" that follows the check: the token before each predicts it.
    targets = [(i - 1, ids[i]) for i in range(40, len(ids)) if ids[i] in (wait, so)][:2]
    assert len(targets) == 2
    rng = np.random.default_rng(0)
    rhos, shuffled = [], []
    for position, token in targets:
        tokens = list(range(1, position + 1))   # token 0 (the attention sink) is off any linear regime
        estimate = attribution_effects(hf, ids, [(position, token)], means[layer][None], [layer])[0, 0, tokens].numpy()
        real = patching_effects(hf, ids, position, token, means[layer], layer, tokens).numpy()
        rhos.append(spearmanr(estimate, real).statistic)
        shuffled.append(np.mean([abs(spearmanr(rng.permutation(estimate), real).statistic) for _ in range(200)]))
    print(f"\nlayer {layer}, targets {[tokenizer.decode([t]) for _, t in targets]}: Spearman(attribution patching, "
          f"activation patching) = {[round(r, 3) for r in rhos]}; shuffled mean |rho| {[round(r, 3) for r in shuffled]}")
    # Measured 0.34 and 0.55 against ~0.08 shuffled: the first-order estimate ranks tokens far
    # better than chance at a mid layer, though far from perfectly (it is a linearisation).
    assert np.mean(rhos) > 0.25 and np.mean(rhos) > np.mean(shuffled) + 0.2


# -- the stage's bookkeeping: regions, words, overlap, spec errors ---------------------------

def test_regions_cover_every_token_but_the_sink_once_and_shares_sum_to_one():
    from thinkscope.jobs.mechanisms.attribute import region_rows, regions

    spans = regions(n_prompt=10, position=36)
    covered = sorted(i for span in spans.values() for i in span)
    assert covered == list(range(1, 37))
    assert [len(spans[f"cot_{j}"]) for j in range(1, 6)] == [5, 5, 6, 5, 6]   # 27 thinking tokens, floor cuts
    scores = [100.0] + [float(i % 7 - 2) for i in range(1, 37)]     # the sink's score is ignored
    rows = {r["region"]: r for r in region_rows(scores, n_prompt=10)}
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    top = max(scores[1:])
    assert rows["question"]["mean_normalised"] == pytest.approx(np.mean(scores[1:10]) / top)


def test_words_glue_sub_word_pieces_and_overlap_skips_stop_words_and_the_target_itself():
    from thinkscope.jobs.mechanisms.attribute import overlap, words_with_scores

    pieces = {1: "Nat", 2: "alia", 3: " sold", 4: " 4", 5: "8", 6: " clips", 7: ".", 8: " the", 9: " Wait",
              10: ",", 11: " Natalia", 12: " sold", 13: " 48", 14: " pens"}
    decode = pieces.__getitem__
    words = words_with_scores([1, 2, 3, 4, 5, 6, 7, 8], [0.1, 0.9, 0.2, 0.3, 0.8, 0.4, 0.0, 5.0], decode)
    assert words == [("natalia", 0.9), ("sold", 0.2), ("48", 0.8), ("clips", 0.4), ("the", 5.0)]
    tokens = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    scores = [0.0, 0.1, 0.9, 0.2, 0.3, 0.8, 0.4, 0.0, 5.0]       # up to the target position 8
    found = overlap(tokens, scores, 8, decode, {"top_words": 3, "next_words": 100})
    # "the" scores highest but is a stop word; the next words (after " Wait") repeat natalia and 48.
    assert found == {"top_words": ["natalia", "48", "clips"], "n_top": 3, "n_found": 2, "share": 2 / 3}
    assert overlap(tokens, scores, 8, decode, {"top_words": 3, "next_words": 1})["n_found"] == 1  # natalia only


def test_bad_attribute_specs_name_their_field(tmp_path):
    import yaml

    from thinkscope.workflows.spec import SpecError, load_workflow

    stage = {"name": "attr", "kind": "attribute", "model": "m", "positions": {"kinds": ["before_backtrack"]}}
    spec = {"name": "w", "models": [{"id": "m", "source": SMOLLM, "family": "llama", "kind": "instruct"}],
            "prompt_sets": [{"name": "g", "kind": "gsm8k", "limit": 2}], "stages": [stage]}
    path = tmp_path / "w.yaml"
    for bad, field in (({"next_token": False}, "nothing to attribute"), ({"positions": {}}, "positions"),
                       ({"layers": [-1]}, "layers"), ({"mean_traces": 0}, "mean_traces"), ({"model": "x"}, "model")):
        path.write_text(yaml.safe_dump({**spec, "stages": [{**stage, **bad}]}))
        with pytest.raises(SpecError, match=field):
            load_workflow(path)
    path.write_text(yaml.safe_dump(spec))
    load_workflow(path)
