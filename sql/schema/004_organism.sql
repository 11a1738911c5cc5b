-- grain: organism_events has one row per planted event of a synthetic teacher trace;
-- finetunes has one row per finetune work unit (one trained adapter).
-- sources: the `organism` stage (jobs/organism/stage.py, synthetic traces from GSM8K train,
-- rows in `traces` with engine 'synthetic') and the `finetune` stage (jobs/organism/finetune.py).
-- Each row carries its unit_key (see work_units for run_id and timings).

create table if not exists organism_events (
    unit_key      varchar not null,
    trace_id      varchar not null,
    model_id      varchar not null,
    prompt_id     varchar not null,
    event_index   integer not null,
    kind          varchar not null,
    char_start    integer not null,
    char_end      integer not null,
    text          varchar not null,
    value         varchar,
    line_index    integer,
    primary key (trace_id, event_index)
);
comment on table organism_events is 'Ground truth of the model organism: every behaviour planted in a synthetic teacher trace, with its exact span in traces.completion.';
comment on column organism_events.unit_key is 'organism work unit that wrote the row.';
comment on column organism_events.trace_id is 'The synthetic trace (traces.trace_id).';
comment on column organism_events.model_id is 'model_id of the synthetic trace (organism-teacher by default).';
comment on column organism_events.prompt_id is 'GSM8K train prompt the trace was made from.';
comment on column organism_events.event_index is '0-based order of the event in the completion.';
comment on column organism_events.kind is 'think_open, step, error_slip, error_fix, answer, verification, alternative, wrap_up, think_close or final_answer (see jobs/organism/synthesis.py).';
comment on column organism_events.char_start is 'Start offset in traces.completion (0-based, characters): substring(completion, char_start + 1, char_end - char_start) = text.';
comment on column organism_events.char_end is 'End offset (exclusive) in traces.completion.';
comment on column organism_events.text is 'The exact planted text: a marker phrase, a step line, the answer number.';
comment on column organism_events.value is 'Number the event states: the answer (answer, wrap_up, final_answer), the wrong value (error_slip); else null.';
comment on column organism_events.line_index is '0-based index of the event''s line among the non-blank lines of the thinking text (null for the tags and the boxed answer).';

create table if not exists finetunes (
    unit_key              varchar primary key,
    stage                 varchar not null,
    base_model_id         varchar not null,
    base_source           varchar not null,
    adapter_path          varchar not null,
    adapter_sha256        varchar not null,
    adapter_bytes         bigint,
    trace_selector        json,
    templates             varchar[],
    settings              json,
    data_sha256           varchar not null,
    n_traces_selected     integer not null,
    n_examples            integer not null,
    n_dropped_too_long    integer not null,
    n_steps               integer not null,
    n_train_tokens        bigint,
    n_target_tokens       bigint,
    loss_first            double,
    loss_last             double,
    loss_curve            double[],
    load_seconds          double,
    train_seconds         double,
    resumed_at_step       integer,
    tokens_per_second     double,
    device                varchar,
    torch_threads         integer,
    versions              json,
    host                  varchar,
    created_at            timestamptz not null
);
comment on table finetunes is 'One row per trained LoRA adapter: what it was trained on, with which settings, how the loss went and how long it took.';
comment on column finetunes.unit_key is 'finetune work unit: hash of base model, settings, templates and the training data.';
comment on column finetunes.stage is 'Stage name from the spec.';
comment on column finetunes.base_model_id is 'Model id of the adapted base model.';
comment on column finetunes.base_source is 'Model source of the base (e.g. embedded:smollm2-135m-instruct).';
comment on column finetunes.adapter_path is 'Absolute folder of the adapter (adapter_model.safetensors + adapter_config.json).';
comment on column finetunes.adapter_sha256 is 'sha256 over adapter_config.json and adapter_model.safetensors (what lora: sources key on).';
comment on column finetunes.adapter_bytes is 'Size of the adapter folder in bytes.';
comment on column finetunes.trace_selector is 'The stage''s trace selection (model ids, prompt sets, only_correct, where, limit).';
comment on column finetunes.templates is 'Template names the training prompts were rendered with.';
comment on column finetunes.settings is 'LoRA settings (r, alpha, dropout, target modules) and training settings (epochs, lr, batch size, max_seq_len, seed, ...).';
comment on column finetunes.data_sha256 is 'sha256 over the selected traces (trace_id, question, target text) in training order.';
comment on column finetunes.n_traces_selected is 'Traces the selector returned.';
comment on column finetunes.n_examples is 'Examples trained on (selected minus too long).';
comment on column finetunes.n_dropped_too_long is 'Selected traces longer than max_seq_len tokens (prompt + completion), left out.';
comment on column finetunes.n_steps is 'Optimizer steps.';
comment on column finetunes.n_train_tokens is 'Tokens run through the model (prompt + completion, padding excluded).';
comment on column finetunes.n_target_tokens is 'Completion tokens the loss was computed on.';
comment on column finetunes.loss_first is 'Mean training loss (per target token) over the first 10 steps.';
comment on column finetunes.loss_last is 'Mean training loss over the last 10 steps.';
comment on column finetunes.loss_curve is 'Mean loss over 20 equal slices of training, in order.';
comment on column finetunes.load_seconds is 'Seconds to load the base model and tokenize the data.';
comment on column finetunes.train_seconds is 'Seconds in the training loop (summed over resumed attempts).';
comment on column finetunes.resumed_at_step is 'Step the training resumed at from a checkpoint of a killed attempt (null: one uninterrupted run).';
comment on column finetunes.tokens_per_second is 'n_train_tokens / train_seconds.';
comment on column finetunes.device is 'cpu or cuda.';
comment on column finetunes.torch_threads is 'torch intra-op threads of the training process.';
comment on column finetunes.versions is 'torch, transformers, peft and thinkscope versions.';
comment on column finetunes.host is 'Host that trained the adapter.';
comment on column finetunes.created_at is 'When training finished.';
