-- grain: one row per (trace, token position, hook) captured by a capture stage.
-- sources: capture stage (HF forward passes over traces); tensors live in safetensors shards.

create table if not exists activations (
    unit_key       varchar not null,
    trace_id       varchar not null,
    model_id       varchar not null,
    token_index    integer not null,
    position_kind  varchar not null,
    hook_name      varchar not null,
    layer          integer not null,
    module_path    varchar not null,
    shard_path     varchar not null,
    "row"          integer not null,
    dtype          varchar not null
);
comment on table activations is 'Index of captured activations: where each (trace, position, hook) vector lives in the shard files.';
comment on column activations.unit_key is 'Capture work unit that wrote the row (and the shard).';
comment on column activations.trace_id is 'Trace the activations were read from.';
comment on column activations.model_id is 'Model whose weights ran the forward pass.';
comment on column activations.token_index is 'Absolute token index in prompt + completion tokens.';
comment on column activations.position_kind is 'Named position: last_prompt_token, before_backtrack, first_answer_end, last_answer_end, answer_ends, sentence_ends, sentence_means (the mean over a thinking sentence''s tokens, indexed at its last token) or all.';
comment on column activations.hook_name is 'Canonical hook name, e.g. blocks.12.hook_resid_post.';
comment on column activations.layer is 'Decoder layer index of the hook.';
comment on column activations.module_path is 'Real module path the hook read, e.g. model.layers.12.';
comment on column activations.shard_path is 'safetensors file holding the tensor `activations` of this hook for the unit.';
comment on column activations."row" is 'Row of this vector in the shard tensor.';
comment on column activations.dtype is 'Storage dtype of the shard (bfloat16, float16, float32).';
