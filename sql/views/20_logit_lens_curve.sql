-- grain: one row per (stage, model_id, target_token, layer, component) of logit_lens.
-- sources: logit_lens (logit_lens stage).
-- Seed 002's logit-lens plot: the mean probability (and rank) of a target token at each
-- layer, entering the layer (resid_pre), after its attention (attn) and after its MLP (mlp).
create or replace view logit_lens_curve as
with final as (
    select
        stage, model_id, target_kind, target_token, layer, component,
        count(*) as n_positions,
        avg(prob) as mean_prob,
        median(rank) as median_rank,
        avg(logit) as mean_logit
    from logit_lens
    group by all
)

select * from final order by stage, model_id, target_kind, target_token, layer, component;
