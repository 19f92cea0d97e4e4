-- Per-domain percentile cut over the score Parquet files ($files: list of paths, $frac: fraction kept).
-- A document id seen in several shards is kept once (first shard by key) and the other copies are excluded with
-- a reason; documents are ranked within their domain by score (ties: id), and the top
-- k = floor(n * $frac + 0.5) of the n eligible documents of a domain are selected (nearest integer, halves up).
CREATE OR REPLACE TABLE domain_cut AS
WITH scores AS (
    SELECT
        id, domain, shard, n_tokens, loss_base, loss_ref, score, head_set_id, model,
        row_number() OVER (PARTITION BY id ORDER BY shard) AS occurrence,
        min(shard) OVER (PARTITION BY id) AS first_shard
    FROM read_parquet($files)
),
eligible AS (
    SELECT
        id, shard,
        row_number() OVER (PARTITION BY domain ORDER BY score DESC, id) AS domain_rank,
        count(*) OVER (PARTITION BY domain) AS domain_documents
    FROM scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
)
SELECT
    s.id, s.domain, s.shard, s.n_tokens, s.loss_base, s.loss_ref, s.score, s.head_set_id, s.model,
    e.domain_rank,
    e.domain_documents,
    CAST(floor(e.domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    coalesce(e.domain_rank <= floor(e.domain_documents * $frac + 0.5), false) AS selected,
    CASE
        WHEN s.occurrence > 1 THEN 'duplicate id, kept in shard ' || s.first_shard
        WHEN s.score IS NULL OR NOT isfinite(s.score) THEN 'score is not finite'
    END AS excluded_reason
FROM scores AS s
LEFT JOIN eligible AS e ON s.id = e.id AND s.shard = e.shard
