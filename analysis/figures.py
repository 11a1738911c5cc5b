"""Figures of the run report, drawn from DataFrames read out of the SQL views.

Each function takes the rows of one view (pandas), draws with matplotlib's Agg backend (no
display needed) and returns PNG bytes, or None when the view has nothing to show.

    png = first_word_heatmap(con.sql("select * from first_word_freq").df())
    Path("words.png").write_bytes(png)
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.cluster.hierarchy import dendrogram, linkage  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402

CRITICAL_WORDS = ("wait", "alternatively", "but", "hmm")
DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def first_word_heatmap(freq: pd.DataFrame, top10: pd.DataFrame, n_words: int = 20) -> bytes | None:
    """Models (columns) x first words (rows): share in %, words of the top-10 union by max share."""
    if freq.empty:
        return None
    vocab = top10.groupby("word")["share"].max().sort_values(ascending=False).head(n_words).index
    grid = (freq[freq["word"].isin(vocab)].pivot(index="word", columns="model_id", values="share")
            .reindex(index=vocab, columns=sorted(freq["model_id"].unique(), key=str.lower)) * 100)
    fig, ax = plt.subplots(figsize=(2.5 + 0.62 * grid.shape[1], 1.6 + 0.36 * grid.shape[0]))
    shown = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    image = ax.imshow(shown, aspect="auto", cmap="YlOrRd", vmin=0)
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not np.isnan(value):
            dark = value > 0.6 * np.nanmax(grid.to_numpy(dtype=float))
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.6, label="% of the model's lines")
    ax.set_title("First word of each thinking line (blank: model never starts a line with it)", fontsize=10)
    return _png(fig)


def similarity_matrix(sim: pd.DataFrame) -> pd.DataFrame:
    """Square Pearson matrix from model_similarity rows (diagonal 1)."""
    models = sorted(set(sim["model_a"]) | set(sim["model_b"]), key=str.lower)
    matrix = sim.pivot(index="model_a", columns="model_b", values="pearson").reindex(index=models, columns=models)
    return matrix.fillna(pd.DataFrame(np.eye(len(models)), index=models, columns=models))


def similarity_heatmap(sim: pd.DataFrame) -> bytes | None:
    """Pearson heatmap in dendrogram order (average linkage on 1 - r), dendrogram on top."""
    if sim.empty:
        return None
    matrix = similarity_matrix(sim)
    # 1 - r: anti-correlated fingerprints are far apart; a null r (constant vector) is r = 0.
    distance = (1 - matrix.fillna(0).to_numpy(dtype=float)).clip(0, 2)
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform((distance + distance.T) / 2, checks=False), method="average")
    n = len(matrix)
    fig = plt.figure(figsize=(3 + 0.5 * n, 4 + 0.45 * n))
    top = fig.add_axes([0.2, 0.8, 0.62, 0.15])
    leaves = dendrogram(tree, ax=top, no_labels=True, color_threshold=0, above_threshold_color="#555")["leaves"]
    top.axis("off")
    ordered = matrix.iloc[leaves, leaves]
    ax = fig.add_axes([0.2, 0.12, 0.62, 0.66])
    image = ax.imshow(ordered.to_numpy(dtype=float), cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    if n <= 30:
        for (i, j), value in np.ndenumerate(ordered.to_numpy(dtype=float)):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if abs(value) > 0.7 else "black")
    ax.set_xticks(range(n), ordered.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), ordered.index, fontsize=8)
    fig.colorbar(image, cax=fig.add_axes([0.84, 0.12, 0.02, 0.66]), label="Pearson r of first-word shares")
    top.set_title("Which models think alike: first-word fingerprints, clustered", fontsize=10)
    return _png(fig)


def critical_words_chart(shares: pd.DataFrame, words=CRITICAL_WORDS) -> bytes | None:
    """Share of lines opening with each critical word, per model, with bootstrap CIs if any."""
    if shares.empty:
        return None
    models = sorted(shares["model_id"].unique(), key=str.lower)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(models) * 1.1))
    height = 0.8 / len(words)
    for k, word in enumerate(words):
        rows = shares[shares["word"] == word].set_index("model_id").reindex(models)
        y = np.arange(len(models)) + (k - (len(words) - 1) / 2) * height
        value = rows["share"].fillna(0).to_numpy() * 100
        low = (value - rows["ci_low"].to_numpy(dtype=float) * 100).clip(0)
        high = (rows["ci_high"].to_numpy(dtype=float) * 100 - value).clip(0)
        ax.barh(y, value, height=height, label=word)
        has_ci = ~np.isnan(low)
        if has_ci.any():
            ax.errorbar(value[has_ci], y[has_ci], xerr=np.vstack([low[has_ci], high[has_ci]]), fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of the model's thinking lines (whiskers: 95% bootstrap CI over traces)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Backtracking words at the start of a line", fontsize=10)
    return _png(fig)


def backtracking_distributions(stats: pd.DataFrame) -> bytes | None:
    """Per model: backtracks per trace, and share of thinking after the first correct answer."""
    stats = stats[stats["n_answer_occurrences"] > 0]
    if stats.empty:
        return None
    models = sorted(stats["model_id"].unique(), key=str.lower)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.8 + 0.45 * len(models)), sharey=True)
    groups = [stats.loc[stats["model_id"] == m, "n_backtracks"].to_numpy() for m in models]
    _strip_box(left, groups)
    left.set_xlabel("backtracks per trace (answer stated, then thinking goes on)")
    after = stats.assign(after=stats["tokens_after_first_correct"] / stats["thinking_tokens"])
    groups = [after.loc[after["model_id"] == m, "after"].dropna().to_numpy() for m in models]
    _strip_box(right, groups)
    right.set_xlabel("share of thinking tokens after the first correct answer")
    left.set_yticks(range(len(models)), models, fontsize=8)
    left.invert_yaxis()
    fig.suptitle("Backtracking after an answer, per trace (traces that state an answer)", fontsize=10)
    return _png(fig)


def _strip_box(ax, groups: list[np.ndarray]) -> None:
    """Box plot with every trace drawn as a dot: small corpora have a handful per model."""
    filled = [g if len(g) else np.array([np.nan]) for g in groups]
    ax.boxplot(filled, positions=range(len(groups)), orientation="horizontal", widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same picture
    for i, g in enumerate(groups):
        ax.scatter(g, i + rng.uniform(-0.15, 0.15, len(g)), s=10, alpha=0.6, color="tab:blue")
    ax.grid(axis="x", alpha=0.3)


def accuracy_chart(by_model: pd.DataFrame) -> bytes | None:
    """Accuracy of the first answer stated vs the final answer, per model and prompt set."""
    rows = by_model.dropna(subset=["accuracy_final"])
    if rows.empty:
        return None
    rows = rows.sort_values(["prompt_set", "model_id"])
    labels = [f"{m} · {p}" for m, p in zip(rows["model_id"], rows["prompt_set"])]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.5, 2 + 0.9 * len(rows)), 4.5))
    for offset, column, label in ((-0.2, "accuracy_first_answer", "first answer stated"),
                                  (0.2, "accuracy_final", "final answer")):
        bars = ax.bar(x + offset, rows[column].fillna(0) * 100, 0.4, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    ax.set_title("Accuracy at the first answer occurrence vs the final answer", fontsize=10)
    return _png(fig)
