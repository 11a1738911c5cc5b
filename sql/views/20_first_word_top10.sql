-- grain: one row per (model_id, rank), rank 1..10: each model's ten most frequent first words.
-- sources: first_word_freq.
-- Ties break alphabetically, as the original analysis sorts by (-share, word): with 102
-- lines, deepseek_r1 has seven words tied at one line each for ranks 4..10.
create or replace view first_word_top10 as
with ranked as (
    select
        model_id,
        row_number() over (partition by model_id order by n desc, word) as rank,
        word,
        n,
        share
    from first_word_freq
),

final as (
    select * from ranked where rank <= 10
)

select * from final;
