-- Step 2, policy `fused` ($frac, $weight): within each domain, the rank average of the AttentionInfluence score
-- and a quality column of the corpus (view cut_quality(shard, id, quality), built by attention_influence.cut from
-- the corpus shards). rank_score and rank_quality are 1-based ranks, best first (ties: id); a document without a
-- finite quality value ranks after every document that has one (NULLS LAST), so it can still be selected on its
-- score. fused_rank = (1 - $weight) * rank_score + $weight * rank_quality (lower is better; ties: rank_score,
-- then id), and the k = floor(n * $frac + 0.5) lowest of a domain's n eligible documents are selected. Under a
-- quality gate, n counts every eligible document and only those that pass the gate are ranked.
CREATE OR REPLACE TEMP TABLE cut_ranking AS
WITH quality AS (
    SELECT shard, id, max(quality) FILTER (WHERE isfinite(quality)) AS quality
    FROM cut_quality
    GROUP BY shard, id
),
eligible AS (
    SELECT *, count(*) OVER (PARTITION BY domain) AS domain_documents
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score)
),
ranked AS (
    SELECT
        s.id, s.shard, s.domain, q.quality, s.domain_documents,
        row_number() OVER (PARTITION BY s.domain ORDER BY s.score DESC, s.id) AS rank_score,
        row_number() OVER (PARTITION BY s.domain ORDER BY q.quality DESC NULLS LAST, s.id) AS rank_quality
    FROM eligible AS s
    LEFT JOIN quality AS q ON s.shard = q.shard AND s.id = q.id
    WHERE NOT s.gated_out
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
