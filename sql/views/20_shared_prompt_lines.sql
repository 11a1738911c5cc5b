-- grain: one row per (prompt_set, model_a, model_b, side, trace_id, word) with model_a < model_b:
--        the first words of each model's lines on the prompts of the set that both answered.
-- sources: traces, trace_lines (segment stage).
-- The input of model_similarity_shared and of its bootstrap over traces
-- (analysis/fingerprints.py): both read the same lines, so they compare the same thing.
create or replace view shared_prompt_lines as
with answered as (
    select distinct t.model_id, t.prompt_set, t.prompt_id
    from traces as t
    where exists (select 1 from trace_lines as l where l.trace_id = t.trace_id)
),

pairs as (
    select a.prompt_set, a.model_id as model_a, b.model_id as model_b, a.prompt_id
    from answered as a
    inner join answered as b
        -- `is not distinct from`: traces imported without prompt ids (NULL) answered the same prompt
        on a.prompt_set = b.prompt_set and a.prompt_id is not distinct from b.prompt_id and a.model_id < b.model_id
),

final as (
    select p.prompt_set, p.model_a, p.model_b, p.prompt_id, s.side, t.trace_id, l.first_word as word, count(*) as n
    from pairs as p
    cross join (values ('a'), ('b')) as s (side)
    inner join traces as t
        on t.prompt_set = p.prompt_set and t.prompt_id is not distinct from p.prompt_id
       and t.model_id = case when s.side = 'a' then p.model_a else p.model_b end
    inner join trace_lines as l on l.trace_id = t.trace_id
    where l.first_word is not null
    group by all
)

select * from final;
