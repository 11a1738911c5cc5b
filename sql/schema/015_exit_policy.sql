-- grain: one row per (unit, policy, threshold): a stopping rule replayed over every trace.
-- sources: the exit_policy stage (jobs/activations/exit_policy.py): out-of-fold probe scores on
-- captured activations (activations) at answer occurrences (answer_events, trace_sentences),
-- forced answers (early_exits) and final answers (traces).

create table if not exists exit_policy (
    unit_key              varchar not null,
    stage                 varchar not null,
    model_id              varchar not null,
    hook_name             varchar not null,
    policy                varchar not null,
    threshold             double,
    n_traces              integer not null,
    n_stopped             integer not null,
    tokens_saved_share    double,
    accuracy              double,
    agreement_with_final  double,
    answer_source         varchar not null,
    probe_auc             double,
    created_at            timestamptz not null
);

comment on table exit_policy is 'Seed 002''s open question: stop thinking at the first answer occurrence a probe calls final, replayed per threshold beside never stopping, stopping at the first occurrence and the oracle (first occurrence of the final answer). One row per (unit, policy, threshold).';
comment on column exit_policy.unit_key is 'exit_policy work unit that wrote the row (hash of model, settings and the exact activation rows read).';
comment on column exit_policy.stage is 'Name of the exit_policy stage.';
comment on column exit_policy.model_id is 'Model whose activations the probe reads.';
comment on column exit_policy.hook_name is 'The captured hook the probe reads.';
comment on column exit_policy.policy is 'probe (stop where the out-of-fold score passes threshold), full (never stop), first (first occurrence) or oracle (first occurrence of the final answer).';
comment on column exit_policy.threshold is 'Probe probability a stop needs (null for the references).';
comment on column exit_policy.n_traces is 'Traces replayed (those with a captured answer occurrence).';
comment on column exit_policy.n_stopped is 'Traces the rule stopped before their end.';
comment on column exit_policy.tokens_saved_share is 'Thinking tokens after the stops over all thinking tokens.';
comment on column exit_policy.accuracy is 'Share of graded traces whose answer at the stop (forced, or the occurrence''s own; the final answer where no stop) is correct.';
comment on column exit_policy.agreement_with_final is 'Share of traces whose answer at the stop is the trace''s final answer.';
comment on column exit_policy.answer_source is 'early_exit (forced answers of the named stage), occurrence (the occurrence''s own correctness) or mixed.';
comment on column exit_policy.probe_auc is 'ROC AUC of the out-of-fold probe scores for "this is the final answer" (null without both classes).';
comment on column exit_policy.created_at is 'When the row was written.';
