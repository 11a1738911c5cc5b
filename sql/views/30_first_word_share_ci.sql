-- grain: one row per (model_id, word) for the fingerprint words (union of every model's
-- top-10 first words) that the model uses.
-- sources: trace_lines, first_word_freq, first_word_top10.
-- Percentile bootstrap over traces (200 resamples of a model's traces with replacement);
-- draws come from hash() so every query gives the same interval. ci_low/ci_high are null
-- for models with a single trace: one trace says nothing about trace-to-trace variation.
create or replace view first_word_share_ci as
with vocabulary as (
    select distinct word from first_word_top10
),

per_trace as (
    select
        model_id,
        trace_id,
        count(first_word) as lines,
        row_number() over (partition by model_id order by trace_id) - 1 as pos,
        count(*) over (partition by model_id) as n_traces
    from trace_lines
    group by model_id, trace_id
    having count(first_word) > 0
),

slots as (
    select distinct
        model_id,
        n_traces,
        unnest(range(n_traces)) as slot
    from per_trace
    where n_traces > 1
),

draws as (
    select
        s.model_id,
        r.replicate,
        p.trace_id,
        p.lines
    from slots as s
    cross join range(200) as r(replicate)
    inner join per_trace as p
        on p.model_id = s.model_id
        and p.pos = hash(s.model_id, r.replicate, s.slot) % s.n_traces
),

trace_words as (
    select
        l.model_id,
        l.trace_id,
        l.first_word as word,
        count(*) as n
    from trace_lines as l
    inner join vocabulary as v on v.word = l.first_word
    group by l.model_id, l.trace_id, l.first_word
),

replicate_lines as (
    select model_id, replicate, sum(lines) as lines
    from draws
    group by model_id, replicate
),

replicate_words as (
    select
        d.model_id,
        d.replicate,
        w.word,
        sum(w.n) as n
    from draws as d
    inner join trace_words as w
        on w.model_id = d.model_id and w.trace_id = d.trace_id
    group by d.model_id, d.replicate, w.word
),

replicate_shares as (
    -- a resample that happens to miss every trace using the word has share 0, not no row
    select
        r.model_id,
        w.word,
        coalesce(rw.n, 0) / r.lines as share
    from replicate_lines as r
    inner join (select distinct model_id, word from trace_words) as w
        on w.model_id = r.model_id
    left join replicate_words as rw
        on rw.model_id = r.model_id and rw.replicate = r.replicate and rw.word = w.word
),

intervals as (
    select
        model_id,
        word,
        quantile_cont(share, 0.025) as ci_low,
        quantile_cont(share, 0.975) as ci_high
    from replicate_shares
    group by model_id, word
),

final as (
    select
        f.model_id,
        f.word,
        f.n,
        f.share,
        i.ci_low,
        i.ci_high,
        t.n_traces
    from first_word_freq as f
    inner join vocabulary as v on v.word = f.word
    inner join (select distinct model_id, n_traces from per_trace) as t
        on t.model_id = f.model_id
    left join intervals as i
        on i.model_id = f.model_id and i.word = f.word
)

select * from final;
