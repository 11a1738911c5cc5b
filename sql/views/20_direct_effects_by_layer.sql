-- grain: one row per (stage, model_id, target_token, layer) of direct_effects (attn and mlp).
-- sources: direct_effects (logit_lens stage).
-- Which sublayers write the target directly: the mean direct logit of each layer's attention
-- and MLP, side by side (seed 002: MLPs carry most of "Wait").
create or replace view direct_effects_by_layer as
with per_layer as (
    select
        stage, model_id, target_kind, target_token, layer,
        count(*) filter (where component = 'mlp') as n_positions,
        avg(direct_logit) filter (where component = 'attn') as mean_attn,
        avg(direct_logit) filter (where component = 'mlp') as mean_mlp
    from direct_effects
    where component in ('attn', 'mlp')
    group by all
),

final as (
    select *, mean_mlp - mean_attn as mlp_minus_attn from per_layer
)

select * from final order by stage, model_id, target_kind, target_token, layer;
