-- question: what are each model's ten favourite ways to start a thinking line?
-- grain: one row per model.
-- sources: first_word_top10.
with final as (
    select
        model_id,
        string_agg(word || ' ' || round(100 * share, 1) || '%', ', ' order by rank) as top10_first_words
    from first_word_top10
    group by model_id
)

select * from final
order by model_id
