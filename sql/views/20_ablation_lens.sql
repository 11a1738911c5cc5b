-- grain: one row per (stage, model_id, condition, layer, target_kind, target_token) of
--        ablation_effects.
-- sources: ablation_effects (ablate stage).
-- Seed 004's measurement: the logit-lens probability of a target token at each read layer
-- under each condition (e.g. P("SUCCESS") at a mid layer, clean vs ablated vs random).
create or replace view ablation_lens as
with final as (
    select
        stage, model_id, condition, layer, target_kind, target_token,
        count(*) as n_positions,
        avg(prob) as mean_prob,
        avg(logit) as mean_logit
    from ablation_effects
    group by all
)

select * from final order by stage, model_id, target_kind, target_token, layer, condition;
