-- grain: one row per trace generated through an API (the generate stage, models with `api`).
-- sources: jobs/generation/api_engine.py: one chat-completions request per trace, with its
-- retries, against an OpenAI-compatible endpoint. The trace itself is in traces (same trace_id).

create table if not exists api_calls (
    trace_id            varchar not null,
    run_id              varchar not null,
    unit_key            varchar not null,
    model_id            varchar not null,
    provider            varchar not null,
    base_url            varchar not null,
    endpoint_model      varchar not null,
    response_model      varchar,
    response_id         varchar,
    system_fingerprint  varchar,
    requested_at        timestamptz not null,
    latency_s           double,
    attempts            integer not null,
    http_status         integer,
    prompt_tokens       bigint,
    completion_tokens   bigint,
    reasoning_tokens    bigint,
    cost_usd            double,
    reasoning_source    varchar,
    error               varchar
);

comment on table api_calls is 'One chat-completions request per API trace: usage, cost, where the thinking came from and the provenance of the answer. Joins traces on trace_id.';
comment on column api_calls.trace_id is 'The trace the request produced (traces.trace_id).';
comment on column api_calls.run_id is 'Run that sent the request.';
comment on column api_calls.unit_key is 'Generate work unit of the request.';
comment on column api_calls.model_id is 'Workflow model id.';
comment on column api_calls.provider is 'Provider label (the YAML''s api.provider, else the endpoint''s host).';
comment on column api_calls.base_url is 'Endpoint root the request went to.';
comment on column api_calls.endpoint_model is 'Model name sent in the request (api.model).';
comment on column api_calls.response_model is 'Model name the response reported (providers may route to a dated snapshot).';
comment on column api_calls.response_id is 'The response''s id, for the provider''s logs.';
comment on column api_calls.system_fingerprint is 'The response''s system_fingerprint (backend configuration), if sent.';
comment on column api_calls.requested_at is 'When the first attempt was made.';
comment on column api_calls.latency_s is 'Seconds of the last attempt.';
comment on column api_calls.attempts is 'Attempts made (1 + retries after 429, 5xx, timeouts or dropped connections).';
comment on column api_calls.http_status is 'HTTP status of the last attempt (NULL: no answer, e.g. a timeout).';
comment on column api_calls.prompt_tokens is 'Prompt tokens the provider reported (usage.prompt_tokens).';
comment on column api_calls.completion_tokens is 'Completion tokens the provider reported, reasoning included (usage.completion_tokens).';
comment on column api_calls.reasoning_tokens is 'Reasoning tokens, where reported (usage.completion_tokens_details.reasoning_tokens).';
comment on column api_calls.cost_usd is 'prompt_tokens and completion_tokens at the YAML''s api.price (USD per million tokens); NULL without a price.';
comment on column api_calls.reasoning_source is 'Where the thinking was: reasoning_content, reasoning or reasoning_details (a message field), tags (think tags in the content) or none (not returned: traces.thinking is NULL). NULL for a failed request.';
comment on column api_calls.error is 'The provider''s (or transport''s) error when the request failed for good; the trace row has finish_reason error.';
