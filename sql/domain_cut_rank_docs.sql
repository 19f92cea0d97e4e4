-- Step 2, policy `docs`: documents ranked within their domain by score (ties: id); the top
-- k = floor(n * $frac + 0.5) of the n eligible documents of a domain are selected (nearest integer, halves up).
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH eligible AS (
    SELECT
        id, shard,
        row_number() OVER (PARTITION BY domain ORDER BY score DESC, id) AS domain_rank,
        count(*) OVER (PARTITION BY domain) AS domain_documents
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
)
SELECT
    id, shard, domain_rank, domain_documents,
    CAST(floor(domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    domain_rank <= floor(domain_documents * $frac + 0.5) AS selected
FROM eligible
