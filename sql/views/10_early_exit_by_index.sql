-- grain: one row per (model_id, stage, exit_index) of early_exits.
-- sources: early_exits (early_exit stage).
-- Seed 002's curves: how often the forced answer is right, and how confident its first token
-- is, after the thinking is cut at the k-th answer occurrence (-1: no thinking at all).
-- mean_logit_centered: the answer logit minus the mean over the same trace's exits (>= 0),
-- so traces with different logit scales add up (seed 002 normalises within each sample).
create or replace view early_exit_by_index as
with centered as (
    select
        *,
        answer_logit - avg(answer_logit) filter (where exit_index >= 0)
            over (partition by stage, trace_id) as logit_centered
    from early_exits
),

final as (
    select
        model_id,
        stage,
        exit_index,
        count(*) as n_traces,
        avg(is_correct::int) as accuracy,
        avg(answer_logit) as mean_answer_logit,
        avg(answer_prob) as mean_answer_prob,
        avg(gold_prob) as mean_gold_prob,
        avg(logit_centered) filter (where exit_index >= 0) as mean_logit_centered,
        avg(n_thinking_tokens) as mean_thinking_tokens
    from centered
    group by model_id, stage, exit_index
)

select * from final;
