-- Step 2, policies `docs` ($global false) and `global` ($global true): documents ranked by score (ties: id)
-- within their domain, or across all domains; the top k = floor(n * $frac + 0.5) of the n eligible documents of
-- a domain (of the corpus) are selected (nearest integer, halves up). Under `global`, domain_rank,
-- domain_documents and domain_keep hold the global rank, count and k. Under a quality gate, n counts every
-- eligible document but only those that pass the gate are ranked (k is capped by how many pass).
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH eligible AS (
    SELECT
        id, shard, score, gated_out,
        count(*) OVER (PARTITION BY CASE WHEN $global THEN NULL ELSE domain END) AS domain_documents,
        CASE WHEN $global THEN NULL ELSE domain END AS part
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
),
ranked AS (
    SELECT id, shard, domain_documents, row_number() OVER (PARTITION BY part ORDER BY score DESC, id) AS domain_rank
    FROM eligible
    WHERE NOT gated_out
)
SELECT
    id, shard, domain_rank, domain_documents,
    CAST(floor(domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    domain_rank <= floor(domain_documents * $frac + 0.5) AS selected
FROM ranked
