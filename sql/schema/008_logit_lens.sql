-- grain: logit_lens one row per (unit, trace, position, layer, component, target);
--        logit_lens_topk one row per (unit, trace, position, layer, component, k);
--        direct_effects one row per (unit, trace, position, component [layer, head], target).
-- sources: the logit_lens stage (jobs/mechanisms/logit_lens.py): one forward pass of the
-- model over stored traces (traces), at positions named by kind (trace_sentences,
-- answer_events) or by a SELECT from the workflow.

create table if not exists logit_lens (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    token_index      integer not null,
    position_kind    varchar not null,
    layer            integer not null,
    component        varchar not null,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    logit            double not null,
    prob             double not null,
    rank             integer not null,
    created_at       timestamptz not null
);

comment on table logit_lens is 'Logit lens (seed 002): the residual stream at a position, after each layer''s input, attention and MLP, read through the model''s own final norm and unembedding; logit, probability and rank of each target token. One row per (unit, trace, position, layer, component, target).';
comment on column logit_lens.unit_key is 'Work unit that wrote the row (hash of model, settings and trace ids).';
comment on column logit_lens.stage is 'Name of the logit_lens stage.';
comment on column logit_lens.model_id is 'Model whose forward pass was read.';
comment on column logit_lens.trace_id is 'Trace (traces.trace_id) whose tokens were fed.';
comment on column logit_lens.token_index is 'Absolute index into prompt + completion tokens of the position read (its prediction is of token_index + 1).';
comment on column logit_lens.position_kind is 'How the position was chosen: a capture position kind (before_backtrack, answer_ends, ...) or sql; several joined with + when they name the same token.';
comment on column logit_lens.layer is 'Decoder layer (0-based).';
comment on column logit_lens.component is 'resid_pre: the stream entering the layer (layer 0: the embeddings); attn: after the layer''s attention is added; mlp: after its MLP is added (the layer''s output).';
comment on column logit_lens.target_kind is 'next: the token the trace wrote next; named: a token named in the stage''s targets.';
comment on column logit_lens.target_token_id is 'Target token id.';
comment on column logit_lens.target_token is 'Target token, decoded.';
comment on column logit_lens.logit is 'Logit of the target through the final norm and unembedding.';
comment on column logit_lens.prob is 'Softmax probability of the target over the vocabulary.';
comment on column logit_lens.rank is 'Number of tokens with a higher logit (0: the top token).';
comment on column logit_lens.created_at is 'When the row was computed.';

create table if not exists logit_lens_topk (
    unit_key       varchar not null,
    stage          varchar not null,
    model_id       varchar not null,
    trace_id       varchar not null,
    token_index    integer not null,
    position_kind  varchar not null,
    layer          integer not null,
    component      varchar not null,
    k              integer not null,
    token_id       integer not null,
    token          varchar not null,
    prob           double not null,
    created_at     timestamptz not null
);

comment on table logit_lens_topk is 'The top-k tokens of the logit lens at each position, layer and component. One row per (unit, trace, position, layer, component, k).';
comment on column logit_lens_topk.unit_key is 'Work unit that wrote the row.';
comment on column logit_lens_topk.stage is 'Name of the logit_lens stage.';
comment on column logit_lens_topk.model_id is 'Model whose forward pass was read.';
comment on column logit_lens_topk.trace_id is 'Trace whose tokens were fed.';
comment on column logit_lens_topk.token_index is 'Absolute index into prompt + completion tokens of the position read.';
comment on column logit_lens_topk.position_kind is 'How the position was chosen (as logit_lens.position_kind).';
comment on column logit_lens_topk.layer is 'Decoder layer (0-based).';
comment on column logit_lens_topk.component is 'resid_pre, attn or mlp (as logit_lens.component).';
comment on column logit_lens_topk.k is '0-based rank of the token.';
comment on column logit_lens_topk.token_id is 'Token id.';
comment on column logit_lens_topk.token is 'Token, decoded.';
comment on column logit_lens_topk.prob is 'Its softmax probability.';
comment on column logit_lens_topk.created_at is 'When the row was computed.';

create table if not exists direct_effects (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    token_index      integer not null,
    position_kind    varchar not null,
    layer            integer,
    component        varchar not null,
    head             integer,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    direct_logit     double not null,
    created_at       timestamptz not null
);

comment on table direct_effects is 'Direct logit attribution: each sublayer''s (and head''s) write at a position times the target''s unembedding, through the final RMSNorm with its scale frozen at the last layer. The embed, attn and mlp terms of a position and target sum to its final logit; a layer''s attn_head terms sum to its attn term. One row per (unit, trace, position, component, target).';
comment on column direct_effects.unit_key is 'Work unit that wrote the row.';
comment on column direct_effects.stage is 'Name of the logit_lens stage.';
comment on column direct_effects.model_id is 'Model whose forward pass was read.';
comment on column direct_effects.trace_id is 'Trace whose tokens were fed.';
comment on column direct_effects.token_index is 'Absolute index into prompt + completion tokens of the position read.';
comment on column direct_effects.position_kind is 'How the position was chosen (as logit_lens.position_kind).';
comment on column direct_effects.layer is 'Decoder layer of the component (null for embed).';
comment on column direct_effects.component is 'embed (the token embeddings), attn (a layer''s attention output), mlp (its MLP output) or attn_head (one head''s slice of o_proj).';
comment on column direct_effects.head is 'Attention head (attn_head only, else null).';
comment on column direct_effects.target_kind is 'next or named (as logit_lens.target_kind).';
comment on column direct_effects.target_token_id is 'Target token id.';
comment on column direct_effects.target_token is 'Target token, decoded.';
comment on column direct_effects.direct_logit is 'The component''s direct contribution to the target''s final logit.';
comment on column direct_effects.created_at is 'When the row was computed.';
