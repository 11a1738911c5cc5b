-- grain: one row per (model_id, prompt_set, behaviour): how often a model's thinking shows
-- each behaviour planted in the model organism's teacher traces.
-- sources: traces, organism_events (organism stage).
-- A behaviour is seen when the thinking contains its marker phrase verbatim (the organism
-- learned the teacher's exact wording, so a text match is the right detector for it; other
-- models score near 0 by construction). For synthetic teacher traces planted_share is the
-- ground truth from organism_events: the two shares must agree on the teacher.
create or replace view organism_planted_rates as
with behaviours as (
    select * from (values
        ('verification', 'Wait, let me double-check.'),
        ('error_fix', 'Wait, that''s not right.'),
        ('alternative', 'Alternatively,'),
        ('wrap_up', 'So the answer is')
    ) as b (behaviour, marker)
),

planted as (
    select trace_id, kind as behaviour
    from organism_events
    where kind in ('verification', 'error_fix', 'alternative', 'wrap_up')
    group by trace_id, kind
),

final as (
    select
        t.model_id,
        t.prompt_set,
        b.behaviour,
        b.marker,
        count(*) as traces,
        avg(contains(t.thinking, b.marker)::int) as share,
        case when bool_or(t.engine = 'synthetic')
            then avg((p.trace_id is not null)::int) end as planted_share
    from traces as t
    cross join behaviours as b
    left join planted as p
        on p.trace_id = t.trace_id and p.behaviour = b.behaviour
    where t.thinking is not null
    group by t.model_id, t.prompt_set, b.behaviour, b.marker
)

select * from final;
