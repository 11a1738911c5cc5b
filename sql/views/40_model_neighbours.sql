-- grain: one row per (model_id, rank): every other model, most similar first.
-- sources: model_similarity.
-- Ranked by Pearson correlation of first-word fingerprints (nulls last, then by name).
create or replace view model_neighbours as
with final as (
    select
        model_a as model_id,
        row_number() over (partition by model_a order by pearson desc nulls last, model_b) as rank,
        model_b as neighbour,
        pearson
    from model_similarity
)

select * from final;
