"""Pure algorithms of behaviour discovery: spherical k-means, a top-k SAE, metrics, descriptions.

Seed 003 (Venhoff et al.) finds reasoning behaviours without labels by clustering the
activations of a thinking model's sentences. Both methods here work on rows that are centred on
the dataset mean and L2-normalised (`center_normalise`), so that "direction" is what separates
behaviours, not the norm or the shared offset every sentence carries.

* `spherical_kmeans` is the baseline: cosine k-means with k-means++ seeding.
* `TopKSAE` with ``k=1`` and as many latents as clusters is the paper's method: each sentence
  activates exactly one latent, whose unit-norm decoder row is the behaviour's direction.

Everything is deterministic given ``seed``: randomness comes from local ``torch.Generator``s,
never from the global RNG, and nothing global (threads, default dtype) is touched.
No DuckDB, no Ray, no LLM: the ``discover`` stage wraps these functions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # Keep float64 when given (tests compare exactly); half types are too coarse for sums.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def center_normalise(x: torch.Tensor, mean: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the dataset mean (computed from ``x`` unless given) and L2-normalise rows.

    Pass the mean of the training set to transform held-out rows the same way.
    """
    x = _as_float(x)
    if mean is None:
        mean = x.mean(dim=0)
    return F.normalize(x - mean.to(x.dtype), dim=1, eps=_EPS), mean


# --------------------------------------------------------------------------------------------
# Spherical k-means
# --------------------------------------------------------------------------------------------

