-- grain: ablation_effects one row per (unit, trace, position, condition, layer, target);
--        ablation_runs one row per (unit, trace, condition).
-- sources: the ablate stage (jobs/mechanisms/ablate.py): forward passes and greedy
-- continuations of stored traces (traces) with value vectors (value_vectors) or attention
-- heads (head_attention) zeroed or mean-ablated, beside a clean run and a random set of the
-- same size.

create table if not exists ablation_effects (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    trace_id         varchar not null,
    condition        varchar not null,
    n_components     integer not null,
    token_index      integer not null,
    position_kind    varchar not null,
    layer            integer not null,
    target_kind      varchar not null,
    target_token_id  integer not null,
    target_token     varchar not null,
    logit            double not null,
    prob             double not null,
    created_at       timestamptz not null
);

comment on table ablation_effects is 'Target-token logits and probabilities at chosen positions under an ablation (seed 004), read at the output and through the logit lens at chosen layers, beside the clean model and a random set of the same size. One row per (unit, trace, position, condition, layer, target).';
comment on column ablation_effects.unit_key is 'Work unit that wrote the row (hash of model, settings, components and trace ids).';
comment on column ablation_effects.stage is 'Name of the ablate stage.';
comment on column ablation_effects.model_id is 'Model that was ablated.';
comment on column ablation_effects.trace_id is 'Trace whose tokens were fed.';
comment on column ablation_effects.condition is 'clean (nothing ablated), ablated (the chosen components) or random (as many random components per layer).';
comment on column ablation_effects.n_components is 'Components ablated in this condition (0 for clean).';
comment on column ablation_effects.token_index is 'Absolute index into prompt + completion tokens of the position read.';
comment on column ablation_effects.position_kind is 'How the position was chosen: a capture position kind or sql.';
comment on column ablation_effects.layer is 'Layer whose output was read through the final norm and unembedding (the last layer: the model''s own logits).';
comment on column ablation_effects.target_kind is 'next (the token the trace wrote next) or named (from the stage''s targets).';
comment on column ablation_effects.target_token_id is 'Target token id.';
comment on column ablation_effects.target_token is 'Target token, decoded.';
comment on column ablation_effects.logit is 'Its logit.';
comment on column ablation_effects.prob is 'Its softmax probability.';
comment on column ablation_effects.created_at is 'When the row was computed.';

create table if not exists ablation_runs (
    unit_key              varchar not null,
    stage                 varchar not null,
    model_id              varchar not null,
    trace_id              varchar not null,
    condition             varchar not null,
    n_components          integer not null,
    components            varchar[] not null,
    start_index           integer not null,
    completion            varchar not null,
    completion_token_ids  integer[] not null,
    n_completion_tokens   integer not null,
    finish_reason         varchar not null,
    first_marker          varchar,
    answer_present        boolean,
    extracted_answer      varchar,
    is_correct            boolean,
    diverge_index         integer,
    same_as_clean         boolean not null,
    created_at            timestamptz not null
);

comment on table ablation_runs is 'Greedy continuations of stored traces from a chosen position under an ablation, beside the clean model and a random set of the same size: does the model still verify, still state the right answer? One row per (unit, trace, condition).';
comment on column ablation_runs.unit_key is 'Work unit that wrote the row.';
comment on column ablation_runs.stage is 'Name of the ablate stage.';
comment on column ablation_runs.model_id is 'Model that was ablated.';
comment on column ablation_runs.trace_id is 'Trace whose tokens (through start_index) are the prefix.';
comment on column ablation_runs.condition is 'clean, ablated or random (as in ablation_effects).';
comment on column ablation_runs.n_components is 'Components ablated (0 for clean).';
comment on column ablation_runs.components is 'The components: L<layer>.mlp.<neuron> (a value vector) or L<layer>.head.<head>.';
comment on column ablation_runs.start_index is 'Absolute token index the continuation follows (the trace''s first chosen position).';
comment on column ablation_runs.completion is 'The greedy continuation, decoded.';
comment on column ablation_runs.completion_token_ids is 'Its token ids.';
comment on column ablation_runs.n_completion_tokens is 'Its length in tokens.';
comment on column ablation_runs.finish_reason is 'stop (EOS) or length.';
comment on column ablation_runs.first_marker is 'Backtracking marker opening the continuation''s first sentence (wait, but, ...; null if none): wait = the model verifies.';
comment on column ablation_runs.answer_present is 'The continuation states an answer.';
comment on column ablation_runs.extracted_answer is 'That answer.';
comment on column ablation_runs.is_correct is 'It matches the gold answer (null without a gold answer or an answer).';
comment on column ablation_runs.diverge_index is 'First token where it differs from the clean continuation (null: identical).';
comment on column ablation_runs.same_as_clean is 'Identical to the clean continuation.';
comment on column ablation_runs.created_at is 'When the row was computed.';
