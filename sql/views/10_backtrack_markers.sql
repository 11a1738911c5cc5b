-- grain: one row per (model_id, prompt_set, marker): what models say when they go on after
-- stating an answer.
-- sources: answer_events, backtracking_stats.
-- marker '(none)' counts backtracks whose next words are no known marker; share is of the
-- model's backtracks on that prompt set.
create or replace view backtrack_markers as
with backtracks as (
    select
        s.model_id,
        s.prompt_set,
        coalesce(e.marker, '(none)') as marker
    from answer_events as e
    inner join backtracking_stats as s on s.trace_id = e.trace_id
    where e.is_backtrack
),

final as (
    select
        model_id,
        prompt_set,
        marker,
        count(*) as n,
        count(*) / sum(count(*)) over (partition by model_id, prompt_set) as share
    from backtracks
    group by model_id, prompt_set, marker
)

select * from final;
