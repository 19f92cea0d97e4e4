-- Global cut over the score Parquet files ($files, $frac): one ranking across every domain (for corpora without
-- a domain column, or when domains should compete). Duplicates and non-finite scores as in domain_cut.sql; the
-- top k = floor(n * $frac + 0.5) of all n eligible documents are selected (ties: id). domain_rank,
-- domain_documents and domain_keep then hold the global rank, the global count and the global k.
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
        row_number() OVER (ORDER BY score DESC, id) AS domain_rank,
        count(*) OVER () AS domain_documents
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
