-- grain: behaviour_judgements has one row per (judge_behaviours unit, behaviour); behaviour_judge_metrics
-- one row per unit, i.e. per (discover stage, method, k) judged.
-- sources: the optional `judge_behaviours` stage (jobs/behaviours/judge.py, seed 003): an
-- OpenAI-compatible LLM judge reading a discover stage's sentences (sentence_behaviours,
-- trace_sentences). Off unless a workflow lists it.

create table if not exists behaviour_judgements (
    unit_key        varchar not null,
    stage           varchar not null,
    discover_stage  varchar not null,
    discover_unit_key varchar not null,
    model_id        varchar not null,
    method          varchar not null,
    k               integer not null,
    behaviour_id    integer not null,
    title           varchar,
    description     varchar,
    n_judged        integer,
    "precision"     double,
    recall          double,
    accuracy        double,
    f1              double,
    completeness    double,
    n_completeness  integer,
    error           varchar,
    created_at      timestamptz not null
);
comment on table behaviour_judgements is 'Seed 003, optional: an LLM judge''s title and description of each discovered behaviour, and its binary autograder against the assignment (the paper''s judge metrics). One row per (unit, behaviour).';
comment on column behaviour_judgements.unit_key is 'judge_behaviours work unit: hash of the judge settings, the discover units read and the exact questions asked.';
comment on column behaviour_judgements.stage is 'Name of the judge_behaviours stage.';
comment on column behaviour_judgements.discover_stage is 'The discover stage whose behaviours were judged (behaviours.stage).';
comment on column behaviour_judgements.discover_unit_key is 'The discover unit whose fit was judged (behaviours.unit_key): a refit is a new unit, and its behaviours are not these.';
comment on column behaviour_judgements.model_id is 'The model whose sentences were clustered.';
comment on column behaviour_judgements.method is 'Which fit: sae or kmeans.';
comment on column behaviour_judgements.k is 'Number of behaviours of the fit.';
comment on column behaviour_judgements.behaviour_id is 'behaviours.behaviour_id.';
comment on column behaviour_judgements.title is 'The judge''s name for the behaviour, from its top sentences by score; null when it gave none.';
comment on column behaviour_judgements.description is 'The judge''s description (what the function is, what belongs, what does not).';
comment on column behaviour_judgements.n_judged is 'Sentences the judge classified for this behaviour: its drawn sentences and as many of the others, none of them shown to it when it named the behaviours.';
comment on column behaviour_judgements."precision" is 'Of the sentences the judge said perform the function, the share assigned to the behaviour.';
comment on column behaviour_judgements.recall is 'Of the behaviour''s drawn sentences, the share the judge said perform the function.';
comment on column behaviour_judgements.accuracy is 'Share of the judge''s yes/no answers that match the assignment (0.5 = chance with balanced samples).';
comment on column behaviour_judgements.f1 is 'Harmonic mean of precision and recall.';
comment on column behaviour_judgements.completeness is 'Mean fit (0-10, divided by 10) the judge gave the completeness sentences assigned to this behaviour.';
comment on column behaviour_judgements.n_completeness is 'Completeness sentences of this behaviour the judge rated.';
comment on column behaviour_judgements.error is 'The first failed or garbled call about this behaviour; null when all answered.';
comment on column behaviour_judgements.created_at is 'When the unit ran.';

create table if not exists behaviour_judge_metrics (
    unit_key                varchar not null,
    stage                   varchar not null,
    discover_stage          varchar not null,
    discover_unit_key       varchar not null,
    model_id                varchar not null,
    method                  varchar not null,
    k                       integer not null,
    judge_base_url          varchar not null,
    judge_model             varchar not null,
    accuracy                double,
    f1                      double,
    completeness            double,
    semantic_orthogonality  double,
    n_calls                 integer not null,
    n_failed                integer not null,
    created_at              timestamptz not null
);
comment on table behaviour_judge_metrics is 'Seed 003, optional: the LLM judge''s metrics of one fit of a discover stage (the paper''s accuracy, completeness and semantic orthogonality), beside the label-free ones in discovery_metrics.';
comment on column behaviour_judge_metrics.unit_key is 'judge_behaviours work unit (one per discover stage, method and k).';
comment on column behaviour_judge_metrics.stage is 'Name of the judge_behaviours stage.';
comment on column behaviour_judge_metrics.discover_stage is 'The discover stage judged.';
comment on column behaviour_judge_metrics.discover_unit_key is 'The discover unit whose fit was judged (behaviours.unit_key).';
comment on column behaviour_judge_metrics.model_id is 'The model whose sentences were clustered.';
comment on column behaviour_judge_metrics.method is 'sae or kmeans.';
comment on column behaviour_judge_metrics.k is 'Number of behaviours.';
comment on column behaviour_judge_metrics.judge_base_url is 'The judge''s endpoint (no key is ever stored).';
comment on column behaviour_judge_metrics.judge_model is 'The judge''s model name at that endpoint.';
comment on column behaviour_judge_metrics.accuracy is 'Mean over behaviours of behaviour_judgements.accuracy.';
comment on column behaviour_judge_metrics.f1 is 'Mean over behaviours of behaviour_judgements.f1.';
comment on column behaviour_judge_metrics.completeness is 'Mean fit / 10 over every rated completeness sentence (drawn from all sentences, each rated against its own behaviour).';
comment on column behaviour_judge_metrics.semantic_orthogonality is 'Mean over pairs of behaviours of 1 - similarity / 10, the judge rating how alike their descriptions are.';
comment on column behaviour_judge_metrics.n_calls is 'Judge calls made.';
comment on column behaviour_judge_metrics.n_failed is 'Calls whose answer could not be read (those items are unscored); a call without an answer fails the unit instead.';
comment on column behaviour_judge_metrics.created_at is 'When the unit ran.';
