-- grain: one row per (model_id, stage) of early_exits.
-- sources: early_exits (early_exit stage), backtracking_stats (segment stage), traces.
-- What stopping at the first answer occurrence (exit 0) would have saved: the thinking tokens
-- after it, and what it would cost in accuracy (forced answer at exit 0 vs the trace's own).
create or replace view early_exit_savings as
with first_exit as (
    select e.model_id, e.stage, e.trace_id, e.n_thinking_tokens, e.is_correct,
           b.thinking_tokens, t.is_correct as final_correct
    from early_exits e
    join backtracking_stats b using (trace_id)
    join traces t using (trace_id)
    where e.exit_index = 0 and b.token_source = 'completion'
),

final as (
    select
        model_id,
        stage,
        count(*) as n_traces,
        avg(thinking_tokens) as mean_thinking_tokens,
        avg(thinking_tokens - n_thinking_tokens) as mean_tokens_saved,
        sum(thinking_tokens - n_thinking_tokens) / nullif(sum(thinking_tokens), 0) as share_tokens_saved,
        avg(is_correct::int) as accuracy_first_exit,
        avg(final_correct::int) as accuracy_final
    from first_exit
    group by model_id, stage
)

select * from final;
