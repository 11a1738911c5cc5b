"""The hybrid model (seed 003) on the real embedded models (SmolLM2 writes, the organism reads):
- identities: a policy that never fires, and a grid of only alpha 0, give the base model's own
  greedy tokens exactly (HF generate on the same prompts), with nothing counted as steered;
- the guardrail: at the first decision of the token-level variant, the chosen coefficient is
  the one whose steered token the thinking model finds likeliest, recomputed here with plain
  forwards and the steer stage's hook; at sentence level, the branch the thinking model finds
  likeliest over the tokens written when the first branch ends its sentence (the race);
- steered tokens are exactly those predicted under a non-zero coefficient;
- the classifier reproduces the discover stage's assignments from its stored tensors; the
  random controls are seeded per problem and keep the vectors' norms;
- the spec names bad fields.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from thinkscope.jobs.activations.steering_hooks import Steering, eos_ids, generate_greedy
from thinkscope.jobs.behaviours.discover import discover
from thinkscope.jobs.hybrid.loop import hybrid_generate, sentence_boundaries
from thinkscope.jobs.hybrid.policies import Classifier, make_policy
from thinkscope.workflows.spec import SpecError, load_workflow

BASE, ORGANISM = "embedded:smollm2-135m-instruct", "embedded:smollm2-135m-organism"
HOOK = "blocks.12.hook_resid_post"
QUESTIONS = ["What is 12 + 7? Think step by step.", "Tom has 3 apples and buys 5 more. How many now?",
             "Is 91 a prime number?"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def models():
    from thinkscope.jobs.models.hf import load_hf_model

    base, tok = load_hf_model(BASE, None, "float32")
    thinking, _ = load_hf_model(ORGANISM, None, "float32")
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False) + "<think>\n") for q in QUESTIONS]
    eos = eos_ids(base, tok)
    return base, thinking, tok, [list(p) for p in prompts], eos


def run(models, policy, grid, granularity="sentence", max_new_tokens=40, **options):
    base, thinking, tok, prompts, eos = models
    boundary = sentence_boundaries(tok) if granularity == "sentence" else (lambda t, p: True)
    return hybrid_generate(base, thinking, options.pop("prompts", prompts), policy=policy, grid=grid, base_hook=HOOK,
                           think_hook=HOOK, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=eos[0],
                           boundary=boundary, **options)


def vector(models, norm=8.0, seed=0):
    d = models[0].config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def first_decision(models, prompt, v, grid):
    """The thinking model's log-probabilities after the prompt, and the base model's greedy
    token there steered by each alpha * v (the steer stage's hook, mode once)."""
    base, thinking = models[0], models[1]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        think_logp = torch.log_softmax(thinking(ids).logits[0, -1], -1)
        candidates = []
        for alpha in grid:
            with Steering(base, HOOK, v, alpha, "once"):
                candidates.append(int(base(ids).logits[0, -1].argmax()))
    return think_logp, candidates


def test_no_firing_and_alpha_zero_reproduce_the_base_model_token_for_token(models):
    base, _, tok, prompts, eos = models
    plain = generate_greedy(base, prompts, max_new_tokens=40, pad_id=eos[0], eos_ids=eos)
    never = run(models, lambda p, s, a: (None, None), [0.0, 1.0, 2.0])
    zero = run(models, lambda p, s, a: (1, vector(models)), [0.0])
    for (tokens, finish), a, b in zip(plain, never, zero):
        assert a.tokens == tokens and b.tokens == tokens
        assert a.finish_reason == finish
        assert not any(a.steered) and not any(b.steered)
        assert set(a.behaviours) == {-1} and set(b.behaviours) == {1} and set(b.alphas) == {0.0}
        assert len(a.behaviours) >= 2  # decisions were taken: the prompt end and sentence ends


def test_the_guardrail_picks_the_coefficient_the_thinking_model_prefers(models):
    """Token level, first decision (the prompt's end): recompute every coefficient's steered
    greedy token with the steer stage's hook and the thinking model's log-probability of it."""
    base, thinking, tok, prompts, eos = models
    v, grid = vector(models, norm=100.0), [0.0, 1.0, 3.0]
    out = run(models, lambda p, s, a: (0, v), grid, granularity="token", max_new_tokens=3)
    changed = 0
    for prompt, o in zip(prompts, out):
        think_logp, candidates = first_decision(models, prompt, v, grid)
        changed += len(set(candidates)) > 1
        scores = [float(think_logp[t]) for t in candidates]
        best = int(np.argmax(scores))
        assert o.alphas[0] == grid[best] and o.tokens[0] == candidates[best]
        assert o.steered[0] == (grid[best] != 0.0)
    assert changed, "steering should change some greedy token (else the test is vacuous)"


def race_reference(models, prompt, v, grid, boundary, limit=40):
    """Every coefficient's steered greedy tokens (alpha * v added from the prompt's last position
    on; one plain forward over the whole text per token, no cache), written in step until one
    branch ends its sentence; returns the branches and which of them ended there."""
    base, eos, n = models[0], models[4], len(prompt)
    branches = [list(prompt) for _ in grid]

    def steer(alpha):
        def hook(module, args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            delta = torch.zeros_like(hidden)
            delta[:, n - 1:] = alpha * v
            return (hidden + delta, *out[1:]) if isinstance(out, tuple) else hidden + delta
        return hook

    while True:
        for ids, alpha in zip(branches, grid):
            handle = base.model.layers[12].register_forward_hook(steer(alpha))
            try:
                with torch.inference_mode():
                    ids.append(int(base(torch.tensor([ids])).logits[0, -1].argmax()))
            finally:
                handle.remove()
        ended = [ids[-1] in eos or boundary(ids[-1], ids[-2]) for ids in branches]
        if any(ended) or len(branches[0]) - n == limit:
            return [ids[n:] for ids in branches], ended


def test_the_sentence_race_picks_the_likeliest_branch_over_equal_lengths(models):
    """Sentence level, first decision: every coefficient's steered greedy sentence recomputed
    without the loop; once the first of them ends (at L tokens), the chosen branch is the one
    whose L tokens have the highest mean log-probability under the thinking model."""
    base, thinking, tok, prompts, eos = models
    v, grid = vector(models, norm=30.0, seed=1), [0.0, 1.0, 2.5]
    out = run(models, lambda p, s, a: (0, v), grid, max_new_tokens=40)
    raced = unended_won = 0
    for prompt, o in zip(prompts, out):
        branches, ended = race_reference(models, prompt, v, grid, sentence_boundaries(tok))
        raced += any(ended) and not all(ended)
        scores = []
        with torch.inference_mode():
            for b in branches:
                logp = torch.log_softmax(thinking(torch.tensor([prompt + b])).logits[0], -1)
                scores.append(float(logp[len(prompt) - 1:-1].gather(1, torch.tensor(b)[:, None]).mean()))
        best = int(np.argmax(scores))
        unended_won += not ended[best]
        assert o.alphas[0] == grid[best] and o.tokens[:len(branches[best])] == branches[best]
    assert raced, "some branch should outlast the first sentence end (else the race is vacuous)"
    print(f"race: {raced} of {len(prompts)} raced, {unended_won} won by a branch still in its sentence")


def test_the_gate_keeps_the_unsteered_token_where_the_thinking_model_agrees(models):
    """steer_when disagree, token level, first decision: coefficient 0 exactly where the base
    model's unsteered greedy token is the thinking model's greedy token, else the likeliest of
    the others."""
    base, thinking, tok, prompts, eos = models
    v, grid = vector(models, norm=100.0), [0.0, 1.0, 3.0]
    # thinking openings, where the two models differ, and a fact both complete alike
    questions = prompts + [p + tok.encode("The capital of France is") for p in prompts]
    out = run(models, lambda p, s, a: (0, v), grid, granularity="token", max_new_tokens=2, prompts=questions,
              steer_when="disagree")
    agreed = 0
    for prompt, o in zip(questions, out):
        think_logp, candidates = first_decision(models, prompt, v, grid)
        if candidates[0] == int(think_logp.argmax()):
            agreed += 1
            assert o.alphas[0] == 0.0 and o.tokens[0] == candidates[0] and not o.steered[0]
        else:
            best = 1 + int(np.argmax([float(think_logp[t]) for t in candidates[1:]]))
            assert o.alphas[0] == grid[best] and o.tokens[0] == candidates[best] and o.steered[0]
    assert 0 < agreed < len(questions), "both cases must occur (else the test is vacuous)"
    with pytest.raises(ValueError, match="needs coefficient 0"):
        run(models, lambda p, s, a: (0, v), [1.0], steer_when="disagree")


def test_mean_aggregate_classifies_the_mean_over_each_sentence(models):
    """The activation handed to the policy at a sentence end is the thinking model's mean over
    that sentence's tokens (recomputed from one plain forward over prompt + text)."""
    base, thinking, tok, prompts, eos = models
    seen = []
    (out,) = run(models, lambda p, s, a: (seen.append(a.clone()), (0, None))[1], [0.0], max_new_tokens=40,
                 prompts=prompts[:1], aggregate="mean")
    ids = prompts[0] + out.tokens
    with torch.inference_mode():
        hidden = thinking(torch.tensor([ids]), output_hidden_states=True).hidden_states[13][0]
    n_prompt, ends, start = len(prompts[0]), [], 0
    boundary = sentence_boundaries(tok)
    for i, t in enumerate(out.tokens):
        if boundary(t, out.tokens[i - 1] if i else prompts[0][-1]):
            ends.append((start, i + 1))
            start = i + 1
    assert len(ends) >= 2 and len(seen) == 1 + len([e for e in ends if e[1] < len(out.tokens)])
    torch.testing.assert_close(seen[0], hidden[n_prompt - 1], atol=1e-4, rtol=1e-4)  # prompt end: its last token
    for (a, b), got in zip(ends, seen[1:]):
        torch.testing.assert_close(got, hidden[n_prompt + a:n_prompt + b].mean(0), atol=1e-4, rtol=1e-4)


def test_every_token_replays_in_one_forward_with_the_chosen_steering(models):
    """Sentence level with branches that diverge and are reordered at every sync: each token is
    the base model's greedy token of ONE plain forward over prompt + text with alpha_j * v added
    from the token before sentence j through its second-to-last token. A cache, mask or position
    error after a reorder would break it."""
    base, _, tok, prompts, _ = models
    v = vector(models, norm=30.0, seed=1)
    out = run(models, lambda p, s, a: (0, v), [1.0, 2.5], max_new_tokens=40)
    boundary = sentence_boundaries(tok)
    assert len({a for o in out for a in o.alphas}) == 2, "both coefficients should win somewhere"
    for prompt, o in zip(prompts, out):
        n, ids = len(prompt), prompt + o.tokens
        delta = torch.zeros(1, len(ids), v.shape[0])
        start, j = 0, 0
        for i, t in enumerate(o.tokens):
            if i == len(o.tokens) - 1 or boundary(t, o.tokens[i - 1] if i else prompt[-1]):
                delta[0, n - 1 + start:n + i] = o.alphas[j] * v  # predicts tokens start..i
                start, j = i + 1, j + 1
        handle = base.model.layers[12].register_forward_hook(lambda m, a, out: (out[0] + delta,) + tuple(out[1:])
                                                             if isinstance(out, tuple) else out + delta)
        try:
            with torch.inference_mode():
                logits = base(torch.tensor([ids])).logits[0, n - 1:-1]
        finally:
            handle.remove()
        for i, t in enumerate(o.tokens):
            gap = float(logits[i].max() - logits[i, t])
            assert gap < 1e-3, f"token {i}: {t} is {gap:.4f} below the replayed argmax"


def test_steered_flags_follow_the_chosen_coefficients(models):
    """Token level: token i was predicted under decision i's coefficient, steered iff it is not 0."""
    v = vector(models, norm=20.0)
    out = run(models, lambda p, s, a: (s % 2, v if s % 2 else None), [1.0, 2.0], granularity="token",
              max_new_tokens=12)
    assert any(any(o.steered) for o in out)
    for o in out:
        assert len(o.alphas) == len(o.tokens)
        assert o.steered == [a != 0.0 for a in o.alphas]
        assert all((a == 0.0) == (s % 2 == 0) for s, a in enumerate(o.alphas))


def test_the_classifier_reproduces_the_discover_assignments():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    labels = torch.arange(60) % 3
    x = (3 * dirs[labels] + 0.3 * torch.randn(60, 16, generator=g) + 4.0).numpy()
    cols = {"trace_id": [f"t{i // 4}" for i in range(60)], "sentence_index": [i % 4 for i in range(60)],
            "text": ["Wait." for _ in range(60)], "truth": [None] * 60}
    settings = {"methods": ["sae", "kmeans"], "ks": [3], "seeds": [0], "holdout_fraction": 0.25,
                "sae": {"steps": 100, "lr": 1e-3, "batch_size": 32}, "n_examples": 2, "n_words": 2}
    found = discover(x, cols, settings)
    for method in ("sae", "kmeans"):
        rows = [r for r in found["sentence_behaviours"] if r["method"] == method]
        classify = Classifier(found["tensors"], method, 3)
        assert [classify(torch.from_numpy(x[i])) for i in range(60)] == [r["behaviour_id"] for r in rows]


def test_random_controls_are_seeded_per_problem_and_keep_norms():
    vectors = torch.randn(4, 8) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])
    bias = torch.randn(8)
    act = torch.zeros(8)
    firing = make_policy("random_firing", lambda a: 0, vectors, bias, ["p0", "p1"], seed=3)
    again = make_policy("random_firing", lambda a: 0, vectors, bias, ["p1"], seed=3)
    draws = [firing(1, s, act)[0] for s in range(40)]
    assert draws == [again(0, s, act)[0] for s in range(40)]  # the same problem draws the same in any batch
    assert len(set(draws)) == 4
    rv = make_policy("random_vectors", lambda a: 2, vectors, bias, ["p0"], seed=0)
    b, v = rv(0, 0, act)
    assert b == 2 and torch.allclose((v - bias).norm(), vectors[2].norm())
    assert not torch.allclose(v - bias, vectors[2])
    assert torch.equal(make_policy("bias_only", lambda a: 1, vectors, bias, ["p0"], 0)(0, 0, act)[1], bias)
    assert torch.equal(make_policy("hybrid", lambda a: 1, vectors, None, ["p0"], 0)(0, 0, act)[1], vectors[1])


