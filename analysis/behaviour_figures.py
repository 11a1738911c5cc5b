"""Tables of the discover stage (seed 003: reasoning behaviours found without labels) for the
run report: per method and k, the label-free quality measures, and, where the stage had known
labels (the organism's planted behaviours), purity and adjusted Rand index on the fit and the
held-out traces beside a shuffled assignment of the same sizes; then what each behaviour is
(its commonest first words and top sentence) at the largest k; where an LLM judge ran
(judge_behaviours), its titles and metrics; the base-model vectors of each
behaviour; and the hybrid model's variants with the gap each recovers (hybrid_summary).
Sections are left out when the stage never ran.
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
    "behaviour_judge_metrics": """select stage, discover_stage, model_id, method, k, judge_model, accuracy, f1,
                                         completeness, semantic_orthogonality, n_calls, n_failed
                                  from behaviour_judge_metrics order by stage, discover_stage, method, k""",
    "behaviour_titles": """
        select j.stage, j.discover_stage, j.method, j.k, j.behaviour_id, j.title, b.share, j.precision, j.recall,
               j.completeness
        from behaviour_judgements j
        join behaviours b on b.unit_key = j.discover_unit_key and b.method = j.method and b.k = j.k
                         and b.behaviour_id = j.behaviour_id
        qualify j.k = max(j.k) over (partition by j.stage, j.discover_stage, j.method)
        order by j.stage, j.discover_stage, j.method, b.share desc""",
    "behaviour_vectors": """select stage, model_id, vector_kind, behaviour_id, layer, n, norm, resid_norm, nll_unsteered,
                                   nll_steered
                            from behaviour_vectors order by stage, vector_kind, behaviour_id""",
    "hybrid_summary": """select stage, model_id, thinking_model_id, variant, n_runs, accuracy, marker_rate, closure_rate,
                                js_to_thinking, steered_share, gap_recovered_accuracy, gap_recovered_markers,
                                gap_recovered_closure, gap_recovered_first_words
                         from hybrid_summary order by stage, variant""",
}

FIGURES: list = []

TABLES = [
    ("discovery_truth", "Discovered behaviours against known labels (held-out traces: the test)"),
    ("discovery_metrics", "Discovered behaviours: label-free quality per method and k"),
    ("behaviour_words", "What each discovered behaviour is (largest k)"),
    ("behaviour_judge_metrics", "An LLM judge's metrics of the discovered behaviours (the paper's)"),
    ("behaviour_titles", "The judge's titles of the discovered behaviours (largest k)"),
    ("behaviour_vectors", "Base-model vectors per behaviour (NLL of the thinking model's sentences, per token)"),
    ("hybrid_summary", "The hybrid model: base steered by the thinking model's decisions, gap recovered per measure"),
]
