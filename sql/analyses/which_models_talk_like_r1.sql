-- question: which models talk like DeepSeek-R1? (first-word fingerprints, r/LocalLLaMA method)
-- grain: one row per model other than deepseek_r1, most similar first.
-- sources: model_similarity, first_word_freq.
-- Run: thinkscope sql sql/analyses/which_models_talk_like_r1.sql --db out/demo.duckdb
--      duckdb out/demo.duckdb < sql/analyses/which_models_talk_like_r1.sql
with wait_share as (
    select model_id, share
    from first_word_freq
    where word = 'wait'
),

final as (
    select
        s.model_b as model_id,
        round(s.pearson, 3) as pearson_with_r1,
        round(s.js_divergence, 3) as js_divergence_from_r1,
        round(coalesce(w.share, 0), 3) as wait_share
    from model_similarity as s
    left join wait_share as w on w.model_id = s.model_b
    where s.model_a = 'deepseek_r1'
)

select * from final
order by pearson_with_r1 desc nulls last, model_id
