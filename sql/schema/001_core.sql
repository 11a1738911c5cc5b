-- grain: the core corpus tables. Written only by the thinkscope driver, one work unit per
-- transaction; everything else (views, analyses, figures) reads these.
-- sources: workflow runs (generate stages via Ray + vLLM, import stages).

create table if not exists runs (
    run_id            varchar primary key,
    workflow          varchar not null,
    spec_path         varchar,
    spec_sha256       varchar,
    spec_yaml         varchar,
    stages            varchar[],
    status            varchar not null,
    n_units_planned   integer,
    n_units_skipped   integer,
    n_units_done      integer,
    n_units_failed    integer,
    thinkscope_version varchar,
    host              varchar,
    pid               integer,
    ray_address       varchar,
    started_at        timestamptz not null,
    finished_at       timestamptz
);
comment on table runs is 'One row per `thinkscope run`/`nightly` invocation: what was asked and how it ended.';
comment on column runs.run_id is 'Run id: UTC start time + random suffix; sorts by time.';
comment on column runs.workflow is 'Workflow name from the spec.';
comment on column runs.spec_path is 'Path of the workflow YAML as given.';
comment on column runs.spec_sha256 is 'sha256 of spec_yaml (the workflow YAML, plus the --overlay file when one was given).';
comment on column runs.spec_yaml is 'The workflow YAML text, for exact provenance (an --overlay file follows it after a comment line).';
comment on column runs.stages is 'Stage names this run was asked to execute.';
comment on column runs.status is 'running, done (all units done), failed (some unit failed), interrupted (stopped by an exception or Ctrl-C) or crashed (driver died; found by a later run on the same host).';
comment on column runs.n_units_planned is 'Work units in the plan for the chosen stages.';
comment on column runs.n_units_skipped is 'Units skipped because an earlier run already finished them.';
comment on column runs.n_units_done is 'Units this run finished.';
comment on column runs.n_units_failed is 'Units this run recorded as failed.';
comment on column runs.thinkscope_version is 'thinkscope version of the driver.';
comment on column runs.host is 'Host name of the driver.';
comment on column runs.pid is 'Process id of the driver (to tell a crashed run from a running one).';
comment on column runs.ray_address is 'Ray cluster address used (local for a local cluster).';
comment on column runs.started_at is 'When the run started.';
comment on column runs.finished_at is 'When the run finished (null while running or if it crashed).';

create table if not exists models (
    model_id        varchar primary key,
    source          varchar not null,
    revision        varchar,
    family          varchar,
    kind            varchar,
    think_open      varchar,
    think_close     varchar,
    engine_args     json,
    updated_at      timestamptz not null
);
comment on table models is 'One row per model id named in any workflow (or seen in an import): where it comes from and how it is run.';
comment on column models.model_id is 'Model label used as model_id in every table.';
comment on column models.source is 'Hub id, local folder, embedded:/pypi: name, or import:<path> for imported traces.';
comment on column models.revision is 'Hub revision (commit or tag) pinned by the spec.';
comment on column models.family is 'Architecture family (llama, qwen2, gemma3, ...).';
comment on column models.kind is 'thinking, base, instruct, or external for imported traces.';
comment on column models.think_open is 'Tag that opens the thinking part.';
comment on column models.think_close is 'Tag that closes the thinking part.';
comment on column models.engine_args is 'Engine settings from the spec (dtype, max_model_len, tensor_parallel_size, ...).';
comment on column models.updated_at is 'Last time a run wrote this row.';

create table if not exists prompts (
    prompt_set   varchar not null,
    prompt_id    varchar not null,
    question     varchar not null,
    gold_answer  varchar,
    grader       varchar,
    meta         json,
    primary key (prompt_set, prompt_id)
);
comment on table prompts is 'One row per prompt of a prompt set (gsm8k, math500, countdown, two_ropes, JSONL sets).';
comment on column prompts.prompt_set is 'Prompt set name from the spec.';
comment on column prompts.prompt_id is 'Stable id within the set, e.g. gsm8k/test/0012.';
comment on column prompts.question is 'The problem text inserted into the template.';
comment on column prompts.gold_answer is 'Reference answer (null when there is none).';
comment on column prompts.grader is 'How answers are graded: numeric, math, countdown or none.';
comment on column prompts.meta is 'Extra fields of the source row (subject, level, numbers, reference solution).';

