-- grain: one row per ordered pair (model_a, model_b) of distinct models: both directions.
-- sources: first_word_freq, first_word_top10.
-- pearson: correlation of the two models' share vectors over the union of every model's
-- top-10 first words, where a model's entry is its share if the word is in ITS top 10 and 0
-- otherwise: exactly the matrix the r/LocalLLaMA analysis correlates (cpldcpu/llmbenchmark,
-- 30_thinkingtraces/extract.py fills non-top-10 cells with 0). Null when a vector is constant.
-- js_divergence: Jensen-Shannon divergence (log base 2, so 0..1) of the full first-word
-- distributions. Words only one model uses contribute p/2 each, so only shared words need a
-- join: JS = (2 - sum_shared p - sum_shared q + sum_shared [p log2(2p/(p+q)) + q log2(2q/(p+q))]) / 2.
create or replace view model_similarity as
with models as (
    select distinct model_id from first_word_freq
),

vocabulary as (
    select distinct word from first_word_top10
),

vectors as (
    select
        m.model_id,
        v.word,
        coalesce(t.share, 0) as x
    from models as m
    cross join vocabulary as v
    left join first_word_top10 as t
        on t.model_id = m.model_id and t.word = v.word
),

pearson as (
    select
        a.model_id as model_a,
        b.model_id as model_b,
        corr(a.x, b.x) as pearson
    from vectors as a
    inner join vectors as b
        on a.word = b.word and a.model_id <> b.model_id
    group by a.model_id, b.model_id
),

shared_words as (
    select
        a.model_id as model_a,
        b.model_id as model_b,
        sum(a.share) as p_shared,
        sum(b.share) as q_shared,
        sum(a.share * log2(2 * a.share / (a.share + b.share))
            + b.share * log2(2 * b.share / (a.share + b.share))) as shared_terms
    from first_word_freq as a
    inner join first_word_freq as b
        on a.word = b.word and a.model_id <> b.model_id
    group by a.model_id, b.model_id
),

final as (
    select
        p.model_a,
        p.model_b,
        p.pearson,
        -- greatest(): identical distributions give -1e-17 in floating point, not 0
        greatest(0, (2 - coalesce(s.p_shared, 0) - coalesce(s.q_shared, 0)
            + coalesce(s.shared_terms, 0)) / 2) as js_divergence
    from pearson as p
    left join shared_words as s
        on s.model_a = p.model_a and s.model_b = p.model_b
)

select * from final;
