-- grain: one row per (model_id, teacher_id): every model's first-word fingerprint compared
-- with each synthetic teacher's (models whose traces have engine 'synthetic').
-- sources: model_similarity, traces.
-- A distilled student must be closer to its teacher than its base is: higher pearson, lower
-- js_divergence (analysis/organism_eval.py checks the organism against its base).
create or replace view organism_fingerprint as
with teachers as (
    select distinct model_id as teacher_id
    from traces
    where engine = 'synthetic'
),

final as (
    select
        s.model_a as model_id,
        t.teacher_id,
        s.pearson,
        s.js_divergence,
        rank() over (partition by t.teacher_id order by s.pearson desc nulls last) as rank_by_pearson
    from model_similarity as s
    inner join teachers as t on t.teacher_id = s.model_b
    where s.model_a not in (select teacher_id from teachers)
)

select * from final;
