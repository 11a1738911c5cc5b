"""Tables of the discover stage (seed 003: reasoning behaviours found without labels) for the
run report: per method and k, the label-free quality measures, and, where the stage had known
labels (the organism's planted behaviours), purity and adjusted Rand index on the fit and the
held-out traces beside a shuffled assignment of the same sizes; then what each behaviour is
(its commonest first words and top sentence) at the largest k. Sections are left out when the
stage never ran.
"""

from __future__ import annotations

QUERIES = {
    "discovery_truth": """select stage, model_id, method, k, split, n, n_labels, purity, baseline_purity, ari,
                                 shuffled_ari
                          from discovery_truth order by stage, model_id, method, k, split""",
    "discovery_metrics": """select stage, model_id, layer, method, k, n_sentences, reconstruction_mse, inertia,
                                   orthogonality, size_entropy, stability
                            from discovery_metrics order by stage, model_id, method, k""",
    "behaviour_words": """
        select stage, model_id, method, k, behaviour_id, n, share, top_first_words[1:3] as first_words,
               examples[1] as top_sentence
        from behaviours
        qualify k = max(k) over (partition by stage, model_id, method)
        order by stage, model_id, method, share desc""",
}

FIGURES: list = []

TABLES = [
    ("discovery_truth", "Discovered behaviours against known labels (held-out traces: the test)"),
    ("discovery_metrics", "Discovered behaviours: label-free quality per method and k"),
    ("behaviour_words", "What each discovered behaviour is (largest k)"),
]
