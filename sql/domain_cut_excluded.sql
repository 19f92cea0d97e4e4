-- Rows of the cut left out of the ranking, by reason.
SELECT excluded_reason, count(*) AS n
FROM domain_cut
WHERE excluded_reason IS NOT NULL
GROUP BY excluded_reason
ORDER BY excluded_reason
