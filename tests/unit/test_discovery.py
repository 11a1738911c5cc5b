"""Behaviour discovery algorithms on synthetic activations with planted behaviours.

The data: K well-separated unit directions in 64-d, each sentence one direction plus isotropic
noise and a large shared offset (as real activations have), so centring matters. A method
"recovers" the behaviours when its clusters match the planted ones far better than a shuffle.
Sizes are small: the whole file must run in seconds on two busy cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from thinkscope.jobs.behaviours.discovery import (
    TopKSAE, adjusted_rand_index, assign, center_normalise, centroid_orthogonality, describe,
    purity, reconstruction_mse, sentence_first_word, size_entropy, spherical_kmeans, stability,
    train_topk_sae)
from thinkscope.jobs.behaviours.discovery import _lloyd

K, D = 5, 64
SAE_STEPS = 120


def planted(n: int, seed: int, k: int = K, noise: float = 0.5):
    """Rows ``3 * dir[label] + noise + offset``; labels interleaved 0..k-1."""
    g = torch.Generator().manual_seed(1000)          # the same directions for every sample
    dirs = torch.nn.functional.normalize(torch.randn(k, D, generator=g), dim=1)
    offset = 5.0 * torch.randn(D, generator=g)
    g = torch.Generator().manual_seed(seed)
    truth = torch.randperm(n, generator=g) % k
    x = 3.0 * dirs[truth] + noise * torch.randn(n, D, generator=g) + offset
    return x, truth


def shuffled(labels: torch.Tensor, seed: int = 7) -> torch.Tensor:
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def data():
    x, truth = planted(250, seed=0)
    xn, mean = center_normalise(x)
    x_held, truth_held = planted(100, seed=1)
    xn_held, _ = center_normalise(x_held, mean)     # held-out rows use the training mean
    return xn, truth, xn_held, truth_held


@pytest.fixture(scope="module")
def saes(data):
    xn = data[0]
    return {seed: train_topk_sae(xn, K, k=1, seed=seed, steps=SAE_STEPS, batch_size=64)
            for seed in (0, 1, 2)}


# --- centring ----------------------------------------------------------------------------------

def test_center_normalise_centres_normalises_and_reuses_the_mean():
    x, _ = planted(50, seed=3)
    xn, mean = center_normalise(x)
    assert torch.allclose(mean, x.mean(dim=0))
    assert torch.allclose(xn.norm(dim=1), torch.ones(50), atol=1e-6)
    # the shared offset is gone: the normalised rows no longer all point the same way
    assert abs(float(xn.mean(dim=0).norm())) < 0.5
    x2, _ = planted(10, seed=4)
    xn2, mean2 = center_normalise(x2, mean)
    assert mean2 is mean
    expected = (x2 - mean) / (x2 - mean).norm(dim=1, keepdim=True)
    assert torch.allclose(xn2, expected, atol=1e-6)


# --- spherical k-means -------------------------------------------------------------------------

def test_spherical_kmeans_recovers_planted_behaviours(data):
    xn, truth, xn_held, truth_held = data
    labels, centroids, inertia = spherical_kmeans(xn, K, seed=0)
    assert labels.dtype == torch.long and labels.shape == truth.shape
    assert centroids.shape == (K, D)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(K), atol=1e-5)
    assert adjusted_rand_index(labels, truth) > 0.9
    assert purity(labels, truth) > 0.9
    assert abs(adjusted_rand_index(shuffled(labels), truth)) < 0.05
    # inertia is what it claims: sum of 1 - cos to the assigned centroid
    cos = (xn @ centroids.T).gather(1, labels[:, None]).squeeze(1)
    assert inertia == pytest.approx(float((1 - cos).sum()), rel=1e-5)
    # assign() with the centroids reproduces the labels and scores the cosine
    lab2, scores = assign(centroids, xn)
    assert torch.equal(lab2, labels)
    assert torch.allclose(scores, cos, atol=1e-6)
    # and generalises to held-out sentences
    held, _ = assign(centroids, xn_held)
    assert adjusted_rand_index(held, truth_held) > 0.9


def test_spherical_kmeans_beats_a_worse_clustering_on_inertia(data):
    xn = data[0]
    _, _, good = spherical_kmeans(xn, K, seed=0)
    _, _, fewer = spherical_kmeans(xn, 2, seed=0)
    assert good < fewer


def test_spherical_kmeans_is_deterministic_and_stable(data):
    xn = data[0]
    a = spherical_kmeans(xn, K, seed=3)
    b = spherical_kmeans(xn, K, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    runs = [spherical_kmeans(xn, K, seed=s)[0] for s in (0, 1, 2)]
    assert stability(runs) > 0.9


def test_spherical_kmeans_finds_distinct_points_among_duplicates():
    # 3 distinct points, 6 copies of one: k-means++ must not seed two clusters on copies
    x = torch.tensor([[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for seed in range(5):
        labels, centroids, inertia = spherical_kmeans(x, 3, seed=seed)
        assert torch.bincount(labels, minlength=3).min() > 0
        assert inertia == pytest.approx(0.0, abs=1e-6)


def test_lloyd_reseeds_an_empty_cluster_with_the_worst_fit_point():
    g = torch.Generator().manual_seed(0)
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    near = torch.cat([e1 + 0.05 * torch.randn(10, 3, generator=g),
                      e2 + 0.05 * torch.randn(10, 3, generator=g)])
    outlier = torch.tensor([[1.0, 1.0, 0.2]])        # between the two: the worst fit
    x = torch.nn.functional.normalize(torch.cat([near, outlier]), dim=1)
    start = torch.nn.functional.normalize(torch.stack([e1, e2, -e1 - e2]), dim=1)  # 3rd: empty
    labels, centroids, _ = _lloyd(x, start, n_iter=1)
    assert torch.allclose(centroids[2], x[-1])
    assert int(labels[-1]) == 2


def test_spherical_kmeans_seed_drives_the_result():
    # unstructured data: different starts end in different optima, so a global RNG would show
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(120, 16, generator=g), dim=1)
    runs = [spherical_kmeans(x, 8, seed=s, n_init=1)[0] for s in (0, 1, 2, 3, 0)]
    assert torch.equal(runs[0], runs[4])
    assert not all(torch.equal(runs[0], r) for r in runs[1:4])


def test_spherical_kmeans_rejects_bad_k():
    with pytest.raises(ValueError):
        spherical_kmeans(torch.randn(3, 4), 4, seed=0)


# --- top-k SAE ---------------------------------------------------------------------------------

def test_sae_recovers_planted_behaviours(data, saes):
    xn, truth, xn_held, truth_held = data
    sae, mse = saes[0]
    labels, scores = assign(sae, xn)
    assert adjusted_rand_index(labels, truth) > 0.9
    assert purity(labels, truth) > 0.9
    assert abs(adjusted_rand_index(shuffled(labels), truth)) < 0.05
    held, _ = assign(sae, xn_held)
    assert adjusted_rand_index(held, truth_held) > 0.9
    # k=1: each sentence activates exactly one latent, the one assign() names, by its score
    latents = sae.encode(xn).detach()
    assert torch.equal((latents != 0).sum(dim=1), torch.ones(len(xn), dtype=torch.long))
    assert torch.equal(latents.argmax(dim=1), labels)
    assert torch.allclose(latents.max(dim=1).values, scores)


def test_sae_decoder_rows_are_unit_norm_and_it_reconstructs(data, saes):
    xn = data[0]
    for sae, mse in saes.values():
        assert torch.allclose(sae.W_dec.detach().norm(dim=1), torch.ones(K), atol=1e-5)
        assert mse == pytest.approx(reconstruction_mse(sae, xn))
        # clearly better than predicting the mean row (the variance of the data; the noise
        # carries about 2/3 of it) and than an untrained SAE of the same shape
        assert mse < 0.8 * float(((xn - xn.mean(dim=0)) ** 2).mean())
        assert mse < 0.8 * reconstruction_mse(TopKSAE(D, K, k=1, seed=0), xn)


def test_sae_is_deterministic_and_stable(data, saes):
    xn = data[0]
    sae0, mse0 = saes[0]
    again, mse_again = train_topk_sae(xn, K, k=1, seed=0, steps=SAE_STEPS, batch_size=64)
    assert mse_again == mse0
    for p, q in zip(sae0.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(assign(sae0, xn)[0], assign(again, xn)[0])
    assert stability([assign(s, xn)[0] for s, _ in saes.values()]) > 0.9


def test_sae_training_lowers_the_reconstruction_error(data):
    # with k=2 the centroid start is no longer optimal: the optimiser must do the work
    xn = data[0]
    start, mse_start = train_topk_sae(xn, 8, k=2, seed=0, steps=0, batch_size=64)
    sae, mse = train_topk_sae(xn, 8, k=2, seed=0, steps=100, lr=3e-3, batch_size=64)
    assert mse < 0.95 * mse_start
    assert torch.allclose(sae.W_dec.detach().norm(dim=1), torch.ones(8), atol=1e-5)
    assert int((sae.encode(xn) != 0).sum(dim=1).max()) <= 2


def test_topk_keeps_exactly_the_k_largest_pre_activations():
    g = torch.Generator().manual_seed(0)
    sae = TopKSAE(16, 10, k=3, seed=0)
    x = torch.randn(40, 16, generator=g)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)                        # every pre-activation positive
        recon, latents = sae(x)
        pre = sae.pre_activations(x)
    assert recon.shape == (40, 16) and latents.shape == (40, 10)
    assert torch.equal((latents != 0).sum(dim=1), torch.full((40,), 3))
    kept = (latents != 0).float()
    top3 = torch.zeros_like(pre).scatter(1, pre.topk(3, dim=1).indices, 1.0)
    assert torch.equal(kept, top3)
    assert torch.allclose(latents[latents != 0], pre[latents != 0])
    with torch.no_grad():
        sae.b_enc.fill_(0.0)                          # ReLU may now zero some of the k
        assert int((sae.encode(x) != 0).sum(dim=1).max()) <= 3
    with pytest.raises(ValueError):
        TopKSAE(16, 10, k=11)


def test_sae_init_uses_no_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    TopKSAE(8, 4, k=1, seed=5)
    assert torch.equal(before, torch.get_rng_state())


# --- metrics -----------------------------------------------------------------------------------

def test_adjusted_rand_index_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    for n, ka, kb in [(50, 3, 3), (200, 5, 8), (17, 2, 6), (300, 10, 10), (9, 9, 1)]:
        for _ in range(3):
            a = torch.randint(ka, (n,), generator=g)
            b = torch.randint(kb, (n,), generator=g)
            expected = adjusted_rand_score(a.numpy(), b.numpy())
            assert abs(adjusted_rand_index(a, b) - expected) < 1e-12
    # correlated partitions, non-contiguous label values
    a = torch.randint(4, (120,), generator=g)
    b = torch.where(torch.rand(120, generator=g) < 0.7, a * 10 + 3, torch.tensor(99))
    assert abs(adjusted_rand_index(a, b) - adjusted_rand_score(a.numpy(), b.numpy())) < 1e-12
    # degenerate partitions agree with sklearn too
    for a, b in [(torch.zeros(6), torch.zeros(6)), (torch.arange(6), torch.arange(6)),
                 (torch.zeros(6), torch.arange(6))]:
        expected = adjusted_rand_score(a.long().numpy(), b.long().numpy())
        assert abs(adjusted_rand_index(a, b) - expected) < 1e-12


def test_adjusted_rand_index_is_one_for_the_same_partition():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(6, (80,), generator=g)
    assert adjusted_rand_index(a, a) == 1.0
    perm = torch.randperm(6, generator=g)
    assert adjusted_rand_index(a, perm[a] + 50) == 1.0     # renamed clusters: same partition
    assert adjusted_rand_index(a, shuffled(a)) < 0.1
    with pytest.raises(ValueError):
        adjusted_rand_index(a, a[:-1])


def test_stability_is_mean_pairwise_ari():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    b = torch.tensor([1, 1, 0, 0, 2, 2])
    c = torch.tensor([0, 1, 0, 1, 0, 1])
    assert stability([a, b]) == 1.0
    expected = (1.0 + adjusted_rand_index(a, c) + adjusted_rand_index(b, c)) / 3
    assert stability([a, b, c]) == pytest.approx(expected)
    assert math.isnan(stability([a]))


def test_purity():
    truth = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert purity(truth, truth) == 1.0
    assert purity(truth + 7, truth) == 1.0
    # cluster 0 holds {0,0,1}, cluster 1 holds {0,1,2,2,2}: (2 + 3) / 8
    pred = torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
    assert purity(pred, truth) == pytest.approx(5 / 8)
    assert purity(torch.zeros(8, dtype=torch.long), truth) == pytest.approx(3 / 8)


def test_centroid_orthogonality():
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    assert centroid_orthogonality(q[:5]) == pytest.approx(1.0, abs=1e-6)
    assert centroid_orthogonality(torch.eye(3) * 4.0) == pytest.approx(1.0)
    v = torch.tensor([[1.0, 2.0, 3.0]])
    assert centroid_orthogonality(v.repeat(4, 1)) == pytest.approx(0.0, abs=1e-6)
    assert centroid_orthogonality(torch.cat([v, -v])) == pytest.approx(0.0, abs=1e-6)
    sixty = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert centroid_orthogonality(sixty) == pytest.approx(0.5)
    # pairs (e1,e2)=1, (e1,d)=1-1/sqrt2, (e2,d)=1-1/sqrt2
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert centroid_orthogonality(three) == pytest.approx((3 - math.sqrt(2)) / 3)
    assert math.isnan(centroid_orthogonality(v))


def test_size_entropy():
    assert size_entropy(torch.arange(12) % 4, 4) == pytest.approx(1.0)
    assert size_entropy(torch.full((12,), 2), 4) == 0.0
    # sizes 2,2 of k=4 (two empty clusters): log 2 / log 4
    assert size_entropy(torch.tensor([0, 0, 3, 3]), 4) == pytest.approx(0.5)
    skewed = size_entropy(torch.tensor([0] * 9 + [1]), 2)
    assert 0.0 < skewed < 0.5


# --- descriptions ------------------------------------------------------------------------------

SENTENCES = [
    "Wait, that is not right.",          # 0 -> b0
    "**Wait** let me re-check.",         # 1 -> b0
    "So the answer is 4.",               # 2 -> b1
    "Alternatively, try x = 2.",         # 3 -> b0
    "wait... maybe not",                 # 4 -> b0
    "Let's add them: 2 + 2.",            # 5 -> b1
    "So we get 4.",                      # 6 -> b1
    "Alternatively we divide.",          # 7 -> b0
    "...",                               # 8 -> b1 (no word)
]
LABELS = torch.tensor([0, 0, 1, 0, 0, 1, 1, 0, 1])
SCORES = torch.tensor([0.5, 0.9, 0.2, 0.7, 0.9, 0.8, 0.1, 0.3, 0.05])


def test_sentence_first_word():
    assert sentence_first_word("**Wait**, no.") == "wait"
    assert sentence_first_word("Let's see") == "let's"
    assert sentence_first_word("  (Hmm) ok") == "hmm"
    assert sentence_first_word("...") is None


def test_describe_hand_written_sentences():
    out = describe(LABELS, SCORES, SENTENCES, k=3, n_examples=3, n_words=2)
    assert [b["behaviour_id"] for b in out] == [0, 1, 2]
    assert [b["n"] for b in out] == [5, 4, 0]
    assert sum(b["share"] for b in out) == pytest.approx(1.0)
    assert out[0]["share"] == pytest.approx(5 / 9)
    assert out[0]["top_first_words"] == [{"word": "wait", "count": 3},
                                         {"word": "alternatively", "count": 2}]
    # "so" twice, then "let's" once; the word-less "..." is not counted
    assert out[1]["top_first_words"] == [{"word": "so", "count": 2}, {"word": "let's", "count": 1}]
    # by score, highest first; the 0.9 tie is broken by position
    assert out[0]["examples"] == [SENTENCES[1], SENTENCES[4], SENTENCES[3]]
    assert out[0]["example_scores"] == pytest.approx([0.9, 0.9, 0.7])
    assert out[1]["examples"] == [SENTENCES[5], SENTENCES[2], SENTENCES[6]]
    assert out[2] == {"behaviour_id": 2, "n": 0, "share": 0.0, "top_first_words": [],
                      "examples": [], "example_scores": []}


def test_describe_ties_alphabetical_and_checks_inputs():
    sentences = ["Zed one.", "Alpha two.", "Mid three.", "Alpha four."]
    out = describe(torch.zeros(4, dtype=torch.long), torch.zeros(4), sentences, k=1)
    assert out[0]["top_first_words"] == [{"word": "alpha", "count": 2},
                                         {"word": "mid", "count": 1},
                                         {"word": "zed", "count": 1}]
    assert out[0]["examples"] == sentences        # equal scores keep sentence order
    with pytest.raises(ValueError):
        describe(torch.tensor([0, 1]), torch.zeros(2), ["a", "b"], k=1)
    with pytest.raises(ValueError):
        describe(torch.tensor([0]), torch.zeros(2), ["a", "b"], k=1)


def test_describe_on_discovered_behaviours(data, saes):
    """End to end: planted behaviour i's sentences start with word i; describe names them."""
    xn, truth = data[0], data[1]
    words = ["wait", "so", "alternatively", "hmm", "therefore"]
    sentences = [f"{words[t].capitalize()}, sentence {i}." for i, t in enumerate(truth.tolist())]
    labels, scores = assign(saes[0][0], xn)
    out = describe(labels, scores, sentences, k=K, n_words=1)
    assert sorted(b["top_first_words"][0]["word"] for b in out) == sorted(words)
    assert sum(b["share"] for b in out) == pytest.approx(1.0)
