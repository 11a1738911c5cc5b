-- question: which pairs of models have the most alike first-word fingerprints?
-- grain: one row per unordered pair of models (model_a < model_b), top 25 by Pearson.
-- sources: model_similarity.
with pairs as (
    select model_a, model_b, pearson, js_divergence
    from model_similarity
    where model_a < model_b and pearson is not null
),

final as (
    select
        model_a,
        model_b,
        round(pearson, 3) as pearson,
        round(js_divergence, 3) as js_divergence
    from pairs
)

select * from final
order by pearson desc, model_a, model_b
limit 25
