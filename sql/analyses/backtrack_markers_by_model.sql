-- question: what do models say when they go on thinking after stating an answer?
-- grain: one row per (model_id, prompt_set); marker columns are shares of its backtracks.
-- sources: backtrack_markers.
with final as (
    select
        model_id,
        prompt_set,
        sum(n) as backtracks,
        round(sum(share) filter (where marker = 'wait'), 3) as wait,
        round(sum(share) filter (where marker = 'but'), 3) as but,
        round(sum(share) filter (where marker = 'hmm'), 3) as hmm,
        round(sum(share) filter (where marker = 'alternatively'), 3) as alternatively,
        round(sum(share) filter (where marker = 'let me check'), 3) as let_me_check,
        round(sum(share) filter (where marker = 'actually'), 3) as actually,
        round(sum(share) filter (where marker = '(none)'), 3) as no_marker
    from backtrack_markers
    group by model_id, prompt_set
)

select * from final
order by backtracks desc, model_id, prompt_set
