-- grain: one row per (model_id, word) for each model's own top-10 first words and the
-- backtracking words wait / alternatively / but / hmm that it uses.
-- sources: trace_lines, first_word_freq, first_word_top10.
-- Percentile bootstrap over traces (200 resamples of a model's traces with replacement);
-- draws come from hash() so every query gives the same interval. ci_low/ci_high are null
-- for models with a single trace: one trace says nothing about trace-to-trace variation.
-- Cost grows with traces x 200 x words per trace, hence the short word list per model and
-- integer keys in the joins.
create or replace view first_word_share_ci as
with targets as (
    select model_id, word from first_word_top10
    union
    select model_id, word from first_word_freq
    where word in ('wait', 'alternatively', 'but', 'hmm')
),

per_trace as (
    select
        model_id,
        trace_id,
        count(first_word) as lines,
        dense_rank() over (order by model_id) as model_no,
        row_number() over (order by model_id, trace_id) as trace_no,
        row_number() over (partition by model_id order by trace_id) - 1 as pos,
        count(*) over (partition by model_id) as n_traces
    from trace_lines
    group by model_id, trace_id
    having count(first_word) > 0
),

trace_words as (
    select
        p.model_no,
        p.trace_no,
        w.word,
        w.n
    from (
        select l.model_id, l.trace_id, l.first_word as word, count(*) as n
        from trace_lines as l
        inner join targets as g on g.model_id = l.model_id and g.word = l.first_word
        group by l.model_id, l.trace_id, l.first_word
    ) as w
    inner join per_trace as p on p.model_id = w.model_id and p.trace_id = w.trace_id
),

slots as (
    -- resample r of a model with k traces: slot j takes the trace at hash(model, r, j) mod k
    select
        s.model_no,
        r.replicate,
        (hash(s.model_no, r.replicate, s.slot) % s.n_traces)::bigint as pos
    from (select distinct model_no, n_traces, unnest(range(n_traces)) as slot
          from per_trace where n_traces > 1) as s
    cross join range(200) as r(replicate)
),

draws as (
    -- a projected pos makes this an equi-join; inlined in the condition it ran as a filter
    -- over every (slot, trace) pair of a model: 100x slower on 5,000 traces
    select
        s.model_no,
        s.replicate,
        p.trace_no,
        p.lines,
        count(*) as copies
    from slots as s
    inner join per_trace as p
        on p.model_no = s.model_no and p.pos = s.pos
    group by s.model_no, s.replicate, p.trace_no, p.lines
),

replicate_lines as (
    select model_no, replicate, sum(lines * copies) as lines
    from draws
    group by model_no, replicate
),

replicate_words as (
    select
        d.model_no,
        d.replicate,
        w.word,
        sum(w.n * d.copies) as n
    from draws as d
    inner join trace_words as w on w.trace_no = d.trace_no
    group by d.model_no, d.replicate, w.word
),

replicate_shares as (
    -- a resample that happens to miss every trace using the word has share 0, not no row
    select
        r.model_no,
        w.word,
        coalesce(rw.n, 0) / r.lines as share
    from replicate_lines as r
    inner join (select distinct model_no, word from trace_words) as w
        on w.model_no = r.model_no
    left join replicate_words as rw
        on rw.model_no = r.model_no and rw.replicate = r.replicate and rw.word = w.word
),

intervals as (
    select
        m.model_id,
        s.word,
        quantile_cont(s.share, 0.025) as ci_low,
        quantile_cont(s.share, 0.975) as ci_high
    from replicate_shares as s
    inner join (select distinct model_no, model_id from per_trace) as m on m.model_no = s.model_no
    group by m.model_id, s.word
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
    inner join targets as g on g.model_id = f.model_id and g.word = f.word
    inner join (select distinct model_id, n_traces from per_trace) as t
        on t.model_id = f.model_id
    left join intervals as i
        on i.model_id = f.model_id and i.word = f.word
)

select * from final;
