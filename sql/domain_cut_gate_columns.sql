-- Step 4 of a gated cut: the gate's columns on table domain_cut (gated_out: eligible but not ranked; gate_value:
-- the quality value, or the base-loss rank, the gate compared).
CREATE OR REPLACE TABLE domain_cut AS
SELECT d.*, s.gated_out, s.gate_value
FROM domain_cut AS d
JOIN cut_scores AS s ON d.id = s.id AND d.shard = s.shard
