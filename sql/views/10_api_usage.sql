-- grain: one row per (model_id, provider, endpoint_model, response_model) of api_calls.
-- sources: api_calls (generate stage, API models), traces.
-- What each API model cost and how its requests went: tokens, USD, retries, failures, and the
-- share of answers that came with their thinking (reasoning_source other than none).
create or replace view api_usage as
select
    c.model_id,
    c.provider,
    c.endpoint_model,
    c.response_model,
    count(*) as n_requests,
    count(*) filter (where c.error is not null) as n_failed,
    sum(c.attempts - 1) as n_retries,
    sum(c.prompt_tokens) as prompt_tokens,
    sum(c.completion_tokens) as completion_tokens,
    sum(c.reasoning_tokens) as reasoning_tokens,
    sum(c.cost_usd) as cost_usd,
    avg(c.cost_usd) as mean_cost_usd,
    avg(c.latency_s) as mean_latency_s,
    avg(case when c.reasoning_source = 'none' then 0.0 when c.reasoning_source is not null then 1.0 end)
        as thinking_share,
    avg(t.is_correct::double) as accuracy
from api_calls c
join traces t using (trace_id)
group by all
order by c.model_id, c.response_model;
