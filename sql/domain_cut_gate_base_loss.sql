-- Step 1b, base-loss gate ($pct): within its domain, an eligible document passes when its rank by base loss
-- (lowest first; ties: id) is at most floor(n * $pct / 100 + 0.5) of the domain's n eligible documents with a
-- finite base loss (the cut's rounding). gate_value is that rank. Gated-out documents stay eligible (the
-- manifest's base copy) but are not ranked.
CREATE OR REPLACE TEMP TABLE cut_scores AS
WITH eligible AS (
    SELECT
        id, shard,
        row_number() OVER (PARTITION BY domain ORDER BY loss_base, id) AS loss_rank,
        count(*) OVER (PARTITION BY domain) AS n
    FROM cut_scores
    WHERE occurrence = 1 AND score IS NOT NULL AND isfinite(score) AND loss_base IS NOT NULL AND isfinite(loss_base)
)
SELECT
    s.* EXCLUDE (gated_out, gate_value),
    s.occurrence = 1 AND s.score IS NOT NULL AND isfinite(s.score)
        AND NOT coalesce(e.loss_rank <= floor(e.n * $pct / 100 + 0.5), false) AS gated_out,
    CAST(e.loss_rank AS DOUBLE) AS gate_value
FROM cut_scores AS s
LEFT JOIN eligible AS e ON s.shard = e.shard AND s.id = e.id
