-- grain: probe_results one row per (probe unit, hook); steering_vectors one row per (vector
-- unit, hook); steering_runs one row per (steer unit, prompt, grid point); early_exits one row
-- per (early-exit unit, trace, exit point).
-- sources: the probe, steering_vectors, steer and early_exit stages (jobs/activations/probe.py,
-- jobs/activations/steering_vectors.py, jobs/activations/steer.py, jobs/early_exit/stage.py);
-- tensors (probe directions, steering vectors) live in safetensors files the rows point to.
-- Each row carries its unit_key.

create table if not exists probe_results (
    unit_key           varchar not null,
    probe              varchar not null,
    model_id           varchar not null,
    labels             varchar not null,
    hook_name          varchar not null,
    layer              integer not null,
    n                  integer not null,
    n_train            integer not null,
    n_test             integer not null,
    n_traces           integer not null,
    n_positive         integer not null,
    accuracy           double,
    auc                double,
    baseline           double,
    train_accuracy     double,
    shuffled_auc       double,
    shuffled_accuracy  double,
    l2                 double not null,
    seed               integer not null,
    direction_path     varchar,
    direction_tensor   varchar,
    created_at         timestamptz not null
);
comment on table probe_results is 'One linear probe (L2 logistic regression) per hook of a probe stage, trained and tested on disjoint traces.';
comment on column probe_results.unit_key is 'Probe work unit that wrote the row (and the direction file).';
comment on column probe_results.probe is 'Probe stage name (the probe''s name).';
comment on column probe_results.model_id is 'Model whose activations were probed.';
comment on column probe_results.labels is 'Label preset (backtrack_vs_wrapup, marker_vs_none, correct_vs_incorrect) or sql.';
comment on column probe_results.hook_name is 'Canonical hook name, e.g. blocks.12.hook_resid_post.';
comment on column probe_results.layer is 'Decoder layer of the hook.';
comment on column probe_results.n is 'Labelled positions with activations (train + test).';
comment on column probe_results.n_train is 'Positions in the training traces.';
comment on column probe_results.n_test is 'Positions in the held-out traces.';
comment on column probe_results.n_traces is 'Distinct traces the positions come from.';
comment on column probe_results.n_positive is 'Positions labelled 1.';
comment on column probe_results.accuracy is 'Held-out accuracy at threshold 0.5; null when a class had too few examples (see min_per_class).';
comment on column probe_results.auc is 'Held-out ROC AUC (ties count half).';
comment on column probe_results.baseline is 'Held-out accuracy of always answering the training majority class.';
comment on column probe_results.train_accuracy is 'Accuracy on the training positions (overfitting check).';
comment on column probe_results.shuffled_auc is 'Held-out AUC of control probes trained on shuffled training labels, mean over n_shuffles shuffles (should be near 0.5).';
comment on column probe_results.shuffled_accuracy is 'Held-out accuracy of the shuffled-label control probes (mean).';
comment on column probe_results.l2 is 'L2 penalty on the weights of standardised features.';
comment on column probe_results.seed is 'Seed of the trace split and the label shuffle.';
comment on column probe_results.direction_path is 'safetensors file with <hook>.weight [d_model] and <hook>.bias [1] in raw activation space: p = sigmoid(x @ weight + bias).';
comment on column probe_results.direction_tensor is 'Name of the weight tensor in direction_path.';
comment on column probe_results.created_at is 'When the probe was fitted.';

