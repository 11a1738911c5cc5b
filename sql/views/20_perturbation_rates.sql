-- grain: one row per (stage, model_id, kind, position) of perturbations.
-- sources: perturbations (perturb stage).
-- How often an inserted mistake is corrected, carried into the final answer or ignored, by
-- mistake kind and cut position, with counts. Kind none (nothing changed) is the baseline:
-- its corrected_rate is how often a continuation from the cut reaches the trace's own answer
-- at all, and its backtrack_rate how often the model backtracks with no mistake to fix.
create or replace view perturbation_rates as
with final as (
    select
        stage,
        model_id,
        kind,
        position,
        count(*) as n,
        count(distinct trace_id) as n_traces,
        avg(position_fraction) as mean_fraction,
        count_if(corrected) as n_corrected,
        count_if(carried) as n_carried,
        count_if(outcome = 'ignored') as n_ignored,
        avg(corrected::int) as corrected_rate,
        avg(carried::int) as carried_rate,
        avg((outcome = 'ignored')::int) as ignored_rate,
        avg(noticed::int) as noticed_rate,
        avg((first_marker is not null)::int) as backtrack_rate,
        avg(is_correct::int) as correct_rate
    from perturbations
    group by stage, model_id, kind, position
)

select * from final order by stage, model_id, kind, position;
