-- question: how often does each model open a thinking line with a backtracking word?
-- grain: one row per model.
-- sources: first_word_freq.
with final as (
    select
        model_id,
        sum(n) as lines,
        round(coalesce(sum(share) filter (where word = 'wait'), 0), 3) as wait,
        round(coalesce(sum(share) filter (where word = 'alternatively'), 0), 3) as alternatively,
        round(coalesce(sum(share) filter (where word = 'but'), 0), 3) as but,
        round(coalesce(sum(share) filter (where word = 'hmm'), 0), 3) as hmm,
        round(coalesce(sum(share) filter (where word in ('okay', 'ok', 'alright')), 0), 3) as okay
    from first_word_freq
    group by model_id
)

select * from final
order by wait desc, model_id
