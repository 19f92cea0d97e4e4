-- Step 1 of every cut: the score Parquet files ($files) with each row's occurrence of its id. A document id seen
-- in several shards is ranked once (first shard by key); the other copies are excluded with a reason (step 3).
-- gated_out and gate_value start as "passes, no value"; a quality gate (domain_cut_gate_*) rewrites them.
CREATE OR REPLACE TEMP TABLE cut_scores AS
SELECT
    id, domain, shard, n_tokens, loss_base, loss_ref, score, head_set_id, model,
    row_number() OVER (PARTITION BY id ORDER BY shard) AS occurrence,
    min(shard) OVER (PARTITION BY id) AS first_shard,
    false AS gated_out,
    CAST(NULL AS DOUBLE) AS gate_value
FROM read_parquet($files)
