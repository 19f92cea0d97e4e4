-- Per domain: manifest rows ($manifest) against the cut ($cut): eligible documents once plus the selected again.
WITH cut AS (
    SELECT domain, count(*) FILTER (WHERE excluded_reason IS NULL) AS eligible, count(*) FILTER (WHERE selected) AS selected
    FROM read_parquet($cut)
    GROUP BY domain
),
manifest AS (
    SELECT domain, count(*) FILTER (WHERE NOT selected_copy) AS documents, count(*) FILTER (WHERE selected_copy) AS selected_copies
    FROM read_parquet($manifest)
    GROUP BY domain
)
SELECT domain, coalesce(c.eligible, 0) AS eligible, coalesce(c.selected, 0) AS selected,
    coalesce(m.documents, 0) AS documents, coalesce(m.selected_copies, 0) AS selected_copies
FROM cut AS c
FULL OUTER JOIN manifest AS m USING (domain)
ORDER BY domain