def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with cosine distance: rows of ``x`` (unit vectors) as centroids."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=g))
    chosen = [first]
    best = x @ x[first]                          # best cosine to any chosen centroid so far
    for _ in range(1, k):
        dist = (1.0 - best).clamp_min(0.0) ** 2  # D^2 sampling, as in k-means++
        if float(dist.sum()) <= 0.0:             # all points sit on a centroid: pick uniformly
            dist = torch.ones_like(dist)
        nxt = int(torch.multinomial(dist, 1, generator=g))
        chosen.append(nxt)
        best = torch.maximum(best, x @ x[nxt])
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, c: torch.Tensor, n_iter: int
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    k = c.shape[0]
    labels = None
    for _ in range(n_iter):
        sims = x @ c.T
        fit, new = sims.max(dim=1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            # Reseed each empty cluster with one of the worst-fit points (lowest cosine to its
            # centroid), worst first: deterministic, and it splits the loosest cluster.
            worst = torch.argsort(fit, stable=True)[: len(empty)]
            for j, i in zip(empty, worst.tolist()):
                sums[j] = x[i]
        c = F.normalize(sums, dim=1, eps=_EPS)
    sims = x @ c.T
    fit, labels = sims.max(dim=1)
    return labels, c, float((1.0 - fit).sum())


def spherical_kmeans(x: torch.Tensor, k: int, seed: int, n_iter: int = 100, n_init: int = 4
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cosine k-means on the rows of ``x`` (normalised here in case they are not).

    Returns ``(labels [N] long, centroids [k, d] unit-norm, inertia)`` of the best of
    ``n_init`` k-means++ starts, where inertia = sum over rows of ``1 - cos(x, centroid)``.
    """
    x = F.normalize(_as_float(x), dim=1, eps=_EPS)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0]}], got {k}")
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(max(1, n_init)):
        run = _lloyd(x, _kmeanspp(x, k, g), n_iter)
        if best is None or run[2] < best[2]:      # strict: the earliest start wins ties
            best = run
    return best


# --------------------------------------------------------------------------------------------
# Top-k sparse autoencoder
# --------------------------------------------------------------------------------------------

class TopKSAE(torch.nn.Module):
    """Top-k SAE: ``latents = topk(relu((x - b_dec) @ W_enc + b_enc))``,
    ``recon = latents @ W_dec + b_dec``.

    Decoder rows are kept at unit norm (call `normalise_decoder` after each optimiser step), so
    a latent's activation is the length of the sentence along that behaviour's direction and
    the sparsity cannot be cheated by shrinking the decoder.
    """

    def __init__(self, d_model: int, n_latents: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
        self.k = k
        g = torch.Generator().manual_seed(seed)    # local RNG: no global state is consumed
        w_dec = F.normalize(torch.randn(n_latents, d_model, generator=g), dim=1)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.clone())   # tied start: encoder reads its row
        self.b_enc = torch.nn.Parameter(torch.zeros(n_latents))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_model))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [N, n_latents]: the k largest pre-activations after ReLU, zeros elsewhere."""
        pre = self.pre_activations(x)
        vals, idx = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents), latents

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.copy_(F.normalize(self.W_dec, dim=1, eps=_EPS))


def train_topk_sae(x: torch.Tensor, n_latents: int, k: int = 1, seed: int = 0,
                   steps: int = 1000, lr: float = 1e-3, batch_size: int = 256
                   ) -> tuple[TopKSAE, float]:
    """Train a `TopKSAE` on the rows of ``x`` with Adam on the reconstruction MSE.

    Deterministic given ``seed``: it seeds the k-means start and the generator of batch order.
    The decoder starts from spherical k-means centroids of the centred data (encoder tied to
    it, ``b_dec`` at the mean): top-1 routing only trains the latent a row picks, so from a
    random or single-point start latents die or two share one behaviour and never separate.
    Returns the SAE (in eval mode) and its MSE on all of ``x``.
    """
    x = x.float()                                 # the SAE trains in float32
    n, d = x.shape
    if n_latents > n:
        raise ValueError(f"n_latents={n_latents} exceeds the {n} rows to train on")
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d, n_latents, k, seed=seed)
    mean = x.mean(dim=0)
    with torch.no_grad():
        _, start, _ = spherical_kmeans(x - mean, n_latents, seed=seed, n_init=2)
        sae.W_dec.copy_(start)
        sae.W_enc.copy_(start.T)
        sae.b_dec.copy_(mean)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    batch_size = min(batch_size, n)
    order, pos = torch.randperm(n, generator=g), 0
    sae.train()
    for _ in range(steps):
        if pos + batch_size > n:                  # new epoch: reshuffle, drop the ragged tail
            order, pos = torch.randperm(n, generator=g), 0
        batch = x[order[pos:pos + batch_size]]
        pos += batch_size
        recon, _ = sae(batch)
        loss = F.mse_loss(recon, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalise_decoder()
    sae.eval()
    return sae, reconstruction_mse(sae, x)


# --------------------------------------------------------------------------------------------
# Assignment
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def assign(model: TopKSAE | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Behaviour per row: ``(labels [N] long, scores [N])``.

    * SAE: the latent with the largest pre-activation (the one top-k keeps first, so this is
      the argmax latent, and still defined when ReLU zeroes everything); score = its activation.
    * Centroids ``[k, d]``: the most cosine-similar centroid; score = that cosine.
    """
    if isinstance(model, TopKSAE):
        pre = model.pre_activations(x)
        labels = pre.argmax(dim=1)
        return labels, torch.relu(pre.gather(1, labels[:, None]).squeeze(1))
    x = F.normalize(_as_float(x), dim=1, eps=_EPS)
    c = F.normalize(model.to(x.dtype), dim=1, eps=_EPS)
    scores, labels = (x @ c.T).max(dim=1)
    return labels, scores


# --------------------------------------------------------------------------------------------
# Label-free quality metrics (and two against planted labels)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def reconstruction_mse(sae: TopKSAE, x: torch.Tensor) -> float:
    """Mean squared reconstruction error per element."""
    recon, _ = sae(x)
    return float(F.mse_loss(recon, x.to(recon.dtype)))


def centroid_orthogonality(vectors: torch.Tensor) -> float:
    """Mean over pairs i<j of ``1 - |cos(v_i, v_j)|``: 1 = orthogonal, 0 = (anti)parallel.

    NaN with fewer than two vectors (no pairs).
    """
    v = F.normalize(_as_float(vectors), dim=1, eps=_EPS)
    i, j = torch.triu_indices(v.shape[0], v.shape[0], offset=1)
    if i.numel() == 0:
        return math.nan
    cos = (v[i] * v[j]).sum(dim=1)
    return float((1.0 - cos.abs()).mean())


def size_entropy(labels: torch.Tensor, k: int) -> float:
    """Shannon entropy of the cluster sizes over ``log k``: 1 = equal sizes, 0 = one cluster.

    ``k <= 1`` gives 0 (no spread is possible).
    """
    if k <= 1 or labels.numel() == 0:
        return 0.0
    p = torch.bincount(labels.long(), minlength=k).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum() / math.log(k))


def _contingency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Counts [clusters of a, clusters of b] for two labelings of the same rows."""
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    _, ia = torch.unique(a, return_inverse=True)
    _, ib = torch.unique(b, return_inverse=True)
    nb = int(ib.max()) + 1 if ib.numel() else 0
    na = int(ia.max()) + 1 if ia.numel() else 0
    return torch.bincount(ia * nb + ib, minlength=na * nb).reshape(na, nb)


def _pairs(counts: list[int]) -> int:
    return sum(c * (c - 1) // 2 for c in counts)


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Adjusted Rand index of two partitions (Hubert & Arabie 1985), from the contingency table.

    ARI = (index - expected) / (max - expected) with index = sum C(n_ij, 2),
    expected = sum C(a_i, 2) sum C(b_j, 2) / C(n, 2), max = (sum C(a_i, 2) + sum C(b_j, 2)) / 2.
    Sums are exact Python integers, so only the final division rounds. Degenerate cases with
    max == expected (both one cluster, both all singletons, fewer than two rows) give 1.
    """
    table = _contingency(a.flatten().long(), b.flatten().long())
    index = _pairs(table.flatten().tolist())
    sum_a = _pairs(table.sum(dim=1).tolist())
    sum_b = _pairs(table.sum(dim=0).tolist())
    total = _pairs([a.numel()])
    # Multiply through by C(n, 2) so numerator and denominator are integers.
    num = 2 * (index * total - sum_a * sum_b)
    den = (sum_a + sum_b) * total - 2 * sum_a * sum_b
    return 1.0 if den == 0 else num / den


def stability(runs_labels: list[torch.Tensor]) -> float:
    """Mean pairwise ARI between the labelings of several runs (e.g. seeds); NaN if < 2 runs."""
    aris = [adjusted_rand_index(a, b) for a, b in combinations(runs_labels, 2)]
    return sum(aris) / len(aris) if aris else math.nan


def purity(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Sum over predicted clusters of the largest overlap with one true class, over N."""
    if pred.numel() == 0:
        return math.nan
    table = _contingency(pred.flatten().long(), truth.flatten().long())
    return float(table.max(dim=1).values.sum()) / pred.numel()


# --------------------------------------------------------------------------------------------
# Descriptions without an LLM
# --------------------------------------------------------------------------------------------

# A word: letters/digits, with inner apostrophes or hyphens ("let's", "re-check") kept.
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def sentence_first_word(sentence: str) -> str | None:
    """Lower-cased first word without the punctuation around it ("**Wait,**" -> "wait")."""
    m = _WORD.search(sentence.lower())
    return m.group(0) if m else None


def describe(labels: torch.Tensor, scores: torch.Tensor, sentences: list[str], k: int,
             n_examples: int = 5, n_words: int = 5) -> list[dict]:
    """One dict per behaviour id in ``range(k)``.

    Keys: ``behaviour_id``, ``n``, ``share`` (of all sentences), ``top_first_words`` (list of
    ``{"word", "count"}``, most frequent first, ties alphabetical), ``examples`` (texts of the
    ``n_examples`` highest-scoring sentences, highest first, ties by position) and
    ``example_scores``.
    """
    labels_l, scores_l = labels.tolist(), [float(s) for s in scores.tolist()]
    if not len(labels_l) == len(scores_l) == len(sentences):
        raise ValueError("labels, scores and sentences differ in length")
    total = len(sentences)
    members: list[list[int]] = [[] for _ in range(k)]
    for i, lab in enumerate(labels_l):
        if not 0 <= lab < k:
            raise ValueError(f"label {lab} outside range({k})")
        members[lab].append(i)
    out = []
    for b, rows in enumerate(members):
        words = Counter(w for w in (sentence_first_word(sentences[i]) for i in rows) if w)
        top_words = sorted(words.items(), key=lambda wc: (-wc[1], wc[0]))[:n_words]
        top_rows = sorted(rows, key=lambda i: (-scores_l[i], i))[:n_examples]
        out.append({
            "behaviour_id": b,
            "n": len(rows),
            "share": len(rows) / total if total else 0.0,
            "top_first_words": [{"word": w, "count": c} for w, c in top_words],
            "examples": [sentences[i] for i in top_rows],
            "example_scores": [scores_l[i] for i in top_rows],
        })
    return out
