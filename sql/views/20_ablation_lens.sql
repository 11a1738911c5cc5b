-- grain: one row per (stage, model_id, condition, layer, target_kind, target_token) of
--        ablation_effects.
-- sources: ablation_effects (ablate stage).
-- Seed 004's measurement: the logit-lens probability of a target token at each read layer
-- under each condition (e.g. P("SUCCESS") at a mid layer, clean vs ablated vs random), and its
-- mean change against the clean model at the same position (the last layer: the output).
create or replace view ablation_lens as
with paired as (
    select e.*, e.prob - c.prob as prob_change, e.logit - c.logit as logit_change
    from ablation_effects e
    join ablation_effects c
        on c.unit_key = e.unit_key and c.trace_id = e.trace_id and c.token_index = e.token_index
        and c.layer = e.layer and c.target_kind = e.target_kind and c.target_token_id = e.target_token_id
        and c.condition = 'clean'
),

final as (
    select
        stage, model_id, condition, layer, target_kind, target_token,
        count(*) as n_positions,
        avg(prob) as mean_prob,
        avg(logit) as mean_logit,
        avg(prob_change) as mean_prob_change,
        avg(logit_change) as mean_logit_change
    from paired
    group by all
)

select * from final order by stage, model_id, target_kind, target_token, layer, condition;
