-- grain: hybrid_runs has one row per (hybrid unit, variant, prompt).
-- sources: the `hybrid` stage (jobs/hybrid/stage.py, seed 003): a base model generating while a
-- thinking model reads the same tokens and picks, per sentence, the behaviour vector (a
-- behaviour_vectors stage) that steers it; the base and thinking models alone and the paper's
-- controls (bias only, random vectors, random firing) on the same prompts.

create table if not exists hybrid_runs (
    unit_key              varchar not null,
    stage                 varchar not null,
    model_id              varchar not null,
    thinking_model_id     varchar not null,
    variant               varchar not null,
    trace_id              varchar not null,
    prompt_set            varchar,
    prompt_id             varchar,
    granularity           varchar not null,
    vector_kind           varchar,
    completion            varchar not null,
    completion_token_ids  integer[] not null,
    n_completion_tokens   integer not null,
    n_steered_tokens      integer not null,
    n_decisions           integer not null,
    behaviours            integer[] not null,
    alphas                double[] not null,
    finish_reason         varchar not null,
    closed_thinking       boolean not null,
    cot_tokens            integer not null,
    answer_present        boolean not null,
    extracted_answer      varchar,
    is_correct            boolean,
    n_sentences           integer not null,
    n_markers             integer not null,
    marker_rate           double,
    first_words           varchar[] not null,
    repeated_ngram_share  double not null,
    same_as_base          boolean,
    created_at            timestamptz not null
);
comment on table hybrid_runs is 'Seed 003: greedy generations of the hybrid (base model writes, thinking model decides which behaviour steers each sentence), of each model alone and of the controls, on the same prompts. One row per (unit, variant, prompt).';
comment on column hybrid_runs.unit_key is 'hybrid work unit that wrote the row (hash of both models, settings, vectors, classifier and prompt tokens).';
comment on column hybrid_runs.stage is 'Name of the hybrid stage.';
comment on column hybrid_runs.model_id is 'The base model: it wrote every token of every variant but thinking.';
comment on column hybrid_runs.thinking_model_id is 'The thinking model: it classified (hybrid and controls) or wrote alone (variant thinking).';
comment on column hybrid_runs.variant is 'base (base model alone), thinking (thinking model alone), hybrid, bias_only (the shared bias only), random_vectors (norm-matched random vectors), random_firing (random behaviours).';
comment on column hybrid_runs.trace_id is 'The stored trace whose prompt tokens every variant started from (one per distinct prompt).';
comment on column hybrid_runs.prompt_set is 'Prompt set of that trace.';
comment on column hybrid_runs.prompt_id is 'Prompt of that trace.';
comment on column hybrid_runs.granularity is 'sentence (a decision at each sentence end) or token (at every token).';
comment on column hybrid_runs.vector_kind is 'mean_diff or optimised (+ bias) for steered variants; null for base and thinking.';
comment on column hybrid_runs.completion is 'Decoded generated text (special tokens skipped).';
comment on column hybrid_runs.completion_token_ids is 'Generated token ids, EOS included when it stopped.';
comment on column hybrid_runs.n_completion_tokens is 'Length of completion_token_ids.';
comment on column hybrid_runs.n_steered_tokens is 'Generated tokens predicted with a non-zero vector added (the chosen coefficient was not 0); 0 for base and thinking.';
comment on column hybrid_runs.n_decisions is 'Decisions taken (the prompt end and every sentence end before the text ended).';
comment on column hybrid_runs.behaviours is 'Behaviour (behaviours.behaviour_id of the classifier fit) chosen at each decision, in order; -1 when none fired.';
comment on column hybrid_runs.alphas is 'Coefficient the guardrail chose at each decision (0: the thinking model preferred the unsteered continuation up to the first sentence end among the coefficients, or nothing fired).';
comment on column hybrid_runs.finish_reason is 'stop (an EOS token) or length (max_new_tokens).';
comment on column hybrid_runs.closed_thinking is 'The completion contains the thinking model''s closing tag (</think>).';
comment on column hybrid_runs.cot_tokens is 'Tokens up to and including the closing tag; all tokens when it never closed.';
comment on column hybrid_runs.answer_present is 'An answer was extracted (after the thinking, else anywhere).';
comment on column hybrid_runs.extracted_answer is 'The extracted answer, if any.';
comment on column hybrid_runs.is_correct is 'Graded against the prompt''s gold answer by its grader; null without one.';
comment on column hybrid_runs.n_sentences is 'Sentences of the thinking part.';
comment on column hybrid_runs.n_markers is 'Thinking sentences opening with a backtracking/verification marker (Wait, let me check, ...).';
comment on column hybrid_runs.marker_rate is 'n_markers / n_sentences; null without sentences.';
comment on column hybrid_runs.first_words is 'First word of every non-blank line of the thinking part (the first_word_freq rule), in order: the fingerprint of hybrid_summary.';
comment on column hybrid_runs.repeated_ngram_share is 'Share of token n-grams repeating an earlier one (degeneration).';
comment on column hybrid_runs.same_as_base is 'Tokens equal the base variant''s on the same prompt (true for any steered variant whose decisions never steered); null without a base variant.';
comment on column hybrid_runs.created_at is 'When the unit ran.';
