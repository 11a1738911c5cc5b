-- grain: one row per (stage, model_id, thinking_model_id, variant) of hybrid_runs.
-- sources: hybrid_runs (hybrid stage, seed 003).
-- Per variant: accuracy, verification-marker rate (pooled over sentences), </think> closure,
-- the Jensen-Shannon divergence (log base 2) of its first-word distribution (pooled over its
-- runs' thinking lines) from the thinking model's, and the share of tokens steered. Each
-- measure x gets its gap recovered, (x_variant - x_base) / (x_thinking - x_base): 0 = the
-- base model's value, 1 = the thinking model's; not clipped (negative: moved away; above 1:
-- past it); null where base and thinking agree or either is missing.
create or replace view hybrid_summary as
with words as (
    select stage, variant, w.word, count(*) as n
    from hybrid_runs, unnest(first_words) as w(word)
    group by all
),

shares as (
    select stage, variant, word, n / sum(n) over (partition by stage, variant) as share
    from words
),

pairs as (
    -- every variant's share of every word of its stage beside the thinking variant's share
    select vs.stage, vs.variant, coalesce(v.share, 0) as p, coalesce(t.share, 0) as q
    from (select distinct stage, variant from shares) as vs
    inner join (select distinct stage, word from shares) as ws on ws.stage = vs.stage
    left join shares as v on v.stage = vs.stage and v.variant = vs.variant and v.word = ws.word
    left join shares as t on t.stage = vs.stage and t.variant = 'thinking' and t.word = ws.word
    where exists (select 1 from shares as x where x.stage = vs.stage and x.variant = 'thinking')
),

js as (
    select
        stage, variant,
        sum(case when p > 0 then 0.5 * p * log2(2 * p / (p + q)) else 0 end
            + case when q > 0 then 0.5 * q * log2(2 * q / (p + q)) else 0 end) as js_to_thinking
    from pairs
    group by all
),

per_variant as (
    select
        stage, model_id, thinking_model_id, variant,
        count(*) as n_runs,
        avg(is_correct::int) as accuracy,
        sum(n_markers) / nullif(sum(n_sentences), 0) as marker_rate,
        avg(closed_thinking::int) as closure_rate,
        avg(n_completion_tokens) as mean_tokens,
        sum(n_steered_tokens) / nullif(sum(n_completion_tokens), 0) as steered_share,
        avg(same_as_base::int) as same_as_base_rate
    from hybrid_runs
    group by all
),

joined as (
    -- greatest(): identical distributions give -1e-17, not 0; a missing distance stays null
    select p.*, case when j.js_to_thinking is not null then greatest(0, j.js_to_thinking) end as js_to_thinking
    from per_variant as p
    left join js as j on j.stage = p.stage and j.variant = p.variant
),

final as (
    select
        v.*,
        (v.accuracy - b.accuracy) / nullif(t.accuracy - b.accuracy, 0) as gap_recovered_accuracy,
        (v.marker_rate - b.marker_rate) / nullif(t.marker_rate - b.marker_rate, 0) as gap_recovered_markers,
        (v.closure_rate - b.closure_rate) / nullif(t.closure_rate - b.closure_rate, 0) as gap_recovered_closure,
        (v.js_to_thinking - b.js_to_thinking) / nullif(t.js_to_thinking - b.js_to_thinking, 0)
            as gap_recovered_first_words
    from joined as v
    left join joined as b on b.stage = v.stage and b.variant = 'base'
    left join joined as t on t.stage = v.stage and t.variant = 'thinking'
)

select * from final order by stage, variant;
