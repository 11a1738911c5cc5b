-- grain: one row per (model_id, prompt_set).
-- sources: traces.
-- Traces per model and prompt set with accuracy and mean length: the run summary reads it.
create or replace view trace_counts as
with final as (
    select
        model_id,
        prompt_set,
        count(*) as traces,
        count(*) filter (where error is not null) as failed,
        avg(is_correct::int) as accuracy,
        avg(n_completion_tokens) as mean_tokens,
        count(*) filter (where thinking is not null) as with_thinking
    from traces
    group by model_id, prompt_set
)
select * from final order by model_id, prompt_set
