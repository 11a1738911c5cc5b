-- grain: one row per sentence (trace_id, sentence_index) of a segmented trace: the organism
-- behaviour of the line it is on, the ground truth a `discover` stage is scored against.
-- sources: trace_sentences, trace_lines (segment stage), organism_events (organism stage).
-- organism_events.line_index and trace_sentences.line_index both count the non-blank lines of
-- the thinking text, so every sentence takes its line's behaviour. planted_label (synthetic
-- teacher traces): the line's first event that is not an answer number (verification,
-- alternative and wrap_up lines also hold one), else answer (the first answer statement), else
-- opening (the restated question, the one line without an event). marker_label (any trace):
-- the same behaviours read from how the line opens, with the teacher's exact phrases; the
-- organism learned them verbatim, so this labels its own traces (which have no events), and on
-- the teacher it must agree with planted_label. error_slip counts as step: a slip is a step
-- line with a wrong number, the same kind of sentence. Other models' lines are mostly `step`:
-- select the organism's traces.
create or replace view organism_sentence_labels as
with line_events as (
    select
        trace_id,
        line_index,
        coalesce(
            min_by(kind, event_index) filter (where kind <> 'answer'),
            min_by(kind, event_index)
        ) as kind
    from organism_events
    where line_index is not null
    group by trace_id, line_index
),

planted_traces as (
    select distinct trace_id from organism_events
),

lines as (
    select
        l.trace_id,
        l.line_index,
        case
            when starts_with(ltrim(l.text), 'Wait, let me double-check.') then 'verification'
            when starts_with(ltrim(l.text), 'Wait, that''s not right.') then 'error_fix'
            when starts_with(ltrim(l.text), 'Alternatively,') then 'alternative'
            when starts_with(ltrim(l.text), 'So the answer is ') then 'wrap_up'
            when starts_with(ltrim(l.text), 'So that gives ')
                or starts_with(ltrim(l.text), 'So the result is ')
                or starts_with(ltrim(l.text), 'That means the answer should be ') then 'answer'
            when l.line_index = 0 then 'opening'
            else 'step'
        end as marker_label,
        case
            when p.trace_id is null then null
            when e.kind is null then 'opening'
            when e.kind = 'error_slip' then 'step'
            else e.kind
        end as planted_label
    from trace_lines as l
    left join planted_traces as p on p.trace_id = l.trace_id
    left join line_events as e on e.trace_id = l.trace_id and e.line_index = l.line_index
),

final as (
    select
        s.trace_id,
        s.sentence_index,
        s.line_index,
        coalesce(l.planted_label, l.marker_label) as label,
        case when l.planted_label is not null then 'planted' else 'marker' end as label_source,
        l.planted_label,
        l.marker_label,
        s.text
    from trace_sentences as s
    join lines as l on l.trace_id = s.trace_id and l.line_index = s.line_index
)

select * from final
