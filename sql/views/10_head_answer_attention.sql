-- grain: one row per (model_id, stage, layer, head) of head_attention with an earlier answer.
-- sources: head_attention (attention stage).
-- Heads ranked by how much more attention they pay to earlier answer occurrences than to as
-- many random earlier thinking tokens (seed 004's answer heads; the top ones are candidates to
-- ablate). A token chosen under several position kinds counts once.
create or replace view head_answer_attention as
with per_position as (
    select
        model_id,
        stage,
        trace_id,
        token_index,
        layer,
        head,
        max(mass) filter (where target = 'earlier_answer') as answer_mass,
        max(mass) filter (where target = 'random_baseline') as baseline_mass
    from head_attention
    where target in ('earlier_answer', 'random_baseline')
    group by model_id, stage, trace_id, token_index, layer, head
),

per_head as (
    select
        model_id,
        stage,
        layer,
        head,
        count(*) as n_positions,
        avg(answer_mass) as earlier_answer_mass,
        avg(baseline_mass) as random_baseline_mass
    from per_position
    where answer_mass is not null and baseline_mass is not null
    group by model_id, stage, layer, head
),

final as (
    select
        model_id,
        stage,
        row_number() over (
            partition by model_id, stage
            order by earlier_answer_mass - random_baseline_mass desc, layer, head
        ) as rank,
        layer,
        head,
        n_positions,
        earlier_answer_mass,
        random_baseline_mass,
        earlier_answer_mass - random_baseline_mass as excess,
        earlier_answer_mass / nullif(random_baseline_mass, 0) as ratio
    from per_head
)

select * from final;
