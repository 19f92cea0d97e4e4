-- Step 2, policy `global`: one ranking across every domain (for corpora without a domain column, or when
-- domains should compete); the top k = floor(n * $frac + 0.5) of all n eligible documents are selected (ties:
-- id). domain_rank, domain_documents and domain_keep then hold the global rank, count and k.
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH eligible AS (
    SELECT
        id, shard,
        row_number() OVER (ORDER BY score DESC, id) AS domain_rank,
        count(*) OVER () AS domain_documents
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
)
SELECT
    id, shard, domain_rank, domain_documents,
    CAST(floor(domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    domain_rank <= floor(domain_documents * $frac + 0.5) AS selected
FROM eligible
