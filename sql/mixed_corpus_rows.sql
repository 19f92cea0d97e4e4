-- The training rows of the mixed corpus: every manifest row ($manifest) with its text from the corpus shards
-- (view mix_texts(shard, id, text), one relation per shard built by attention_influence.mixed_corpus). Order:
-- the manifest's (shard, id, selected_copy), or, with $seed not NULL, a seeded shuffle (hash of the row's key
-- and the seed; DuckDB sorts out of core, so the corpus is never held in memory).
SELECT m.id, m.domain, m.shard, m.score, m.selected_copy, m.head_set_id, m.n_tokens, t.text
FROM read_parquet($manifest) AS m
LEFT JOIN mix_texts AS t ON m.shard = t.shard AND m.id = t.id
ORDER BY
    CASE WHEN $seed IS NULL THEN 0 ELSE hash(m.shard, m.id, m.selected_copy, $seed) END,
    m.shard, m.id, m.selected_copy