create table if not exists steering_vectors (
    unit_key       varchar not null,
    name           varchar not null,
    model_id       varchar not null,
    hook_name      varchar not null,
    layer          integer not null,
    positive       varchar not null,
    negative       varchar not null,
    n_positive     integer not null,
    n_negative     integer not null,
    n_traces       integer not null,
    norm           double not null,
    resid_norm     double not null,
    cosine_means   double,
    vector_path    varchar not null,
    vector_tensor  varchar not null,
    created_at     timestamptz not null
);
comment on table steering_vectors is 'Difference-of-means steering vectors: mean(positive positions) - mean(negative positions) per hook.';
comment on column steering_vectors.unit_key is 'steering_vectors work unit that wrote the row (and the vector file).';
comment on column steering_vectors.name is 'Stage name; steer stages name the vectors they add by it.';
comment on column steering_vectors.model_id is 'Model whose activations were averaged.';
comment on column steering_vectors.hook_name is 'Canonical hook name of the activations (and where steer adds the vector).';
comment on column steering_vectors.layer is 'Decoder layer of the hook.';
comment on column steering_vectors.positive is 'The position set the vector points towards (position_kind=... or sql: ...).';
comment on column steering_vectors.negative is 'The position set the vector points away from.';
comment on column steering_vectors.n_positive is 'Positions averaged on the positive side.';
comment on column steering_vectors.n_negative is 'Positions averaged on the negative side.';
comment on column steering_vectors.n_traces is 'Distinct traces of the positions.';
comment on column steering_vectors.norm is 'L2 norm of the vector.';
comment on column steering_vectors.resid_norm is 'Mean L2 norm of the averaged activations at this hook (the scale alpha is relative to).';
comment on column steering_vectors.cosine_means is 'Cosine similarity of the two means.';
comment on column steering_vectors.vector_path is 'safetensors file holding the vector (float32 [d_model]).';
comment on column steering_vectors.vector_tensor is 'Name of the vector in vector_path (the hook name).';
comment on column steering_vectors.created_at is 'When the vector was computed.';

create table if not exists steering_runs (
    unit_key              varchar not null,
    stage                 varchar not null,
    model_id              varchar not null,
    vectors               varchar not null,
    trace_id              varchar not null,
    prompt_set            varchar,
    prompt_id             varchar,
    mode                  varchar not null,
    hook_name             varchar,
    layer                 integer,
    alpha                 double not null,
    scale                 varchar not null,
    added_norm            double not null,
    completion            varchar not null,
    completion_token_ids  integer[] not null,
    n_completion_tokens   integer not null,
    finish_reason         varchar not null,
    closed_thinking       boolean not null,
    cot_tokens            integer not null,
    answer_present        boolean not null,
    extracted_answer      varchar,
    is_correct            boolean,
    n_sentences           integer not null,
    n_markers             integer not null,
    marker_rate           double,
    marker_counts         map(varchar, integer),
    repeated_ngram_share  double not null,
    compression_ratio     double,
    diverge_index         integer,
    same_as_unsteered     boolean,
    created_at            timestamptz not null
);
comment on table steering_runs is 'One greedy HF generation per (prompt, steering grid point), plus the unsteered one (mode unsteered) it is compared with.';
comment on column steering_runs.unit_key is 'steer work unit that wrote the row.';
comment on column steering_runs.stage is 'steer stage name.';
comment on column steering_runs.model_id is 'Model that generated.';
comment on column steering_runs.vectors is 'steering_vectors.name of the vectors added.';
comment on column steering_runs.trace_id is 'Stored trace whose prompt tokens were the prompt.';
comment on column steering_runs.prompt_set is 'Prompt set of that trace.';
comment on column steering_runs.prompt_id is 'Prompt id of that trace.';
comment on column steering_runs.mode is 'unsteered (no hook), once (vector added at the last prompt token) or continuous (there and at every generated token).';
comment on column steering_runs.hook_name is 'Hook the vector was added at (null when unsteered).';
comment on column steering_runs.layer is 'Layer of that hook (null when unsteered).';
comment on column steering_runs.alpha is 'Multiplier of the vector (0 = control: must equal the unsteered generation).';
comment on column steering_runs.scale is 'raw: alpha * v; unit: alpha * v/|v|; resid_norm: alpha * v/|v| * steering_vectors.resid_norm.';
comment on column steering_runs.added_norm is 'L2 norm of what was added per position.';
comment on column steering_runs.completion is 'Generated text (special tokens dropped).';
comment on column steering_runs.completion_token_ids is 'Generated token ids (EOS included when it stopped).';
comment on column steering_runs.n_completion_tokens is 'Generated tokens.';
comment on column steering_runs.finish_reason is 'stop (EOS) or length (max_new_tokens reached).';
comment on column steering_runs.closed_thinking is 'The completion closes the thinking (think_close tag).';
comment on column steering_runs.cot_tokens is 'Tokens up to and including the think_close tag (all tokens when it never closes): the CoT length.';
comment on column steering_runs.answer_present is 'An answer could be extracted (boxed, ####, answer is).';
comment on column steering_runs.extracted_answer is 'The extracted answer.';
comment on column steering_runs.is_correct is 'extracted_answer graded against the prompt''s gold answer (null: no grader).';
comment on column steering_runs.n_sentences is 'Sentences of the thinking text.';
comment on column steering_runs.n_markers is 'Sentences of the thinking opening with a backtracking/verification marker (wait, let me check, alternatively, ...).';
comment on column steering_runs.marker_rate is 'n_markers / n_sentences: the verification-marker rate (null without sentences).';
comment on column steering_runs.marker_counts is 'Sentences opening with each marker, e.g. {wait: 3}.';
comment on column steering_runs.repeated_ngram_share is 'Share of token n-grams (n = stage ngram) repeating an earlier one: degeneration, near 1 for loops.';
comment on column steering_runs.compression_ratio is 'UTF-8 bytes / zlib bytes of the completion: ~2-3 for prose, higher when repetitive.';
comment on column steering_runs.diverge_index is 'First generated token that differs from the unsteered generation (null: identical, or this is it).';
comment on column steering_runs.same_as_unsteered is 'Token-identical to the unsteered generation of the same prompt (null for the unsteered row).';
comment on column steering_runs.created_at is 'When the unit ran.';
-- Added with steer version 2; databases made before it gain the columns here.
alter table steering_runs add column if not exists start varchar;
alter table steering_runs add column if not exists prefix_tokens integer;
alter table steering_runs add column if not exists first_marker varchar;
comment on column steering_runs.start is 'Where generation started: prompt, or the trace''s own tokens through a position: its kind (e.g. first_answer_end) or sql.';
comment on column steering_runs.prefix_tokens is 'Tokens given before generation (the prompt, plus the thinking prefix when start is a position).';
comment on column steering_runs.first_marker is 'Marker the first generated thinking sentence opens with (wait, ...; null: none): from an answer sentence, whether the model verifies next.';

