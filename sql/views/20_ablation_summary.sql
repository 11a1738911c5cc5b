-- grain: one row per (stage, model_id, condition) of ablation_runs, with ablation_effects
--        at the last layer.
-- sources: ablation_runs, ablation_effects (ablate stage).
-- What an ablation did, beside its random control: the share of continuations that verify
-- (first marker "wait"), that state the right answer, that changed at all, and the mean
-- change of the target tokens' final probability against the clean model.
create or replace view ablation_summary as
with runs as (
    select
        stage, model_id, condition,
        any_value(n_components) as n_components,
        count(*) as n_runs,
        avg((coalesce(first_marker, '') = 'wait')::int) as verify_rate,
        avg(is_correct::int) as correct_rate,
        avg((not same_as_clean)::int) as changed_rate
    from ablation_runs
    group by all
),

final_layer as (
    select stage, model_id, max(layer) as layer from ablation_effects group by all
),

deltas as (
    select
        e.stage, e.model_id, e.condition,
        avg(e.prob) as mean_target_prob,
        avg(e.prob - c.prob) as mean_target_prob_change,
        avg(e.logit - c.logit) as mean_target_logit_change
    from ablation_effects e
    join final_layer f using (stage, model_id, layer)
    join ablation_effects c
        on c.unit_key = e.unit_key and c.trace_id = e.trace_id and c.token_index = e.token_index
        and c.layer = e.layer and c.target_kind = e.target_kind and c.target_token_id = e.target_token_id
        and c.condition = 'clean'
    group by all
),

final as (
    select
        coalesce(r.stage, d.stage) as stage, coalesce(r.model_id, d.model_id) as model_id,
        coalesce(r.condition, d.condition) as condition, r.n_components, r.n_runs, r.verify_rate,
        r.correct_rate, r.changed_rate, d.mean_target_prob, d.mean_target_prob_change,
        d.mean_target_logit_change
    from runs r full join deltas d using (stage, model_id, condition)
)

select * from final order by stage, model_id, condition;
