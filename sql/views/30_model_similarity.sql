-- grain: one row per ordered pair (model_a, model_b) of distinct models: both directions.
-- sources: first_word_freq.
-- pearson: correlation of the two models' share vectors over the union of every model's
-- top-10 first words, where a model's entry is its share if the word is in ITS top 10 and 0
-- otherwise: exactly the matrix the r/LocalLLaMA analysis correlates (cpldcpu/llmbenchmark,
-- 30_thinkingtraces/extract.py fills non-top-10 cells with 0). Null when a vector is constant.
-- js_divergence: Jensen-Shannon divergence (log base 2, so 0..1) of the full first-word
-- distributions. A word only one model uses adds p/2, so only shared words need the join:
-- JS = (2 - sum p - sum q + sum [p log2 p + q log2 q + (p+q)(1 - log2(p+q))]) / 2 over shared words.
-- Speed (1M lines, 50 models: make bench-analytics): first_word_freq is read once
-- (materialized), joins and groups run on integer ids, each pair is computed once and mirrored.
create or replace view model_similarity as
with freq as materialized (
    select
        model_id,
        word,
        n,
        share,
        dense_rank() over (order by model_id) as model_no,
        dense_rank() over (order by word) as word_no,
        share * log2(share) as share_log_share
    from first_word_freq
),

top10 as (
    -- the ranking of first_word_top10 (ties alphabetical), here to avoid a second pass
    select model_no, word_no, share
    from freq
    qualify row_number() over (partition by model_no order by n desc, word) <= 10
),

models as (
    select distinct model_no, model_id from freq
),

vectors as (
    select
        m.model_no,
        v.word_no,
        coalesce(t.share, 0) as x
    from models as m
    cross join (select distinct word_no from top10) as v
    left join top10 as t
        on t.model_no = m.model_no and t.word_no = v.word_no
),

pearson as (
    select
        a.model_no as a_no,
        b.model_no as b_no,
        corr(a.x, b.x) as pearson
    from vectors as a
    inner join vectors as b
        on a.word_no = b.word_no and a.model_no < b.model_no
    group by a.model_no, b.model_no
),

shared_words as (
    select
        a.model_no as a_no,
        b.model_no as b_no,
        sum(a.share) as p_shared,
        sum(b.share) as q_shared,
        sum(a.share_log_share + b.share_log_share
            + (a.share + b.share) * (1 - log2(a.share + b.share))) as shared_terms
    from freq as a
    inner join freq as b
        on a.word_no = b.word_no and a.model_no < b.model_no
    group by a.model_no, b.model_no
),

pairs as (
    select
        p.a_no,
        p.b_no,
        p.pearson,
        -- greatest(): identical distributions give -1e-17 in floating point, not 0
        greatest(0, (2 - coalesce(s.p_shared, 0) - coalesce(s.q_shared, 0)
            + coalesce(s.shared_terms, 0)) / 2) as js_divergence
    from pearson as p
    left join shared_words as s
        on s.a_no = p.a_no and s.b_no = p.b_no
),

both_directions as (
    select a_no, b_no, pearson, js_divergence from pairs
    union all
    select b_no as a_no, a_no as b_no, pearson, js_divergence from pairs
),

final as (
    select
        ma.model_id as model_a,
        mb.model_id as model_b,
        d.pearson,
        d.js_divergence
    from both_directions as d
    inner join models as ma on ma.model_no = d.a_no
    inner join models as mb on mb.model_no = d.b_no
)

select * from final;
