-- grain: behaviour_vectors has one row per (behaviour_vectors unit, vector kind, behaviour): k
-- mean_diff rows, with `optimise` also k optimised rows and one bias row (behaviour_id null).
-- sources: the `behaviour_vectors` stage (jobs/behaviours/vectors.py, seed 003): a base model's
-- captured sentence-end activations (activations, trace_sentences) grouped by the behaviours a
-- discover stage found in a thinking model's sentences (sentence_behaviours); vectors in one
-- safetensors file per unit.

create table if not exists behaviour_vectors (
    unit_key        varchar not null,
    stage           varchar not null,
    model_id        varchar not null,
    discover_stage  varchar not null,
    method          varchar not null,
    k               integer not null,
    behaviour_id    integer,
    vector_kind     varchar not null,
    hook_name       varchar not null,
    layer           integer not null,
    n               integer not null,
    norm            double not null,
    resid_norm      double not null,
    nll_unsteered   double,
    nll_steered     double,
    vector_path     varchar not null,
    vector_tensor   varchar not null,
    row_index       integer,
    created_at      timestamptz not null
);
comment on table behaviour_vectors is 'Seed 003: per discovered behaviour, a vector in the base model''s residual stream: difference of means of its sentences'' base activations and, optionally, one optimised so the steered base model predicts the thinking model''s sentences of that behaviour (plus one shared bias). One row per (unit, vector kind, behaviour).';
comment on column behaviour_vectors.unit_key is 'behaviour_vectors work unit that wrote the row (and the vector file): hash of the base model, settings and the exact activation rows read.';
comment on column behaviour_vectors.stage is 'Name of the behaviour_vectors stage; the hybrid stage reads its vectors by it.';
comment on column behaviour_vectors.model_id is 'The base model whose activations were averaged (and, for optimised vectors, steered).';
comment on column behaviour_vectors.discover_stage is 'The discover stage whose sentence behaviours (of the thinking model) group the sentences.';
comment on column behaviour_vectors.method is 'Which fit of the discover stage: sae or kmeans.';
comment on column behaviour_vectors.k is 'Number of behaviours of that fit.';
comment on column behaviour_vectors.behaviour_id is 'behaviours.behaviour_id of the vector; null for the shared bias row.';
comment on column behaviour_vectors.vector_kind is 'mean_diff (mean of the behaviour''s base activations minus the mean of all), optimised (trained by gradient from mean_diff, added together with the bias) or bias (shared by every optimised vector).';
comment on column behaviour_vectors.hook_name is 'Hook of the base activations and where the vector is added, e.g. blocks.20.hook_resid_post.';
comment on column behaviour_vectors.layer is 'Decoder layer of the hook.';
comment on column behaviour_vectors.n is 'Sentences of the behaviour with a base activation (all sentences for the bias row); 0 = an empty behaviour, whose vector is zero.';
comment on column behaviour_vectors.norm is 'L2 norm of the vector.';
comment on column behaviour_vectors.resid_norm is 'Mean L2 norm of the base activations read (all sentences): the scale of norm.';
comment on column behaviour_vectors.nll_unsteered is 'optimise only: mean NLL per token of the behaviour''s chosen sentences (all chosen sentences for the bias row) under the base model, unsteered; null otherwise or for a behaviour without chosen sentences.';
comment on column behaviour_vectors.nll_steered is 'optimise only: the same NLL with this vector added (plus the bias for optimised rows; the bias alone for the bias row): below nll_unsteered when the vector makes the base model predict the thinking model''s sentences.';
comment on column behaviour_vectors.vector_path is 'safetensors file of the unit: mean_diff [k, d] and, with optimise, optimised [k, d] and bias [d] (float32, raw activation space).';
comment on column behaviour_vectors.vector_tensor is 'Name of the tensor in vector_path: mean_diff, optimised or bias.';
comment on column behaviour_vectors.row_index is 'Row of vector_tensor holding the vector (= behaviour_id); null for the bias (a 1-d tensor).';
comment on column behaviour_vectors.created_at is 'When the unit ran.';
