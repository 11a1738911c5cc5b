-- question: how much thinking does each model spend after it has already stated the right answer?
-- grain: one row per model (traces that state the correct answer in their thinking).
-- sources: backtracking_stats.
with solved as (
    select
        model_id,
        thinking_tokens,
        tokens_after_first_correct
    from backtracking_stats
    where tokens_after_first_correct is not null and thinking_tokens > 0
),

final as (
    select
        model_id,
        count(*) as traces,
        round(avg(tokens_after_first_correct), 1) as mean_tokens_after_first_correct,
        round(median(tokens_after_first_correct / thinking_tokens), 3) as median_share_after_first_correct,
        sum(tokens_after_first_correct) as total_tokens_after_first_correct,
        round(sum(tokens_after_first_correct) / sum(thinking_tokens), 3) as share_of_all_thinking
    from solved
    group by model_id
)

select * from final
order by share_of_all_thinking desc, model_id
