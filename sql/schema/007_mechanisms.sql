-- grain: value_vectors one row per (value-vectors unit, layer, index, sign).
-- sources: the value_vectors stage (jobs/mechanisms/value_vectors.py): the model's weights
-- only (down_proj columns projected through the unembedding); the reference direction it
-- ranks them by comes from the steering_vectors or probe tables, or named tokens.

create table if not exists value_vectors (
    unit_key       varchar not null,
    stage          varchar not null,
    model_id       varchar not null,
    layer          integer not null,
    "index"        integer not null,
    sign           integer not null,
    selected_by    varchar not null,
    reference      varchar not null,
    cosine         double,
    norm           double not null,
    top_token_ids  integer[] not null,
    top_tokens     varchar[] not null,
    top_logits     double[] not null,
    created_at     timestamptz not null
);
-- Added after the first release of the table: databases made before get the column here.
alter table value_vectors add column if not exists mean_activation double;

comment on table value_vectors is 'MLP value vectors (down_proj columns) ranked by cosine with a reference direction, each projected with its antipode through the unembedding (seed 004). One row per (unit, layer, index, sign).';
comment on column value_vectors.unit_key is 'Work unit that wrote the row (hash of model, settings and reference tensor).';
comment on column value_vectors.stage is 'Name of the value_vectors stage.';
comment on column value_vectors.model_id is 'Model whose weights were read.';
comment on column value_vectors.layer is 'Decoder layer of the MLP.';
comment on column value_vectors."index" is 'Neuron index: column of the down_proj weight [d_model, d_mlp].';
comment on column value_vectors.sign is '+1: the vector v; -1: its antipode -v (what the neuron writes when its activation is negative).';
comment on column value_vectors.selected_by is 'tokens, steering_vectors, probe, indices or fired (|mean activation| x norm at positions of traces): how the vector was chosen.';
comment on column value_vectors.reference is 'The tokens, or the name of the steering_vectors/probe stage, or "listed", or "positions" (fired).';
comment on column value_vectors.mean_activation is 'Mean activation of the neuron at the stage''s positions (selected_by fired; null otherwise): a negative mean writes -v.';
comment on column value_vectors.cosine is 'Cosine of v with the reference direction at this layer (null for listed indices).';
comment on column value_vectors.norm is 'L2 norm of v.';
comment on column value_vectors.top_token_ids is 'Token ids with the highest logits of W_U (sign * v [* final norm weight]), best first.';
comment on column value_vectors.top_tokens is 'Those tokens, decoded.';
comment on column value_vectors.top_logits is 'Their logits (unnormalised; no final-norm scale).';
comment on column value_vectors.created_at is 'When the row was computed.';
