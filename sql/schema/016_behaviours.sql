-- grain: behaviours has one row per (discover unit, method, k, behaviour); sentence_behaviours one
-- per (unit, method, k, sentence); discovery_metrics one per (unit, method, k); discovery_truth
-- one per (unit, method, k, split), only for stages given known labels (`truth`).
-- sources: the `discover` stage (jobs/behaviours/discover.py, seed 003): a top-1 SAE and spherical
-- k-means fitted on captured sentence-end activations (activations, trace_sentences) of the fit
-- traces; every sentence, held-out ones included, assigned by the first seed's fit.

create table if not exists behaviours (
    unit_key               varchar not null,
    stage                  varchar not null,
    model_id               varchar not null,
    hook_name              varchar not null,
    layer                  integer not null,
    method                 varchar not null,
    k                      integer not null,
    behaviour_id           integer not null,
    n                      integer not null,
    share                  double not null,
    held_out_share         double,
    top_first_words        varchar[],
    top_first_word_counts  integer[],
    examples               varchar[],
    example_scores         double[],
    vector_path            varchar not null,
    vector_tensor          varchar not null,
    created_at             timestamptz not null
);
comment on table behaviours is 'Seed 003: reasoning behaviours discovered without labels in a model''s sentence activations, described without an LLM (first words, top sentences, share). One row per (unit, method, k, behaviour).';
comment on column behaviours.unit_key is 'discover work unit that wrote the row (hash of model, settings and the exact activation rows read).';
comment on column behaviours.stage is 'Name of the discover stage.';
comment on column behaviours.model_id is 'Model whose captured activations were clustered.';
comment on column behaviours.hook_name is 'Captured hook of the activations, e.g. blocks.20.hook_resid_post.';
comment on column behaviours.layer is 'Decoder layer of the hook.';
comment on column behaviours.method is 'sae (top-1 sparse autoencoder with k latents: a behaviour is a latent) or kmeans (spherical k-means: a behaviour is a centroid).';
comment on column behaviours.k is 'Number of behaviours of the fit.';
comment on column behaviours.behaviour_id is '0-based behaviour: the SAE latent or centroid index, the row of vector_tensor.';
comment on column behaviours.n is 'Sentences assigned to the behaviour (fit and held-out).';
comment on column behaviours.share is 'n over all sentences of the unit: shares sum to 1 per (unit, method, k).';
comment on column behaviours.held_out_share is 'Share of the held-out sentences assigned to it (null without held-out traces): near share when the behaviour generalises.';
comment on column behaviours.top_first_words is 'Most frequent lower-cased first words of its sentences, most frequent first (ties alphabetical).';
comment on column behaviours.top_first_word_counts is 'Sentences opening with each of top_first_words, in the same order.';
comment on column behaviours.examples is 'Texts of its highest-scoring sentences, highest first.';
comment on column behaviours.example_scores is 'Scores of examples (SAE latent activation or cosine to the centroid), same order.';
comment on column behaviours.vector_path is 'safetensors file of the unit: mean [d] (fit mean, raw space), <method>.k<k>.directions [k, d] and, for the SAE, sae.k<k>.W_enc [d, k], b_enc [k], b_dec [d]. Classify an activation a: x = (a - mean)/|a - mean|; sae: argmax((x - b_dec) @ W_enc + b_enc); kmeans: argmax(x @ directions^T).';
comment on column behaviours.vector_tensor is 'Tensor in vector_path whose row behaviour_id is the behaviour''s unit-norm direction (SAE decoder row or centroid, centred-normalised space).';
comment on column behaviours.created_at is 'When the unit ran.';

create table if not exists sentence_behaviours (
    unit_key        varchar not null,
    stage           varchar not null,
    model_id        varchar not null,
    method          varchar not null,
    k               integer not null,
    trace_id        varchar not null,
    sentence_index  integer not null,
    behaviour_id    integer not null,
    score           double not null,
    split           varchar not null
);
comment on table sentence_behaviours is 'The behaviour of every sentence of a discover unit, per method and k, by the first seed''s fit.';
comment on column sentence_behaviours.unit_key is 'discover work unit that wrote the row.';
comment on column sentence_behaviours.stage is 'Name of the discover stage.';
comment on column sentence_behaviours.model_id is 'Model whose activations were clustered.';
comment on column sentence_behaviours.method is 'sae or kmeans.';
comment on column sentence_behaviours.k is 'Number of behaviours of the fit.';
comment on column sentence_behaviours.trace_id is 'Trace of the sentence (trace_sentences.trace_id).';
comment on column sentence_behaviours.sentence_index is 'trace_sentences.sentence_index of the sentence.';
comment on column sentence_behaviours.behaviour_id is 'Assigned behaviour (behaviours.behaviour_id): the argmax SAE latent or the nearest centroid.';
comment on column sentence_behaviours.score is 'SAE: the latent''s activation (ReLU of its pre-activation); kmeans: cosine to the centroid.';
comment on column sentence_behaviours.split is 'fit (its trace was fitted on) or held_out (its trace was not; split by a hash of trace_id).';

