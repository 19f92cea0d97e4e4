-- Per-domain document and token counts of the manifest ($manifest: its Parquet file).
SELECT
    domain,
    count(*) FILTER (WHERE NOT selected_copy) AS documents,
    count(*) FILTER (WHERE selected_copy) AS selected_copies,
    count(*) AS rows,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE NOT selected_copy), 0) AS BIGINT) AS tokens,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE selected_copy), 0) AS BIGINT) AS selected_tokens,
    CAST(sum(n_tokens) AS BIGINT) AS total_tokens
FROM read_parquet($manifest)
GROUP BY domain
ORDER BY domain
