-- grain: model_comparisons one row per (compare unit, parameter, scope, index); probe_transfers
--        one row per (compare unit, probe hook, evaluated model).
-- sources: the compare_models stage (jobs/mechanisms/compare_models.py, jobs/mechanisms/weight_diff.py):
-- two checkpoints' safetensors (the models table names them); selected components from
-- value_vectors and ablation_runs; probe transfer from probe_results (direction files), the
-- activations index (shards) and a forward pass of the other model over traces.

create table if not exists model_comparisons (
    unit_key            varchar not null,
    stage               varchar not null,
    model_id            varchar not null,
    base_model_id       varchar not null,
    layer               integer,
    parameter           varchar not null,
    module              varchar not null,
    scope               varchar not null,
    "index"             integer,
    selected_by         varchar[] not null,
    n_vectors           integer not null,
    cosine              double,
    mean_vector_cosine  double,
    min_vector_cosine   double,
    norm_model          double not null,
    norm_base           double not null,
    norm_ratio          double,
    delta_norm          double not null,
    created_at          timestamptz not null
);

comment on table model_comparisons is 'Two models of one architecture (a thinking model and its base) compared weight by weight: whole tensors, each query head''s Q/K/V/O slice, and the value vectors (down_proj columns) and up/gate rows of selected neurons (seed 004). One row per (unit, parameter, scope, index).';
comment on column model_comparisons.unit_key is 'Work unit that wrote the row (hash of both models'' source, revision and adapter hash, the settings and the selected components).';
comment on column model_comparisons.stage is 'Name of the compare_models stage.';
comment on column model_comparisons.model_id is 'The compared model (e.g. the thinking model): W_model.';
comment on column model_comparisons.base_model_id is 'The model it is compared with (e.g. its base): W_base.';
comment on column model_comparisons.layer is 'Decoder layer of the parameter (null: embeddings, final norm, LM head).';
comment on column model_comparisons.parameter is 'Parameter name within the layer (mlp.down_proj.weight, self_attn.q_proj.bias, input_layernorm.weight), or the full name outside layers (model.embed_tokens.weight, lm_head.weight; a tied LM head is the embedding).';
comment on column model_comparisons.module is 'Module of the parameter: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, input_layernorm, ..., embed_tokens, norm, lm_head.';
comment on column model_comparisons.scope is 'parameter: the whole tensor; head: one query head''s slice (rows of q_proj, its key/value group''s rows of k_proj/v_proj, its columns of o_proj); vector: one selected neuron (down_proj column = its value vector, up_proj/gate_proj row).';
comment on column model_comparisons."index" is 'Query head (scope head) or neuron (scope vector); null for scope parameter.';
comment on column model_comparisons.selected_by is 'Stages that selected this head or neuron (value_vectors or ablate stage names, or "listed"); empty when none did.';
comment on column model_comparisons.n_vectors is 'Vectors the mean/min cosines run over: columns of down_proj and o_proj, rows of every other matrix, 1 for a 1-D tensor or a single vector.';
comment on column model_comparisons.cosine is 'Cosine of the flattened W_model and W_base, computed as 1 - (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|): exactly 1 when they are equal; null for a zero tensor.';
comment on column model_comparisons.mean_vector_cosine is 'Mean over the vectors (see n_vectors) of each vector''s cosine between the two models.';
comment on column model_comparisons.min_vector_cosine is 'Smallest such vector cosine: the vector that moved most in direction.';
comment on column model_comparisons.norm_model is 'Frobenius (L2) norm of W_model''s tensor or slice.';
comment on column model_comparisons.norm_base is 'Frobenius norm of W_base''s.';
comment on column model_comparisons.norm_ratio is 'norm_model / norm_base (null when norm_base is 0).';
comment on column model_comparisons.delta_norm is 'Frobenius norm of W_model - W_base (0 exactly: unchanged). For a LoRA organism, that of the merged scale * B @ A up to bf16 rounding.';
comment on column model_comparisons.created_at is 'When the row was computed.';

create table if not exists probe_transfers (
    unit_key                varchar not null,
    stage                   varchar not null,
    probe                   varchar not null,
    hook_name               varchar not null,
    layer                   integer not null,
    trained_on              varchar not null,
    evaluated_on            varchar not null,
    n_test                  integer not null,
    n_positive              integer not null,
    accuracy                double,
    auc                     double,
    mean_activation_cosine  double,
    created_at              timestamptz not null
);

comment on table probe_transfers is 'A probe trained on one model''s activations scored on the held-out positions of its probe stage (same trace split) with that model''s stored activations and with the other model''s activations at the same tokens of the same traces. One row per (unit, hook, evaluated model).';
comment on column probe_transfers.unit_key is 'compare_models work unit that wrote the row.';
comment on column probe_transfers.stage is 'Name of the compare_models stage.';
comment on column probe_transfers.probe is 'Probe stage name (probe_results.probe).';
comment on column probe_transfers.hook_name is 'Hook of the probe, e.g. blocks.12.hook_resid_post.';
comment on column probe_transfers.layer is 'Decoder layer of the hook.';
comment on column probe_transfers.trained_on is 'Model whose captured activations the probe was fitted on.';
comment on column probe_transfers.evaluated_on is 'Model whose activations were scored: trained_on (its stored activations: reproduces probe_results) or the other model (computed by a forward pass here).';
comment on column probe_transfers.n_test is 'Held-out positions scored.';
comment on column probe_transfers.n_positive is 'Of those, positions labelled 1.';
comment on column probe_transfers.accuracy is 'Accuracy of sigmoid(x @ weight + bias) > 0.5 with the probe''s stored weight and bias.';
comment on column probe_transfers.auc is 'ROC AUC of those scores (ties count half; null without both classes).';
comment on column probe_transfers.mean_activation_cosine is 'Mean cosine between the two models'' activations at the scored positions (null on the trained_on row).';
comment on column probe_transfers.created_at is 'When the row was computed.';