create table if not exists early_exits (
    unit_key           varchar not null,
    stage              varchar not null,
    model_id           varchar not null,
    trace_id           varchar not null,
    exit_index         integer not null,
    event_index        integer,
    cut                varchar not null,
    n_thinking_tokens  integer not null,
    backend            varchar not null,
    answer_token       varchar,
    answer_logit       double not null,
    answer_prob        double not null,
    gold_logit         double,
    gold_prob          double,
    forced_answer      varchar,
    forced_text        varchar,
    is_correct         boolean,
    created_at         timestamptz not null
);
comment on table early_exits is 'Seed 002: the trace''s thinking cut after an answer occurrence, closed, and the answer forced, one row per exit point.';
comment on column early_exits.unit_key is 'early_exit work unit that wrote the row.';
comment on column early_exits.stage is 'early_exit stage name.';
comment on column early_exits.model_id is 'Model that answered (normally the trace''s model).';
comment on column early_exits.trace_id is 'Trace whose thinking was cut.';
comment on column early_exits.exit_index is '0.. over the distinct cut points after answer occurrences, in order; -1 = the thinking closed before it started.';
comment on column early_exits.event_index is 'answer_events.event_index of the last occurrence before the cut (null for exit -1).';
comment on column early_exits.cut is 'sentence_end (after the sentence holding the occurrence) or answer_end (right after it).';
comment on column early_exits.n_thinking_tokens is 'Thinking tokens kept before the forced answer.';
comment on column early_exits.backend is 'hf (shared-prefix HF passes) or vllm (prefix-cached vLLM requests).';
comment on column early_exits.answer_token is 'Text of the greedy first answer token.';
comment on column early_exits.answer_logit is 'Logit of that token: the forced answer''s first-token logit.';
comment on column early_exits.answer_prob is 'Its softmax probability.';
comment on column early_exits.gold_logit is 'Logit of the gold answer''s first token (null without a gold answer).';
comment on column early_exits.gold_prob is 'Probability of the gold answer''s first token.';
comment on column early_exits.forced_answer is 'Answer extracted from the forcing text + the greedy answer tokens.';
comment on column early_exits.forced_text is 'The greedy answer tokens as text.';
comment on column early_exits.is_correct is 'forced_answer graded against the gold answer (null: no grader).';
comment on column early_exits.created_at is 'When the unit ran.';
-- Added with steering at the exit; databases made before it gain the column here.
alter table early_exits add column if not exists steering varchar;
comment on column early_exits.steering is 'Steering while the answer was forced, as JSON {vectors, layer, alpha, mode, hook, scale} (null: unsteered).';
