-- Step 2, policy `tokens` ($frac: fraction of tokens): within its domain a document is ranked by score (ties:
-- id); the budget is $frac * (the domain's eligible n_tokens), and a document is selected when the documents
-- ranked above it hold fewer tokens than the budget. So the boundary document (the one whose tokens cross the
-- budget) is selected: the selection holds at least the budget and less than the budget plus one document.
-- domain_keep is the number of documents this selects in the domain. Under a quality gate the budget and n are
-- those of every eligible document, and only the documents that pass the gate are ranked.
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH eligible AS (
    SELECT
        id, shard, domain, score, n_tokens, gated_out,
        count(*) OVER (PARTITION BY domain) AS domain_documents,
        sum(n_tokens) OVER (PARTITION BY domain) * $frac AS domain_token_budget
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
),
ranked AS (
    SELECT
        id, shard, domain, domain_documents, domain_token_budget,
        row_number() OVER (PARTITION BY domain ORDER BY score DESC, id) AS domain_rank,
        coalesce(sum(n_tokens) OVER (
            PARTITION BY domain ORDER BY score DESC, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ), 0) AS tokens_before
    FROM eligible
    WHERE NOT gated_out
)
SELECT
    id, shard, domain_rank, domain_documents,
    CAST(count(*) FILTER (WHERE tokens_before < domain_token_budget) OVER (PARTITION BY domain) AS BIGINT)
        AS domain_keep,
    tokens_before < domain_token_budget AS selected,
    domain_token_budget
FROM ranked
