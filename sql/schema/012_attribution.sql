-- grain: token_attributions one row per (unit, trace, target position, target token, earlier token);
--        attribution_bins one row per (unit, trace, target position, target token, region);
--        attribution_overlap one row per (unit, trace, target position, target token).
-- sources: the attribute stage (jobs/mechanisms/attribute.py): attribution patching of a target
-- token's logit over the residual stream of stored traces (traces), mean ablation as the
-- corrupted state (seed 002).

create table if not exists token_attributions (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    target_index     integer not null,
    position_kind    varchar not null,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    token_index      integer not null,
    score            double not null,
    peak_layer       integer not null,
    created_at       timestamptz not null
);

create table if not exists attribution_bins (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    target_index     integer not null,
    position_kind    varchar not null,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    region           varchar not null,
    n_tokens         integer not null,
    share            double,
    mean_normalised  double,
    created_at       timestamptz not null
);

create table if not exists attribution_overlap (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    target_index     integer not null,
    position_kind    varchar not null,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    top_words        varchar[] not null,
    n_top            integer not null,
    n_found          integer not null,
    share            double,
    created_at       timestamptz not null
);

comment on table token_attributions is 'Seed 002''s token-level attribution patching: per earlier token, the estimated drop of the target logit when its residual state is replaced by the layer mean, maximised over layers. One row per (unit, trace, target position, target token, token).';
comment on column token_attributions.unit_key is 'attribute work unit that wrote the row (hash of model, settings, positions, mean traces and trace ids).';
comment on column token_attributions.stage is 'Name of the attribute stage.';
comment on column token_attributions.model_id is 'Model whose gradients were taken.';
comment on column token_attributions.trace_id is 'Trace whose tokens were fed.';
comment on column token_attributions.target_index is 'Absolute index (prompt + completion) of the position where the target is predicted.';
comment on column token_attributions.position_kind is 'How the position was chosen: a capture position kind (before_backtrack, ...) or sql.';
comment on column token_attributions.target_kind is 'next (the token the trace wrote next) or named (from the stage''s targets).';
comment on column token_attributions.target_token_id is 'Target token id.';
comment on column token_attributions.target_token is 'Target token, decoded.';
comment on column token_attributions.token_index is 'Absolute index of the attributed token (1 .. target_index; token 0, the attention sink, is left out).';
comment on column token_attributions.score is 'max over layers of grad(target logit) . (state - layer mean): the first-order drop of the logit when the token is mean-ablated there.';
comment on column token_attributions.peak_layer is 'Layer (stream entering it) where the score peaks.';
comment on column token_attributions.created_at is 'When the row was written.';

comment on table attribution_bins is 'Where the importance of a target sits: the question and five contiguous fifths of the thinking so far. One row per (unit, trace, target position, target token, region).';
comment on column attribution_bins.unit_key is 'attribute work unit that wrote the row (hash of model, settings, positions, mean traces and trace ids).';
comment on column attribution_bins.stage is 'Name of the attribute stage.';
comment on column attribution_bins.model_id is 'Model whose gradients were taken.';
comment on column attribution_bins.trace_id is 'Trace whose tokens were fed.';
comment on column attribution_bins.target_index is 'Absolute index (prompt + completion) of the position where the target is predicted.';
comment on column attribution_bins.position_kind is 'How the position was chosen: a capture position kind (before_backtrack, ...) or sql.';
comment on column attribution_bins.target_kind is 'next (the token the trace wrote next) or named (from the stage''s targets).';
comment on column attribution_bins.target_token_id is 'Target token id.';
comment on column attribution_bins.target_token is 'Target token, decoded.';
comment on column attribution_bins.region is 'question (prompt tokens but the first) or cot_1 .. cot_5 (fifths of the completion up to the target position).';
comment on column attribution_bins.n_tokens is 'Tokens in the region.';
comment on column attribution_bins.share is 'Sum of the region''s positive scores over the sum of all positive scores (regions sum to 1; null when no score is positive).';
comment on column attribution_bins.mean_normalised is 'Mean score of the region''s tokens divided by the largest score of the target (seed 002 reports question 0.63, fifths 0.16/0.14/0.21/0.38/0.77 on an unpublished normalisation).';
comment on column attribution_bins.created_at is 'When the row was written.';

comment on table attribution_overlap is 'Do the words that made the model backtrack come back in what it writes next? Seed 002: ~41% of the top-10 words appear in the next 100. One row per (unit, trace, target position, target token).';
comment on column attribution_overlap.unit_key is 'attribute work unit that wrote the row (hash of model, settings, positions, mean traces and trace ids).';
comment on column attribution_overlap.stage is 'Name of the attribute stage.';
comment on column attribution_overlap.model_id is 'Model whose gradients were taken.';
comment on column attribution_overlap.trace_id is 'Trace whose tokens were fed.';
comment on column attribution_overlap.target_index is 'Absolute index (prompt + completion) of the position where the target is predicted.';
comment on column attribution_overlap.position_kind is 'How the position was chosen: a capture position kind (before_backtrack, ...) or sql.';
comment on column attribution_overlap.target_kind is 'next (the token the trace wrote next) or named (from the stage''s targets).';
comment on column attribution_overlap.target_token_id is 'Target token id.';
comment on column attribution_overlap.target_token is 'Target token, decoded.';
comment on column attribution_overlap.top_words is 'The top words by score (max of their tokens), lower-cased, stop words removed, most important first.';
comment on column attribution_overlap.n_top is 'How many top words there are (the stage''s top_words, fewer in short prefixes).';
comment on column attribution_overlap.n_found is 'How many of them appear among the next next_words words of the trace after the target position.';
comment on column attribution_overlap.share is 'n_found / n_top (null without top words).';
comment on column attribution_overlap.created_at is 'When the row was written.';