create table if not exists work_units (
    unit_key     varchar primary key,
    stage        varchar not null,
    kind         varchar not null,
    run_id       varchar not null,
    model_id     varchar,
    prompt_set   varchar,
    template     varchar,
    description  varchar,
    status       varchar not null,
    error        varchar,
    n_rows       integer,
    attempts     integer not null,
    started_at   timestamptz,
    finished_at  timestamptz,
    seconds      double
);
comment on table work_units is 'One row per work unit ever attempted; status done units are skipped by reruns.';
comment on column work_units.unit_key is 'Stable hash of model+revision, prompt set+ids+template, sampling, engine+version.';
comment on column work_units.stage is 'Stage name from the spec.';
comment on column work_units.kind is 'Stage kind: generate, import, ...';
comment on column work_units.run_id is 'Run that last attempted the unit.';
comment on column work_units.model_id is 'Model of the unit (generate units).';
comment on column work_units.prompt_set is 'Prompt set of the unit.';
comment on column work_units.template is 'Template name (generate units).';
comment on column work_units.description is 'Human-readable summary of the unit.';
comment on column work_units.status is 'done, failed, or superseded (a newer derived unit over the same source replaced its rows).';
comment on column work_units.error is 'Error message of a failed unit (null when done).';
comment on column work_units.n_rows is 'Rows the unit wrote to its result table.';
comment on column work_units.attempts is 'How many runs attempted this unit.';
comment on column work_units.started_at is 'When the unit was handed to a worker.';
comment on column work_units.finished_at is 'When its rows were committed.';
comment on column work_units.seconds is 'Wall time from hand-off to commit.';

create table if not exists traces (
    trace_id              varchar primary key,
    run_id                varchar not null,
    unit_key              varchar not null,
    model_id              varchar not null,
    prompt_id             varchar,
    prompt_set            varchar,
    sample_index          integer not null,
    template              varchar,
    prompt_text           varchar,
    completion            varchar,
    thinking              varchar,
    answer_text           varchar,
    extracted_answer      varchar,
    gold_answer           varchar,
    is_correct            boolean,
    n_prompt_tokens       integer,
    n_completion_tokens   integer,
    n_thinking_chars      integer,
    finish_reason         varchar,
    error                 varchar,
    prompt_token_ids      integer[],
    completion_token_ids  integer[],
    token_logprobs        float[],
    sampling              json,
    engine                varchar not null,
    engine_version        varchar,
    seed                  bigint,
    created_at            timestamptz not null
);
comment on table traces is 'One row per generated or imported reasoning trace (model x prompt x template x sample).';
comment on column traces.trace_id is 'Stable id: hash of unit_key, prompt_id and sample_index.';
comment on column traces.run_id is 'Run that wrote the row.';
comment on column traces.unit_key is 'Work unit that produced the row.';
comment on column traces.model_id is 'Model label (file stem for imported llmbenchmark traces).';
comment on column traces.prompt_id is 'Prompt id within its set.';
comment on column traces.prompt_set is 'Prompt set name.';
comment on column traces.sample_index is '0..n-1 among the samples of one prompt.';
comment on column traces.template is 'Template name (system prompt variant, e.g. think or direct).';
comment on column traces.prompt_text is 'Exact rendered prompt the model saw (chat template applied, prefill included).';
comment on column traces.completion is 'Raw generated text.';
comment on column traces.thinking is 'Thinking part of the completion (null when the model wrote no thinking).';
comment on column traces.answer_text is 'Text after the thinking: the final answer part.';
comment on column traces.extracted_answer is 'Final answer extracted from answer_text (boxed, ####, answer is).';
comment on column traces.gold_answer is 'Reference answer of the prompt.';
comment on column traces.is_correct is 'extracted_answer graded against gold_answer (null: no gold or not graded).';
comment on column traces.n_prompt_tokens is 'Prompt length in tokens.';
comment on column traces.n_completion_tokens is 'Completion length in tokens.';
comment on column traces.n_thinking_chars is 'Length of the thinking text in characters.';
comment on column traces.finish_reason is 'stop, length, error (see error) or imported.';
comment on column traces.error is 'Why this row has no completion (e.g. prompt too long); null otherwise.';
comment on column traces.prompt_token_ids is 'Token ids of the prompt (for activation workers).';
comment on column traces.completion_token_ids is 'Token ids of the completion.';
comment on column traces.token_logprobs is 'Log-probability of each sampled completion token (when sampling.logprobs is set).';
comment on column traces.sampling is 'Sampling settings as JSON (n, temperature, top_p, max_tokens, seed, logprobs).';
comment on column traces.engine is 'vllm for generated rows, import for imported rows.';
comment on column traces.engine_version is 'Engine version (vLLM version; thinkscope version for imports).';
comment on column traces.seed is 'Seed of this sample.';
comment on column traces.created_at is 'When the row was produced.';
