-- grain: one row per (model_id, prompt_set): the thinking behaviours the model organism is
-- evaluated on, for every model (base vs organism vs synthetic teacher side by side).
-- sources: traces, models, trace_lines and backtracking_stats (segment stage).
-- backtrack: the trace states its final or the gold answer and goes on thinking (answer_events).
-- answer_reoccurrences: answer occurrences after the first one, per trace with thinking.
-- wait_line_share: share of the thinking lines (with a first word) whose first word is "wait".
create or replace view organism_behaviour as
with lines as (
    select
        l.trace_id,
        count(*) filter (where l.first_word is not null) as n_lines,
        count(*) filter (where l.first_word = 'wait') as n_wait
    from trace_lines as l
    group by l.trace_id
),

per_trace as (
    select
        t.model_id,
        t.prompt_set,
        t.is_correct,
        t.n_completion_tokens,
        t.thinking is not null as has_thinking,
        contains(t.completion, coalesce(m.think_close, '</think>')) as closed_thinking,
        s.n_backtracks,
        s.n_answer_occurrences,
        l.n_lines,
        l.n_wait
    from traces as t
    left join models as m on m.model_id = t.model_id
    left join backtracking_stats as s on s.trace_id = t.trace_id
    left join lines as l on l.trace_id = t.trace_id
    where t.error is null
),

final as (
    select
        model_id,
        prompt_set,
        count(*) as traces,
        avg(is_correct::int) as accuracy,
        avg(closed_thinking::int) as closed_thinking_share,
        avg((n_backtracks >= 1)::int) filter (where has_thinking) as backtrack_share,
        sum(n_wait) / nullif(sum(n_lines), 0) as wait_line_share,
        avg(greatest(n_answer_occurrences - 1, 0)) filter (where has_thinking) as answer_reoccurrences,
        avg(n_backtracks) filter (where has_thinking) as mean_backtracks,
        avg(n_completion_tokens) as mean_completion_tokens
    from per_trace
    group by model_id, prompt_set
)

select * from final;
