-- Step 2, policy `fused` ($frac, $weight): within each domain, the rank average of the AttentionInfluence score
-- and a quality column of the corpus (view cut_quality(shard, id, quality), built by attention_influence.cut from
-- the corpus shards). rank_score and rank_quality are 1-based ranks, best first (ties: id); a document without a
-- finite quality value ranks after every document that has one (NULLS LAST), so it can still be selected on its
-- score. fused_rank = (1 - $weight) * rank_score + $weight * rank_quality (lower is better; ties: rank_score,
-- then id), and the k = floor(n * $frac + 0.5) lowest of a domain's n eligible documents are selected.
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH quality AS (
    SELECT shard, id, max(quality) FILTER (WHERE isfinite(quality)) AS quality
    FROM cut_quality
    GROUP BY shard, id
),
ranked AS (
    SELECT
        s.id, s.shard, s.domain, q.quality,
        row_number() OVER (PARTITION BY s.domain ORDER BY s.score DESC, s.id) AS rank_score,
        row_number() OVER (PARTITION BY s.domain ORDER BY q.quality DESC NULLS LAST, s.id) AS rank_quality,
        count(*) OVER (PARTITION BY s.domain) AS domain_documents
    FROM cut_scores AS s
    LEFT JOIN quality AS q ON s.shard = q.shard AND s.id = q.id
    WHERE s.occurrence = 1 AND s.score IS NOT NULL AND isfinite(s.score)
),
fused AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY domain ORDER BY (1 - $weight) * rank_score + $weight * rank_quality, rank_score, id
        ) AS domain_rank,
        (1 - $weight) * rank_score + $weight * rank_quality AS fused_rank
    FROM ranked
)
SELECT
    id, shard, domain_rank, domain_documents,
    CAST(floor(domain_documents * $frac + 0.5) AS BIGINT) AS domain_keep,
    domain_rank <= floor(domain_documents * $frac + 0.5) AS selected,
    quality, rank_score, rank_quality, fused_rank
FROM fused
