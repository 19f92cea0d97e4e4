-- Per-domain token-budget cut over the score Parquet files ($files: list of paths, $frac: fraction of tokens).
-- Duplicates and non-finite scores as in domain_cut.sql. Within its domain a document is ranked by score (ties:
-- id); the budget is $frac * (the domain's eligible n_tokens), and a document is selected when the documents
-- ranked above it hold fewer tokens than the budget. So the boundary document (the one whose tokens cross the
-- budget) is selected, and the selection holds at least the budget and less than the budget plus one document.
-- domain_keep is the number of documents this selects in the domain.
CREATE OR REPLACE TABLE domain_cut AS
WITH scores AS (
    SELECT
        id, domain, shard, n_tokens, loss_base, loss_ref, score, head_set_id, model,
        row_number() OVER (PARTITION BY id ORDER BY shard) AS occurrence,
        min(shard) OVER (PARTITION BY id) AS first_shard
    FROM read_parquet($files)
),
ranked AS (
    SELECT
        id, shard,
        row_number() OVER (PARTITION BY domain ORDER BY score DESC, id) AS domain_rank,
        count(*) OVER (PARTITION BY domain) AS domain_documents,
        coalesce(sum(n_tokens) OVER (
            PARTITION BY domain ORDER BY score DESC, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ), 0) AS tokens_before,
        sum(n_tokens) OVER (PARTITION BY domain) * $frac AS domain_token_budget
    FROM scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
),
eligible AS (
    SELECT *, tokens_before < domain_token_budget AS in_budget
    FROM ranked
)
SELECT
    s.id, s.domain, s.shard, s.n_tokens, s.loss_base, s.loss_ref, s.score, s.head_set_id, s.model,
    e.domain_rank,
    e.domain_documents,
    CAST(count(*) FILTER (WHERE e.in_budget) OVER (PARTITION BY s.domain) AS BIGINT) AS domain_keep,
    coalesce(e.in_budget, false) AS selected,
    e.domain_token_budget,
    CASE
        WHEN s.occurrence > 1 THEN 'duplicate id, kept in shard ' || s.first_shard
        WHEN s.score IS NULL OR NOT isfinite(s.score) THEN 'score is not finite'
    END AS excluded_reason
FROM scores AS s
LEFT JOIN eligible AS e ON s.id = e.id AND s.shard = e.shard
