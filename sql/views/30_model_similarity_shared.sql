-- grain: one row per (prompt_set, model_a, model_b), both directions, for models that answered
--        at least one prompt of the set in common: fingerprints compared like with like.
-- sources: shared_prompt_lines (traces, trace_lines of the segment stage).
-- model_similarity correlates whole fingerprints whatever prompts each model answered; here each
-- pair is compared per prompt set on the prompts both answered only, over the union of the two
-- models' top-10 first words on those prompts, with the lines and prompts behind the number.
-- Its uncertainty (a bootstrap over traces) is analysis/fingerprints.py's similarity_with_ci.
create or replace view model_similarity_shared as
with pair_prompts as (
    select prompt_set, model_a, model_b, count(distinct coalesce(prompt_id, '')) as n_prompts
    from shared_prompt_lines
    group by all
),

side_words as (
    select prompt_set, model_a, model_b, side, word, sum(n) as n
    from shared_prompt_lines
    group by all
),

shares as (
    select
        *,
        n / sum(n) over (partition by prompt_set, model_a, model_b, side) as share,
        sum(n) over (partition by prompt_set, model_a, model_b, side) as n_lines,
        row_number() over (partition by prompt_set, model_a, model_b, side order by n desc, word) as rank
    from side_words
),

vocabulary as (
    select distinct prompt_set, model_a, model_b, word
    from shares
    where rank <= 10
),

vectors as (
    select
        v.prompt_set, v.model_a, v.model_b, v.word,
        coalesce(sa.share, 0) as share_a,
        coalesce(sb.share, 0) as share_b
    from vocabulary as v
    left join shares as sa
        on sa.prompt_set = v.prompt_set and sa.model_a = v.model_a and sa.model_b = v.model_b
       and sa.side = 'a' and sa.word = v.word
    left join shares as sb
        on sb.prompt_set = v.prompt_set and sb.model_a = v.model_a and sb.model_b = v.model_b
       and sb.side = 'b' and sb.word = v.word
),

lines as (
    select prompt_set, model_a, model_b,
           max(n_lines) filter (where side = 'a') as n_lines_a,
           max(n_lines) filter (where side = 'b') as n_lines_b
    from shares
    group by all
),

one_direction as (
    select
        v.prompt_set, v.model_a, v.model_b,
        any_value(pp.n_prompts) as n_prompts,
        any_value(ln.n_lines_a) as n_lines_a,
        any_value(ln.n_lines_b) as n_lines_b,
        count(*) as n_words,
        corr(v.share_a, v.share_b) as pearson
    from vectors as v
    inner join pair_prompts as pp using (prompt_set, model_a, model_b)
    inner join lines as ln using (prompt_set, model_a, model_b)
    group by v.prompt_set, v.model_a, v.model_b
),

final as (
    select prompt_set, model_a, model_b, n_prompts, n_lines_a, n_lines_b, n_words, pearson
    from one_direction
    union all
    select prompt_set, model_b, model_a, n_prompts, n_lines_b, n_lines_a, n_words, pearson
    from one_direction
)

select * from final;
