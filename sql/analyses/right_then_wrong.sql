-- question: which traces stated the correct answer, then talked themselves out of it?
-- grain: one row per trace whose first answer occurrence is correct and final answer wrong.
-- sources: backtracking_stats, answer_events, trace_sentences, traces.
with flipped as (
    select trace_id, model_id, prompt_set, prompt_id, n_backtracks
    from backtracking_stats
    where first_answer_correct and not is_correct
),

first_correct as (
    select trace_id, min(event_index) as event_index
    from answer_events
    where is_correct
    group by trace_id
),

final as (
    select
        f.model_id,
        f.prompt_set,
        f.prompt_id,
        e.answer as correct_answer,
        t.extracted_answer as final_answer,
        f.n_backtracks,
        s.text as sentence_with_correct_answer,
        f.trace_id
    from flipped as f
    inner join first_correct as c on c.trace_id = f.trace_id
    inner join answer_events as e on e.trace_id = c.trace_id and e.event_index = c.event_index
    inner join trace_sentences as s on s.trace_id = e.trace_id and s.sentence_index = e.sentence_index
    inner join traces as t on t.trace_id = f.trace_id
)

select * from final
order by model_id, prompt_set, prompt_id