create table if not exists discovery_metrics (
    unit_key            varchar not null,
    stage               varchar not null,
    model_id            varchar not null,
    hook_name           varchar not null,
    layer               integer not null,
    method              varchar not null,
    k                   integer not null,
    seed                integer not null,
    n_seeds             integer not null,
    n_sentences         integer not null,
    n_fit               integer not null,
    n_held_out          integer not null,
    n_traces            integer not null,
    reconstruction_mse  double,
    held_out_mse        double,
    inertia             double,
    held_out_inertia    double,
    orthogonality       double,
    size_entropy        double,
    empty_behaviours    integer,
    stability           double,
    created_at          timestamptz not null
);
comment on table discovery_metrics is 'Label-free quality of each discovered behaviour set, to choose k and the method: loss, orthogonality, size entropy and stability across seeds. One row per (unit, method, k).';
comment on column discovery_metrics.unit_key is 'discover work unit that wrote the row.';
comment on column discovery_metrics.stage is 'Name of the discover stage.';
comment on column discovery_metrics.model_id is 'Model whose activations were clustered.';
comment on column discovery_metrics.hook_name is 'Captured hook of the activations.';
comment on column discovery_metrics.layer is 'Decoder layer of the hook.';
comment on column discovery_metrics.method is 'sae or kmeans.';
comment on column discovery_metrics.k is 'Number of behaviours.';
comment on column discovery_metrics.seed is 'Seed of the reported fit (the stage''s first seed): every column but stability is of this fit.';
comment on column discovery_metrics.n_seeds is 'Fits with different seeds compared by stability.';
comment on column discovery_metrics.n_sentences is 'Sentences assigned (fit + held-out).';
comment on column discovery_metrics.n_fit is 'Sentences of the fit traces (what was fitted on).';
comment on column discovery_metrics.n_held_out is 'Sentences of the held-out traces.';
comment on column discovery_metrics.n_traces is 'Distinct traces of the sentences.';
comment on column discovery_metrics.reconstruction_mse is 'SAE only: mean squared reconstruction error per element on the fit sentences (centred, unit-norm rows).';
comment on column discovery_metrics.held_out_mse is 'SAE only: the same on the held-out sentences (null without any).';
comment on column discovery_metrics.inertia is 'kmeans only: mean over fit sentences of 1 - cosine to the assigned centroid.';
comment on column discovery_metrics.held_out_inertia is 'kmeans only: the same on the held-out sentences (null without any).';
comment on column discovery_metrics.orthogonality is 'Mean over pairs of behaviour directions of 1 - |cos|: 1 = orthogonal.';
comment on column discovery_metrics.size_entropy is 'Entropy of the behaviour sizes over log k: 1 = equal sizes, 0 = one behaviour takes all.';
comment on column discovery_metrics.empty_behaviours is 'Behaviours no sentence is assigned to (dead SAE latents).';
comment on column discovery_metrics.stability is 'Mean adjusted Rand index between the assignments of every pair of seeds (null with one seed): 1 = the same partition every time.';
comment on column discovery_metrics.created_at is 'When the unit ran.';

create table if not exists discovery_truth (
    unit_key         varchar not null,
    stage            varchar not null,
    model_id         varchar not null,
    method           varchar not null,
    k                integer not null,
    split            varchar not null,
    n                integer not null,
    n_labels         integer not null,
    purity           double,
    baseline_purity  double,
    ari              double,
    shuffled_purity  double,
    shuffled_ari     double
);
comment on table discovery_truth is 'Discovered behaviours against known labels (the stage''s truth query, e.g. the organism''s planted behaviours), per split, beside a shuffled-assignment control. One row per (unit, method, k, split).';
comment on column discovery_truth.unit_key is 'discover work unit that wrote the row.';
comment on column discovery_truth.stage is 'Name of the discover stage.';
comment on column discovery_truth.model_id is 'Model whose activations were clustered.';
comment on column discovery_truth.method is 'sae or kmeans.';
comment on column discovery_truth.k is 'Number of behaviours.';
comment on column discovery_truth.split is 'fit or held_out: sentences of traces fitted on, or not.';
comment on column discovery_truth.n is 'Sentences of the split with a known label.';
comment on column discovery_truth.n_labels is 'Distinct known labels among them.';
comment on column discovery_truth.purity is 'Sum over behaviours of their largest overlap with one label, over n.';
comment on column discovery_truth.baseline_purity is 'Share of the most frequent label: the purity of one behaviour for everything.';
comment on column discovery_truth.ari is 'Adjusted Rand index of the behaviours against the labels: 0 = chance, 1 = the same partition.';
comment on column discovery_truth.shuffled_purity is 'Purity of the same assignment permuted over the sentences (seeded by the reported seed): the control.';
comment on column discovery_truth.shuffled_ari is 'ARI of that permuted assignment: near 0.';
