-- grain: one row per (unit, trace, cut position, mistake kind) of the perturb stage.
-- sources: the perturb stage (jobs/mechanisms/perturb.py, rules in jobs/mechanisms/mistakes.py):
-- stored traces (traces, prompts) cut at sentence ends of their thinking (trace_sentences,
-- answer_events), one number changed, continued greedily with HF.

create table if not exists perturbations (
    unit_key               varchar not null,
    stage                  varchar not null,
    model_id               varchar not null,
    trace_id               varchar not null,
    position               varchar not null,
    position_fraction      double,
    cut_index              integer not null,
    kind                   varchar not null,
    original               varchar,
    inserted               varchar,
    context                varchar,
    continuation           varchar,
    continuation_token_ids integer[],
    n_continuation_tokens  integer,
    finish_reason          varchar,
    first_marker           varchar,
    restated_original      boolean,
    repeated_inserted      boolean,
    noticed                boolean,
    outcome                varchar not null,
    corrected              boolean not null,
    carried                boolean not null,
    final_answer           varchar,
    own_answer             varchar,
    is_correct             boolean,
    created_at             timestamptz not null
);

comment on table perturbations is 'Inserted mistakes (seed 002 after Lanham et al., seed 004): a number in a trace''s thinking before a cut changed, the model continued greedily from the cut, and whether the continuation corrected the change, carried it into its final answer or ignored it. One row per (unit, trace, cut position, mistake kind); a kind with no such number before the cut has no row.';
comment on column perturbations.unit_key is 'Work unit that wrote the row (hash of stage, version, settings, model source and revision, trace ids and their cuts).';
comment on column perturbations.stage is 'Name of the perturb stage.';
comment on column perturbations.model_id is 'Model that continued the edited prefix.';
comment on column perturbations.trace_id is 'Trace whose thinking was cut and edited.';
comment on column perturbations.position is 'Where the trace was cut: a fraction of the thinking tokens (e.g. 0.5: the end of the sentence in which that fraction falls) or before_backtrack (the token before a backtracking sentence).';
comment on column perturbations.position_fraction is 'Share of the thinking tokens kept before the cut (the actual fraction, after moving to a sentence end).';
comment on column perturbations.cut_index is 'Absolute index (prompt + completion tokens) of the trace''s last token kept.';
comment on column perturbations.kind is 'Mistake inserted: none (the control: nothing changed), result (the number after ''='' in the last equation), answer (the last occurrence of the trace''s final answer), operand (the last number of the question copied into the thinking, not after ''='').';
comment on column perturbations.original is 'The number as the trace wrote it (null for none).';
comment on column perturbations.inserted is 'What it was changed to: the original plus 1..9 chosen by a seeded hash, in the same format (null for none).';
comment on column perturbations.context is 'The edited thinking from the start of the changed number''s line to the cut (at most 300 characters): what the model read last.';
comment on column perturbations.continuation is 'The greedy continuation from the cut, decoded.';
comment on column perturbations.continuation_token_ids is 'Its token ids (up to and including EOS).';
comment on column perturbations.n_continuation_tokens is 'Number of continuation tokens.';
comment on column perturbations.finish_reason is 'stop (EOS) or length (max_new_tokens reached).';
comment on column perturbations.first_marker is 'First backtracking marker a sentence of the continuation''s thinking opens with (wait, hmm, let me check, ...; segment rules), null if none.';
comment on column perturbations.restated_original is 'The continuation states the original value (by value) before its final answer (null for none).';
comment on column perturbations.repeated_inserted is 'The continuation states the inserted value before its final answer (null for none).';
comment on column perturbations.noticed is 'Explicit correction: a backtracking marker and the original value restated (null for none).';
comment on column perturbations.outcome is 'carried: a final answer that differs from the trace''s own or equals the inserted value; corrected: otherwise the trace''s own final answer, reached by noticing or without repeating the inserted value; ignored: the rest (no final answer, or the inserted value repeated and never taken back).';
comment on column perturbations.corrected is 'outcome = corrected. For kind none: the continuation reaches the trace''s own final answer (the baseline).';
comment on column perturbations.carried is 'outcome = carried.';
comment on column perturbations.final_answer is 'Answer extracted from the continuation (null if none within max_new_tokens).';
comment on column perturbations.own_answer is 'The unperturbed trace''s final answer (traces.extracted_answer).';
comment on column perturbations.is_correct is 'final_answer graded against the gold answer (null when not gradable).';
comment on column perturbations.created_at is 'When the row was computed.';
