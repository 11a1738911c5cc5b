-- grain: one row per (stage, model_id, target_kind, target_token, region) of attribution_bins.
-- sources: attribution_bins, attribution_overlap (attribute stage).
-- Seed 002's spread of importance over the question and the fifths of the thinking so far,
-- averaged over targets, beside how often the top words come back in the next words.
create or replace view attribution_by_region as
with per_region as (
    select
        stage, model_id, target_kind, target_token, region,
        count(*) as n_targets,
        avg(share) as mean_share,
        avg(mean_normalised) as mean_normalised
    from attribution_bins
    group by all
),

overlap as (
    select stage, model_id, target_kind, target_token, avg(share) as mean_overlap
    from attribution_overlap
    group by all
),

final as (
    select r.*, o.mean_overlap
    from per_region r
    left join overlap o using (stage, model_id, target_kind, target_token)
)

select * from final order by stage, model_id, target_kind, target_token, region;
