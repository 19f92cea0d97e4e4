-- Per-domain documents, selected copies, rows, tokens (n_tokens) and UTF-8 bytes of the mixed corpus files
-- ($files).
SELECT
    domain,
    count(*) FILTER (WHERE NOT selected_copy) AS documents,
    count(*) FILTER (WHERE selected_copy) AS selected_copies,
    count(*) AS rows,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE NOT selected_copy), 0) AS BIGINT) AS tokens,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE selected_copy), 0) AS BIGINT) AS selected_tokens,
    CAST(sum(n_tokens) AS BIGINT) AS total_tokens,
    CAST(sum(octet_length(encode(text))) AS BIGINT) AS bytes
FROM read_parquet($files)
GROUP BY domain
ORDER BY domain
