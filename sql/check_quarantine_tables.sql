-- Rows of each quarantine table of $files (asset check: documents in = scored + quarantined), 0 for an empty one.
SELECT f.file, count(q.file) AS rows
FROM unnest($files) AS f(file)
LEFT JOIN (SELECT filename AS file FROM read_parquet($files, filename = true)) AS q ON q.file = f.file
GROUP BY f.file
ORDER BY f.file
