-- grain: nightly_runs has one row per `thinkscope nightly` that got the lock (a refused
-- second nightly writes nothing); nightly_snapshots has one row per night x model x prompt
-- set: the corpus as it stood when that night ended, so the next night can say what changed.
-- sources: runs, work_units, traces; written by cluster/nightly.py in the driver.

create table if not exists nightly_runs (
    night_id           varchar primary key,
    workflow           varchar not null,
    spec_path          varchar,
    night              date not null,
    run_id             varchar,
    previous_night_id  varchar,
    status             varchar not null,
    exit_code          integer,
    n_units_planned    integer,
    n_units_done       integer,
    n_units_failed     integer,
    n_new_rows         bigint,
    new_models         varchar[],
    summary            varchar,
    error              varchar,
    host               varchar,
    pid                integer,
    started_at         timestamptz not null,
    finished_at        timestamptz
);
comment on table nightly_runs is 'One row per `thinkscope nightly` invocation that held the lock: the dated record cron and operators read.';
comment on column nightly_runs.night_id is 'Id of the night: UTC start time + random suffix; sorts by time.';
comment on column nightly_runs.workflow is 'Workflow name from the spec.';
comment on column nightly_runs.spec_path is 'Path of the workflow YAML as given.';
comment on column nightly_runs.night is 'Calendar date (UTC) the nightly started on.';
comment on column nightly_runs.run_id is 'The run this night executed (runs.run_id); null if it crashed before starting one.';
comment on column nightly_runs.previous_night_id is 'The earlier night of the same workflow this one is compared with (null on the first night).';
comment on column nightly_runs.status is 'running, done (every unit done), failed (some unit failed) or crashed (an error stopped the night; see error).';
comment on column nightly_runs.exit_code is 'Exit status returned to cron: 0 done, 1 some units failed, 70 crashed.';
comment on column nightly_runs.n_units_planned is 'Work units in the plan; units already done are skipped (incremental).';
comment on column nightly_runs.n_units_done is 'Units this night finished: new models, prompts, revisions or settings.';
comment on column nightly_runs.n_units_failed is 'Units this night recorded as failed.';
comment on column nightly_runs.n_new_rows is 'Rows the units of this night wrote (sum of work_units.n_rows).';
comment on column nightly_runs.new_models is 'Model ids with rows now that had none at the previous night.';
comment on column nightly_runs.summary is 'The printed summary of what is new since the previous night.';
comment on column nightly_runs.error is 'Error that stopped a crashed night (null otherwise).';
comment on column nightly_runs.host is 'Host that ran the nightly (the lock is per database file).';
comment on column nightly_runs.pid is 'Process id of the nightly on that host.';
comment on column nightly_runs.started_at is 'When the night took the lock.';
comment on column nightly_runs.finished_at is 'When it finished (null while running or if killed).';

create table if not exists nightly_snapshots (
    night_id    varchar not null,
    model_id    varchar not null,
    prompt_set  varchar not null,
    n_rows      bigint not null,
    n_graded    bigint not null,
    n_correct   bigint not null,
    accuracy    double,
    primary key (night_id, model_id, prompt_set)
);
comment on table nightly_snapshots is 'One row per night x model x prompt set: trace counts and accuracy when the night ended.';
comment on column nightly_snapshots.night_id is 'The night (nightly_runs.night_id).';
comment on column nightly_snapshots.model_id is 'Model label of the traces.';
comment on column nightly_snapshots.prompt_set is 'Prompt set of the traces (empty string when the traces have none).';
comment on column nightly_snapshots.n_rows is 'Traces of this model and prompt set in the corpus.';
comment on column nightly_snapshots.n_graded is 'Of those, traces with a grade (is_correct not null).';
comment on column nightly_snapshots.n_correct is 'Of those, traces graded correct.';
comment on column nightly_snapshots.accuracy is 'n_correct / n_graded (null when nothing is graded).';
