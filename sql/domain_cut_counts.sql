-- Eligible, selected and excluded rows of a cut Parquet file ($cut): the manifest must reproduce them.
SELECT
    count(*) FILTER (WHERE excluded_reason IS NULL) AS eligible,
    count(*) FILTER (WHERE selected) AS selected,
    count(*) FILTER (WHERE excluded_reason IS NOT NULL) AS excluded
FROM read_parquet($cut)
