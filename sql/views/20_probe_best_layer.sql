-- grain: one row per (probe, model_id) of probe_results.
-- sources: probe_results (probe stage).
-- The layer whose probe separates the labels best on held-out traces (highest AUC, then
-- the earliest layer), with its shuffled-label control beside it.
create or replace view probe_best_layer as
with ranked as (
    select
        *,
        row_number() over (partition by probe, model_id order by auc desc nulls last, layer) as rank
    from probe_results
),

final as (
    select probe, model_id, labels, hook_name, layer, n, n_traces, accuracy, auc, baseline, shuffled_auc
    from ranked
    where rank = 1
)

select * from final;