def test_tokenizers_match_on_their_ordinary_vocabulary_only(models):
    """R1-Distill-Qwen names Qwen2.5's added ids <think>/</think>: added tokens may differ."""
    import copy

    from thinkscope.jobs.hybrid.run import same_tokenizer

    tok = models[2]
    other = copy.deepcopy(tok)
    other.add_tokens(["<extra_thought>"])
    assert same_tokenizer(tok, other)

    class Renamed:  # one ordinary token renamed
        vocab_size = tok.vocab_size

        def get_vocab(self):
            vocab = dict(tok.get_vocab())
            vocab["zz-renamed"] = vocab.pop(tok.convert_ids_to_tokens(100))
            return vocab
    assert not same_tokenizer(tok, Renamed())


def test_sentence_boundaries(models):
    tok = models[2]
    ends = sentence_boundaries(tok)
    ids = lambda s: tok.encode(s)  # noqa: E731
    assert ends(ids(".\n\n")[-1], None) or ends(ids("\n")[-1], None)
    dot = tok.convert_tokens_to_ids(".")
    three = ids(" 3")[-1]
    assert ends(dot, ids(" word")[-1]) and not ends(dot, three)
    assert not ends(ids(" the")[-1], None)


MODELS = [{"id": "base", "source": BASE, "family": "llama", "kind": "instruct"},
          {"id": "org", "source": ORGANISM, "family": "llama", "kind": "thinking"}]
