-- One row per domain of the cut: eligible and selected documents and tokens, the score threshold.
SELECT
    domain,
    count(*) FILTER (WHERE excluded_reason IS NULL) AS documents,
    count(*) FILTER (WHERE selected) AS selected,
    any_value(domain_keep) FILTER (WHERE excluded_reason IS NULL) AS keep_target,
    min(score) FILTER (WHERE selected) AS threshold_score,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE excluded_reason IS NULL), 0) AS BIGINT) AS tokens,
    CAST(coalesce(sum(n_tokens) FILTER (WHERE selected), 0) AS BIGINT) AS selected_tokens,
    count(*) FILTER (WHERE excluded_reason IS NOT NULL) AS excluded
FROM domain_cut
GROUP BY domain
ORDER BY domain
