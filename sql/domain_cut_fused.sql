-- Fused cut ($files, $frac, $weight): within each domain, the rank average of the AttentionInfluence score and
-- a quality column of the corpus (view cut_quality(shard, id, quality), built by attention_influence.cut from
-- the corpus shards). rank_score and rank_quality are 1-based ranks, best first (ties: id); a document without a
-- finite quality value ranks after every document that has one (NULLS LAST), so it can still be selected on its
-- score. fused_rank = (1 - $weight) * rank_score + $weight * rank_quality (lower is better; ties: rank_score,
-- then id), and the k = floor(n * $frac + 0.5) lowest of a domain's n eligible documents are selected.
-- Duplicates and non-finite scores as in domain_cut.sql.
CREATE OR REPLACE TABLE domain_cut AS
WITH scores AS (
    SELECT
        id, domain, shard, n_tokens, loss_base, loss_ref, score, head_set_id, model,
        row_number() OVER (PARTITION BY id ORDER BY shard) AS occurrence,
        min(shard) OVER (PARTITION BY id) AS first_shard
    FROM read_parquet($files)
),
quality AS (
    SELECT shard, id, max(quality) FILTER (WHERE isfinite(quality)) AS quality
    FROM cut_quality
    GROUP BY shard, id
),
ranked AS (
    SELECT
        s.id, s.shard, s.domain, s.score, q.quality,
        row_number() OVER (PARTITION BY s.domain ORDER BY s.score DESC, s.id) AS rank_score,
        row_number() OVER (PARTITION BY s.domain ORDER BY q.quality DESC NULLS LAST, s.id) AS rank_quality,
        count(*) OVER (PARTITION BY s.domain) AS domain_documents
    FROM scores AS s
    LEFT JOIN quality AS q ON s.shard = q.shard AND s.id = q.id
    WHERE s.occurrence = 1 AND s.score IS NOT NULL AND isfinite(s.score)
),
fused AS (
    SELECT *, (1 - $weight) * rank_score + $weight * rank_quality AS fused_rank
    FROM ranked
),
eligible AS (
    SELECT
        *,
        row_number() OVER (PARTITION BY domain ORDER BY fused_rank, rank_score, id) AS domain_rank
    FROM fused
)
SELECT
    s.id, s.domain, s.shard, s.n_tokens, s.loss_base, s.loss_ref, s.score, s.head_set_id, s.model,
    e.domain_rank,
    e.domain_documents,
    CAST(floor(e.domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    coalesce(e.domain_rank <= floor(e.domain_documents * $frac + 0.5), false) AS selected,
    e.quality,
    e.rank_score,
    e.rank_quality,
    e.fused_rank,
    CASE
        WHEN s.occurrence > 1 THEN 'duplicate id, kept in shard ' || s.first_shard
        WHEN s.score IS NULL OR NOT isfinite(s.score) THEN 'score is not finite'
    END AS excluded_reason
FROM scores AS s
LEFT JOIN eligible AS e ON s.id = e.id AND s.shard = e.shard