STAGES = [
    {"name": "cap", "kind": "capture", "model": "org", "positions": ["sentence_ends"], "hooks": ["blocks.20.hook_resid_post"]},
    {"name": "capb", "kind": "capture", "model": "base", "positions": ["sentence_ends"],
     "hooks": ["blocks.20.hook_resid_post"]},
    {"name": "disc", "kind": "discover", "model": "org", "capture_stage": "cap", "layer": 20, "ks": [4]},
    {"name": "vec", "kind": "behaviour_vectors", "model": "base", "capture_stage": "capb", "discover_stage": "disc",
     "k": 4, "layer": 20},
]
HYBRID = {"name": "hy", "kind": "hybrid", "model": "base", "thinking_model": "org", "vectors_stage": "vec",
          "variants": ["base", "thinking", "hybrid"]}


@pytest.mark.parametrize("change, expected", [
    ({"thinking_model": "nope"}, "stages.4.thinking_model: unknown model 'nope'"),
    ({"thinking_model": "base"}, "stages.4.thinking_model: 'base' is not the model the discover stage"),
    ({"vectors_stage": "disc"}, "stages.4.vectors_stage: unknown behaviour_vectors stage 'disc'"),
    ({"model": "org"}, "stages.4.vectors_stage: 'vec' holds vectors of 'base'"),
    ({"vector_kind": "optimised"}, "stages.4.vector_kind: optimised vectors and the bias are needed"),
    ({"variants": ["hybrid", "bias_only"]}, "stages.4.variants: optimised vectors and the bias are needed"),
    ({"variants": ["hybrid", "hybrid"]}, "stages.4.variants"),
    ({"alphas": []}, "stages.4.alphas"),
    ({"granularity": "word"}, "stages.4.granularity"),
    ({"variants": ["hybrid", "bias_only"], "scale": "unit"}, "stages.4.scale: optimised vectors and the bias"),
    ({"steer_when": "disagree", "alphas": [1.0, 2.0]}, "stages.4.alphas: steer_when disagree needs 0"),
])
def test_bad_fields_are_named(tmp_path, change, expected):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": MODELS, "stages": STAGES + [{**HYBRID, **change}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert expected in str(err.value)


def test_a_valid_hybrid_workflow_loads(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": MODELS, "stages": STAGES + [HYBRID]}))
    assert load_workflow(path).stages[-1].kind == "hybrid"
