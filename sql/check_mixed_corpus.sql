-- The mixed corpus ($mixed files) against its manifest ($manifest): rows of each, (shard, id, selected_copy)
-- keys whose row counts differ between the two, and mixed rows without a text.
WITH manifest AS (
    SELECT shard, id, selected_copy, count(*) AS n FROM read_parquet($manifest) GROUP BY ALL
),
mixed AS (
    SELECT shard, id, selected_copy, count(*) AS n, count(*) - count(text) AS no_text
    FROM read_parquet($mixed)
    GROUP BY ALL
)
SELECT
    CAST(coalesce(sum(m.n), 0) AS BIGINT) AS manifest_rows,
    CAST(coalesce(sum(x.n), 0) AS BIGINT) AS mixed_rows,
    count(*) FILTER (WHERE m.n IS DISTINCT FROM x.n) AS keys_differing,
    CAST(coalesce(sum(x.no_text), 0) AS BIGINT) AS rows_without_text
FROM manifest AS m
FULL OUTER JOIN mixed AS x USING (shard, id, selected_copy)
