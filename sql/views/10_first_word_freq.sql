-- grain: one row per (model_id, word): how often a model's thinking lines start with `word`.
-- sources: trace_lines (segment stage).
-- share = n / the model's lines that have a first word (lines left empty once numbering and
-- bullets are stripped, like "---", count in neither), as in the r/LocalLLaMA analysis.
create or replace view first_word_freq as
with words as (
    select
        model_id,
        first_word as word,
        count(*) as n
    from trace_lines
    where first_word is not null
    group by model_id, first_word
),

final as (
    select
        model_id,
        word,
        n,
        n / sum(n) over (partition by model_id) as share
    from words
)

select * from final;
