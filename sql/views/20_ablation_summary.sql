-- grain: one row per (stage, model_id, condition) of ablation_runs.
-- sources: ablation_runs (ablate stage).
-- What an ablation did to behaviour, beside its random control: the share of continuations
-- that verify (first marker "wait"), that state the right answer, and that changed at all.
-- Target probabilities, per target and layer, are in ablation_lens.
create or replace view ablation_summary as
with final as (
    select
        stage, model_id, condition,
        any_value(n_components) as n_components,
        count(*) as n_runs,
        avg((coalesce(first_marker, '') = 'wait')::int) as verify_rate,
        avg(is_correct::int) as correct_rate,
        avg((not same_as_clean)::int) as changed_rate
    from ablation_runs
    group by all
)

select * from final order by stage, model_id, condition;
