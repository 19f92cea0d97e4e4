-- Per score table of $files: rows, distinct ids and null ids (asset checks: ids unique; documents in = scored +
-- quarantined). One row per file, an empty table included (0 rows).
SELECT f.file, count(s.file) AS rows, count(DISTINCT s.id) AS distinct_ids, count(s.file) - count(s.id) AS null_ids
FROM unnest($files) AS f(file)
LEFT JOIN (SELECT filename AS file, id FROM read_parquet($files, filename = true)) AS s ON s.file = f.file
GROUP BY f.file
ORDER BY f.file
