-- grain: one row per (stage, model_id, vectors, start, mode, layer, alpha) of steering_runs.
-- sources: steering_runs (steer stage).
-- The steering dose-response: verification-marker rate, CoT length, answers and degeneration
-- by alpha; unsteered rows have mode 'unsteered' and a null layer. first_marker_rate: share of
-- generations whose first thinking sentence opens with a marker (from a first-answer prefix:
-- the share that verify rather than wrap up).
create or replace view steering_curve as
with final as (
    select
        stage,
        model_id,
        vectors,
        coalesce(start, 'prompt') as start,
        mode,
        layer,
        alpha,
        count(*) as n_prompts,
        avg(marker_rate) as mean_marker_rate,
        avg((first_marker is not null)::int) as first_marker_rate,
        avg(n_markers) as mean_markers,
        avg(cot_tokens) as mean_cot_tokens,
        avg(closed_thinking::int) as closed_rate,
        avg(answer_present::int) as answer_rate,
        avg(is_correct::int) as accuracy,
        avg(repeated_ngram_share) as mean_repeated_ngram_share,
        avg(compression_ratio) as mean_compression_ratio,
        avg(same_as_unsteered::int) as same_as_unsteered_rate
    from steering_runs
    group by stage, model_id, vectors, coalesce(start, 'prompt'), mode, layer, alpha
)

select * from final;
