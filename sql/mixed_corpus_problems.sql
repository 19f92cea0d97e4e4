-- Manifest rows ($manifest) that cannot get exactly one text from the corpus (view mix_texts): no row with
-- their (shard, id), a NULL text, or several rows. Nothing is dropped silently: any row here stops the mix.
SELECT m.shard, m.id, count(t.id) AS matches, count(t.text) AS texts
FROM (SELECT DISTINCT shard, id FROM read_parquet($manifest)) AS m
LEFT JOIN mix_texts AS t ON m.shard = t.shard AND m.id = t.id
GROUP BY m.shard, m.id
HAVING count(t.id) <> 1 OR count(t.text) <> 1
ORDER BY m.shard, m.id
LIMIT 20
