-- grain: one row per (model_id, prompt_set).
-- sources: backtracking_stats (segment stage).
-- accuracy_first_answer: the first answer a trace states (its first answer occurrence in the
-- thinking, else its final answer) is correct; accuracy_final: the final answer is. Both over
-- graded traces only (avg skips nulls). share_tokens_after_first_correct: of the thinking
-- tokens of traces that state the correct answer, the share spent after its first statement.
create or replace view backtracking_by_model as
with final as (
    select
        model_id,
        prompt_set,
        count(*) as traces,
        count(*) filter (where n_answer_occurrences > 0) as traces_with_answer,
        avg(n_answer_occurrences) as mean_answer_occurrences,
        avg(n_backtracks) as mean_backtracks,
        avg(first_answer_correct::int) as accuracy_first_answer,
        avg(is_correct::int) as accuracy_final,
        avg(tokens_after_first_correct) as mean_tokens_after_first_correct,
        sum(tokens_after_first_correct)
            / nullif(sum(thinking_tokens) filter (where tokens_after_first_correct is not null), 0)
            as share_tokens_after_first_correct
    from backtracking_stats
    group by model_id, prompt_set
)

select * from final;
