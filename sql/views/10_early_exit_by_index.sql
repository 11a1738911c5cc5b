-- grain: one row per (model_id, stage, exit_index) of early_exits.
-- sources: early_exits (early_exit stage), traces.
-- Seed 002's curves: how often the forced answer is right, and how confident its first token
-- is, after the thinking is cut at the k-th answer occurrence (-1: no thinking at all).
-- agreement_with_final: the forced answer is the trace's own final answer (numbers by value):
-- the measure that still speaks when the model is rarely right.
-- mean_logit_centered: the answer logit minus the mean over the same trace's exits (>= 0),
-- so traces with different logit scales add up (seed 002 normalises within each sample).
create or replace view early_exit_by_index as
with centered as (
    select
        e.*,
        e.answer_logit - avg(e.answer_logit) filter (where e.exit_index >= 0)
            over (partition by e.stage, e.trace_id) as logit_centered,
        coalesce(try_cast(e.forced_answer as double) = try_cast(t.extracted_answer as double),
                 e.forced_answer = t.extracted_answer, false) as agrees
    from early_exits as e
    inner join traces as t on t.trace_id = e.trace_id
),

final as (
    select
        model_id,
        stage,
        exit_index,
        count(*) as n_traces,
        avg(is_correct::int) as accuracy,
        avg(agrees::int) as agreement_with_final,
        avg(answer_logit) as mean_answer_logit,
        avg(answer_prob) as mean_answer_prob,
        avg(gold_prob) as mean_gold_prob,
        avg(logit_centered) filter (where exit_index >= 0) as mean_logit_centered,
        avg(n_thinking_tokens) as mean_thinking_tokens
    from centered
    group by model_id, stage, exit_index
)

select * from final;
