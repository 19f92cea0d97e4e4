-- Step 1b, quality gate ($min): an eligible document passes when its corpus quality value (view cut_gate_quality, built
-- like the fused cut's cut_quality) is at least $min; one without a finite value is gated out. gate_value is that value. Gated-out
-- documents stay eligible (the manifest's base copy) but are not ranked.
CREATE OR REPLACE TEMP TABLE cut_scores AS
WITH quality AS (
    SELECT shard, id, max(quality) FILTER (WHERE isfinite(quality)) AS quality
    FROM cut_gate_quality
    GROUP BY shard, id
)
SELECT
    s.* EXCLUDE (gated_out, gate_value),
    s.occurrence = 1 AND s.score IS NOT NULL AND isfinite(s.score) AND NOT coalesce(q.quality >= $min, false)
        AS gated_out,
    q.quality AS gate_value
FROM cut_scores AS s
LEFT JOIN quality AS q ON s.shard = q.shard AND s.id = q.id
