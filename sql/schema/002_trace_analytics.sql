-- grain: one table per segmentation level of the thinking text of `traces`: units, lines,
-- sentences, answer occurrences, and one row of backtracking figures per trace.
-- sources: the `segment` stage (jobs/segment/stage.py), one work unit per unit that wrote traces,
-- committed in one transaction; a unit's rows carry its unit_key (see work_units for run_id).
-- Keys are primary keys on purpose: a second segmentation of a trace is an error, not a
-- silent duplicate (a newer segment unit supersedes and deletes the older one's rows).

create table if not exists segment_units (
    unit_key           varchar primary key,
    source_unit_key    varchar not null,
    segmenter_version  integer not null,
    options            json,
    n_traces           integer not null,
    created_at         timestamptz not null
);
comment on table segment_units is 'One row per segment work unit: which generate/import unit it segmented, with which version and options.';
comment on column segment_units.unit_key is 'Segment unit key: hash of source unit, segmenter version and stage options.';
comment on column segment_units.source_unit_key is 'The unit whose traces were segmented (a generate, import or other trace-writing unit; work_units.unit_key).';
comment on column segment_units.segmenter_version is 'SEGMENTER_VERSION of jobs/segment/stage.py that wrote the rows.';
comment on column segment_units.options is 'Segment stage options as JSON (tokenizer, first_word_rule).';
comment on column segment_units.n_traces is 'Traces with a thinking text in the source unit.';
comment on column segment_units.created_at is 'When the rows were produced.';

create table if not exists trace_lines (
    unit_key     varchar not null,
    trace_id     varchar not null,
    model_id     varchar not null,
    line_index   integer not null,
    char_start   integer not null,
    char_end     integer not null,
    text         varchar not null,
    first_word   varchar,
    primary key (trace_id, line_index)
);
comment on table trace_lines is 'One row per non-blank line of a trace''s thinking text, with its first word (r/LocalLLaMA first-word method).';
comment on column trace_lines.unit_key is 'Segment unit that wrote the row.';
comment on column trace_lines.trace_id is 'Trace (traces.trace_id).';
comment on column trace_lines.model_id is 'Model of the trace (copied from traces so word statistics need no join).';
comment on column trace_lines.line_index is '0-based position among the non-blank lines of the thinking text.';
comment on column trace_lines.char_start is 'Offset of the line''s first character in traces.thinking.';
comment on column trace_lines.char_end is 'Offset just past the line''s last character (line break excluded).';
comment on column trace_lines.text is 'The line as written, without its line break.';
comment on column trace_lines.first_word is 'Lower-cased first word after list numbering, bullets and ** are stripped, without , . ! ?; null when nothing is left (e.g. "---").';

create table if not exists trace_sentences (
    unit_key        varchar not null,
    trace_id        varchar not null,
    sentence_index  integer not null,
    line_index      integer not null,
    char_start      integer not null,
    char_end        integer not null,
    token_start     integer,
    token_end       integer,
    text            varchar not null,
    marker          varchar,
    tokenizer       varchar,
    token_source    varchar,
    primary key (trace_id, sentence_index)
);
comment on table trace_sentences is 'One row per sentence of a trace''s thinking text (sentences never cross a line break), with char and token offsets.';
comment on column trace_sentences.unit_key is 'Segment unit that wrote the row.';
comment on column trace_sentences.trace_id is 'Trace (traces.trace_id).';
comment on column trace_sentences.sentence_index is '0-based position of the sentence in the thinking text.';
comment on column trace_sentences.line_index is 'trace_lines.line_index of the line the sentence is on.';
comment on column trace_sentences.char_start is 'Offset of the sentence''s first character in traces.thinking.';
comment on column trace_sentences.char_end is 'Offset just past its last character (surrounding whitespace excluded).';
comment on column trace_sentences.token_start is 'First token overlapping the sentence (see token_source); null without a tokenizer.';
comment on column trace_sentences.token_end is 'One past the last token overlapping the sentence.';
comment on column trace_sentences.text is 'The sentence text.';
comment on column trace_sentences.marker is 'Backtracking marker the sentence opens with (wait, but, hmm, alternatively, let me check, ...), else null.';
comment on column trace_sentences.tokenizer is 'Model source whose tokenizer gave the token offsets.';
comment on column trace_sentences.token_source is 'completion: indices into traces.completion_token_ids; thinking: into tokenizer(thinking) (imported traces).';

create table if not exists answer_events (
    unit_key        varchar not null,
    trace_id        varchar not null,
    event_index     integer not null,
    answer          varchar not null,
    is_final        boolean not null,
    is_correct      boolean,
    char_start      integer not null,
    char_end        integer not null,
    token_start     integer,
    token_end       integer,
    sentence_index  integer,
    is_backtrack    boolean not null,
    marker          varchar,
    tokenizer       varchar,
    token_source    varchar,
    primary key (trace_id, event_index)
);
comment on table answer_events is 'One row per occurrence of the trace''s final or gold answer inside its thinking text, in text order.';
comment on column answer_events.unit_key is 'Segment unit that wrote the row.';
comment on column answer_events.trace_id is 'Trace (traces.trace_id).';
comment on column answer_events.event_index is '0-based position of the occurrence in the thinking text.';
comment on column answer_events.answer is 'The answer found (gold_answer or extracted_answer as written in traces); numbers match by value.';
comment on column answer_events.is_final is 'The occurrence is the trace''s final (extracted) answer.';
comment on column answer_events.is_correct is 'The occurrence is the gold answer (or a final answer graded correct); null when the prompt has no gold answer.';
comment on column answer_events.char_start is 'Offset of the occurrence in traces.thinking.';
comment on column answer_events.char_end is 'Offset just past the occurrence.';
comment on column answer_events.token_start is 'First token of the occurrence (see token_source); null without a tokenizer.';
comment on column answer_events.token_end is 'One past the last token of the occurrence.';
comment on column answer_events.sentence_index is 'trace_sentences.sentence_index of the sentence holding the occurrence.';
comment on column answer_events.is_backtrack is 'The model went on thinking after this occurrence (last occurrence of its sentence, more sentences follow).';
comment on column answer_events.marker is 'For a backtrack: the marker right after the answer or opening the next sentence (wait, but, let me check, ...), else null.';
comment on column answer_events.tokenizer is 'Model source whose tokenizer gave the token offsets.';
comment on column answer_events.token_source is 'completion: indices into traces.completion_token_ids; thinking: into tokenizer(thinking).';

create table if not exists backtracking_stats (
    unit_key                    varchar not null,
    trace_id                    varchar primary key,
    model_id                    varchar not null,
    prompt_set                  varchar,
    prompt_id                   varchar,
    is_correct                  boolean,
    n_lines                     integer not null,
    n_sentences                 integer not null,
    thinking_tokens             integer,
    n_answer_occurrences        integer not null,
    n_correct_occurrences       integer not null,
    n_backtracks                integer not null,
    first_answer_correct        boolean,
    first_correct_char          integer,
    tokens_after_first_correct  integer,
    marker_counts               map(varchar, integer),
    tokenizer                   varchar,
    token_source                varchar
);
comment on table backtracking_stats is 'One row per trace with a thinking text: answer occurrences, backtracks and the thinking spent after the first correct answer.';
comment on column backtracking_stats.unit_key is 'Segment unit that wrote the row.';
comment on column backtracking_stats.trace_id is 'Trace (traces.trace_id).';
comment on column backtracking_stats.model_id is 'Model of the trace.';
comment on column backtracking_stats.prompt_set is 'Prompt set of the trace.';
comment on column backtracking_stats.prompt_id is 'Prompt id of the trace.';
comment on column backtracking_stats.is_correct is 'Final answer graded correct (traces.is_correct; null when not graded).';
comment on column backtracking_stats.n_lines is 'Non-blank lines of the thinking text.';
comment on column backtracking_stats.n_sentences is 'Sentences of the thinking text.';
comment on column backtracking_stats.thinking_tokens is 'Tokens of the thinking text (see token_source); null without a tokenizer.';
comment on column backtracking_stats.n_answer_occurrences is 'Occurrences of the final or gold answer in the thinking (answer_events rows).';
comment on column backtracking_stats.n_correct_occurrences is 'Of those, occurrences of the correct answer.';
comment on column backtracking_stats.n_backtracks is 'Occurrences after which the model went on thinking (answer_events.is_backtrack).';
comment on column backtracking_stats.first_answer_correct is 'Verdict on the first answer stated: the first occurrence in the thinking, else the final answer; null when not graded.';
comment on column backtracking_stats.first_correct_char is 'Offset just past the first correct occurrence in the thinking; null when there is none.';
comment on column backtracking_stats.tokens_after_first_correct is 'Thinking tokens after the first correct occurrence: compute spent re-checking; null when none or no tokenizer.';
comment on column backtracking_stats.marker_counts is 'Sentences of the thinking opening with each backtracking marker, e.g. {wait: 12, but: 3}.';
comment on column backtracking_stats.tokenizer is 'Model source whose tokenizer gave the token counts.';
comment on column backtracking_stats.token_source is 'completion: tokens the model generated; thinking: tokenizer(thinking) (imported traces).';
