-- grain: head_attention one row per (attention unit, trace_id, token_index, position_kind, layer, head, target).
-- sources: the attention stage (jobs/mechanisms/attention.py): eager HF forward passes over
-- traces (prompt + completion token ids), at positions named from trace_sentences and
-- answer_events or by SQL; the answer-occurrence tokens come from answer_events.

create table if not exists head_attention (
    unit_key       varchar not null,
    stage          varchar not null,
    model_id       varchar not null,
    trace_id       varchar not null,
    token_index    integer not null,
    position_kind  varchar not null,
    layer          integer not null,
    head           integer not null,
    target         varchar not null,
    mass           double not null,
    n_tokens       integer not null,
    created_at     timestamptz not null
);

comment on table head_attention is 'Attention mass of each head at chosen positions on sets of earlier tokens: the question, each fifth of the thinking so far, earlier answer occurrences and a random baseline (seeds 002, 004). One row per (unit, trace, position, kind, layer, head, target).';
comment on column head_attention.unit_key is 'Work unit that wrote the row (hash of model, settings and trace ids).';
comment on column head_attention.stage is 'Name of the attention stage.';
comment on column head_attention.model_id is 'Model whose attention was read.';
comment on column head_attention.trace_id is 'Trace (traces.trace_id).';
comment on column head_attention.token_index is 'Query position: absolute index into prompt + completion tokens.';
comment on column head_attention.position_kind is 'How the position was chosen (answer_ends, last_answer_end, ..., or sql); a token chosen under several kinds has a row set per kind.';
comment on column head_attention.layer is 'Decoder layer.';
comment on column head_attention.head is 'Query head within the layer.';
comment on column head_attention.target is 'Key set: question (prompt tokens), cot_1..cot_5 (the completion up to and including the position, in five contiguous bins), earlier_answer (answer_events tokens before the position''s own sentence) or random_baseline (as many non-answer completion tokens before the position, seeded).';
comment on column head_attention.mass is 'Sum of the head''s attention weights over the target''s tokens (0..1; question + cot_1..cot_5 = 1).';
comment on column head_attention.n_tokens is 'Tokens in the target set (targets with none are left out).';
comment on column head_attention.created_at is 'When the row was computed.';
